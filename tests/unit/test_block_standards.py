"""Prefect's block standards, over every docingest block (the logo check is replaced: it needs the internet)."""

import pytest
from prefect.testing.standard_test_suites import BlockStandardTestSuite

from docingest.blocks import EmbedderSettings, GitRepositorySource, QdrantConnection, S3BucketSource, S3Credentials

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "block", [QdrantConnection, S3Credentials, S3BucketSource, GitRepositorySource, EmbedderSettings]
)
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
