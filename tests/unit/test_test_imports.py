"""Tests take shared helpers as fixtures: no test module imports a conftest or a helper module of the test tree
(``conftest``, ``support``, ``scans``). Such imports resolve to whichever ``conftest`` module pytest loaded last
and bypass fixture scoping and cleanup."""

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

TESTS = Path(__file__).resolve().parents[1]
FORBIDDEN = ("conftest", "support", "scans")


def forbidden_imports(path: Path, root: Path = TESTS) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""] if node.level == 0 else [f"{'.' * node.level}{node.module or ''}"]
            if node.level and not node.module:  # from . import conftest
                names = [alias.name for alias in node.names]
        else:
            continue
        found += [f"{path.relative_to(root)}:{node.lineno}: {name}" for name in names
                  if name.lstrip(".").split(".")[0] in FORBIDDEN or name.lstrip(".").split(".")[-1] in FORBIDDEN]
    return found


def test_no_test_module_imports_a_conftest_or_a_helper_module():
    # every Python file of the tree but the conftests and the plugin packages that tests/plugins holds for pip
    modules = sorted(p for p in TESTS.rglob("*.py")
                     if p.name != "conftest.py" and p.relative_to(TESTS).parts[0] != "plugins")
    assert len(modules) > 40  # every test module of the tree was found
    assert [hit for path in modules for hit in forbidden_imports(path)] == []


def test_the_check_sees_every_form_of_such_an_import(tmp_path):
    bad = tmp_path / "test_bad.py"
    bad.write_text("import conftest\nfrom support import free_port\nfrom scans import scanned_pdf\n"
                   "from . import conftest\nfrom .support import git\nimport os\nfrom pathlib import Path\n"
                   "def test_x():\n    from conftest import REPO\n")
    assert [hit.split(": ")[1] for hit in forbidden_imports(bad, tmp_path)] == [
        "conftest", "support", "scans", "conftest", ".support", "conftest"]


def test_helper_modules_are_gone_from_the_test_tree():
    assert not [p for p in TESTS.rglob("*.py") if p.stem in ("support", "scans")]
