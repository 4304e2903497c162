"""Sources that cannot leak or hang, through the real flow: a symlink to a secret outside the folder is never
ingested (and chunks an earlier opt-in run took from it are removed), FIFOs are reported, a file rewritten during a
run is never recorded with a hash its chunks do not have, any legal S3 key and git path is read, git symlinks are read
from the repository only."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from docingest.core.ids import sha256_file
from docingest.core.sources.local import OUTSIDE_REASON, LocalFolderSource
from docingest.flows.ingest import ingest_documents
from docingest.options import IngestOptions, SourceOptions
from docingest.retrieval import search

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SECRET = "root:$6$rounds=656000$Zebra-Quartz-Hash$abc:19000:0:99999:7:::\nThe root password hash lives here.\n"


def texts(collection: str, query: str, limit: int = 10) -> list[str]:
    return [h.text for h in search(query, collection, limit=limit)]


def test_a_symlink_to_a_secret_is_skipped_and_earlier_leaks_are_removed(prefect_server, home, tmp_path):
    secret = tmp_path / "etc" / "shadow"
    secret.parent.mkdir()
    secret.write_text(SECRET)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "keys.md").write_text("# Keys\n\nRotate the signing keys every ninety days.\n")
    (docs / "secret.md").symlink_to(secret)
    os.mkfifo(docs / "pipe.md")
    (docs / "dangling.md").symlink_to(tmp_path / "nowhere.md")

    # Opted in (as an earlier, trusting run might have): the link is read, and the run's log says so.
    opted = ingest_documents(source=str(docs), collection="safe",
                             options=IngestOptions(source=SourceOptions(follow_symlinks=True)))
    assert opted.documents.new == 2 and any("password hash" in t for t in texts("safe", "root password hash"))

    result = ingest_documents(source=str(docs), collection="safe")
    d = result.documents
    assert (d.seen, d.unchanged, d.skipped, d.failed) == (4, 1, 3, 0)
    reasons = {s.source.rsplit("/", 1)[-1]: s.reason for s in result.skipped}
    assert reasons == {"secret.md": OUTSIDE_REASON, "pipe.md": "a FIFO (named pipe): only regular files are read",
                       "dangling.md": "dangling symlink (its target does not exist)"}
    assert not any("password" in t or "Zebra" in t for t in texts("safe", "root password hash"))
    again = ingest_documents(source=str(docs), collection="safe")  # stays out, nothing rewritten
    assert (again.documents.skipped, again.documents.unchanged, again.chunks.upserted) == (3, 1, 0)


def test_a_file_rewritten_during_the_run_is_left_for_the_next_run(prefect_server, home, tmp_path, monkeypatch, written_store):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# Alpha\n\nThe first version talks about apricots.\n")
    (docs / "b.md").write_text("# Beta\n\nBananas are yellow.\n")
    listed = LocalFolderSource.iter_documents

    def list_then_rewrite(self):
        found = list(listed(self))
        (docs / "a.md").write_text("# Alpha\n\nThe second version talks about avocados instead.\n")
        yield from found

    monkeypatch.setattr(LocalFolderSource, "iter_documents", list_then_rewrite)
    first = ingest_documents(source=str(docs), collection="racy")
    assert (first.documents.new, first.documents.failed) == (2, 1)
    [failure] = first.failures
    assert failure.stage == "read" and "changed while it was being read" in failure.error
    assert not any("apricots" in t or "avocados" in t for t in texts("racy", "fruit"))
    monkeypatch.setattr(LocalFolderSource, "iter_documents", listed)

    second = ingest_documents(source=str(docs), collection="racy")
    assert (second.documents.changed, second.documents.unchanged, second.documents.failed) == (1, 1, 0)
    assert any("avocados" in t for t in texts("racy", "avocados"))
    store = written_store()
    record = store.manifest("racy", second.source)["a.md"]
    assert record.content_hash == sha256_file(docs / "a.md")  # the manifest's hash is that of the parsed bytes


def test_any_legal_s3_key_is_read_under_a_safe_name(prefect_server, home, s3_endpoint, s3_env, tmp_path):
    s3_env.make_bucket("names")
    keys = {
        "docs/" + "名" * 120 + ".md": "Kanji file names of three hundred and sixty bytes work.",
        "docs/tab\there.md": "A tab in the key is fine.",
        "docs/up/../../escape.md": "Dot-dot segments never leave the temporary folder.",
        "docs/./here.md": "A single dot segment is part of the name.",
        "docs/" + "x" * 300 + ".md": "Three hundred ASCII characters in one segment.",
        "docs/sp ace?*.md": "Spaces and glob characters.",
    }
    # The minio client refuses to write keys with dot segments (S3 allows them): botocore writes them all. (This S3
    # server refuses newlines in keys, so local_name's newline case is covered by the unit tests.)
    import boto3

    writer = boto3.client("s3", endpoint_url=s3_endpoint, aws_access_key_id="testing",
                          aws_secret_access_key="testing-secret", region_name="us-east-1")
    for key, text in keys.items():
        writer.put_object(Bucket="names", Key=key, Body=f"# Title\n\n{text}\n".encode())
    temp = Path(tempfile.gettempdir())
    before = set(temp.iterdir())
    result = ingest_documents(source="s3://names/docs", collection="names")
    assert (result.documents.new, result.documents.failed, result.documents.skipped) == (6, 0, 0), result.failures
    stored = {h.path: h.text for h in search("names", "names", limit=20)}
    assert set(stored) == {key.removeprefix("docs/") for key in keys}  # the real names, in the payload's path
    left = {p.name for p in set(temp.iterdir()) - before}
    assert not {n for n in left if n.startswith("docingest-s3-") or n == "escape.md"}  # no snapshot left, none escaped


def test_git_symlinks_are_read_from_the_repository_only(prefect_server, home, tmp_path, git, git_origin):
    secret = tmp_path / "shadow"
    secret.write_text(SECRET)
    origin, work = git_origin(tmp_path)
    (work / "docs").mkdir()
    (work / "docs" / "guide.md").write_text("# Guide\n\nWrite short sentences.\n")
    (work / "docs" / "secret.md").symlink_to(secret)  # absolute, to this machine
    (work / "docs" / "up.md").symlink_to("../outside.md")  # in the repository, outside the folder
    (work / "docs" / "alias.md").symlink_to("guide.md")  # inside: the target is the document
    (work / "docs" / "gone.md").symlink_to("missing.md")
    (work / "outside.md").write_text("# Outside\n\nNot in the folder.\n")
    git("add", ".", cwd=work)
    git("commit", "-q", "-m", "v1", cwd=work)
    git("push", "-q", "origin", "main", cwd=work)
    result = ingest_documents(source=origin.as_uri(), collection="gitlinks",
                              options=IngestOptions(source=SourceOptions(git_ref="main", git_path="docs")))
    d = result.documents
    assert (d.seen, d.new, d.skipped, d.failed) == (4, 1, 3, 0)
    reasons = {s.source.rsplit("/", 1)[-1]: s.reason for s in result.skipped}
    assert reasons == {"secret.md": OUTSIDE_REASON, "up.md": OUTSIDE_REASON,
                       "gone.md": "dangling symlink (its target does not exist)"}
    assert {h.path for h in search("anything", "gitlinks", limit=10)} == {"guide.md"}
    assert not any("password" in t for t in texts("gitlinks", "root password hash"))
