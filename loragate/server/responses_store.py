"""Stored responses of /v1/responses: an embedded SQLite database under the state directory.

Each row keeps the response as returned and the conversation it ended (the input items as chat
messages, then its output), so that `previous_response_id` continues it, across restarts too.
A response belongs to the API key that made it: another key does not see it.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATABASE = "responses.sqlite3"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    created REAL NOT NULL,
    body TEXT NOT NULL,
    conversation TEXT NOT NULL
)
"""


def owner_of(api_key: str | None) -> str:
    """Who a response belongs to: a digest of the key that made it (never the key itself)."""
    return hashlib.sha256((api_key or "").encode()).hexdigest()


@dataclass(frozen=True)
class StoredResponse:
    body: dict[str, Any]
    conversation: list[dict[str, Any]]


class ResponseStore:
    """Thread-safe: the routes call it from worker threads (`asyncio.to_thread`)."""

    def __init__(self, state_dir: Path):
        state_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(state_dir / DATABASE, check_same_thread=False)
        with self._lock, self._db:
            self._db.execute("PRAGMA journal_mode=WAL")  # readers never wait for a writer
            self._db.execute(_SCHEMA)

    def put(self, owner: str, body: dict[str, Any], conversation: list[dict[str, Any]]) -> None:
        row = (body["id"], owner, time.time(), json.dumps(body), json.dumps(conversation))
        with self._lock, self._db:
            self._db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?)", row)

    def get(self, owner: str, response_id: str) -> StoredResponse | None:
        with self._lock:
            row = self._db.execute(
                "SELECT body, conversation FROM responses WHERE id = ? AND owner = ?",
                (response_id, owner),
            ).fetchone()
        if row is None:
            return None
        return StoredResponse(json.loads(row[0]), json.loads(row[1]))

    def delete(self, owner: str, response_id: str) -> bool:
        with self._lock, self._db:
            cursor = self._db.execute(
                "DELETE FROM responses WHERE id = ? AND owner = ?", (response_id, owner)
            )
        return cursor.rowcount > 0

    def close(self) -> None:
        with self._lock:
            self._db.close()
