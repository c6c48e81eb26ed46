"""Who a request's secret belongs to: the built-in keys of --api-key and --admin-key, the keys
file's, and the key store's, looked up by digest in memory.

The API is open (every request is the `anonymous` key) only while no key of any kind exists but
perhaps --admin-key, as before keys existed; a revoked key keeps it closed. A key of the keys
file wins over a stored key of the same name: the file is the deployment's configuration.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping

from loragate.tenants.errors import TenantError
from loragate.tenants.key_store import KeyStore
from loragate.tenants.keys import ApiKey, digest

logger = logging.getLogger(__name__)

API_KEY_NAME = "api-key"  # --api-key's built-in key
ADMIN_KEY_NAME = "admin-key"  # --admin-key's
ANONYMOUS = "anonymous"  # every request's key while the API is open


class UnauthenticatedError(TenantError):
    """No usable key: missing, unknown, revoked or expired."""


def builtin_keys(api_key: str | None, admin_key: str | None) -> dict[str, ApiKey]:
    """--api-key may use everything; it administers too unless --admin-key is set."""
    keys: dict[str, ApiKey] = {}
    if api_key is not None:
        keys[digest(api_key)] = ApiKey(API_KEY_NAME, admin=admin_key is None, source="flag")
    if admin_key is not None:
        keys[digest(admin_key)] = ApiKey(ADMIN_KEY_NAME, admin=True, source="flag")
    return keys


class KeyRing:
    def __init__(
        self,
        builtin: Mapping[str, ApiKey],
        store: KeyStore,
        file_keys: Mapping[str, ApiKey] | None = None,
    ):
        self._builtin = dict(builtin)
        self._file = dict(file_keys or {})
        self.store = store
        self._lock = threading.Lock()
        self._keys: dict[str, ApiKey] = {}
        self._reload()

    def authenticate(self, secret: str | None, *, admin: bool = False) -> ApiKey:
        """The key of `secret`; `admin`: one that administers. UnauthenticatedError if none."""
        keys = self._current()
        key = keys.get(digest(secret)) if secret else None
        what = "admin key" if admin and self._has_admin else "API key"
        if key is None and not self._closed:
            key = self._anonymous
        if key is None:
            raise UnauthenticatedError(
                f"Incorrect or missing {what}: send 'Authorization: Bearer <key>' or "
                "'x-api-key: <key>'."
            )
        if not key.usable():
            raise UnauthenticatedError(key.refusal())
        if admin and not key.admin:
            raise UnauthenticatedError(
                f"Incorrect or missing {what}: the key '{key.name}' does not administer."
                if key.name != ANONYMOUS
                else f"Incorrect or missing {what}: send 'Authorization: Bearer <key>'."
            )
        return key

    def keys(self) -> list[ApiKey]:
        """Every key (revoked ones too), by name."""
        return sorted(self._current().values(), key=lambda k: k.name)

    def find(self, name: str) -> ApiKey | None:
        return next((k for k in self._current().values() if k.name == name), None)

    def refresh(self) -> None:
        """Read the store again now (after this process changed it)."""
        self._reload()

    def _current(self) -> dict[str, ApiKey]:
        if self.store.changed():
            self._reload()
        return self._keys

    def _reload(self) -> None:
        with self._lock:
            stored = self.store.keys()
            by_name = {k.name for k in self._file.values()}
            shadowed = [k.name for k in stored.values() if k.name in by_name]
            if shadowed:
                logger.warning("the keys file overrides the stored keys %s", ", ".join(shadowed))
            merged = {d: k for d, k in stored.items() if k.name not in by_name}
            self._keys = {**merged, **self._file, **self._builtin}
            keys = self._keys.values()
            self._closed = any(k.source != "flag" or k.name == API_KEY_NAME for k in keys)
            # --api-key alone administers as "the API key", as before keys existed.
            self._has_admin = any(k.admin and k.name != API_KEY_NAME for k in keys)
            self._anonymous = ApiKey(ANONYMOUS, admin=not any(k.admin for k in keys), source="open")
