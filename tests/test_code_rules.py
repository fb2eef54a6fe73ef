"""Code rules of the library (src/frameavg), checked on its source text and syntax trees.

* no writes to ``os.environ``: the library reads its environment, the caller owns it;
* PyG's private ``Batch`` bookkeeping and non-public PyG modules only in ``frameavg.data.pyg_compat``;
* no reads of another object's or module's private (``_name``) attributes, except ALLOWED_PRIVATE;
* no import cycles inside the package (module-level and function-level imports);
* layers: a module imports only from its own package, earlier packages or the top-level modules
  (``LAYERS``), except ALLOWED_LAYER_EXCEPTIONS;
* no function longer than MAX_FUNCTION_LINES, except those in LONG_FUNCTIONS (with a reason).

Each failure lists ``file:line`` of every violation.
"""

from __future__ import annotations

import ast
import importlib
import re
from functools import lru_cache
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "frameavg"
COMPAT = "frameavg/data/pyg_compat.py"

#: Third-party private APIs used outside the compat module: (file, expression) -> why unavoidable.
ALLOWED_PRIVATE = {
    ("frameavg/models/edge_filter.py", "torch._C._will_engine_execute_node"):
        "autograd's execution plan has no public query; falls back to needs_input_grad without it",
}
#: ``_name`` attributes that are public API by convention (namedtuple methods).
PUBLIC_UNDERSCORE = {"_asdict", "_replace", "_fields", "_field_defaults", "_make"}
#: PyG's ``Batch``/``Data`` bookkeeping attributes, wrapped by frameavg.data.pyg_compat.
PYG_INTERNALS = re.compile(r"(?<![A-Za-z0-9_])_(slice_dict|inc_dict|num_graphs|num_nodes)\b")


@lru_cache(maxsize=None)
def _sources() -> dict[str, tuple[str, ast.Module]]:
    """{``frameavg/...py``: (text, tree)} of every library module."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        out[path.relative_to(SRC).as_posix()] = (text, ast.parse(text, filename=str(path)))
    return out


def _fail(rule: str, violations: list[str]) -> None:
    __tracebackhide__ = True
    if violations:
        raise AssertionError(f"{rule}: {len(violations)} violation(s)\n  " + "\n  ".join(violations))


# --------------------------------------------------------------------------------------------
# os.environ writes


def _environ_names(tree: ast.Module) -> tuple[set[str], set[str]]:
    """(names bound to the ``os`` module, names bound to ``os.environ``) in ``tree``."""
    modules, environs = {"os"}, set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {a.asname or a.name for a in node.names if a.name == "os"}
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            environs |= {a.asname or a.name for a in node.names if a.name == "environ"}
    return modules, environs


def _is_environ(node: ast.AST, modules: set[str], environs: set[str]) -> bool:
    if isinstance(node, ast.Name):
        return node.id in environs
    return (isinstance(node, ast.Attribute) and node.attr == "environ" and isinstance(node.value, ast.Name)
            and node.value.id in modules)


def environ_writes(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, code) of every write to the process environment in ``tree``: item assignment or
    deletion, ``update``/``setdefault``/``pop``/``popitem``/``clear`` on ``os.environ``,
    ``os.putenv``/``os.unsetenv`` (also through ``from os import environ`` / ``import os as x``)."""
    modules, environs = _environ_names(tree)
    found = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, (ast.Assign, ast.Delete)):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        if any(isinstance(t, ast.Subscript) and _is_environ(t.value, modules, environs) for t in targets):
            found.append((node.lineno, ast.unparse(node)))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner, name = node.func.value, node.func.attr
            if (_is_environ(owner, modules, environs) and name in ("update", "setdefault", "pop", "popitem", "clear",
                                                                     "__setitem__", "__delitem__")) \
                    or (isinstance(owner, ast.Name) and owner.id in modules and name in ("putenv", "unsetenv")):
                found.append((node.lineno, ast.unparse(node)))
        if isinstance(node, ast.ImportFrom) and node.module == "os":
            found += [(node.lineno, f"from os import {a.name}") for a in node.names if a.name in ("putenv", "unsetenv")]
    return sorted(found)


def test_environ_write_detector_catches_every_form():
    tree = ast.parse("import os\nimport os as o\nfrom os import environ as env\n"
                     "os.environ['A'] = '1'\no.environ.update(B='2')\nos.environ.setdefault('C', '3')\n"
                     "os.putenv('D', '4')\ndel os.environ['E']\nenv['F'] = '5'\nos.environ.pop('G', None)\n"
                     "x = os.environ.get('H')\ny = os.environ['I']\n")
    assert [line for line, _ in environ_writes(tree)] == [4, 5, 6, 7, 8, 9, 10]


def test_library_never_writes_the_environment():
    """Settings travel as arguments; a library writing ``os.environ`` leaks state into the caller's
    process and into every later run in it (tests, notebooks, DDP workers)."""
    _fail("os.environ written by the library (pass the value explicitly instead)", [
        f"src/{path}:{line}: {code}"
        for path, (_, tree) in _sources().items() for line, code in environ_writes(tree)
    ])


# --------------------------------------------------------------------------------------------
# PyG internals


def test_pyg_internals_only_in_the_compat_module():
    """``_slice_dict`` & co. (text anywhere: attribute, getattr string) only in pyg_compat."""
    _fail(f"PyG Batch internals outside {COMPAT} (use its wrappers)", [
        f"src/{path}:{text.count(chr(10), 0, match.start()) + 1}: {match.group(0)}"
        for path, (text, _) in _sources().items() if path != COMPAT for match in PYG_INTERNALS.finditer(text)
    ])


def test_pyg_imports_outside_the_compat_module_are_public():
    """``from torch_geometric.X import name`` outside pyg_compat only for names in ``X.__all__``
    (``import torch_geometric.X`` only for packages that have an ``__all__``)."""
    violations = []
    for path, (_, tree) in _sources().items():
        if path == COMPAT:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "torch_geometric":
                public = getattr(importlib.import_module(node.module), "__all__", None)
                for alias in node.names:
                    if public is None or alias.name not in public:
                        violations.append(f"src/{path}:{node.lineno}: from {node.module} import {alias.name}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("torch_geometric.") and \
                            getattr(importlib.import_module(alias.name), "__all__", None) is None:
                        violations.append(f"src/{path}:{node.lineno}: import {alias.name}")
    _fail(f"non-public PyG imports outside {COMPAT} (re-export them there)", violations)


# --------------------------------------------------------------------------------------------
# private attributes


def _is_own(node: ast.AST) -> bool:
    """``self``, ``cls``, ``super()``, ``type(self)``: an object reading its own attributes."""
    if isinstance(node, ast.Name):
        return node.id in ("self", "cls")
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("super", "type")
            and all(isinstance(a, ast.Name) and a.id in ("self", "cls") for a in node.args))


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__") and name not in PUBLIC_UNDERSCORE


def private_reads(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, expression) of every access to another object's or module's ``_name``: ``x._name``
    (x not self/cls/super()), ``getattr/hasattr/setattr/delattr(x, "_name")``, and
    ``from frameavg... import _name``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr) and not _is_own(node.value):
            found.append((node.lineno, ast.unparse(node)))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "hasattr", "setattr", "delattr") and len(node.args) >= 2
              and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)
              and _private(node.args[1].value) and not _is_own(node.args[0])):
            found.append((node.lineno, f"{ast.unparse(node.args[0])}.{node.args[1].value}"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("frameavg"):
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names if _private(a.name)]
    return sorted(found)


def _allowed(path: str, expression: str) -> bool:
    return any(path == p and allowed.startswith(expression) for p, allowed in ALLOWED_PRIVATE)


def test_private_attribute_detector():
    tree = ast.parse("self._a\ncls._b\nsuper()._c\ntype(self)._d\nx.__dict__\nt._replace(a=1)\n"
                     "other._e\ntorch._C._f\ngetattr(b, '_g', None)\nfrom frameavg.x import _h\n")
    assert private_reads(tree) == [(7, "other._e"), (8, "torch._C"), (8, "torch._C._f"), (9, "b._g"),
                                   (10, "frameavg.x._h")]


def test_no_module_reads_private_attributes_of_others():
    """Private names stay inside their class or module: a newcomer may rename any ``_name``
    without grepping the package. Needed from outside? Make it public (documented) instead."""
    violations, used = [], set()
    for path, (_, tree) in _sources().items():
        for line, expression in private_reads(tree):
            if path == COMPAT:
                continue
            if _allowed(path, expression):
                used |= {key for key in ALLOWED_PRIVATE if key[0] == path and key[1].startswith(expression)}
                continue
            violations.append(f"src/{path}:{line}: {expression}")
    _fail("private attributes read from outside their owner", violations)
    stale = sorted(set(ALLOWED_PRIVATE) - used)
    assert not stale, f"ALLOWED_PRIVATE entries no longer used (remove them): {stale}"


# --------------------------------------------------------------------------------------------
# import cycles


def _module_name(path: str) -> str:
    parts = path.removesuffix(".py").split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def import_graph() -> dict[str, dict[str, int]]:
    """{module: {imported frameavg module: line}} over module-level and function-level imports
    (not ``if TYPE_CHECKING:`` blocks, which never run). ``from pkg import name`` points to the
    submodule ``pkg.name`` if there is one, else to the module a lazy package's ``_EXPORTS`` maps
    ``name`` to, else to ``pkg`` itself. The implicit import of parent packages is not an edge."""
    sources = _sources()
    modules = {_module_name(path): path for path in sources}

    def exports(module: str) -> dict[str, str]:
        if not modules.get(module, "").endswith("__init__.py"):
            return {}
        for node in sources[modules[module]][1].body:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict) and \
                    any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in node.targets):
                return {k.value: v.value for k, v in zip(node.value.keys, node.value.values)
                        if isinstance(k, ast.Constant) and isinstance(v, ast.Constant)}
        return {}

    graph = {}
    for module, path in modules.items():
        edges: dict[str, int] = {}

        def visit(node: ast.AST) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.If) and _type_checking(child):
                    for other in child.orelse:
                        visit_node(other)
                    continue
                visit_node(child)

        def visit_node(node: ast.AST) -> None:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in modules:
                        edges.setdefault(alias.name, node.lineno)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
                    for _ in range(node.level - 1):
                        package = package.rsplit(".", 1)[0]
                    base = f"{package}.{base}" if base else package
                if base in modules:
                    lazy = exports(base)
                    for alias in node.names:
                        target = f"{base}.{alias.name}"
                        target = target if target in modules else lazy.get(alias.name, base)
                        edges.setdefault(target, node.lineno)
            visit(node)

        visit(sources[path][1])
        edges.pop(module, None)
        graph[module] = edges
    return graph


def import_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One shortest cycle through every strongly connected component (Tarjan) of ``graph``."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def connect(v: str) -> None:  # recursive: import chains are short
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(set(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    cycles = []
    for component in components:
        start = min(component)
        paths, seen = {start: [start]}, {start}
        queue = [start]
        while queue:  # breadth first, back to start
            v = queue.pop(0)
            for w in sorted(graph[v]):
                if w == start:
                    cycles.append(paths[v] + [start])
                    queue = []
                    break
                if w in component and w not in seen:
                    seen.add(w)
                    paths[w] = paths[v] + [w]
                    queue.append(w)
    return cycles


def test_import_cycle_detector():
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3, "d": 4}, "d": {}, "e": {"d": 5}}
    assert import_cycles(graph) == [["a", "b", "c", "a"]]
    assert import_cycles({"a": {"b": 1}, "b": {}}) == []


def test_no_import_cycles_in_the_package():
    """A cycle makes import order matter (half-initialised modules) and layers impossible to read;
    function-level imports count: they only postpone the cycle."""
    graph = import_graph()
    assert "frameavg.frames.compute" in graph["frameavg.frames.averaging"]  # the graph sees real imports
    _fail("import cycles (each: module:line of the import -> ...)", [
        " -> ".join(f"{a}:{graph[a][b]}" for a, b in zip(cycle, cycle[1:])) + f" -> {cycle[-1]}"
        for cycle in import_cycles(graph)
    ])


# --------------------------------------------------------------------------------------------
# layers


#: Packages in import order: a module may import from its own package and the ones before it.
#: Rank 0 is the top-level modules (frameavg/*.py: errors, outputs, derivatives, precision, files,
#: lazy, plugins, metrics, __init__), which import only each other.
LAYERS = ("", "data", "frames", "models", "training", "evaluation", "simulation", "cli")
#: (file, imported module) -> why this import goes up the layers.
ALLOWED_LAYER_EXCEPTIONS: dict[tuple[str, str], str] = {}


def _layer(module: str) -> int:
    """Rank in ``LAYERS`` of a ``frameavg...`` module (a top-level module: 0)."""
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else 0


def frameavg_imports(path: str, tree: ast.Module) -> list[tuple[int, str]]:
    """(line, module) of every ``frameavg`` import in the module at ``path`` (``frameavg/...py``):
    ``import x`` and ``from x import y`` at any depth, ``if TYPE_CHECKING:`` blocks included,
    relative imports resolved, ``from frameavg import pkg`` as ``frameavg.pkg``, and the targets of
    a lazy package's ``_EXPORTS`` (imported on first use)."""
    module = _module_name(path)
    package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package
                for _ in range(node.level - 1):
                    anchor = anchor.rsplit(".", 1)[0]
                base = f"{anchor}.{base}" if base else anchor
            found += [(node.lineno, f"{base}.{a.name}" if base == "frameavg" else base) for a in node.names]
        elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict) and \
                any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in node.targets):
            found += [(v.lineno, v.value) for v in node.value.values
                      if isinstance(v, ast.Constant) and isinstance(v.value, str)]
    return sorted((line, name) for line, name in set(found) if name.split(".")[0] == "frameavg")


def layer_violations(sources: dict[str, tuple[str, ast.Module]]) -> list[tuple[str, int, str]]:
    """(file, line, imported module) of every import of a later layer than the importer's."""
    return [(path, line, name) for path, (_, tree) in sources.items()
            for line, name in frameavg_imports(path, tree)
            if _layer(name) > _layer(_module_name(path))]


def test_layer_detector_catches_a_planted_violation():
    text = ("from __future__ import annotations\n"
            "from frameavg.errors import DataError\n"
            "from frameavg.frames import compute\n"
            "def f():\n"
            "    from frameavg.simulation import relax\n"
            "    import frameavg.cli.main\n"
            "    from ..training import run\n"
            "    from . import readers\n")
    sources = {"frameavg/data/x.py": (text, ast.parse(text)),
               "frameavg/cli/y.py": ("from frameavg.data import x\n", ast.parse("from frameavg.data import x\n")),
               "frameavg/outputs.py": ("from frameavg import data\n", ast.parse("from frameavg import data\n"))}
    assert layer_violations(sources) == [
        ("frameavg/data/x.py", 3, "frameavg.frames"), ("frameavg/data/x.py", 5, "frameavg.simulation"),
        ("frameavg/data/x.py", 6, "frameavg.cli.main"), ("frameavg/data/x.py", 7, "frameavg.training"),
        ("frameavg/outputs.py", 1, "frameavg.data")]


def test_imports_follow_the_layers():
    """Data flows one way (docs/conventions.md): top-level modules -> data -> frames -> models ->
    training -> evaluation -> simulation -> cli; a module imports nothing from a later package,
    at module level or inside a function."""
    found = layer_violations(_sources())
    _fail("imports of a later layer (move the code down, or list it in ALLOWED_LAYER_EXCEPTIONS)", [
        f"src/{path}:{line}: imports {name}" for path, line, name in found
        if (path, name) not in ALLOWED_LAYER_EXCEPTIONS])
    stale = sorted(set(ALLOWED_LAYER_EXCEPTIONS) - {(path, name) for path, _, name in found})
    assert not stale, f"ALLOWED_LAYER_EXCEPTIONS entries no longer needed (remove them): {stale}"


# --------------------------------------------------------------------------------------------
# function length

#: Lines from ``def`` to the last line of the body (docstring and signature included).
MAX_FUNCTION_LINES = 80
#: ``file:function`` -> why it is longer (empty today).
LONG_FUNCTIONS: dict[str, str] = {}


def long_functions(sources: dict[str, tuple[str, ast.Module]]) -> list[str]:
    """``file:line function (n lines)`` of every function over MAX_FUNCTION_LINES not in LONG_FUNCTIONS."""
    found = []
    for path, (_, tree) in sources.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES and f"{path}:{node.name}" not in LONG_FUNCTIONS:
                    found.append(f"{path}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_long_function_detector():
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    text = f"def short():\n    return 1\n\n\ndef long():\n{body}\n"
    assert long_functions({"frameavg/x.py": (text, ast.parse(text))}) == [
        f"frameavg/x.py:5 long ({MAX_FUNCTION_LINES + 1} lines)"]


def test_no_function_is_longer_than_the_limit():
    _fail(f"functions over {MAX_FUNCTION_LINES} lines (split them, or list them in LONG_FUNCTIONS with a reason)",
          long_functions(_sources()))
