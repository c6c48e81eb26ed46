"""What the HTTP layer may ask of an engine, and its implementations."""

from loragate.server.engine.protocol import Engine, EngineDeadError, EngineRequestError
from loragate.server.engine.types import (
    AdapterRef,
    ChoiceDelta,
    FinishReason,
    GenerationUpdate,
    SamplingOptions,
    TokenLogprob,
)

__all__ = [
    "AdapterRef",
    "ChoiceDelta",
    "Engine",
    "EngineDeadError",
    "EngineRequestError",
    "FinishReason",
    "GenerationUpdate",
    "SamplingOptions",
    "TokenLogprob",
]
