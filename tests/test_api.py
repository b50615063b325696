"""The public surface: __all__ is honest and everything public is documented."""

from __future__ import annotations

import inspect
import subprocess
import sys

import steplog


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


def test_errors_derive_from_tracker_error():
    """Every steplog error is a TrackerError subclass."""
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
