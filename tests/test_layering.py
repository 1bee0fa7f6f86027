"""The package's layers: imports run one way, no import circle, no module or class too large.

Every module's imports are read from its source (top-level and inside
functions, relative and absolute, ``importlib.import_module("...")`` with a
literal name), so an import hidden in a function counts as much as one at the
top; only those under ``if TYPE_CHECKING:`` (which never run) do not. A module may import modules of its own layer or of lower ones, never of a
higher one, and no chain of imports may come back to where it started.
Importing ``a.b.c`` also runs the ``__init__`` of ``a.b`` (unless the importer
is inside it), so those count too: an adapter that imports its own package
while the package imports the adapter is a circle.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = "sklearn_tl"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

# Lowest first. A module belongs to the layer of the longest prefix that names it.
LAYERS = [
    ["sklearn_tl.exceptions", "sklearn_tl._version", "sklearn_tl._old_paths", "sklearn_tl._defaults",
     "sklearn_tl.onnx_images"],
    ["sklearn_tl.data"],
    ["sklearn_tl.cache"],
    ["sklearn_tl.models"],
    ["sklearn_tl.runtime"],
    ["sklearn_tl.finetune"],
    ["sklearn_tl.estimators"],
    ["sklearn_tl.deploy"],
    ["sklearn_tl.cli"],
    ["sklearn_tl", "sklearn_tl.__main__"],
]
MAX_MODULE_LINES = 600
MAX_CLASS_LINES = 500


def _modules() -> dict:
    """Dotted name -> (path, is package) for every module of the package."""
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = [PACKAGE, *path.relative_to(ROOT).with_suffix("").parts]
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        found[".".join(parts)] = (path, is_package)
    return found


MODULES = _modules()


def layer_of(module: str) -> int:
    best, level = -1, None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, level = len(prefix), index
    assert level is not None, f"{module} is in no layer: add it to LAYERS"
    return level


def imports_of(module: str) -> dict:
    """Package modules ``module`` imports -> the first line that does it."""
    path, is_package = MODULES[module]
    return imports_in(path.read_text(), module, is_package)


def imports_in(text: str, module: str, is_package: bool) -> dict:
    """Package modules the source ``text`` of ``module`` imports -> the first line that does it."""
    package = module if is_package else module.rpartition(".")[0]
    found = {}

    def add(name, line):
        if name == PACKAGE or name.startswith(PACKAGE + "."):
            found.setdefault(name, line)

    tree = ast.parse(text)
    # Imports under ``if TYPE_CHECKING:`` never run: annotations only.
    skipped = {
        id(sub)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for stmt in node.body
        for sub in ast.walk(stmt)
    }
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                add(submodule if submodule in MODULES else source, node.lineno)
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name == "import_module" and node.args and isinstance(node.args[0], ast.Constant):
                add(str(node.args[0].value), node.lineno)
    return found


def edges_of(module: str) -> dict:
    """What importing ``module`` runs: its imports, and the ``__init__`` of each one's packages."""
    edges = {}
    for target, line in imports_of(module).items():
        while target not in MODULES and "." in target:
            target = target.rpartition(".")[0]  # ``import a.b.name`` of a non-module name
        parts = target.split(".")
        for cut in range(2, len(parts) + 1):
            parent = ".".join(parts[:cut])
            inside = module == parent or module.startswith(parent + ".")
            if parent in MODULES and (cut == len(parts) or not inside) and parent != module:
                edges.setdefault(parent, line)
    return edges


GRAPH = {module: edges_of(module) for module in MODULES}


def test_every_module_is_in_a_layer():
    for module in MODULES:
        layer_of(module)


def test_no_import_runs_upwards():
    upward = [
        f"{module}:{line} imports {target} (layer {layer_of(target)} > {layer_of(module)})"
        for module, edges in GRAPH.items()
        for target, line in edges.items()
        if layer_of(target) > layer_of(module)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_circle():
    # Tarjan's strongly connected components: each of more than one module is a circle.
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(module):
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in GRAPH[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    details = [
        " <-> ".join(circle) + ": " + "; ".join(
            f"{a}:{GRAPH[a][b]} -> {b}" for a in circle for b in GRAPH[a] if b in circle
        )
        for circle in circles
    ]
    assert not circles, "\n".join(details)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_and_class_sizes(module):
    path, _ = MODULES[module]
    text = path.read_text()
    n_lines = len(text.splitlines())
    assert n_lines <= MAX_MODULE_LINES, f"{module} has {n_lines} lines (at most {MAX_MODULE_LINES})"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ClassDef):
            size = node.end_lineno - node.lineno + 1
            assert size <= MAX_CLASS_LINES, f"{module}.{node.name} has {size} lines (at most {MAX_CLASS_LINES})"


def test_imports_inside_functions_and_by_name_are_read():
    text = (
        "import importlib\n"
        "def f():\n"
        "    from ..models import spec\n"
        "    from .keys import _blake\n"
        "    return importlib.import_module('sklearn_tl.runtime.device')\n"
    )
    found = imports_in(text, "sklearn_tl.data.inputs", is_package=False)
    assert found == {"sklearn_tl.models.spec": 3, "sklearn_tl.data.keys": 4, "sklearn_tl.runtime.device": 5}


def test_the_checks_see_a_circle_and_an_upward_import():
    saved = dict(GRAPH)
    try:
        GRAPH.clear()
        GRAPH.update({"sklearn_tl.data.config": {"sklearn_tl.models.spec": 3}, "sklearn_tl.models.spec": {}})
        with pytest.raises(AssertionError, match="imports sklearn_tl.models.spec"):
            test_no_import_runs_upwards()
        GRAPH["sklearn_tl.models.spec"] = {"sklearn_tl.data.config": 9}
        with pytest.raises(AssertionError, match="<->"):
            test_no_import_circle()
    finally:
        GRAPH.clear()
        GRAPH.update(saved)
