"""Moved to :mod:`steplog.runfile.codec` (kept while the CLI moves; see issue #14)."""

from .runfile.codec import MAX_DEPTH, ValueEncoder, _find_null, decode

__all__ = ["MAX_DEPTH", "ValueEncoder", "_find_null", "decode"]
