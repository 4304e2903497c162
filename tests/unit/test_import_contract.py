"""The framework-free core stays framework-free: ``docingest.core`` imports neither Prefect nor the layers built on
it (blocks, tasks, flows, service, cli, api), not even lazily inside a function, and nothing imports a cycle."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

SRC = Path(__file__).resolve().parents[2] / "src" / "docingest"
FORBIDDEN = ("prefect", "prefect_dask", "docingest.blocks", "docingest.tasks", "docingest.flows", "docingest.service",
             "docingest.cli", "docingest.api")


def imported_names(path: Path) -> list[tuple[int, str]]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append((node.lineno, node.module))
    return names


def test_core_imports_no_framework_module_anywhere_in_its_code():
    offending = [f"{path.relative_to(SRC)}:{line}: {name}" for path in sorted((SRC / "core").rglob("*.py"))
                 for line, name in imported_names(path)
                 if any(name == f or name.startswith(f + ".") for f in FORBIDDEN)]
    assert offending == []


def test_importing_every_core_module_loads_no_prefect():
    modules = sorted(".".join(p.relative_to(SRC.parent).with_suffix("").parts).removesuffix(".__init__")
                     for p in (SRC / "core").rglob("*.py"))
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "bad = sorted(m for m in sys.modules if m == 'prefect' or m.startswith('prefect.') or "
            "m.startswith(('docingest.blocks', 'docingest.tasks', 'docingest.flows', 'docingest.service')))\n"
            "print(bad)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_no_import_cycle_between_docingest_modules():
    """Counting every import, also the lazy ones inside functions (the package root's lazy re-exports aside)."""
    modules = {".".join(p.relative_to(SRC.parent).with_suffix("").parts).removesuffix(".__init__"): p
               for p in SRC.rglob("*.py")}
    graph = {m: set() for m in modules}
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:  # a module, or its submodules
                targets = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            else:
                continue
            graph[module] |= {t for t in targets if t in modules and t not in (module, "docingest")}
    def cycle_from(start: str) -> list[str] | None:
        stack, seen = [(start, [start])], set()
        while stack:
            node, trail = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return [*trail, start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*trail, nxt]))
        return None

    cycles = [c for m in sorted(graph) if (c := cycle_from(m))]
    assert cycles == [], " ; ".join(" -> ".join(c) for c in cycles[:5])
