"""The keys `loragate keys create` and POST /v1/keys made, in --state-dir's keys.sqlite3.

Only each secret's digest is stored. A revoked key stays (its usage keeps its name), and its
name is not given again. Several processes share the file (the CLI beside a running gateway):
`changed()` tells a reader that another connection committed since it last looked.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import replace
from pathlib import Path

from loragate.state_db import StateDatabase
from loragate.tenants.errors import KeyExistsError, KeyNotFoundError, KeyStoreError
from loragate.tenants.keys import ApiKey, Limits, digest, new_secret

DATABASE = "keys.sqlite3"

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # 1: the keys
        """
        CREATE TABLE keys (
            name TEXT PRIMARY KEY,
            digest TEXT NOT NULL UNIQUE,  -- sha256 of the secret; the secret is never stored
            personas TEXT NOT NULL,       -- a JSON list of globs
            base_model INTEGER NOT NULL,
            rpm INTEGER,
            tpm INTEGER,
            max_parallel INTEGER,
            admin INTEGER NOT NULL,
            expires REAL,
            created REAL NOT NULL,
            revoked REAL
        )
        """,
    ),
)
_COLUMNS = (
    "digest, name, personas, base_model, rpm, tpm, max_parallel, admin, expires, created, revoked"
)
_Limit = int | None
Row = tuple[str, str, str, int, _Limit, _Limit, _Limit, int, float | None, float, float | None]


def _key_of(row: Row) -> tuple[str, ApiKey]:
    key_digest, name, personas, base, rpm, tpm, parallel, admin, expires, created, revoked = row
    key = ApiKey(
        name=name,
        personas=tuple(json.loads(personas)),
        base_model=bool(base),
        limits=Limits(rpm=rpm, tpm=tpm, max_parallel=parallel),
        admin=bool(admin),
        expires=expires,
        created=created,
        revoked=revoked,
    )
    return key_digest, key


class KeyStore:
    def __init__(self, state_dir: Path):
        self._db = StateDatabase(state_dir / DATABASE, MIGRATIONS, KeyStoreError, "keys database")
        self.path = self._db.path
        self._seen_version: int | None = None

    def create(self, key: ApiKey) -> tuple[ApiKey, str]:
        """The key as stored, and its secret: shown once, to whoever asked for it."""
        secret = new_secret()
        stored = replace(key, created=time.time(), revoked=None, source="store")
        limits = stored.limits
        row = (
            digest(secret), stored.name, json.dumps(list(stored.personas)), int(stored.base_model),
            limits.rpm, limits.tpm, limits.max_parallel, int(stored.admin), stored.expires,
            stored.created, None,
        )  # fmt: skip
        with self._db.writing() as db:
            if db.execute("SELECT 1 FROM keys WHERE name = ?", (key.name,)).fetchone():
                raise KeyExistsError(
                    f"A key named '{key.name}' exists (or existed: a revoked key's name is not "
                    "given again, so that its usage stays its own).",
                    param="name",
                )
            db.execute(f"INSERT INTO keys ({_COLUMNS}) VALUES ({', '.join('?' * 11)})", row)
        return stored, secret

    def revoke(self, name: str) -> ApiKey:
        with self._db.writing() as db:
            cursor = db.execute(
                "UPDATE keys SET revoked = ? WHERE name = ? AND revoked IS NULL",
                (time.time(), name),
            )
            found = db.execute(f"SELECT {_COLUMNS} FROM keys WHERE name = ?", (name,)).fetchone()
        if found is None:
            raise KeyNotFoundError(f"There is no key named '{name}'.", param="name")
        if cursor.rowcount == 0:
            raise KeyNotFoundError(f"The key '{name}' was already revoked.", param="name")
        return _key_of(found)[1]

    def keys(self) -> dict[str, ApiKey]:
        """Every key, revoked ones too, by its secret's digest (the store's own changes and
        other connections' alike: a caller reads again after it changed them)."""
        with self._db.reading() as db:
            self._seen_version = self._data_version(db)
            rows = db.execute(f"SELECT {_COLUMNS} FROM keys ORDER BY name").fetchall()
        return dict(_key_of(row) for row in rows)

    def changed(self) -> bool:
        """Whether the keys changed since the last `keys()`: one cheap read of SQLite's counter
        of other connections' commits, so that a gateway sees the CLI's changes at once."""
        with self._db.reading() as db:
            return self._data_version(db) != self._seen_version

    def close(self) -> None:
        self._db.close()

    @staticmethod
    def _data_version(db: sqlite3.Connection) -> int:
        return int(db.execute("PRAGMA data_version").fetchone()[0])
