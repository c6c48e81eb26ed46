"""One SQLite database file of the state directory: opened in WAL mode, migrated by number,
changed in explicit transactions, and every failure raised as its owner's domain error.

Each store (personas, keys, usage) has a file of its own in --state-dir, with its own schema
version (PRAGMA user_version) and its own write lock, so that one store's writes never hold up
another's.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

BUSY_TIMEOUT_S = 5.0  # how long a change waits for another writer's lock before it is refused
_BUSY = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)

# Migration n takes a database from user_version n - 1 to n. Append new ones; never edit one.
Migrations = Sequence[Sequence[str]]


class StateDatabase:
    """Thread-safe (one lock around the connection). `error` is the owner's exception class,
    raised with a sentence that names `what` (e.g. "persona database") and the file."""

    def __init__(
        self, path: Path, migrations: Migrations, error: type[Exception], what: str
    ) -> None:
        self.path = path
        self.lock = threading.Lock()
        self._migrations = migrations
        self._error = error
        self._what = what
        with self.failing("opened"):
            path.parent.mkdir(parents=True, exist_ok=True)
            # Autocommit: each change is one explicit transaction (see transaction()).
            self.db = sqlite3.connect(
                path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
        try:
            with self.failing("opened"):
                self.db.execute("PRAGMA journal_mode=WAL")  # readers never wait for a writer
                self._migrate()
        except error:
            self.db.close()
            raise

    def close(self) -> None:
        with self.lock:
            self.db.close()

    @contextmanager
    def writing(self) -> Iterator[sqlite3.Connection]:
        """The connection, locked, inside one transaction; a failure is the owner's error."""
        with self.lock, self.failing("written"), self.transaction():
            yield self.db

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        with self.lock, self.failing("read"):
            yield self.db

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")  # the write lock first: no deadlock on an upgrade
        try:
            yield
        except BaseException:
            with suppress(sqlite3.Error):  # the error that brought us here is the one to tell
                self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    @contextmanager
    def failing(self, what: str) -> Iterator[None]:
        try:
            yield
        except (sqlite3.Error, OSError) as exc:
            held = ""
            if getattr(exc, "sqlite_errorcode", None) in _BUSY:
                held = f" (another connection holds its lock; waited {BUSY_TIMEOUT_S:g} s)"
            raise self._error(
                f"The {self._what} {self.path} cannot be {what}: {exc}{held}."
            ) from exc

    def _migrate(self) -> None:
        if self._schema_version() == len(self._migrations):
            return  # the common case: nothing to write, so a writer's lock does not stop start-up
        with self.transaction():
            found = self._schema_version()  # again, under the lock: another process may have
            for number, statements in enumerate(self._migrations[found:], start=found + 1):
                for statement in statements:
                    self.db.execute(statement)
                self.db.execute(f"PRAGMA user_version = {number}")

    def _schema_version(self) -> int:
        found = int(self.db.execute("PRAGMA user_version").fetchone()[0])
        if found > len(self._migrations):
            raise self._error(
                f"The {self._what} {self.path} has schema version {found}, newer than this "
                f"loragate's ({len(self._migrations)}): it was written by a newer loragate."
            )
        return found
