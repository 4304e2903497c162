"""QdrantTarget: where Qdrant lives for one call, validated once, in the model; the CLI and the Python API say it in
their own words."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from docingest.exceptions import ConfigurationError
from docingest.targets import QdrantTarget

pytestmark = pytest.mark.unit


def test_a_target_is_a_url_or_a_path_never_both():
    assert QdrantTarget(url="http://qdrant:6333").path is None
    assert QdrantTarget(path="/data/q").url is None
    assert QdrantTarget() == QdrantTarget(url=None, path=None)  # the settings decide
    with pytest.raises(ValidationError, match="a server URL or an embedded store folder, not both"):
        QdrantTarget(url="http://qdrant:6333", path="/data/q")
    with pytest.raises(ValidationError):  # frozen: a target passed around cannot change under its holder
        QdrantTarget(path="/a").path = "/b"


def test_the_python_api_refuses_both_in_its_arguments_words():
    import docingest

    with pytest.raises(ConfigurationError, match="either qdrant_path or qdrant_url, not both"):
        docingest.search("x", "c", qdrant_path="/tmp/q", qdrant_url="http://127.0.0.1:9")
