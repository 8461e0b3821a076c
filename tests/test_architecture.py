"""The import graph of the package: the layers of docs/ARCHITECTURE.md (no import goes up one), no circles, the
leaves import no stage, no stage imports `recipe` back, and the command line checks its inputs before torch and TVM
load.

Every `import` counts, including those inside functions (a lazy import is still a dependency).
"""

import ast
import itertools
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "harness"
# The modules that may read recipe files: the command line and the commands that load shipped recipes.
RECIPE_READERS = {"harness.commands", "harness.tune", "harness.sweep"}
MAX_LINES = 330
ARCHITECTURE = PACKAGE.parent / "docs" / "ARCHITECTURE.md"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    """module → the harness modules it imports (a package import names the package's __init__)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("harness"):
                for alias in node.names:  # `from harness.compile import tuning` imports the submodule
                    sub = f"{node.module}.{alias.name}"
                    deps.add(sub if sub in modules else node.module)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("harness")}
        graph[name] = {d for d in deps if d != name and d in modules}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_circle() -> None:
    assert _cycle(_graph()) is None, " -> ".join(_cycle(_graph()) or [])


def test_the_circle_detector_finds_one() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def _layers() -> dict[str, int]:
    """Module or package → its row in the layer table of docs/ARCHITECTURE.md (0: the leaves)."""
    text = ARCHITECTURE.read_text()
    rows = itertools.takewhile(lambda line: line.startswith("|"), text[text.index("| layer |"):].splitlines()[2:])
    layers = {}
    for i, row in enumerate(rows):
        for name in re.findall(r"`([^`]+)`", row.split("|")[2]):
            parts = ["harness", *name.removesuffix("/").removesuffix(".py").split("/")]
            layers[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = i
    return layers


def _layer(module: str, layers: dict[str, int]) -> int | None:
    """The layer of `module`, or of the package that holds it (None: in no row)."""
    parts = module.split(".")
    return next((layers[p] for p in (".".join(parts[:n]) for n in range(len(parts), 0, -1)) if p in layers), None)


def test_every_module_is_in_the_layer_table_and_imports_no_layer_above_its_own() -> None:
    layers, graph = _layers(), _graph()
    assert [m for m in sorted(graph) if _layer(m, layers) is None] == []
    assert [f"{m} -> {d}" for m, deps in sorted(graph.items()) for d in sorted(deps)
            if _layer(d, layers) > _layer(m, layers)] == []


def test_a_module_is_in_the_layer_of_its_package() -> None:
    layers = {"harness.a": 0, "harness.b": 1}
    assert _layer("harness.b.c", layers) == 1 and _layer("harness.x", layers) is None


LEAVES = {m for m in _graph() if _layer(m, _layers()) == 0}


@pytest.mark.parametrize("leaf", sorted(LEAVES))
def test_specs_and_helpers_import_no_stage(leaf: str) -> None:
    assert _graph()[leaf] <= LEAVES


def test_only_the_front_end_imports_recipe() -> None:
    importers = {m for m, deps in _graph().items() if "harness.recipe" in deps}
    assert importers <= RECIPE_READERS, importers - RECIPE_READERS


def test_no_module_is_oversized() -> None:
    sizes = {_module_name(p): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert {m: n for m, n in sizes.items() if n > MAX_LINES} == {}


def test_the_command_line_and_saved_sets_load_without_torch_or_tvm() -> None:
    """What checks a command's inputs (and reads saved artifact sets and baselines) imports no heavy stage at
    module level, so that a bad input fails in about a second, not after the ~10 s torch and TVM take to load."""
    light = ("harness.cli", "harness.commands", "harness.recipe", "harness.device", "harness.artifacts",
             "harness.check")
    heavy = ("torch", "tvm", "onnx", "onnxruntime")
    code = f"import sys, {', '.join(light)}; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr
