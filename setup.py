"""The optional C extension; everything else is declared in pyproject.toml.

``steplog._speedups`` is ``Tracker.log()``'s fast path, compiled (see its source). It is
optional: where it cannot be built (no C compiler, PyPy), the install goes on and
``log()`` is the pure-Python path, which gives the same results.
"""

import sys

from setuptools import Extension, setup

ext_modules = []
if sys.implementation.name == "cpython":
    ext_modules.append(Extension("steplog._speedups", ["src/steplog/_speedups.c"], optional=True))

setup(ext_modules=ext_modules)
