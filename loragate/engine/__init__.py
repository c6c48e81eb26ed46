"""What the HTTP layer may ask of an engine, and its implementations."""

from loragate.engine.protocol import Engine, EngineDeadError, EngineRequestError
from loragate.engine.types import (
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
