"""The public surface: __all__ is honest and everything public is documented."""

from __future__ import annotations

import inspect
import pickle
import subprocess
import sys

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
    """repr(steplog.RetryPolicy) says steplog.RetryPolicy, not steplog._worker...."""
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
