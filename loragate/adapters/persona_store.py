"""The personas the API registered, saved under --state-dir so that a restart keeps them.

Each PUT of a name (or vLLM's load route) adds a version row: the bundle's path, the version
published and its engine id, when it was registered, and when a later version replaced it. A
DELETE marks the name's current row deleted: it is not registered again at start-up, and its
history stays. The --persona and --personas-dir personas are configuration, read again at every
start: they are never saved here.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from loragate.adapters.errors import PersonaStoreError

# A file of its own beside the stored responses' (responses.sqlite3), in the one state directory:
# each store has its own schema version (PRAGMA user_version) and its own write lock, so that a
# stream of stored responses never holds up a PUT; and each layer opens its own (the responses
# store is the server's, opened on first use; this one is read at start-up).
DATABASE = "personas.sqlite3"
BUSY_TIMEOUT_S = 5.0  # how long a change waits for another writer's lock before it is refused

# Migration n takes the database from user_version n - 1 to n. Append new ones; never edit one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # 1: the versions the API registered
        """
        CREATE TABLE persona_versions (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL,
            version TEXT NOT NULL,      -- the version published (the manifest's)
            path TEXT NOT NULL,         -- the bundle directory, resolved
            adapter_id INTEGER NOT NULL,  -- its engine id in the process that registered it
            registered REAL NOT NULL,   -- unix time
            replaced REAL,              -- when the next PUT of the name replaced it
            deleted REAL                -- when a DELETE unregistered it
        )
        """,
        "CREATE INDEX persona_versions_by_name ON persona_versions (name, id)",
    ),
)
_BUSY = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
_COLUMNS = "name, version, path, adapter_id, registered, replaced, deleted"
_CURRENT = "replaced IS NULL AND deleted IS NULL"


@dataclass(frozen=True)
class SavedVersion:
    name: str
    version: str
    path: Path
    adapter_id: int
    registered: float
    replaced: float | None = None
    deleted: float | None = None

    @classmethod
    def of_row(
        cls, row: tuple[str, str, str, int, float, float | None, float | None]
    ) -> SavedVersion:
        name, version, path, adapter_id, registered, replaced, deleted = row
        return cls(name, version, Path(path), adapter_id, registered, replaced, deleted)


class PersonaStore:
    """Thread-safe: the registry calls it from worker threads (`asyncio.to_thread`). Every
    failure of SQLite or of the file is a PersonaStoreError naming the database file."""

    def __init__(self, state_dir: Path):
        self.path = state_dir / DATABASE
        self._lock = threading.Lock()
        with self._failing("opened"):
            state_dir.mkdir(parents=True, exist_ok=True)
            # Autocommit: each change is one explicit transaction (see _transaction).
            self._db = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
        try:
            with self._failing("opened"):
                self._db.execute("PRAGMA journal_mode=WAL")  # readers never wait for a writer
                self._migrate()
        except PersonaStoreError:
            self._db.close()
            raise

    def save(self, name: str, version: str, path: Path, adapter_id: int) -> None:
        """A new current version of `name` (the one before it, if any, is marked replaced)."""
        now = time.time()
        with self._lock, self._failing("written"), self._transaction():
            self._db.execute(
                f"UPDATE persona_versions SET replaced = ? WHERE name = ? AND {_CURRENT}",
                (now, name),
            )
            self._db.execute(
                "INSERT INTO persona_versions (name, version, path, adapter_id, registered) "
                "VALUES (?, ?, ?, ?, ?)",
                (name, version, str(path), adapter_id, now),
            )

    def mark_deleted(self, name: str) -> bool:
        """Whether `name` had a current version, now deleted (not registered again)."""
        with self._lock, self._failing("written"), self._transaction():
            cursor = self._db.execute(
                f"UPDATE persona_versions SET deleted = ? WHERE name = ? AND {_CURRENT}",
                (time.time(), name),
            )
        return cursor.rowcount > 0

    def current(self) -> list[SavedVersion]:
        """The current version of each name not deleted: what start-up registers again."""
        with self._lock, self._failing("read"):
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM persona_versions WHERE {_CURRENT} ORDER BY name"
            ).fetchall()
        return [SavedVersion.of_row(row) for row in rows]

    def history(self, name: str) -> list[SavedVersion]:
        """Every version of `name` the API registered, oldest first."""
        with self._lock, self._failing("read"):
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM persona_versions WHERE name = ? ORDER BY id", (name,)
            ).fetchall()
        return [SavedVersion.of_row(row) for row in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _migrate(self) -> None:
        if self._schema_version() == len(MIGRATIONS):
            return  # the common case: nothing to write, so a writer's lock does not stop start-up
        with self._transaction():
            found = self._schema_version()  # again, under the lock: another process may have
            for number, statements in enumerate(MIGRATIONS[found:], start=found + 1):
                for statement in statements:
                    self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {number}")

    def _schema_version(self) -> int:
        found = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if found > len(MIGRATIONS):
            raise PersonaStoreError(
                f"The persona database {self.path} has schema version {found}, newer than this "
                f"loragate's ({len(MIGRATIONS)}): it was written by a newer loragate."
            )
        return found

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")  # the write lock first: no deadlock on an upgrade
        try:
            yield
        except BaseException:
            with suppress(sqlite3.Error):  # the error that brought us here is the one to tell
                self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    @contextmanager
    def _failing(self, what: str) -> Iterator[None]:
        try:
            yield
        except (sqlite3.Error, OSError) as exc:
            held = ""
            if getattr(exc, "sqlite_errorcode", None) in _BUSY:
                held = f" (another connection holds its lock; waited {BUSY_TIMEOUT_S:g} s)"
            raise PersonaStoreError(
                f"The persona database {self.path} cannot be {what}: {exc}{held}."
            ) from exc
