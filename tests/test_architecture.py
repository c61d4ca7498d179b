"""Who may import whom: the layers, no import cycle, every module importable alone, light
top-level imports, a short top-level listing and short modules.

The import graph is read from the source (``ast``), every ``import`` statement counted wherever it
stands (function-local ones included). ``GRAPH`` leaves out ``if TYPE_CHECKING:`` blocks (they never
run); ``FULL_GRAPH`` counts them too: a type-only import is still a dependency a reader and a tool
see, so the layer order and the cycle check read that one.
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
    "facekd.core": set(),
    "facekd.core.tail": set(),
    "facekd.core.arrays": set(),
    "facekd.core.erasure": {"facekd.core.tail", "facekd.core.arrays"},
    "facekd.core.separation": set(),
    "facekd.core.verdict": {"facekd.core.metrics"},
    "facekd.core.background": {"facekd.core.verdict"},
    "facekd.methods.base": {"facekd.core.erasure"},
    "facekd.methods.esc": {"facekd.core.erasure", "facekd.methods.base"},
    "facekd.methods.esc_t": {"facekd.core.erasure", "facekd.methods.base"},
    "facekd.methods.prior": set(),
    "facekd.methods.scramble": {"facekd.core.erasure", "facekd.methods.base", "facekd.methods.prior",
                                "facekd.core.tail", "facekd.methods.scramble_defaults",
                                "facekd.methods.spare", "facekd.methods.discriminant"},
    "facekd.methods.discriminant": set(),
    "facekd.methods.spare": {"facekd.core.tail", "facekd.methods.scramble_defaults"},
    "facekd.methods.scramble_defaults": set(),
    "facekd.onnx.graph": {"facekd.errors", "facekd.fileio"},
    "facekd.onnx.providers": {"facekd.errors"},
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


def _imports(module: str, *, type_only_too: bool = False) -> set[str]:
    """Project modules ``module`` imports (``from pkg import sub`` counts as ``pkg.sub``); with
    ``type_only_too`` those under ``if TYPE_CHECKING:`` as well."""
    path = MODULES[module]
    is_pkg = path.name == "__init__.py"
    out = set()
    tree = ast.parse(path.read_text(), str(path))
    for node in (ast.walk(tree) if type_only_too else _runtime_nodes(tree)):
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
FULL_GRAPH = {m: _imports(m, type_only_too=True) for m in MODULES}

# The metrics package: its modules import each other only.
_METRICS = {m for m in MODULES if m.startswith("facekd.core.metrics")}
ALLOWED.update({m: _METRICS for m in _METRICS})
ALLOWED["facekd.core.verdict"] = _METRICS

# The layers, bottom first (docs/architecture.md, "The tree"): a module imports its own layer or
# the layers below it, never one above, type-only imports included. A module's layer is that of
# the longest name below that is it or a package holding it.
LAYERS = (
    ("math core", ("facekd.core",)),
    ("methods", ("facekd.methods",)),
    # the package's public API (erasure, metrics, verdict re-export the core), errors and i/o
    ("foundation", ("facekd", "facekd.errors", "facekd.erasure", "facekd.metrics",
                    "facekd.verdict", "facekd.fileio", "facekd.progress", "facekd.terminal",
                    "gallery_tools.errors", "gallery_tools.files")),
    ("onnx", ("facekd.onnx",)),
    ("encoders", ("facekd.encoders",)),
    ("faces", ("facekd.faces",)),
    ("gallery", ("gallery_tools",)),
    ("state", ("facekd.state",)),
    ("operations", ("facekd.operations",)),
    ("facade", ("facekd.workspace",)),
    # facekd.report: the public path of facekd.evaluation.report (docs/cli.md)
    ("shells", ("facekd.cli", "facekd.evaluation", "facekd.demo", "facekd.report")),
)


def test_every_module_has_its_layer_named():
    # "facekd" names the package's own __init__ only: a new top-level module or subpackage must
    # say which layer it is in, not fall into the foundation by default
    named = {n for _, names in LAYERS for n in names if n != "facekd"}
    unplaced = sorted(m for m in MODULES if m != "facekd"
                      and not any(m == n or m.startswith(n + ".") for n in named))
    assert not unplaced, unplaced


def _layer(module: str) -> int:
    best, rank = "", None
    for i, (_, names) in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > len(best):
                best, rank = name, i
    assert rank is not None, f"{module} is in no layer (add it to LAYERS)"
    return rank


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


def test_no_import_cycle_even_counting_type_only_imports():
    assert _cycle(FULL_GRAPH) is None, f"import cycle: {' -> '.join(_cycle(FULL_GRAPH))}"


def test_every_import_goes_to_the_same_layer_or_below():
    up = sorted(f"{m} ({LAYERS[_layer(m)][0]}) -> {n} ({LAYERS[_layer(n)][0]})"
                for m, deps in FULL_GRAPH.items() for n in deps if _layer(n) > _layer(m))
    assert not up, "imports going up a layer:\n" + "\n".join(up)


def test_the_layer_check_sees_a_module_above():
    assert _layer("facekd.operations.forget") > _layer("facekd.state.workspace")
    assert _layer("facekd.workspace") > _layer("facekd.operations.forget")
    assert _layer("facekd.cli.main") > _layer("facekd.workspace")
    assert _layer("facekd.errors") < _layer("facekd.onnx.graph") < _layer("facekd.encoders.base")
    assert _layer("gallery_tools.files") < _layer("gallery_tools.gallery")


def test_the_top_of_the_package_holds_at_most_a_dozen_modules():
    top = sorted(p.name for p in (ROOT / "facekd").glob("*.py"))
    assert len(top) <= 12, top


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_is_over_500_lines(module):
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= 500, f"{module}: {lines} lines"


def test_the_cycle_check_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("module", sorted(ALLOWED))
def test_pure_modules_import_only_what_they_are_allowed(module):
    assert GRAPH[module] <= ALLOWED[module], f"{module} imports {GRAPH[module] - ALLOWED[module]}"


def test_the_onnx_encoder_and_the_exporter_share_the_graph_surgery_not_each_other():
    assert "facekd.onnx.graph" in GRAPH["facekd.encoders.onnx_model"]
    assert "facekd.onnx.graph" in GRAPH["facekd.encoders.onnx_export"]
    assert "facekd.encoders.onnx_export" not in GRAPH["facekd.encoders.onnx_model"]
    assert "facekd.encoders.onnx_model" not in GRAPH["facekd.encoders.onnx_export"]


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


SHELLS = {m for m in MODULES if _layer(m) == len(LAYERS) - 1}
OPERATIONS = ["facekd.operations.measure", "facekd.operations.forget", "facekd.operations.refusals",
              "facekd.operations.verify", "facekd.operations.search",
              "facekd.operations.enrollment", "facekd.operations.export", "facekd.operations.check"]


@pytest.mark.parametrize("module", OPERATIONS + ["facekd.state.config", "facekd.faces.photos"])
def test_the_workspace_operations_sit_below_the_workspace(module):
    # Workspace's methods delegate to these modules, so they take the state object as an argument
    # and must not import facekd.workspace back (a cycle) or the shells above it, not even for
    # type hints.
    assert not FULL_GRAPH[module] & ({"facekd.workspace"} | SHELLS), FULL_GRAPH[module]


@pytest.mark.parametrize("module", ["facekd.operations.forget", "facekd.operations.verify",
                                    "facekd.operations.search", "facekd.operations.enrollment",
                                    "facekd.operations.export", "facekd.operations.check",
                                    "facekd.operations.measure"])
def test_the_workspace_facade_delegates_to_the_operations(module):
    assert module in GRAPH["facekd.workspace"]


@pytest.mark.parametrize("module", ["facekd.state", "facekd.state.workspace", "facekd.state.config",
                                    "facekd.state.receipt"])
def test_the_state_imports_no_operation(module):
    assert not {m for m in FULL_GRAPH[module] if m.startswith("facekd.operations")
                or m == "facekd.workspace" or m in SHELLS}, FULL_GRAPH[module]


def test_forget_from_the_cli_to_the_gallery_only_goes_down():
    # facekd forget: the command -> the Workspace facade -> the operation -> the state's commit
    # -> the gallery backend; each a layer below the one before.
    path = ["facekd.cli.erasure_commands", "facekd.workspace", "facekd.operations.forget",
            "facekd.state.workspace", "gallery_tools.backend"]
    ranks = [_layer(m) for m in path]
    assert ranks == sorted(ranks, reverse=True) and len(set(ranks)) == len(ranks), ranks
    assert "facekd.workspace" in GRAPH["facekd.cli.common"]
    assert "facekd.operations.forget" in GRAPH["facekd.workspace"]
    assert "facekd.state.workspace" in FULL_GRAPH["facekd.operations.forget"]
    assert "gallery_tools.backend" in GRAPH["facekd.state.workspace"]


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
    # each backend is two modules: opening it (the base class) and the backend class itself
    faiss_backend = {"gallery_tools.gallery", "gallery_tools.opening"}
    milvus_backend = {"gallery_tools.milvus_backend", "gallery_tools.milvus_collections"}
    faiss_uses = set().union(*(FULL_GRAPH[m] for m in faiss_backend))
    milvus_uses = set().union(*(FULL_GRAPH[m] for m in milvus_backend))
    assert not milvus_backend & faiss_uses
    assert not faiss_backend & milvus_uses
    for shared in ("gallery_tools.vectors", "gallery_tools.metadata", "gallery_tools.store"):
        assert shared in faiss_uses and shared in milvus_uses, shared
