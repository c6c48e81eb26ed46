"""API keys: a name, the personas it may use, its limits; the secret is kept only as a digest.

A secret is 32 random bytes (`secrets.token_urlsafe`), so an unsalted SHA-256 of it is as
strong as a slow password hash would be (nobody can enumerate 2^256 candidates), and it lets a
request's key be found with one dictionary lookup, which matters with a thousand keys defined.
"""

from __future__ import annotations

import datetime
import hashlib
import secrets
import time
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

KeySource = Literal["store", "file", "flag", "open"]
SECRET_PREFIX = "lg-"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
EVERY_PERSONA = ("*",)


@dataclass(frozen=True)
class Limits:
    """None is no limit. Tokens are prompt plus completion, as the engine counted them."""

    rpm: int | None = None
    tpm: int | None = None
    max_parallel: int | None = None


@dataclass(frozen=True)
class ApiKey:
    name: str
    personas: tuple[str, ...] = EVERY_PERSONA  # globs of persona names (fnmatch, case-sensitive)
    base_model: bool = True  # whether it may use the base model itself
    limits: Limits = field(default_factory=Limits)
    admin: bool = False  # may change personas and keys, and read everyone's usage
    expires: float | None = None  # unix time
    created: float = 0.0
    revoked: float | None = None
    source: KeySource = "store"

    def may_use(self, model: str, *, is_base: bool) -> bool:
        """Whether this key may use `model` (a persona's name, or `name@version`)."""
        if is_base:
            return self.base_model
        name = model.partition("@")[0]
        return any(fnmatchcase(name, glob) for glob in self.personas)

    def usable(self, now: float | None = None) -> bool:
        moment = time.time() if now is None else now
        return self.revoked is None and (self.expires is None or moment < self.expires)

    def refusal(self) -> str:
        """Why an unusable key is refused: the 401's message."""
        if self.revoked is not None:
            return f"The API key '{self.name}' was revoked."
        return f"The API key '{self.name}' expired."

    def public(self) -> dict[str, Any]:
        """What `keys list` and GET /v1/keys show: everything but the secret (and its digest)."""
        return {
            "name": self.name,
            "personas": list(self.personas),
            "base_model": self.base_model,
            "rpm": self.limits.rpm,
            "tpm": self.limits.tpm,
            "max_parallel": self.limits.max_parallel,
            "admin": self.admin,
            "expires": self.expires,
            "created": self.created,
            "revoked": self.revoked,
            "source": self.source,
        }


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()


def _not_a_number(value: object) -> object:
    # pydantic takes a number for a date (unix time); the schema, and a reader, say a date.
    if isinstance(value, int | float):
        raise ValueError("expires is an ISO 8601 date or date-time, not a number")
    return value


# SQLite's INTEGER holds 64 bits: a larger limit would fail the INSERT (OverflowError, a 500).
SQLITE_INTEGER_MAX = 2**63 - 1
Limit = Annotated[int, Field(ge=1, le=SQLITE_INTEGER_MAX, strict=True)]
Flag = Annotated[bool, Field(strict=True)]  # `0` is not `false`


class KeyDefinition(BaseModel):
    """A key as `keys create`, POST /v1/keys and the keys file define it."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(pattern=NAME_PATTERN, description="1-64 of [A-Za-z0-9._-]")]
    personas: list[Annotated[str, Field(min_length=1, strict=True)]] = Field(
        default=list(EVERY_PERSONA), description="Globs of the persona names it may use."
    )
    base_model: Flag = Field(default=True, description="Whether it may use the base model.")
    rpm: Limit | None = None
    tpm: Limit | None = None
    max_parallel: Limit | None = None
    admin: Flag = False
    expires: Annotated[datetime.datetime | datetime.date | None, BeforeValidator(_not_a_number)] = (
        Field(default=None, description="When it stops working (a date is its midnight, UTC).")
    )

    def key(self, source: KeySource = "store") -> ApiKey:
        return ApiKey(
            name=self.name,
            personas=tuple(self.personas),
            base_model=self.base_model,
            limits=Limits(rpm=self.rpm, tpm=self.tpm, max_parallel=self.max_parallel),
            admin=self.admin,
            expires=None if self.expires is None else unix_time(self.expires),
            source=source,
        )


def unix_time(moment: datetime.datetime | datetime.date) -> float:
    if not isinstance(moment, datetime.datetime):
        moment = datetime.datetime.combine(moment, datetime.time(), datetime.UTC)
    elif moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()
