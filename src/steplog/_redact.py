"""Redacting config values stored under keys that look like secrets."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["DEFAULT_SECRET_KEYS", "REDACTED", "compile_pattern", "redact", "redact_url"]

#: Key names (matched on the key written in snake_case, any case) whose values are
#: replaced before any backend sees them. The secret word must stand on its own and end
#: the key (``hf_token``, ``db_password``, ``openaiApiKey``): ``max_new_tokens``,
#: ``token_budget`` or ``password_min_length`` name numbers about secrets, not secrets.
#: A few suffixes that still name the secret itself are allowed (``token_value``).
DEFAULT_SECRET_KEYS = (
    r"(?:^|_)(?:password|passwd|pwd|passphrase|secret|token|api_?key|apikey|auth|"
    r"authorization|credentials?|private_?key|access_?key|secret_?key|session_?key|"
    r"cookie|bearer)(?:_(?:value|str|string|raw|b64|base64|json))?$"
)

# Credentials inside URLs ("postgres://user:pw@host/db"): the password part.
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/?#@\s]*:)[^@/?#\s]+(?=@)")
# ... and query parameters with secret names ("?token=...&api_key=...").
_QUERY_PARAM = re.compile(r"(?P<head>[?&](?P<name>[^=&#\s]+)=)(?P<value>[^&#\s]*)")

#: What a redacted value is replaced with.
REDACTED = "<redacted>"

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_SEPARATORS = re.compile(r"[^a-zA-Z0-9]+")


def compile_pattern(pattern: str | re.Pattern[str] | None) -> re.Pattern[str] | None:
    """Compile a user's pattern (case-insensitive), or return ``None`` to disable."""
    if pattern is None or isinstance(pattern, re.Pattern):
        return pattern
    if not isinstance(pattern, str):
        raise TypeError(
            "redact must be a regular expression string, a re.Pattern or None, "
            f"not {type(pattern).__name__}"
        )
    try:
        return re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise ValueError(f"redact is not a valid regular expression: {exc}") from None


def _normalise(key: str) -> str:
    # "openaiApiKey" -> "openai_api_key", "X-Auth-Token" -> "x_auth_token"
    return _SEPARATORS.sub("_", _CAMEL.sub("_", key)).strip("_").lower()


def redact(value: Any, pattern: re.Pattern[str] | None) -> Any:
    """Return ``value`` with every entry under a matching key replaced by ``REDACTED``,
    and the credentials of URLs in strings too (see :func:`redact_url`).

    Mappings are walked recursively (also inside lists and tuples); the input is never
    modified.
    """
    if pattern is None:
        return value
    return _walk(value, pattern, 0)


def _walk(value: Any, pattern: re.Pattern[str], depth: int) -> Any:
    if depth > 100:
        return value
    if isinstance(value, Mapping):
        return {
            k: REDACTED
            if isinstance(k, str) and pattern.search(_normalise(k))
            else _walk(v, pattern, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_walk(v, pattern, depth + 1) for v in value]
    if isinstance(value, str) and "://" in value:
        return redact_url(value, pattern)
    return value


def redact_url(text: str, pattern: re.Pattern[str] | None) -> str:
    """``text`` with the passwords of URLs in it, and query parameters whose names
    match ``pattern``, replaced by ``REDACTED`` (``postgres://u:<redacted>@h/db``)."""
    if pattern is None:
        return text
    text = _URL_PASSWORD.sub(lambda m: m["head"] + REDACTED, text)

    def param(match: re.Match[str]) -> str:
        if match["value"] and pattern.search(_normalise(match["name"])):
            return match["head"] + REDACTED
        return match[0]

    return _QUERY_PARAM.sub(param, text) if "?" in text else text
