import pytest
from pydantic import SecretStr

from docingest.blocks import QdrantConnection

pytestmark = pytest.mark.unit


def test_qdrant_connection_fields_are_described_and_the_key_is_secret():
    for name, field in QdrantConnection.model_fields.items():
        assert field.description, f"{name} has no description"
    block = QdrantConnection(url="http://qdrant:6333", api_key="s3cret")
    assert isinstance(block.api_key, SecretStr)
    assert "s3cret" not in repr(block) and "s3cret" not in str(block.model_dump())
    location = block.location()
    assert location.url == "http://qdrant:6333" and location.api_key.get_secret_value() == "s3cret"
    assert "s3cret" not in location.describe()
