"""Keys as configuration: a TOML file of `[[key]]` tables, each a key's definition and the
digest of its secret (`loragate keys create NAME --keys-file-entry` prints one), for
deployments that manage their keys with their other configuration. Read at start-up; a key of
the file wins over a stored key of the same name.

    [[key]]
    name = "support-team"
    digest = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    personas = ["support-*"]
    rpm = 60
    tpm = 100000
    expires = 2027-06-30
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated

from pydantic import Field, ValidationError

from loragate.tenants.errors import InvalidKeyError
from loragate.tenants.keys import ApiKey, KeyDefinition
from loragate.validation_errors import first_problem


class FileKey(KeyDefinition):
    digest: Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$")]


def read_keys_file(path: Path) -> dict[str, ApiKey]:
    """The file's keys by digest; InvalidKeyError names the file and the first problem."""
    try:
        tables = tomllib.loads(path.read_text()).get("key", [])
    except (OSError, tomllib.TOMLDecodeError, RecursionError) as exc:  # nested too deep
        raise InvalidKeyError(f"The keys file {path} cannot be read: {exc}") from exc
    if not isinstance(tables, list):
        raise InvalidKeyError(f"The keys file {path}: write each key as a [[key]] table.")
    keys: dict[str, ApiKey] = {}
    for number, table in enumerate(tables, start=1):
        try:
            entry = FileKey.model_validate(table)
        except ValidationError as exc:
            problem = first_problem(exc.errors()).sentence()
            raise InvalidKeyError(f"The keys file {path}, key {number}: {problem}") from exc
        if any(k.name == entry.name for k in keys.values()):
            raise InvalidKeyError(f"The keys file {path} names the key '{entry.name}' twice.")
        keys[entry.digest] = entry.key(source="file")
    return keys
