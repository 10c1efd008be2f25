"""The layout's contract, checked on the source: no import cycles, no cross-module underscore imports,
no Slicer import outside ``CovidCTLib/mrml``, and the analysis does not import the training code."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT

LIB = REPO_ROOT / "CovidCTLib"


def _modules() -> dict[str, Path]:
    out = {}
    for path in LIB.rglob("*.py"):
        parts = path.relative_to(REPO_ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(path: Path) -> list[tuple[str, str]]:
    """(module, imported name) for every ``from CovidCTLib... import name`` / ``import CovidCTLib...``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("CovidCTLib"):
            found += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, "") for alias in node.names if alias.name.startswith("CovidCTLib")]
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for module, imported in _imports(path):
            target = f"{module}.{imported}" if f"{module}.{imported}" in modules else module
            if target not in modules:
                continue
            parts = target.split(".")
            # importing a submodule runs its parent packages' __init__ too
            for i in range(2, len(parts) + 1):
                parent = ".".join(parts[:i])
                if parent in modules and parent != name and not name.startswith(parent + "."):
                    graph[name].add(parent)
    return graph


def test_no_import_cycles() -> None:
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif not state.get(nxt):
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if not state.get(node):
            visit(node)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_module_imports_another_modules_private_names() -> None:
    offenders = [
        f"{path.relative_to(REPO_ROOT)} imports {module}.{name}"
        for path in LIB.rglob("*.py")
        for module, name in _imports(path)
        if name.startswith("_") and not name.startswith("__")
    ]
    assert not offenders, offenders


def test_slicer_is_imported_only_by_the_mrml_adapter() -> None:
    offenders = []
    for path in LIB.rglob("*.py"):
        if "mrml" in path.relative_to(LIB).parts[:1]:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [
                f"{path.relative_to(REPO_ROOT)}: {n}"
                for n in names
                if n.split(".")[0] in ("slicer", "qt", "ctk", "vtkMRMLCore", "mrml")
            ]
    assert not offenders, offenders


def test_analysis_does_not_import_training_or_evaluation_code() -> None:
    code = (
        "import sys\n"
        "from CovidCTLib.phantom import make_phantom\n"
        "from CovidCTLib.pipeline import analyze\n"
        "analyze(make_phantom(shape=(40, 80, 80), spacing=(3.0, 2.0, 2.0)).ct, method='auto', device='cpu')\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('CovidCTLib.models.training',"
        " 'CovidCTLib.models.data', 'CovidCTLib.models.evaluation')))\n"
        "print('IMPORTED', bad)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "IMPORTED []" in done.stdout, done.stdout
