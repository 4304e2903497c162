"""The local listing never leaks or hangs: symlinks stay inside the source, special files are reported, the bytes
hashed are the bytes parsed; object names that are no legal local file names are read under safe names."""

import json
import os
import socket
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest

from docingest.core.plan import Action, make_plan
from docingest.core.sources import LocalFolderSource
from docingest.core.sources.local import OUTSIDE_REASON
from docingest.core.sources.names import is_hidden, local_name
from docingest.exceptions import SourceError
from docingest.options import IngestOptions, SourceOptions

pytestmark = pytest.mark.unit


def listing(root: Path, **options) -> dict[str, tuple[str | None, str | None]]:
    """path -> (skip reason, read error) for every entry the listing reports, listed in a thread that must end."""
    out: list = []
    worker = threading.Thread(target=lambda: out.extend(LocalFolderSource(root, SourceOptions(**options))
                                                        .iter_documents()), daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive(), "the listing hung"
    paths = [d.path for d in out]
    assert len(paths) == len(set(paths)), f"a document was listed twice: {paths}"
    return {d.path: (d.skip_reason, d.error) for d in out}


@pytest.fixture
def outside(tmp_path) -> Path:
    secret = tmp_path / "outside" / "shadow"
    secret.parent.mkdir()
    secret.write_text("root:$6$secret-hash:19000:0:99999:7:::\n")
    (tmp_path / "outside" / "more.md").write_text("# more\n")
    return secret


def test_a_symlink_out_of_the_root_is_skipped_with_its_reason(tmp_path, outside):
    root = tmp_path / "docs"
    root.mkdir()
    (root / "a.md").write_text("# A\n")
    (root / "secret.md").symlink_to(outside)
    (root / "elsewhere").symlink_to(outside.parent, target_is_directory=True)
    (root / "relative.md").symlink_to("../outside/shadow")
    seen = listing(root)
    assert seen == {"a.md": (None, None), "elsewhere": (OUTSIDE_REASON, None), "relative.md": (OUTSIDE_REASON, None),
                    "secret.md": (OUTSIDE_REASON, None)}
    plan = make_plan("file:///x", list(LocalFolderSource(root).iter_documents()), {}, _profile(), IngestOptions())
    skipped = {p.doc.path: p.reason for p in plan.by_action(Action.SKIP)}
    assert skipped == {"elsewhere": OUTSIDE_REASON, "relative.md": OUTSIDE_REASON, "secret.md": OUTSIDE_REASON}
    assert plan.counts()["seen"] == 4 and plan.counts()["skipped"] == 3


def test_follow_symlinks_opts_in_and_reads_the_target(tmp_path, outside):
    root = tmp_path / "docs"
    root.mkdir()
    (root / "secret.md").symlink_to(outside)
    (root / "elsewhere").symlink_to(outside.parent, target_is_directory=True)
    seen = listing(root, follow_symlinks=True)
    # One document per real file: the shadow file is reachable twice and listed once.
    assert seen == {"elsewhere/more.md": (None, None), "elsewhere/shadow": (None, None)}
    src = LocalFolderSource(root, SourceOptions(follow_symlinks=True))
    doc = next(d for d in src.iter_documents() if d.path.endswith("more.md"))
    with src.local_path(doc) as path:
        assert path.read_text() == "# more\n"


def test_links_inside_the_root_are_followed_once_under_the_real_path(tmp_path):
    root = tmp_path / "docs"
    (root / "v2").mkdir(parents=True)
    (root / "v2" / "guide.md").write_text("# Guide\n")
    (root / "current").symlink_to("v2", target_is_directory=True)  # listed before v2 in sorted order
    (root / "alias.md").symlink_to(root / "v2" / "guide.md")
    (root / ".drafts").mkdir()
    (root / ".drafts" / "wip.md").write_text("wip")
    (root / "wip.md").symlink_to(root / ".drafts" / "wip.md")  # a link does not reveal a hidden file
    assert listing(root) == {"v2/guide.md": (None, None)}


def test_symlink_loops_end_and_are_reported(tmp_path):
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.md").write_text("# A\n")
    (root / "sub" / "back").symlink_to("..", target_is_directory=True)  # a folder loop
    (root / "self.md").symlink_to("self.md")  # a link to itself
    (root / "ping.md").symlink_to("pong.md")
    (root / "pong.md").symlink_to("ping.md")
    seen = listing(root)
    assert seen["sub/a.md"] == (None, None)
    assert seen["self.md"][0] == seen["ping.md"][0] == seen["pong.md"][0] == "symlink loop"
    assert set(seen) == {"sub/a.md", "self.md", "ping.md", "pong.md"}


def test_special_files_and_dangling_links_are_reported_never_opened(tmp_path):
    root = Path(tempfile.mkdtemp(prefix="di-", dir="/tmp"))  # short: AF_UNIX paths are limited to 108 bytes
    try:
        (root / "a.md").write_text("# A\n")
        os.mkfifo(root / "pipe.md")  # opening it for reading would block until a writer comes
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(root / "s.sock"))
        (root / "gone.md").symlink_to(root / "missing.md")
        seen = listing(root)
        assert seen["a.md"] == (None, None)
        assert seen["pipe.md"][0] == "a FIFO (named pipe): only regular files are read"
        assert seen["s.sock"][0] == "a socket: only regular files are read"
        assert seen["gone.md"][0] == "dangling symlink (its target does not exist)"
        if os.path.exists("/dev/null"):
            (root / "null.md").symlink_to("/dev/null")
            assert listing(root, follow_symlinks=True)["null.md"][0] == "a character device: only regular files are read"
        sock.close()
    finally:
        subprocess.run(["rm", "-rf", str(root)], check=False)


def test_a_fifo_that_replaces_a_listed_file_fails_it_without_blocking(tmp_path):
    root = tmp_path / "docs"
    root.mkdir()
    (root / "a.md").write_text("# A\n")
    src = LocalFolderSource(root)
    [doc] = list(src.iter_documents())
    (root / "a.md").unlink()
    os.mkfifo(root / "a.md")
    with pytest.raises(SourceError, match="not a regular file"), src.local_path(doc):
        pass


def list_as_nobody(root: Path) -> dict[str, tuple[str | None, str | None]]:
    """The listing as an ordinary user (uid 65534), in a forked child: root reads every file."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.setgid(65534)
            os.setuid(65534)
            found = {d.path: [d.skip_reason, d.error] for d in LocalFolderSource(root).iter_documents()}
            os.write(write_end, json.dumps(found).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as fh:
        data = fh.read()
    os.waitpid(pid, 0)
    return {k: tuple(v) for k, v in json.loads(data).items()}


def test_unreadable_files_and_folders_are_accounted_for(tmp_path):
    root = Path(tempfile.mkdtemp(prefix="di-", dir="/tmp"))
    try:
        os.chmod(root, 0o755)
        (root / "a.md").write_text("# A\n")
        (root / "locked.md").write_text("# no\n")
        (root / "closed").mkdir()
        (root / "closed" / "b.md").write_text("# B\n")
        os.chmod(root / "a.md", 0o644)
        os.chmod(root / "locked.md", 0o000)
        os.chmod(root / "closed", 0o000)
        seen = list_as_nobody(root) if os.geteuid() == 0 else listing(root)
        assert seen["a.md"] == (None, None)
        assert seen["locked.md"] == (None, "cannot read locked.md: Permission denied")
        assert seen["closed"] == ("cannot list the folder: Permission denied", None)
    finally:
        os.chmod(root / "closed", 0o755)
        subprocess.run(["rm", "-rf", str(root)], check=False)


def test_the_bytes_parsed_are_the_bytes_hashed(tmp_path):
    root = tmp_path / "docs"
    root.mkdir()
    (root / "a.md").write_text("# Version one\n")
    (root / "b.md").write_text("# B\n")
    src = LocalFolderSource(root)
    a, b = list(src.iter_documents())
    with src.local_path(b) as path:
        (root / "b.md").write_text("# B rewritten while it is parsed\n")  # the parser reads the snapshot
        assert path.read_text() == "# B\n" and path.parent != root
    assert not path.exists()  # the snapshot is removed afterwards
    (root / "a.md").write_text("# Version two, written after the listing\n")
    with pytest.raises(SourceError, match="changed while it was being read; left for the next run"), \
            src.local_path(a):
        pass


@pytest.mark.parametrize("name, expected", [
    ("report.pdf", "report.pdf"),
    ("docs/sub/report.pdf", "report.pdf"),
    ("名" * 120 + ".pdf", None),  # 360 bytes: legal in S3, not as a local name
    ("line\nbreak.md", None),
    ("..", None),
    ("a/..", None),
    ("a/.", None),
    ("x" * 300, None),
    ("back\\slash.md", None),
    ("trailing-space.md ", None),
])
def test_local_names_are_one_safe_component(name, expected):
    made = local_name(name)
    if expected:
        assert made == expected
    else:
        assert made.startswith("document-") and len(made.encode()) <= 120
    assert "/" not in made and made not in (".", "..") and "\n" not in made
    if name.endswith((".pdf", ".md")) and not name.endswith(" "):
        assert made.endswith(Path(name).suffix)
    assert local_name(name) == made  # deterministic


def test_dot_segments_are_names_not_hidden_files():
    assert not is_hidden("a/../b.md") and not is_hidden("./b.md") and is_hidden("a/.git/config")


def _profile():
    from docingest.core.plan import Profile

    class _Model:
        name, backend = "m", "torch"

    return Profile(pdf_mode="fast", ocr="auto", max_tokens=256, model=_Model(), fingerprint="f",
                   format_fingerprints=())
