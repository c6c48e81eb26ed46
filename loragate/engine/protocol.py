"""The engine protocol: the whole of what the gateway asks of a model runtime."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any, Protocol

from loragate.engine.types import AdapterRef, GenerationUpdate, SamplingOptions


class EngineDeadError(RuntimeError):
    """The engine cannot serve any more requests."""


class EngineUnavailableError(EngineDeadError):
    """The engine cannot serve now but will again: it is restarting, or the server is stopping
    and took the request back. `retry_after`: seconds after which a retry may succeed."""

    def __init__(self, message: str, retry_after: float):
        super().__init__(message)
        self.retry_after = retry_after


class EngineOverloadedError(RuntimeError):
    """The engine's queue is full (--max-waiting-requests): the request was not started."""

    def __init__(self, message: str, retry_after: float):
        super().__init__(message)
        self.retry_after = retry_after


class RequestAbortedError(EngineDeadError):
    """The engine ended the request before its end (an abort it did not finish)."""


class EngineRequestError(ValueError):
    """The engine refuses the request's parameters (a client error)."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class ChatTokenizer(Protocol):
    """The slice of a Hugging Face tokenizer the gateway uses."""

    eos_token_id: int | None

    def apply_chat_template(self, conversation: Any, /, **kwargs: Any) -> Any: ...

    def encode(self, text: str, /, **kwargs: Any) -> list[int]: ...

    def decode(self, token_ids: Sequence[int], /, **kwargs: Any) -> str: ...


def longest_token_chars(tokenizer: Any) -> int:
    """An upper bound of any token's decoded length: its vocabulary string's length (byte-level
    BPE writes one character per byte, SentencePiece one per character)."""
    return max((len(token) for token in tokenizer.get_vocab()), default=1)


class Engine(Protocol):
    @property
    def tokenizer(self) -> ChatTokenizer: ...

    @property
    def max_model_len(self) -> int: ...

    @property
    def max_lora_rank(self) -> int: ...

    @property
    def max_num_seqs(self) -> int:
        """Sequences the engine runs at once; more wait in its queue."""
        ...

    @property
    def vocab_size(self) -> int:
        """Token ids are below this."""
        ...

    @property
    def hf_config(self) -> Mapping[str, Any]:
        """The served model's Hugging Face config (config.json's values: its dimensions)."""
        ...

    @property
    def max_token_chars(self) -> int:
        """No token is longer than this many characters: a text longer than max_model_len
        times this is over the context without tokenizing it."""
        ...

    def generate(
        self,
        prompt_token_ids: list[int],
        options: SamplingOptions,
        request_id: str,
        adapter: AdapterRef | None = None,
    ) -> AsyncGenerator[GenerationUpdate, None]:
        """Yield incremental updates; closing the iterator early aborts the request, and
        `abort(request_id)` ends it with RequestAbortedError."""
        ...

    def check_options(self, options: SamplingOptions) -> None:
        """Raise EngineRequestError for options the engine would refuse."""
        ...

    def generation_defaults(self) -> dict[str, float]:
        """The model's own sampling defaults (its generation_config), applied under a request's."""
        ...

    async def abort(self, request_id: str) -> None: ...

    async def add_adapter(self, adapter: AdapterRef) -> None: ...

    async def remove_adapter(self, int_id: int) -> None: ...

    async def loaded_adapter_ids(self) -> set[int]:
        """The adapters any replica of the engine holds."""
        ...

    async def adapter_ids_by_replica(self) -> list[set[int]]:
        """The adapters each data-parallel replica holds (one set without data parallelism)."""
        ...

    def num_unfinished_requests(self) -> int: ...

    async def check_health(self) -> None:
        """Raise EngineDeadError when the engine cannot serve."""
        ...

    async def shutdown(self) -> None: ...
