"""The tenant layer's domain errors; the server maps each to its HTTP status in one table."""

from __future__ import annotations

from loragate.domain_errors import DomainError


class TenantError(DomainError):
    """Any refusal of the tenant layer (keys, limits, usage)."""


class KeyStoreError(TenantError):
    """The keys or usage database cannot be opened, read or written."""


class KeyExistsError(TenantError):
    pass


class KeyNotFoundError(TenantError):
    pass


class InvalidKeyError(TenantError):
    """A key's definition that cannot be used: a bad name, limit or date."""


class ModelNotAllowedError(TenantError):
    """The key may not use this model; the message names those it may use."""

    def __init__(self, model: str, allowed: list[str]):
        listed = ", ".join(allowed) if allowed else "none"
        super().__init__(
            f"This API key may not use the model '{model}'. It may use: {listed}.", param="model"
        )


class RateLimitedError(TenantError):
    """Over one of the key's limits (or a persona's): come back after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: float, headers: dict[str, str]):
        super().__init__(message)
        self.retry_after = retry_after
        self.rate_limit_headers = headers
