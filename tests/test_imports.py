"""The package's import graph: no circle between modules, and arrows point down the layers.

Every ``import`` / ``from ... import`` in every module counts, also those inside functions (a deferred import is
still an arrow); only ``if TYPE_CHECKING:`` blocks are left out (they never run). The graph is read with ``ast``,
no module is imported.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "altclip_adapters"
ROOT = "altclip_adapters"

# The layers, bottom to top (prefixes of module names): a module may import only modules of its own layer or of
# the layers before it. Inside ``model/`` the modules are layers of their own, in data-flow order. See
# docs/ARCHITECTURE.md, "Layers and the arrows rule".
LAYERS = [
    "atomic",
    "extras",
    "model.config",
    "model.registry",
    "model.images",
    "model.files",
    "model.processor",
    "model._mapping",
    "model.hf",
    "model._text",
    "model._vision",
    "model.core",
    "model.tiny",
    "inference",
    "collection",
    "integrations",
    "serve",
    "cli",
]
RULES = [(lower, LAYERS[i + 1 :]) for i, lower in enumerate(LAYERS[:-1])]
STDLIB_ONLY = ["atomic", "extras"]  # below everything


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def resolve(name: str) -> str | None:
    """The package module ``name`` stands for (a module, or the longest package prefix), else None."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str) -> set[str]:
    """The package modules ``module`` imports, anywhere in its body (``if TYPE_CHECKING:`` blocks aside)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:  # `from . import registry` imports the submodule registry
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return {target for name in found if name.startswith(ROOT) and (target := resolve(name)) and target != module}


GRAPH = {module: imports_of(module) for module in MODULES}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def in_layer(module: str, prefix: str) -> bool:
    name = f"{ROOT}.{prefix}"
    return module == name or module.startswith(name + ".")


def test_the_graph_is_read():
    """The reader finds known arrows, deferred ones included, and leaves TYPE_CHECKING blocks out."""
    assert f"{ROOT}.model.config" in GRAPH[f"{ROOT}.model.core"]
    assert f"{ROOT}.model.hf" in GRAPH[f"{ROOT}.model.core"]  # inside a function
    assert f"{ROOT}.model.core" not in GRAPH[f"{ROOT}.model.hf"]  # only under TYPE_CHECKING there
    assert f"{ROOT}.model.registry" in GRAPH[f"{ROOT}.model.files"]  # `from altclip_adapters.model import registry`
    assert f"{ROOT}.integrations.sentence_transformers" in GRAPH[f"{ROOT}.cli.convert"]  # inside a function
    assert f"{ROOT}.cli._common" in GRAPH[f"{ROOT}.cli.convert"]
    assert len(GRAPH) == len(MODULES) > 40


def test_every_module_is_in_a_layer():
    folders = {m for m in MODULES if MODULES[m].name == "__init__.py"}  # a layer's folder holds layers of its own
    homeless = sorted(m for m in MODULES if m not in folders and not any(in_layer(m, layer) for layer in LAYERS))
    assert not homeless, f"modules in no layer of LAYERS: {homeless}"


@pytest.mark.parametrize("module", STDLIB_ONLY)
def test_the_lowest_modules_import_only_the_standard_library(module):
    assert GRAPH[f"{ROOT}.{module}"] == set()


def test_the_circle_finder_finds_circles():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle():
    found = circles(GRAPH)
    detail = [
        " <-> ".join(component)
        + ": "
        + "; ".join(f"{a} imports {b}" for a in component for b in sorted(GRAPH[a]) if b in component)
        for component in found
    ]
    assert not found, "import circles:\n" + "\n".join(detail)


@pytest.mark.parametrize("lower, higher", RULES, ids=[lower for lower, _ in RULES])
def test_arrows_point_down(lower, higher):
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if in_layer(module, lower)
        for target in targets
        if any(in_layer(target, prefix) for prefix in higher)
    )
    assert not wrong, "\n".join(wrong)


def test_no_library_module_imports_the_cli():
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if not in_layer(module, "cli")
        for target in targets
        if in_layer(target, "cli")
    )
    assert not wrong, "\n".join(wrong)


def test_importing_the_core_imports_no_checkpoint_code(tiny_dir):
    """Importing the core imports neither the key table nor the file code; ``AltCLIP.from_pretrained`` loads them
    when called (they sit below the core and are handed the class to build)."""
    code = (
        "import sys\n"
        "from altclip_adapters.model.core import AltCLIP\n"
        "print(sorted(m for m in sys.modules if m in ('altclip_adapters.model.hf', 'altclip_adapters.model.files')))\n"
        f"model = AltCLIP.from_pretrained({str(tiny_dir)!r})\n"
        "print(type(model).__name__, type(model.processor).__name__, 'altclip_adapters.model.hf' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["[]", "AltCLIP AltCLIPProcessor True"]
