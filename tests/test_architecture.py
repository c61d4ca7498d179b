"""Who may import whom: no import cycle, every module importable alone, light top-level imports.

The import graph is read from the source (``ast``), every ``import`` statement counted wherever it
stands (function-local ones included; ``if TYPE_CHECKING:`` blocks excluded, they never run).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("facekd", "gallery_tools")
HEAVY = ("torch", "onnx", "onnxruntime", "faiss", "sklearn", "cv2", "matplotlib")
# Pure modules and what of the project each may import (docs/architecture.md, "Who imports whom").
ALLOWED = {
    "facekd.tail": set(),
    "facekd.erasure": {"facekd.tail"},
    "facekd.metrics": set(),
    "facekd.verdict": {"facekd.metrics"},
    "facekd.methods.base": {"facekd.erasure"},
    "facekd.methods.esc": {"facekd.erasure", "facekd.methods.base"},
    "facekd.methods.esc_t": {"facekd.erasure", "facekd.methods.base"},
    "facekd.methods.prior": set(),
    "facekd.methods.scramble": {"facekd.erasure", "facekd.methods.base", "facekd.methods.prior",
                                "facekd.tail"},
    "facekd.onnx_graph": {"facekd.errors", "facekd.fileio"},
    "facekd.onnx_providers": {"facekd.errors"},
}


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return mods


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The project module ``name`` loads (its longest prefix that is one), or ``None``."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _runtime_nodes(tree: ast.AST):
    """Every node except those under ``if TYPE_CHECKING:``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (n for child in node.orelse for n in [child, *_runtime_nodes(child)])
            continue
        yield node
        yield from _runtime_nodes(node)


def _imports(module: str) -> set[str]:
    """Project modules ``module`` imports (``from pkg import sub`` counts as ``pkg.sub``)."""
    path = MODULES[module]
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {_resolve(a.name) for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package this module is in
                anchor = module.split(".")[: len(module.split(".")) - node.level + is_pkg]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.add(sub if sub in MODULES else _resolve(base))
    out.discard(None)
    out.discard(module)
    return out


GRAPH = {m: _imports(m) for m in MODULES}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path ``[a, b, ..., a]``, or ``None`` (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        state[m] = 2
        path.pop()
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def _python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def _heavy_after(code: str) -> list[str]:
    r = _python(f"{code}\nimport sys\nprint('loaded:', *sorted(m for m in {HEAVY!r} "
                "if m in sys.modules))")
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()[-1].split()[1:]


def test_the_source_tree_has_no_import_cycle():
    assert len(GRAPH) > 30 and "facekd.methods.scramble" in GRAPH
    assert _cycle(GRAPH) is None, f"import cycle: {' -> '.join(_cycle(GRAPH))}"


def test_the_cycle_check_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("module", sorted(ALLOWED))
def test_pure_modules_import_only_what_they_are_allowed(module):
    assert GRAPH[module] <= ALLOWED[module], f"{module} imports {GRAPH[module] - ALLOWED[module]}"


def test_the_onnx_encoder_and_the_exporter_share_the_graph_surgery_not_each_other():
    assert "facekd.onnx_graph" in GRAPH["facekd.encoders.onnx_model"]
    assert "facekd.onnx_graph" in GRAPH["facekd.onnx_export"]
    assert "facekd.onnx_export" not in GRAPH["facekd.encoders.onnx_model"]
    assert "facekd.encoders.onnx_model" not in GRAPH["facekd.onnx_export"]


def test_every_module_imports_on_its_own_in_a_fresh_interpreter():
    # One interpreter per module: an import that only works after some other module was loaded
    # (a hidden cycle or order dependence) fails here.
    failed = {}
    for module in sorted(MODULES):
        if module.endswith("__main__"):
            continue  # running it is its import; it is exercised by the CLI tests
        r = _python(f"import {module}")
        if r.returncode != 0:
            failed[module] = (r.stderr.strip().splitlines() or ["?"])[-1]
    assert not failed, failed


@pytest.mark.parametrize("module", ["facekd.config", "facekd.photos", "facekd.measure",
                                    "facekd.forget", "facekd.verify", "facekd.search",
                                    "facekd.enrollment", "facekd.export", "facekd.check"])
def test_the_workspace_operations_sit_below_the_workspace(module):
    # Workspace's methods delegate to these modules, so they take an open workspace as an argument
    # and must not import facekd.workspace back (a cycle) or the shells above it.
    assert not GRAPH[module] & {"facekd.workspace", "facekd.cli", "facekd.demo", "facekd.bench",
                                "facekd.report"}, GRAPH[module]
    assert module in GRAPH["facekd.workspace"]


def test_import_facekd_loads_no_heavy_library():
    assert _heavy_after("import facekd, facekd.methods, facekd.cli") == []


def test_facekd_help_loads_no_heavy_library():
    code = ("import sys\nsys.argv = ['facekd', '--help']\nfrom facekd.cli import cli\n"
            "try:\n    cli()\nexcept SystemExit:\n    pass")
    assert _heavy_after(code) == []


def test_import_gallery_tools_loads_no_heavy_library():
    assert _heavy_after("import facekd, gallery_tools") == []


def test_import_workspace_loads_no_heavy_library():
    # every CLI command imports it: `facekd identities` on 100k people must not pay for OpenCV
    assert _heavy_after("import facekd.workspace, facekd.faces") == []


# The FAISS gallery's parts (docs/architecture.md, "gallery_tools"): each imports only these.
GALLERY_PARTS = {
    "gallery_tools.vectors": {"gallery_tools.errors"},
    "gallery_tools.store": {"gallery_tools.errors"},
    "gallery_tools.metadata": {"gallery_tools.errors", "gallery_tools.vectors"},
    # facekd.progress: a leaf (tqdm, or a plain line in logs) for the progress of big saves
    "gallery_tools.files": {"gallery_tools.errors", "facekd.progress"},
    "gallery_tools.index": {"gallery_tools.errors", "gallery_tools.files"},
    "gallery_tools.generations": {"gallery_tools.errors", "gallery_tools.files",
                                  "gallery_tools.index"},
    "gallery_tools.check": {"gallery_tools.errors", "gallery_tools.files", "gallery_tools.index",
                            "gallery_tools.vectors"},
}


@pytest.mark.parametrize("module", sorted(GALLERY_PARTS))
def test_gallery_parts_import_only_the_parts_below_them(module):
    assert GRAPH[module] <= GALLERY_PARTS[module], f"{module} imports {GRAPH[module] - GALLERY_PARTS[module]}"


def test_the_two_gallery_backends_share_neutral_modules_not_each_other():
    faiss_backend, milvus_backend = "gallery_tools.gallery", "gallery_tools.milvus_backend"
    assert milvus_backend not in GRAPH[faiss_backend]
    assert faiss_backend not in GRAPH[milvus_backend]
    for shared in ("gallery_tools.vectors", "gallery_tools.metadata", "gallery_tools.store"):
        assert shared in GRAPH[faiss_backend] and shared in GRAPH[milvus_backend], shared
