"""The catalog of a server without personas: the base model alone."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from openai.types import Model

from loragate.server.errors import ModelNotFoundError
from loragate.server.targets import ModelTarget


def base_model_card(name: str, root: str, max_model_len: int, created: int) -> Model:
    # openai's Model allows extra fields; vLLM's cards carry these three.
    return Model.model_validate(
        dict(
            id=name,
            object="model",
            created=created,
            owned_by="loragate",
            root=root,
            parent=None,
            max_model_len=max_model_len,
        )
    )


class BaseModelCatalog:
    def __init__(self, base_name: str, root: str, max_model_len: int):
        self._target = ModelTarget(name=base_name)
        self._card = base_model_card(base_name, root, max_model_len, int(time.time()))

    @property
    def base_name(self) -> str:
        return self._target.name

    def names(self) -> list[str]:
        return [self._target.name]

    @asynccontextmanager
    async def lease(self, name: str | None) -> AsyncIterator[ModelTarget]:
        if name not in (None, self._target.name):
            raise ModelNotFoundError(name or "", self.names())
        yield self._target

    def model_cards(self) -> list[Model]:
        return [self._card]
