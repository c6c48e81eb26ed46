"""The base of every layer's refusals (personas, tenants): a message for the client and the
request field it concerns. They say what went wrong, never how HTTP shows it."""

from __future__ import annotations


class DomainError(Exception):
    def __init__(self, message: str, *, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
