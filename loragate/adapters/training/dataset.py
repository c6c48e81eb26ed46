"""Instruction data sets: JSON or JSONL rows of `instruction`, `input`, `output`.

The tutorial's format (self-llm's `dataset/huanhuan.json`), plus an optional per-row `system` prompt
and a multi-turn `history` (earlier turns as `[user, assistant]` pairs, as in the self-llm data
sets, or as `{"role", "content"}` messages). Every bad row is reported with its number (its
1-based position in a JSON array, its line in a JSONL file), all at once, so that a data set is
fixed in one pass rather than one error per run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loragate.prompting import Message

_ROLES = ("user", "assistant")
_MAX_LISTED_PROBLEMS = 20


class DatasetError(ValueError):
    """A data set that cannot be used as it is; the message lists the bad rows."""


@dataclass(frozen=True)
class TrainingRow:
    number: int
    instruction: str
    output: str
    input: str = ""
    system: str | None = None
    history: tuple[Message, ...] = ()

    @property
    def user_text(self) -> str:
        # Joined with a newline: the tutorial's bare `instruction + input` glues two sentences.
        return "\n".join(part for part in (self.instruction, self.input) if part)


@dataclass(frozen=True)
class RowProblem:
    number: int
    message: str

    def __str__(self) -> str:
        return f"row {self.number}: {self.message}"


@dataclass
class LoadedDataset:
    path: Path
    sha256: str
    rows: list[TrainingRow]
    skipped: list[RowProblem] = field(default_factory=list)


def load_dataset(
    path: Path, *, skip_bad_rows: bool = False, max_rows: int | None = None
) -> LoadedDataset:
    """Read and check every row; raise DatasetError listing the bad ones unless told to skip."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read the data set: {exc.strerror or exc}") from exc
    rows: list[TrainingRow] = []
    problems: list[RowProblem] = []
    for number, value in _raw_rows(path, raw):
        row = parse_row(number, value)
        if isinstance(row, RowProblem):
            problems.append(row)
        else:
            rows.append(row)
    if problems and not skip_bad_rows:
        raise DatasetError(_describe(path, problems))
    if not rows:
        raise DatasetError(f"{path}: no usable rows")
    if max_rows is not None:
        rows = rows[:max_rows]
    return LoadedDataset(path, hashlib.sha256(raw).hexdigest(), rows, problems)


def _raw_rows(path: Path, raw: bytes) -> Iterator[tuple[int, Any]]:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    if text.lstrip().startswith("["):
        try:
            values = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DatasetError(
                f"{path}: not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
            ) from exc
        yield from enumerate(values, start=1)
        return
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield line_number, json.loads(line)
        except json.JSONDecodeError as exc:
            yield line_number, _InvalidJson(exc.msg)


@dataclass(frozen=True)
class _InvalidJson:
    reason: str


def parse_row(number: int, value: Any) -> TrainingRow | RowProblem:
    if isinstance(value, _InvalidJson):
        return RowProblem(number, f"not valid JSON ({value.reason})")
    if not isinstance(value, dict):
        return RowProblem(number, f"expected an object, got {_kind(value)}")
    problem = _field_problem(value)
    if problem:
        return RowProblem(number, problem)
    history = _history(value.get("history"))
    if isinstance(history, str):
        return RowProblem(number, history)
    return TrainingRow(
        number=number,
        instruction=value["instruction"],
        output=value["output"],
        input=value.get("input") or "",
        system=value.get("system"),
        history=history,
    )


def _field_problem(value: dict[str, Any]) -> str | None:
    for name in ("instruction", "output"):
        if name not in value:
            return f"'{name}' is missing"
    for name in ("instruction", "output", "input", "system"):
        if value.get(name) is not None and not isinstance(value[name], str):
            return f"'{name}' must be a string, got {_kind(value[name])}"
    if not value["output"].strip():
        return "'output' is empty"
    if not (value["instruction"].strip() or (value.get("input") or "").strip()):
        return "'instruction' and 'input' are both empty"
    return None


def _history(value: Any) -> tuple[Message, ...] | str:
    """Earlier turns as messages, or a description of what is wrong with them."""
    if value is None:
        return ()
    if not isinstance(value, list):
        return f"'history' must be a list, got {_kind(value)}"
    messages: list[Message] = []
    for i, turn in enumerate(value):
        if isinstance(turn, list | tuple):
            if len(turn) != 2 or not all(isinstance(t, str) for t in turn):
                return f"'history'[{i}] must be a [user, assistant] pair of strings"
            messages += [
                {"role": "user", "content": turn[0]},
                {"role": "assistant", "content": turn[1]},
            ]
        elif isinstance(turn, dict):
            role, content = turn.get("role"), turn.get("content")
            if role not in _ROLES or not isinstance(content, str):
                return f"'history'[{i}] must have a role of {_ROLES} and a string content"
            messages.append({"role": role, "content": content})
        else:
            return f"'history'[{i}] must be a [user, assistant] pair or a message object"
    return tuple(messages)


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def _describe(path: Path, problems: list[RowProblem]) -> str:
    listed = "\n".join(f"  {p}" for p in problems[:_MAX_LISTED_PROBLEMS])
    more = len(problems) - _MAX_LISTED_PROBLEMS
    tail = f"\n  ... and {more} more" if more > 0 else ""
    return f"{path}: {len(problems)} bad row(s); fix them or pass --skip-bad-rows:\n{listed}{tail}"
