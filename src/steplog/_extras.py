"""Optional dependencies, imported when a feature first needs them."""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingExtraError

__all__ = ["require"]


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` naming ``steplog[extra]``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.partition(".")[0]
        raise MissingExtraError(
            f"{feature} needs {top}, which is not installed: pip install 'steplog[{extra}]'"
        ) from exc
