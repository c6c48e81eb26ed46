"""The persona layer's errors. They say what went wrong, never how HTTP shows it.

`loragate/server/errors.py` maps each class to its status, `type` and `code` in one table.
"""

from __future__ import annotations

from collections.abc import Sequence

from loragate.adapters.untrusted import excerpt
from loragate.domain_errors import DomainError


class PersonaError(DomainError):
    """Any refusal of the persona layer; `param` names the request field it concerns."""


class InvalidPersonaNameError(PersonaError):
    def __init__(self, message: str):
        super().__init__(message, param="name")


class PersonaExistsError(PersonaError):
    """A load of a name already registered, without asking to replace it."""


class PathNotAllowedError(PersonaError):
    """The path is refused before anything is read: relative, `..`, or outside every root."""


class AdapterNotFoundError(PersonaError):
    """Nothing is at the path, or it cannot be opened."""


class AdapterValidationError(PersonaError):
    """The files are there but are not an adapter this server can serve."""


class PersonaUnavailableError(PersonaError):
    """The persona exists but cannot be served (refused files, LoRA off, engine refusal)."""


class AdapterStillLoadedError(PersonaError):
    """The engine still lists an adapter after removing it: a bug, not the caller's fault."""


class PersonaStoreError(PersonaError):
    """The persona database cannot be read or written (damaged, locked, full): nothing changed."""


class _NotListedError(PersonaError):
    def __init__(self, message: str, valid: Sequence[str], *, param: str | None = None):
        super().__init__(message, param=param)
        self.valid = list(valid)


class UnknownModelError(_NotListedError):
    """The `model` field names neither the base model nor a persona (version)."""

    def __init__(self, name: str, valid: Sequence[str]):
        listed = ", ".join(sorted(valid)) or "(none)"
        message = f"The model '{excerpt(name)}' does not exist. Valid models: {listed}"
        super().__init__(message, valid, param="model")


class PersonaNotFoundError(_NotListedError):
    """The persona API names a persona that is not registered."""

    def __init__(self, name: str, valid: Sequence[str]):
        listed = ", ".join(sorted(valid)) or "(none)"
        message = f"The persona '{excerpt(name)}' does not exist. Valid personas: {listed}"
        super().__init__(message, valid)
