"""docs/architecture.md matches the package: every module its diagram names exists, and every module of the package
is named on the page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "docingest"
DOC = (ROOT / "docs" / "architecture.md").read_text()


def test_the_diagram_names_only_modules_that_exist():
    start = DOC.index("```mermaid")
    diagram = DOC[start:DOC.index("```", start + 3)]
    named = re.findall(r"(?<![\w/<])((?:[a-z_]+/)*[a-z_]+\.py|(?:[a-z_]+/)+)(?=[\"<,\s])", diagram)
    named = [n for n in named if n != "br/"]
    assert len(named) > 15, named
    missing = [n for n in named if not (SRC / n).exists() and not any((SRC / d / n).exists() for d in ("core",))]
    assert not missing, missing


def test_every_module_of_the_package_is_named_on_the_page():
    modules = [p.relative_to(SRC) for p in SRC.rglob("*.py") if p.name != "__init__.py"]
    unnamed = [str(m) for m in modules if not re.search(rf"\b{m.stem}\b", DOC)]
    assert not unnamed, unnamed
