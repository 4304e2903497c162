import pytest

from docingest.core.sources import LocalFolderSource, open_source
from docingest.exceptions import ConfigurationError
from docingest.options import SourceOptions

pytestmark = pytest.mark.unit


def make_tree(root):
    (root / "sub").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "a.md").write_text("# A")
    (root / "sub" / "b.md").write_text("# B")
    (root / "sub" / "c.txt").write_text("c")
    (root / ".hidden.md").write_text("h")
    (root / ".git" / "config").write_text("x")
    return root


def test_lists_files_sorted_with_relative_posix_paths_and_hashes(tmp_path):
    src = LocalFolderSource(make_tree(tmp_path / "docs"))
    docs = list(src.iter_documents())
    assert [d.path for d in docs] == ["a.md", "sub/b.md", "sub/c.txt"]  # hidden files and folders left out
    assert all(len(d.content_hash) == 64 and d.source_uri == src.uri for d in docs)
    assert docs[0].uri.endswith("/docs/a.md") and docs[0].size == 3


def test_include_and_exclude_globs(tmp_path):
    root = make_tree(tmp_path / "docs")
    only_md = LocalFolderSource(root, SourceOptions(include=["**/*.md"]))
    assert [d.path for d in only_md.iter_documents()] == ["a.md", "sub/b.md"]
    no_sub = LocalFolderSource(root, SourceOptions(exclude=["sub/*"]))
    assert [d.path for d in no_sub.iter_documents()] == ["a.md"]


def test_single_file_is_its_own_scope(tmp_path):
    root = make_tree(tmp_path / "docs")
    src = open_source(str(root / "a.md"))
    docs = list(src.iter_documents())
    assert [d.path for d in docs] == ["a.md"]
    assert src.uri.endswith("/docs/a.md")  # scope is the file, not its folder


def test_missing_source_and_unknown_scheme_are_configuration_errors(tmp_path):
    with pytest.raises(ConfigurationError, match="not found"):
        open_source(str(tmp_path / "nope"))
    with pytest.raises(ConfigurationError, match="scheme"):
        open_source("ftp://example/x")
    assert open_source((tmp_path).as_uri()).root == tmp_path.resolve()
