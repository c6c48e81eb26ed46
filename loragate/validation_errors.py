"""The first problem of a pydantic validation error, as one line: one formatter for every caller.

The HTTP layer (request bodies), the legacy route, persona manifests and `loragate train`'s
settings all report only the first problem, named by where it is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

_SOURCES = ("body", "query", "path", "header")


@dataclass(frozen=True)
class Problem:
    location: tuple[str, ...]  # ("messages", "0", "content"); empty for the whole value
    message: str  # pydantic's words, without the "Value error, " of a validator's ValueError
    kind: str  # pydantic's error type: "extra_forbidden", "json_invalid", ...
    context: Mapping[str, Any] = field(default_factory=dict)

    def dotted(self, sep: str = ".") -> str | None:
        return sep.join(self.location) or None

    def sentence(self) -> str:
        where = self.dotted()
        return f"Invalid value for '{where}': {self.message}" if where else self.message


def first_problem(errors: Sequence[Mapping[str, Any]], *, from_request: bool = False) -> Problem:
    """The first of pydantic's `errors()`; `from_request`: FastAPI's, whose location starts
    with where the value came from ("body", "query"...), which is left out."""
    first = errors[0] if errors else {}
    location = tuple(str(p) for p in first.get("loc", ()))
    if from_request and location[:1] and location[0] in _SOURCES:
        location = location[1:]
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    return Problem(location, message, str(first.get("type", "")), first.get("ctx") or {})
