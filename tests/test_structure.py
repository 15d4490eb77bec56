"""The package's shape: one package per family, imports go one way (no cycles, lower layers never load higher ones,
the library never loads the CLI), modules stay small, and the top level keeps only what every layer shares."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "segdemo"
MAX_LINES = 400
MAX_TOP_LEVEL = 15  # modules directly in segdemo/, __init__ and __main__ included
LEAVES = ("segdemo.__main__", "segdemo.cli", "segdemo.commands", "segdemo.bench")  # imported by the command line only
# The layers from the bottom (ARCHITECTURE.md): a module may import its own layer and those below, never one above.
# Top-level modules not named here (cli, doctor, __main__) sit with the command line.
LAYERS = (
    ("segdemo.errors", "segdemo.optional", "segdemo.artifacts", "segdemo.engine_cache", "segdemo.gpu"),
    ("segdemo.model", "segdemo.image", "segdemo.profiling", "segdemo.graph"),
    ("segdemo.backends", "segdemo.triton"),
    ("segdemo.batcher", "segdemo.segmentation", "segdemo.pipeline"),
    ("segdemo.media",),
    ("segdemo.web",),
    ("segdemo.serving",),
)


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """segdemo modules `name` imports anywhere in its file (module level or inside functions)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:  # `from pkg import module` imports the module, else the package
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {m for m in found if m in modules and m != name}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_no_import_cycles(graph):
    """Tarjan's strongly connected components: every one must be a single module."""
    index, low, on_stack, stack, cycles, counter = {}, {}, set(), [], [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    assert not cycles, f"modules that import each other: {cycles}"


def test_the_library_never_imports_the_command_line(graph):
    for name, imported in graph.items():
        if name.startswith(LEAVES):
            continue
        leaks = sorted(m for m in imported if m.startswith(LEAVES))
        assert not leaks, f"{name} imports {leaks}"


def _layer(name: str) -> int | None:
    return next((k for k, layer in enumerate(LAYERS) for p in layer if name == p or name.startswith(p + ".")), None)


def test_lower_layers_never_import_higher_ones(graph):
    for name, imported in graph.items():
        own = _layer(name)
        if own is None:
            continue
        above = sorted(m for m in imported if (_layer(m) or 0) > own)
        assert not above, f"{name} (layer {own}) imports {above} from a layer above"


def test_the_top_level_keeps_only_what_every_layer_shares():
    top = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL, f"{len(top)} modules directly in segdemo/ (at most {MAX_TOP_LEVEL}): {top}"


def test_every_package_says_what_its_family_is():
    for init in sorted(PACKAGE.rglob("__init__.py")):
        docstring = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert len(docstring.split()) >= 8, f"{init.relative_to(PACKAGE.parent)}: no docstring saying what it holds"


def test_importing_a_backend_does_not_load_the_cli():
    code = ("import sys, segdemo.backends.tensorrt.runner, segdemo.pipeline, segdemo.web.demo; "
            f"print(sorted(m for m in sys.modules if m.startswith({LEAVES!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent).stdout.strip()
    assert out == "[]"


def test_long_modules_say_why():
    for name, path in _modules().items():
        lines = len(path.read_text().splitlines())
        if lines > MAX_LINES:
            docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
            assert "Longer than" in docstring, f"{name}: {lines} lines and no reason at its top"


def test_commands_are_listed_in_a_fixed_order():
    from segdemo.cli import parser
    from segdemo.commands import ORDER

    choices = parser()._subparsers._group_actions[0].choices  # argparse keeps insertion order
    assert list(choices) == list(ORDER)


def test_the_tensorrt_backends_import_no_torch():
    """TensorRT runs without PyTorch (requirements-tensorrt.txt): its modules, the session and the command line load
    neither torch nor transformers as they import (their buffers come from backends/tensorrt/cuda)."""
    code = ("import importlib, pkgutil, sys, segdemo.backends.tensorrt as trt, segdemo.pipeline, segdemo.cli; "
            "names = [m.name for m in pkgutil.iter_modules(trt.__path__, trt.__name__ + '.')]; "
            "[importlib.import_module(name) for name in names]; "
            "print(len(names), sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent).stdout.split()
    assert int(out[0]) >= 10 and "".join(out[1:]) == "[]", out
