"""The int8 backend (the high-throughput preset): weights quantized per output channel, vectors close to fp32's."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.integration

TEXTS = [
    "Every employee must rotate signing keys and API tokens at least once a year.",
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France.",
    "Backup restore tests are run before the end of each quarter using the approved ticketing system.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The on-call engineer will escalate the incident timeline as soon as a deviation is detected.",
    "Johann Sebastian Bach was a German composer of the late Baroque period.",
]


def test_int8_quantizes_per_channel_and_stays_close_to_fp32():
    """Per tensor, the vectors' cosine to fp32 was 0.941 on average over 500 dbpedia abstracts (minimum 0.878); per
    channel 0.982 (minimum 0.959)."""
    import torch

    from docingest.core.embed import embed_texts, load_model

    fp32 = embed_texts(load_model("sentence-transformers/all-MiniLM-L6-v2", "cpu"), TEXTS)
    int8 = load_model("sentence-transformers/all-MiniLM-L6-v2", None, "int8")
    quantized = [m for m in int8.model.modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)]
    assert quantized and all(m.weight().qscheme() == torch.per_channel_affine for m in quantized)
    cosines = np.sum(embed_texts(int8, TEXTS) * fp32, axis=1)
    assert cosines.min() > 0.95, cosines
