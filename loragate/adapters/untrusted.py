"""Bounded reads and parses of the files an adapter brings (manifests, configs, headers).

Whoever can write into a personas directory, or name a path to the API, writes these files, so
they are hostile until parsed: each read is capped in size, and every way a parse can fail,
including the RecursionError of json and tomllib on values nested thousands deep, is one
UntrustedFileError that the caller turns into that one bundle's refusal.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

# peft's adapter_config.json is about 1 KB and a manifest with a long system prompt a few KB:
# a cap far above both still keeps a hostile file from being read into memory whole.
MAX_CONFIG_BYTES = 1024 * 1024
# Neither format nests beyond three levels. Deeper values are refused before any code that
# recurses over them (pydantic, str() in an error message) can hit the recursion limit.
MAX_NESTING = 32
_SHOWN_CHARS = 200


class UntrustedFileError(ValueError):
    """The file cannot be used; the message says why, starting with a verb ("is ...")."""


def read_capped(path: Path, limit: int = MAX_CONFIG_BYTES) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise UntrustedFileError(f"cannot be read ({exc.strerror or type(exc).__name__})") from exc
    if len(data) > limit:
        raise UntrustedFileError(f"is larger than {limit} bytes")
    return data


def parse_json(data: bytes) -> Any:
    try:
        value = json.loads(data)
    except RecursionError as exc:
        raise UntrustedFileError("is not valid JSON (nested too deeply)") from exc
    except ValueError as exc:  # also UnicodeDecodeError, and ints of over 4300 digits
        raise UntrustedFileError(f"is not valid JSON ({exc})") from exc
    check_nesting(value, "JSON")
    return value


def parse_toml(data: bytes) -> dict[str, Any]:
    try:
        value = tomllib.loads(data.decode("utf-8"))
    except RecursionError as exc:
        raise UntrustedFileError("is not valid TOML: nested too deeply") from exc
    except ValueError as exc:  # TOMLDecodeError, UnicodeDecodeError, ints of over 4300 digits
        raise UntrustedFileError(f"is not valid TOML: {exc}") from exc
    check_nesting(value, "TOML")
    return value


def check_nesting(value: Any, language: str) -> None:
    """Refuse values nested deeper than MAX_NESTING (iteratively: it must not recurse itself)."""
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if not isinstance(item, dict | list):
            continue
        if depth > MAX_NESTING:
            raise UntrustedFileError(
                f"is not valid {language}: nested deeper than {MAX_NESTING} levels"
            )
        children = item.values() if isinstance(item, dict) else item
        pending.extend((child, depth + 1) for child in children)


def excerpt(text: str) -> str:
    """`text` for an error message, cut short: a hostile name or path may be megabytes long."""
    if len(text) <= _SHOWN_CHARS:
        return text
    return f"{text[:_SHOWN_CHARS]}... ({len(text)} characters)"
