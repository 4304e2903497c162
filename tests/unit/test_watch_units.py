"""The watch's pieces without a flow: the batcher's quiet period and longest wait, editors' files, the overflow
signal, and how a batch narrows a run within the user's own filters."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from docingest.core.watch import OVERFLOW_LOGGER, ChangeBatcher, FolderWatch, escape, ignored, unescape
from docingest.live import LiveSync
from docingest.options import IngestOptions, SourceOptions

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("name", ["a.md~", "dir/.a.md.swp", ".a.md.swx", "4913", ".#a.md", "#a.md#",
                                  ".~lock.a.docx#", "~$report.docx", "x.tmp", "big.pdf.part", "f.crdownload"])
def test_editors_transient_files_are_ignored(name):
    assert ignored(name)


@pytest.mark.parametrize("name", ["a.md", "notes/tmp/a.md", "swap.md", "a.tmp.md", "docs/4913.md"])
def test_documents_are_not_ignored(name):
    assert not ignored(name)


def test_a_batch_waits_for_the_quiet_period_and_coalesces():
    batcher = ChangeBatcher(quiet_s=0.2, max_wait_s=5)
    batcher.add("a.md")
    time.sleep(0.1)
    batcher.add("a.md")  # an editor's save is several events
    batcher.add("b.md")
    assert batcher.take(timeout=0.05) is None  # not quiet yet
    started = time.monotonic()
    batch = batcher.take(timeout=2)
    assert batch is not None and batch.patterns == {"a.md", "b.md"} and batch.reconcile is None
    assert time.monotonic() - started < 1
    assert batcher.take(timeout=0.05) is None  # taken once


def test_a_folder_that_never_goes_quiet_is_still_synced_after_the_longest_wait():
    batcher = ChangeBatcher(quiet_s=0.3, max_wait_s=0.6)
    stop = threading.Event()

    def busy():
        n = 0
        while not stop.is_set():
            batcher.add(f"f{n}.md")
            n += 1
            time.sleep(0.05)

    writer = threading.Thread(target=busy)
    writer.start()
    try:
        started = time.monotonic()
        batch = batcher.take(timeout=5)
        assert batch is not None and len(batch.patterns) > 5
        assert time.monotonic() - started < 2  # 0.6 s plus scheduling, far below the 5 s timeout
    finally:
        stop.set()
        writer.join()


@pytest.fixture
def watched(tmp_path):
    """A real watch of ``tmp_path`` (inotify) feeding a batcher with a 0.2 s quiet period; stopped afterwards."""
    batcher = ChangeBatcher(quiet_s=0.2, max_wait_s=2)
    watch = FolderWatch(tmp_path, batcher)
    watch.start()
    yield batcher
    watch.stop()


def test_watchdogs_overflow_record_asks_for_a_reconcile(watched):
    # What watchdog logs when the kernel's inotify queue overflowed (watchdog.observers.inotify_c)
    logging.getLogger(OVERFLOW_LOGGER).warning("Inotify queue overflowed; filesystem events were lost")
    batch = watched.take(timeout=2)
    assert batch is not None and batch.reconcile and "overflow" in batch.reconcile


def test_real_events_become_patterns_and_folders_become_globs(watched, tmp_path):
    (tmp_path / "a[1].md").write_text("x")
    (tmp_path / "a.md~").write_text("backup")
    (tmp_path / "sub").mkdir()
    batch = watched.take(timeout=5)
    assert batch is not None
    assert batch.patterns == {escape("a[1].md"), "sub/**"}


@pytest.mark.parametrize("rel", ["plain.md", "a[1].md", "what?.md", "star*.md", "dir [x]/f.md"])
def test_escaping_round_trips(rel):
    assert unescape(escape(rel)) == rel


def test_a_batch_stays_within_the_users_filters(tmp_path):
    (tmp_path / "moved" / "deep").mkdir(parents=True)
    (tmp_path / "moved" / "a.md").write_text("x")
    (tmp_path / "moved" / "deep" / "b.pdf").write_text("x")
    (tmp_path / "moved" / "deep" / "c.md").write_text("x")
    options = IngestOptions(source=SourceOptions(include=["**/*.md"], exclude=["**/private/*"]))
    live = LiveSync(tmp_path, "c", options)
    got = live._include({"x.md", "y.pdf", "private/z.md", "moved/**", "gone/**"})
    # a changed file only if the filters select it; a folder that exists as its selected files; one that is gone
    # as a glob (only deletions come of it)
    assert got == sorted(["x.md", "moved/a.md", "moved/deep/c.md", "gone/**"])
    everything = LiveSync(tmp_path, "c")
    assert everything._include({"moved/**", "y.pdf"}) == ["moved/**", "y.pdf"]


def test_a_watch_runs_full_mode_guarded_by_the_whole_source(tmp_path):
    live = LiveSync(tmp_path, "c", IngestOptions(max_delete_ratio=0.2))
    assert live.options.mode.value == "full" and live.options.delete_guard_of == "source"
    assert live.options.max_delete_ratio == 0.2


# -- buckets and repositories: the periodic check, and notifications ------------------------------------------------

def test_a_check_turns_what_changed_since_the_last_one_into_patterns():
    from docingest.core.watch import SourcePoll

    listings = iter([{"a.md": "1", "b.md": "1", "c[1].md": "1"},
                     {"a.md": "2", "b.md": "1", "new.md": "1", "new.md~": "1"},  # changed, gone, new, a backup
                     {"a.md": "2", "b.md": "1", "new.md": "1", "new.md~": "1"}])
    batcher = ChangeBatcher(quiet_s=0, max_wait_s=0)
    poll = SourcePoll(lambda: next(listings), batcher, poll_s=60)
    poll.check()
    assert not batcher.pending()  # the first listing is what the first sync syncs
    poll.check()
    batch = batcher.take(timeout=1)
    assert batch is not None and batch.patterns == {"a.md", "new.md", "c[[]1].md"} and batch.reconcile is None
    poll.check()
    assert not batcher.pending()  # nothing changed: nothing to run


def test_a_failed_check_warns_once_and_the_next_compares_with_the_last_good_listing(caplog):
    from docingest.core.watch import SourcePoll

    answers = [{"a.md": "1"}, OSError("connection refused"), OSError("connection refused"), {"a.md": "2"}]

    def snapshot() -> dict[str, str]:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    batcher = ChangeBatcher(quiet_s=0, max_wait_s=0)
    poll = SourcePoll(snapshot, batcher, poll_s=60, what="s3://b/docs")
    with caplog.at_level(logging.WARNING, logger="docingest.watch"):
        for _ in range(4):
            poll.check()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and "cannot check s3://b/docs" in warnings[0] and "again" in warnings[1]
    batch = batcher.take(timeout=1)
    assert batch is not None and batch.patterns == {"a.md"}  # nothing deleted for the failures, the change found


def test_a_new_commit_asks_for_a_whole_run():
    from docingest.core.watch import SourcePoll

    commits = iter([{"main": "aaa"}, {"main": "aaa"}, {"main": "bbb"}])
    batcher = ChangeBatcher(quiet_s=0, max_wait_s=0)
    poll = SourcePoll(lambda: next(commits), batcher, poll_s=60, whole=True, what="repo at main")
    poll.check()
    poll.check()
    assert not batcher.pending()
    poll.check()
    batch = batcher.take(timeout=1)
    assert batch is not None and batch.reconcile == "repo at main changed" and batch.patterns == set()


@pytest.mark.parametrize(("key", "path"), [("docs/a.md", "a.md"), ("docs/sub/b c.md", "sub/b c.md"),
                                           ("docsx/a.md", None), ("other.md", None), ("docs/", None),
                                           ("docs/folder/", None)])
def test_a_notified_key_is_the_watchs_when_it_lies_under_its_bucket_and_prefix(key, path):
    live = LiveSync("s3://bucket/docs", "kb")  # opens nothing: the bucket is reached when the watch runs
    assert live.key_path("bucket", key) == path
    assert live.key_path("another-bucket", key) is None
    assert LiveSync("s3://bucket", "kb").key_path("bucket", "docs/a.md") == "docs/a.md"


@pytest.mark.parametrize("value", ["docs", "=kb", "docs=", "docs=a b", "s3://b/p=kb/x"])
def test_serve_watch_takes_source_equals_collection(value):
    from docingest.exceptions import ConfigurationError
    from docingest.service.watches import parse_watch

    with pytest.raises(ConfigurationError, match="SOURCE=COLLECTION"):
        parse_watch(value)


def test_serve_watch_splits_at_the_last_equals_sign():
    from docingest.service.watches import parse_watch

    assert parse_watch("s3://b/a=b=kb") == ("s3://b/a=b", "kb")
    assert parse_watch("/data/docs=kb-1.v2") == ("/data/docs", "kb-1.v2")


def test_matching_a_batchs_many_paths_is_fnmatchs_own_answer():
    """``matches`` looks exact paths up in a set and the globs in one expression; the answer is fnmatch's."""
    from fnmatch import fnmatch

    from docingest.core.sources.local import matches

    def reference(rel: str, patterns: list[str]) -> bool:
        return any(fnmatch(rel, p) or (p.startswith("**/") and fnmatch(rel, p[3:])) for p in patterns)

    paths = ["a.md", "a[1].md", "x/a*b.md", "deep/a/b/c.PDF", "top.pdf", "a\\b.md", "d1/x.md", "d12/y.md", "", "*"]
    pattern_sets = [["**/*"], ["*.md"], ["**/*.pdf", "**/*.PDF"], [escape("a[1].md")], ["d1?/*"], [], ["a\\b.md"],
                    [escape(p) for p in paths] + ["deep/**"], ["x/a[*]b.md", "[!a]*"], ["**/b/*"], ["*"]]
    for patterns in pattern_sets:
        for rel in paths:
            assert matches(rel, patterns) == reference(rel, patterns), (rel, patterns)
