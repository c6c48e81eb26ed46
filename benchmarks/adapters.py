"""Persona adapters for the benchmark: real peft LoRA adapters on the default model, cached.

Made by the integration tests' factory (random A and B, so each adapter really changes the
computation) at rank 8, the tutorial's LoRA rank; kept under the cache so reruns skip the work.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from loragate.paths import cache_dir

RANK = 8
STD = 0.02  # nudges the text without turning it into noise; lengths are fixed anyway
_DONE = ".bench-adapter-ready"


def adapters_dir() -> Path:
    return cache_dir() / "bench" / "adapters"


def ensure_adapters(names: Sequence[str], seed_base: int = 1000) -> dict[str, Path]:
    from tests.integration.lora_factory import make_lora_adapter

    made: dict[str, Path] = {}
    for index, name in enumerate(names):
        target = adapters_dir() / name
        if not (target / _DONE).exists():
            shutil.rmtree(target, ignore_errors=True)
            print(f"  making adapter {name} (rank {RANK})")
            make_lora_adapter(target, seed=seed_base + index, std=STD, rank=RANK)
            (target / _DONE).touch()
        made[name] = target
    return made
