"""Messages raised or logged inside the flow name options and settings, never CLI flags: a run started from the
Prefect UI, a deployment or the Python API has no flags (the CLI documents which flag sets which option)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

SRC = Path(__file__).resolve().parents[2] / "src" / "docingest"
INSIDE_THE_FLOW = ["core", "flows", "tasks", "targets.py", "options.py", "datamodel.py", "folders.py"]
FLAG = re.compile(r"(?<![\w`])--[a-z][a-z-]+")  # `docingest convert-store --qdrant-path` (a command to run) is fine
LOG_METHODS = {"debug", "info", "warning", "error", "exception", "critical"}


def _messages(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and node.exc is not None:
            yield node.lineno, node.exc
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in LOG_METHODS):
            yield node.lineno, node


def _strings(node: ast.AST) -> str:
    return " ".join(n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str))


def test_no_cli_flag_in_a_message_raised_or_logged_inside_the_flow():
    files = [p for entry in INSIDE_THE_FLOW for p in ((SRC / entry).rglob("*.py") if (SRC / entry).is_dir()
                                                     else [SRC / entry])]
    assert len(files) > 30
    found = []
    for path in files:
        for line, node in _messages(ast.parse(path.read_text())):
            text = _strings(node)
            flags = [f for f in FLAG.findall(text) if f"docingest convert-store {f}" not in text]
            if flags:
                found.append(f"{path.relative_to(SRC)}:{line}: {flags}")
    assert not found, found
