"""What each key used: a row per finished request in --state-dir's usage.sqlite3, and totals.

Rows are written off the request path: `add` only appends to a list, and a writer thread
commits what gathered once a second, so that a crash loses at most the last second; `close`
writes the rest (a clean shutdown loses nothing).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from loragate.state_db import StateDatabase
from loragate.tenants.errors import KeyStoreError

logger = logging.getLogger(__name__)

DATABASE = "usage.sqlite3"
FLUSH_INTERVAL_S = 1.0

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # 1: a row per finished request
        """
        CREATE TABLE usage (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            key TEXT NOT NULL,          -- the key's name (never its secret)
            persona TEXT NOT NULL,      -- the model served: the base model's name or a persona's
            version TEXT NOT NULL,      -- the persona's version ('' for the base model)
            route TEXT NOT NULL,
            prompt_tokens INTEGER NOT NULL,
            completion_tokens INTEGER NOT NULL,
            status INTEGER NOT NULL,
            at REAL NOT NULL            -- unix time the request ended
        )
        """,
        "CREATE INDEX usage_by_time ON usage (at)",
    ),
)


@dataclass(frozen=True)
class UsageRow:
    key: str
    persona: str
    version: str
    route: str
    prompt_tokens: int
    completion_tokens: int
    status: int
    at: float


@dataclass(frozen=True)
class UsageTotal:
    """One key's use of one model on one day (UTC)."""

    key: str
    persona: str
    day: str  # YYYY-MM-DD
    requests: int
    prompt_tokens: int
    completion_tokens: int

    def public(self) -> dict[str, Any]:
        return {**asdict(self), "total_tokens": self.prompt_tokens + self.completion_tokens}


class UsageLog:
    def __init__(self, state_dir: Path, flush_interval_s: float = FLUSH_INTERVAL_S):
        self._db = StateDatabase(state_dir / DATABASE, MIGRATIONS, KeyStoreError, "usage database")
        self.path = self._db.path
        self._pending: list[UsageRow] = []
        self._pending_lock = threading.Lock()
        self._stop = threading.Event()
        self._interval = flush_interval_s
        self._writer: threading.Thread | None = None

    def add(self, row: UsageRow) -> None:
        with self._pending_lock:
            self._pending.append(row)
        if self._writer is None:  # started on first use: a process that never serves has none
            self._writer = threading.Thread(
                target=self._write_every_interval, name="loragate-usage", daemon=True
            )
            self._writer.start()

    def flush(self) -> None:
        with self._pending_lock:
            rows, self._pending = self._pending, []
        if not rows:
            return
        values = [
            (r.key, r.persona, r.version, r.route, r.prompt_tokens, r.completion_tokens,
             r.status, r.at)
            for r in rows
        ]  # fmt: skip
        try:
            with self._db.writing() as db:
                db.executemany(
                    "INSERT INTO usage (key, persona, version, route, prompt_tokens, "
                    "completion_tokens, status, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    values,
                )
        except KeyStoreError:
            with self._pending_lock:  # kept, in order, for the next round
                self._pending[:0] = rows
            raise

    def rows(self, since: float | None = None) -> list[UsageRow]:
        with self._db.reading() as db:
            found = db.execute(
                "SELECT key, persona, version, route, prompt_tokens, completion_tokens, status, "
                "at FROM usage WHERE at >= ? ORDER BY id",
                (since or 0.0,),
            ).fetchall()
        return [UsageRow(*row) for row in found]

    def totals(self, since: float | None = None, key: str | None = None) -> list[UsageTotal]:
        """By key, model and day, oldest day first."""
        query = (
            "SELECT key, persona, date(at, 'unixepoch') AS day, count(*), sum(prompt_tokens), "
            "sum(completion_tokens) FROM usage WHERE at >= ? AND (? IS NULL OR key = ?) "
            "GROUP BY key, persona, day ORDER BY day, key, persona"
        )
        with self._db.reading() as db:
            found = db.execute(query, (since or 0.0, key, key)).fetchall()
        return [UsageTotal(*row) for row in found]

    def close(self) -> None:
        self._stop.set()
        if self._writer is not None:
            self._writer.join()
        self.flush()
        self._db.close()

    def _write_every_interval(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.flush()
            except KeyStoreError as exc:  # locked or full: the rows wait for the next round
                logger.warning("usage rows not written yet: %s", exc.message)
