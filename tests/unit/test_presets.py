"""Presets fill what was not given explicitly; the CLI passes only explicit options."""

from __future__ import annotations

import pytest

from docingest.options import EmbedBackend, EmbedOptions, IngestOptions, Preset, StoreOptions, preset_values

pytestmark = pytest.mark.unit


def test_no_preset_keeps_the_defaults():
    assert IngestOptions().resolved() == IngestOptions()
    assert IngestOptions(preset="default").resolved().model_dump(exclude={"preset"}) == \
        IngestOptions().model_dump(exclude={"preset"})


def test_high_throughput_sets_knobs_together():
    o = IngestOptions(preset=Preset.HIGH_THROUGHPUT).resolved()
    assert o.window == 128 and o.workers >= 2
    assert o.embed.batch_size == 64 and o.embed.backend is EmbedBackend.INT8  # int8 is slower at 128
    assert o.store.upsert_batch_size == 1024


def test_memory_efficient_bounds_memory():
    o = IngestOptions(preset="memory-efficient").resolved()
    assert (o.workers, o.window, o.embed.batch_size, o.parse.max_memory_mb) == (1, 4, 16, 2048)
    assert o.embed.backend is EmbedBackend.TORCH  # vectors (and the fingerprint) unchanged


def test_explicit_options_win_over_the_preset():
    o = IngestOptions(preset="high-throughput", workers=1, embed=EmbedOptions(backend="torch"),
                      store=StoreOptions(bm25_language="none")).resolved()
    assert o.workers == 1 and o.embed.backend is EmbedBackend.TORCH
    assert o.window == 128 and o.store.upsert_batch_size == 1024  # not given: from the preset, also in a section


def test_every_preset_value_is_a_valid_option():
    for preset in Preset:
        IngestOptions.model_validate({**preset_values(preset), "preset": preset})


def test_flow_parameter_overrides_options_preset():
    from docingest.flows.runspec import with_preset

    o = with_preset(IngestOptions(preset="memory-efficient"), Preset.HIGH_THROUGHPUT)
    assert o.preset is Preset.HIGH_THROUGHPUT and o.window == 128
