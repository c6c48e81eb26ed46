"""What the HTTP layer may ask of an engine, and its implementations."""

from loragate.server.engine.protocol import Engine, EngineDeadError
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
    "FinishReason",
    "GenerationUpdate",
    "SamplingOptions",
    "TokenLogprob",
]
