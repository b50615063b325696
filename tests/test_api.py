"""The public surface: __all__ is honest and everything public is documented."""

from __future__ import annotations

import ast
import inspect
import pickle
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import steplog
import steplog.errors


def test_all_names_exist_and_every_public_name_is_listed():
    """Every name in __all__ exists, and every public attribute is in __all__."""
    for name in steplog.__all__:
        assert hasattr(steplog, name), name
    # ``annotations`` is the ``from __future__`` feature flag, not part of the API.
    public = {n for n in vars(steplog) if not n.startswith("_")} - {"annotations"}
    modules = {n for n in public if inspect.ismodule(getattr(steplog, n))}
    assert public - modules == set(steplog.__all__) - {"__version__"}


def test_public_classes_and_functions_have_docstrings():
    """Every exported class and function carries a docstring."""
    for name in steplog.__all__:
        obj = getattr(steplog, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert inspect.getdoc(obj), name


def test_lifecycle_errors_derive_from_tracker_error():
    """Lifecycle and backend errors are TrackerError subclasses."""
    for name in ("InactiveRunError", "BackendOpenError", "FlushTimeoutError", "WorkerError"):
        assert issubclass(getattr(steplog, name), steplog.TrackerError)


def test_import_pulls_in_no_optional_heavy_packages():
    """Importing steplog imports neither numpy nor tqdm (users pay only for what they use)."""
    code = (
        "import sys, steplog; "
        "print(sorted(m for m in ('numpy', 'tqdm', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_public_classes_and_functions_report_the_public_module():
    """repr(steplog.RetryPolicy) says steplog.RetryPolicy, not steplog._fanout...."""
    for name in steplog.__all__:
        value = getattr(steplog, name)
        if isinstance(value, type) or inspect.isfunction(value):
            assert value.__module__ == "steplog", name
    assert repr(steplog.RetryPolicy()).startswith("RetryPolicy(")
    assert str(steplog.RetryPolicy) == "<class 'steplog.RetryPolicy'>"
    # ... and still pickle (what multiprocessing and caches need).
    assert pickle.loads(pickle.dumps(steplog.Event(1, 2.0, {"a": 1}))) == (1, 2.0, {"a": 1})
    assert pickle.loads(pickle.dumps(steplog.RunStats(logged=3))).logged == 3


def test_every_error_is_a_steplog_error_and_exported():
    errors = [
        value
        for value in vars(steplog.errors).values()
        if isinstance(value, type)
        and issubclass(value, Exception)
        and not issubclass(value, Warning)
    ]
    assert len(errors) >= 12
    for error in errors:
        assert issubclass(error, steplog.SteplogError), error
        assert getattr(steplog, error.__name__) is error, error
    # The standard bases keep working for callers that catch those.
    assert issubclass(steplog.RunFileError, ValueError)
    assert issubclass(steplog.RunNotFoundError, LookupError)
    assert issubclass(steplog.FlushTimeoutError, TimeoutError)
    assert issubclass(steplog.MissingExtraError, ImportError)


def _type_checking_only(node: ast.AST) -> bool:
    """Whether ``node`` is an ``if TYPE_CHECKING:`` block (imports for annotations only,
    never run: they cannot make a cycle at import time, so the graph leaves them out)."""
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports_in(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement in ``tree``: at module level and inside functions, classes
    and other blocks alike (a lazy import is an edge of the graph as well), except
    those under ``if TYPE_CHECKING:``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif not _type_checking_only(node):
            yield from _imports_in(node)


def _module_imports() -> dict[str, set[str]]:
    """steplog's modules and the steplog modules each imports, anywhere in it."""
    root = Path(steplog.__file__).parent
    graph: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        package = parts[:-1]  # what relative imports start from (a package: itself)
        name = ".".join(parts if parts[-1] != "__init__" else parts[:-1])
        imports: set[str] = set()
        for node in _imports_in(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imports.update(a.name for a in node.names if a.name.startswith("steplog"))
                continue
            if node.level:  # relative: resolved against the module's package
                base = package[: len(package) - node.level + 1]
                target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            elif (node.module or "").startswith("steplog"):
                target = node.module or ""
            else:
                continue
            imports.add(target)
            for alias in node.names:  # "from . import x" may name a module
                imports.add(f"{target}.{alias.name}")
        graph[name] = imports
    return {m: {i for i in deps if i in graph and i != m} for m, deps in graph.items()}


def test_the_import_graph_has_no_cycles_and_backends_do_not_import_the_cli():
    """Imports form no cycle, counting those inside functions (``if TYPE_CHECKING:``
    blocks and package ``__init__`` re-exports aside), and no backend imports a CLI
    module."""
    graph = _module_imports()
    packages = {m for m in graph if any(o.startswith(m + ".") for o in graph)}
    edges = {m: {d for d in deps if d not in packages} for m, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in edges[module]:
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path, module, dep]))
            if dep not in state:
                visit(dep, [*path, module])
        state[module] = 2

    for module in edges:
        if module not in state and module not in packages:
            visit(module, [])
    for module, deps in graph.items():
        if module.startswith("steplog.backends"):
            assert not {d for d in deps if d.startswith("steplog.cli")}, module
