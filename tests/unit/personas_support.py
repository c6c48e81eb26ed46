"""Persona test material without torch: a tiny model config.json and peft-shaped adapters.

The adapters are real files in peft's layout (adapter_config.json and a valid safetensors file
of zeros), sized for TINY_MODEL, so that validation reads them exactly as it reads peft's.

The persona app's fixtures (`root`, `engine`, `client`) are the HTTP tests' own: a module takes
them by name (`client = personas_support.client`), since the unit conftest's `client` is the
plain fake-engine app's.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from loragate.adapters.manifest import (
    LORA_TARGET_MODULES,
    PersonaManifest,
    SamplingDefaultsSpec,
    write_manifest,
)
from loragate.adapters.registry import PersonaRegistry
from loragate.adapters.sources import personas_running
from loragate.engine.fake import FakeEngine
from loragate.engine.types import AdapterRef
from loragate.server.app import StateFactory, create_app
from loragate.server.state import AppState
from loragate.settings import ServerSettings
from tests.unit.conftest import server_settings

BASE = "tiny-base"
LAYERS = 2
TINY_MODEL = {
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 8,
    "intermediate_size": 16,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "num_hidden_layers": LAYERS,
    "head_dim": 4,
}
ALL_MODULES = LORA_TARGET_MODULES
_FEATURES = {  # (in, out) for TINY_MODEL
    "q_proj": (8, 8),
    "k_proj": (8, 4),
    "v_proj": (8, 4),
    "o_proj": (8, 8),
    "gate_proj": (8, 16),
    "up_proj": (8, 16),
    "down_proj": (16, 8),
}


def write_model_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(TINY_MODEL))
    return path


def peft_key(layer: int, module: str, half: str) -> str:
    block = "mlp" if module in ("gate_proj", "up_proj", "down_proj") else "self_attn"
    return f"base_model.model.model.layers.{layer}.{block}.{module}.lora_{half}.weight"


def lora_tensors(rank: int = 2, modules: tuple[str, ...] = ALL_MODULES) -> dict[str, list[int]]:
    shapes = {}
    for layer in range(LAYERS):
        for module in modules:
            fan_in, fan_out = _FEATURES[module]
            shapes[peft_key(layer, module, "A")] = [rank, fan_in]
            shapes[peft_key(layer, module, "B")] = [fan_out, rank]
    return shapes


def write_safetensors(path: Path, shapes: dict[str, list[int]]) -> None:
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in shapes.items():
        size = 4
        for dim in shape:
            size *= dim
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(offset))


def poison_tensor(weights: Path, name: str, value: float) -> None:
    """Make `value` the first element of the F32 tensor `name` (NaN, Inf...)."""
    raw = bytearray(weights.read_bytes())
    header_len = int.from_bytes(raw[:8], "little")
    begin = json.loads(raw[8 : 8 + header_len])[name]["data_offsets"][0]
    start = 8 + header_len + begin
    raw[start : start + 4] = struct.pack("<f", value)
    weights.write_bytes(bytes(raw))


# Nested far beyond the recursion limit: json and tomllib raise RecursionError on it.
DEEP = "[" * 10_000 + "]" * 10_000


def write_deep_header(weights: Path) -> None:
    """A safetensors file whose header is one value nested 10,000 deep."""
    raw = f'{{"x": {DEEP}}}'.encode()
    weights.write_bytes(struct.pack("<Q", len(raw)) + raw)


def write_adapter(
    path: Path,
    *,
    rank: int = 2,
    modules: tuple[str, ...] = ALL_MODULES,
    tensors: dict[str, list[int]] | None = None,
    **config: Any,
) -> Path:
    """A bare peft adapter directory; `config` overrides adapter_config.json fields."""
    path.mkdir(parents=True, exist_ok=True)
    adapter_config = {
        "peft_type": "LORA",
        "r": rank,
        "lora_alpha": 2 * rank,
        "target_modules": list(modules),
        "bias": "none",
        "use_dora": False,
        "modules_to_save": None,
        "base_model_name_or_path": BASE,
        **config,
    }
    (path / "adapter_config.json").write_text(json.dumps(adapter_config))
    write_safetensors(path / "adapter_model.safetensors", tensors or lora_tensors(rank, modules))
    return path


def write_bundle(
    path: Path,
    *,
    version: str = "1",
    system_prompt: str | None = None,
    defaults: dict[str, Any] | None = None,
    **adapter: Any,
) -> Path:
    write_adapter(path / "adapter", **adapter)
    manifest = PersonaManifest(
        version=version,
        description=f"test persona {path.name}",
        base_model=BASE,
        system_prompt=system_prompt,
        defaults=SamplingDefaultsSpec(**(defaults or {})),
    )
    write_manifest(path, manifest)
    return path


class CountingEngine(FakeEngine):
    """A fake whose adapter loads take a moment and are counted, and may be refused."""

    def __init__(self, load_delay: float = 0.02, **kwargs: Any):
        super().__init__(**{"hf_config": dict(TINY_MODEL), **kwargs})  # the engine's config
        self.load_delay = load_delay
        self.add_calls: list[int] = []
        self.remove_calls: list[int] = []
        self.refuse: set[str] = set()

    async def add_adapter(self, adapter: AdapterRef) -> None:
        self.add_calls.append(adapter.int_id)
        await asyncio.sleep(self.load_delay)
        if adapter.name.split("#")[0] in self.refuse:
            raise RuntimeError("refused by the test")
        await super().add_adapter(adapter)

    async def remove_adapter(self, int_id: int) -> None:
        self.remove_calls.append(int_id)
        await super().remove_adapter(int_id)


def make_settings(root: Path, **overrides: Any) -> ServerSettings:
    # The state directory beside the adapter root (the test's own): personas the API registers
    # are saved there, never in the developer's ~/.local/state.
    values: dict[str, Any] = {
        "adapter_root": [root],
        "persona_watch_interval": 0,
        "state_dir": root.parent / "state",
        **overrides,
    }
    return server_settings(**values)


def make_registry(settings: ServerSettings, engine: FakeEngine, model_dir: Path) -> PersonaRegistry:
    return PersonaRegistry(settings, engine, BASE, str(model_dir))


def persona_state_factory(engine: FakeEngine, model_dir: Path) -> StateFactory:
    @asynccontextmanager
    async def factory(settings: ServerSettings) -> AsyncIterator[AppState]:
        registry = make_registry(settings, engine, model_dir)
        async with personas_running(registry, settings):
            yield AppState(settings=settings, engine=engine, catalog=registry)

    return factory


def start(
    tmp_path: Path,
    engine: CountingEngine,
    root: Path,
    *,
    raise_server_exceptions: bool = True,
    **settings: object,
) -> TestClient:
    """The persona app over `engine` with `root` as its adapter root; entering it starts it."""
    model_dir = write_model_dir(tmp_path / "model")
    app = create_app(make_settings(root, **settings), persona_state_factory(engine, model_dir))
    return TestClient(app, raise_server_exceptions=raise_server_exceptions)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "adapters").mkdir()
    return tmp_path / "adapters"


@pytest.fixture
def engine() -> CountingEngine:
    return CountingEngine(load_delay=0)


@pytest.fixture
def raise_server_exceptions() -> bool:
    """Whether the test client re-raises the app's unhandled errors (a module may override)."""
    return True


@pytest.fixture
def client(
    tmp_path: Path, engine: CountingEngine, root: Path, raise_server_exceptions: bool
) -> Iterator[TestClient]:
    with start(
        tmp_path, engine, root, raise_server_exceptions=raise_server_exceptions
    ) as test_client:
        yield test_client
