"""Optional dependencies, imported when a feature first needs them."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from .errors import MissingExtraError

__all__ = ["installed", "require"]


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` naming ``steplog[extra]``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.partition(".")[0]
        raise MissingExtraError(
            f"{feature} needs {top}, which is not installed: pip install 'steplog[{extra}]'"
        ) from exc


def installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it (a hint's question)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent that is not a package; __spec__ unset
        return False
