"""A model's dimension and max sequence length read from its folder's config files, checked when it loads."""

import json
import types

import pytest

from docingest.core import embed
from docingest.exceptions import ConfigurationError

pytestmark = pytest.mark.unit


def st_folder(root, modules, max_seq=256, pooling=None, dense=None):
    root.mkdir(parents=True)
    (root / "modules.json").write_text(json.dumps(
        [{"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
         for i, (kind, path) in enumerate(modules)]))
    (root / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq}))
    if pooling is not None:
        (root / "1_Pooling").mkdir()
        (root / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    if dense is not None:
        (root / "2_Dense").mkdir()
        (root / "2_Dense" / "config.json").write_text(json.dumps(dense))
    return str(root)


MEAN = {"word_embedding_dimension": 384, "pooling_mode_mean_tokens": True, "pooling_mode_cls_token": False}


def test_the_bundled_model_folder():
    location, revision = embed.resolve_model_location("sentence-transformers/all-MiniLM-L6-v2")
    info = embed.info_from_config("sentence-transformers/all-MiniLM-L6-v2", location, revision, "torch")
    assert (info.dimension, info.max_seq_length, info.revision) == (384, 256, revision)


def test_pooling_modes_and_dense_layers_set_the_dimension(tmp_path):
    two_modes = {**MEAN, "pooling_mode_max_tokens": True}
    folder = st_folder(tmp_path / "a", [("Transformer", ""), ("Pooling", "1_Pooling")], 512, two_modes)
    assert embed.info_from_config("a", folder, "r", "torch").dimension == 768  # mean and max, concatenated
    folder = st_folder(tmp_path / "b", [("Transformer", ""), ("Pooling", "1_Pooling"), ("Dense", "2_Dense"),
                                        ("Normalize", "3_Normalize")], 128, MEAN, {"out_features": 256})
    info = embed.info_from_config("b", folder, "r", "int8")
    assert (info.dimension, info.max_seq_length, info.backend) == (256, 128, "int8")


@pytest.mark.parametrize("case", ["unknown module", "no max length", "no pooling mode", "no modules.json"])
def test_anything_else_is_left_to_loading_the_model(tmp_path, case):
    modules = [("Transformer", ""), ("Pooling", "1_Pooling")]
    if case == "unknown module":
        modules.append(("CNN", "2_CNN"))
    pooling = {**MEAN, "pooling_mode_mean_tokens": case != "no pooling mode"}
    folder = st_folder(tmp_path / "m", modules, None if case == "no max length" else 256, pooling)
    if case == "no modules.json":
        (tmp_path / "m" / "modules.json").unlink()
    assert embed.info_from_config("m", folder, "r", "torch") is None


def test_a_model_that_disagrees_with_its_recorded_info_is_a_configuration_error(monkeypatch):
    fake = types.SimpleNamespace(max_seq_length=256, get_sentence_embedding_dimension=lambda: 768)
    monkeypatch.setattr(embed, "_load_sentence_transformer", lambda *a: fake)
    info = embed.ModelInfo(name="m", location="/x", revision="r", dimension=384, max_seq_length=256)
    with pytest.raises(ConfigurationError, match="dimension 768"):
        embed._load_checked(info, None)
    assert embed._load_checked(embed.ModelInfo(name="m", location="/x", revision="r", dimension=768,
                                               max_seq_length=256), None) is fake
