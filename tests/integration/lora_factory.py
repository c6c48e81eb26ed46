"""Real peft LoRA adapters on the embedded default model, made in the tests.

peft initialises B to zero, which makes an adapter a no-op; these draw B (and A) from a normal
distribution instead, so that each adapter visibly changes the output. `std` sets how much:
about 0.02 nudges the text, 1.0 turns it into unmistakable gibberish.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from loragate.adapters.manifest import LORA_TARGET_MODULES


@functools.cache
def _base_model_dir() -> Path:
    # The model the gateways serve when LORAGATE_MODEL names one (as in conftest.py).
    if model := os.environ.get("LORAGATE_MODEL"):
        return Path(model)
    from loragate.default_model import ensure_default_model

    return ensure_default_model()


def make_lora_adapter(
    out_dir: Path,
    *,
    seed: int,
    std: float,
    rank: int = 8,
    alpha: int = 16,
    targets: tuple[str, ...] = LORA_TARGET_MODULES,
    base: Path | None = None,
) -> Path:
    """Write a peft adapter (adapter_config.json, adapter_model.safetensors) into out_dir, for
    `base` (default: the embedded model)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base or _base_model_dir(), dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                param.normal_(0.0, std)
    out_dir.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(out_dir))
    return out_dir
