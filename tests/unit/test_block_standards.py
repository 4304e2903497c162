"""Prefect's block standards, over every docingest block (the logo check is replaced: it needs the internet)."""

import pytest
from prefect.testing.standard_test_suites import BlockStandardTestSuite

from docingest.blocks import (
    EmbedderSettings,
    GitRepositorySource,
    QdrantCollection,
    QdrantConnection,
    S3BucketSource,
    S3Credentials,
    S3ResultStorage,
)

ALL_BLOCKS = [QdrantConnection, QdrantCollection, S3Credentials, S3BucketSource, S3ResultStorage, GitRepositorySource,
              EmbedderSettings]

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("block", ALL_BLOCKS)
class TestAllBlocksAdhereToStandards(BlockStandardTestSuite):
    @pytest.fixture
    def block(self, block):
        return block

    def test_has_a_valid_image(self, block) -> None:  # fetching the logo needs the internet
        assert str(block._logo_url).startswith("https://")


def test_secrets_never_show():
    source = S3BucketSource(bucket="b", credentials=S3Credentials(access_key="AKIA123", secret_key="very-secret"))
    git = GitRepositorySource(url="https://gitlab.example.com/t/d.git", token="glpat-secret")
    for text in (repr(source), str(source.model_dump()), repr(git), str(git.model_dump())):
        assert "very-secret" not in text and "glpat-secret" not in text
    assert source.source_uri() == "s3://b"
    assert git.source_uri() == "git+https://gitlab.example.com/t/d.git@HEAD:"


def test_every_block_is_exported_and_every_field_is_described():
    import docingest.blocks

    exported = {getattr(docingest.blocks, name) for name in docingest.blocks.__all__}
    assert exported == set(ALL_BLOCKS)
    for block in ALL_BLOCKS:
        for name, field in block.model_fields.items():
            assert field.description, f"{block.__name__}.{name} has no description"


def test_result_storage_and_collection_blocks_keep_secrets():
    storage = S3ResultStorage(bucket="results", credentials=S3Credentials(access_key="AKIA9", secret_key="shh-secret"))
    collection = QdrantCollection(collection_name="kb", connection=QdrantConnection(url="http://q:6333", api_key="k3y-x"))
    for text in (repr(storage), str(storage.model_dump()), repr(collection), str(collection.model_dump())):
        assert "shh-secret" not in text and "k3y-x" not in text
    assert storage._key("abc") == "docingest-results/abc"
