"""The numbers inside an adapter: a finite scale of sane size, and weights without NaN or Inf.

Shapes can fit the model while the numbers are poison: one NaN in lora_B turns every reply of the
persona into garbage, and a scale of 1e30 overflows the activations just as surely. Nothing
further down checks either, so they are refused here, with the problem named.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Real adapters scale their update by lora_alpha / r of at most 64 (alpha = 2r is the usual
# recipe; rsLoRA's alpha / sqrt(r) stays lower still). A thousand leaves room for any recipe
# while refusing scales that exist only to overflow half-precision activations (fp16 ends at
# 65504, and the update is the scale times B @ A @ x).
MAX_LORA_SCALE = 1e3
_PEFT_DEFAULT_ALPHA = 8  # peft's LoraConfig default, used when the config has no lora_alpha


def scale_problem(config: dict[str, Any], ranks: Sequence[int]) -> str | None:
    """What is wrong with the adapter's scales (lora_alpha, alpha_pattern), if anything.

    `ranks` are r and the rank_pattern ranks, already checked to be positive ints. Which
    pattern applies to which module is peft's matching of module names, so the bound is taken
    over the worst pairing: the largest alpha over the smallest rank.
    """
    pattern = config.get("alpha_pattern") or {}
    if not isinstance(pattern, dict):
        return f"alpha_pattern {pattern!r} is not a mapping of module names to alphas"
    alphas = {"lora_alpha": config.get("lora_alpha", _PEFT_DEFAULT_ALPHA)}
    alphas.update({f"alpha_pattern['{key}']": value for key, value in pattern.items()})
    finite: dict[str, float] = {}
    for label, value in alphas.items():
        number = _finite(value)
        if number is None:
            return f"{label} is {value!r}, not a finite number"
        finite[label] = number
    label, alpha = max(finite.items(), key=lambda item: abs(item[1]))
    rank = min(ranks)
    rslora = bool(config.get("use_rslora"))
    scale = abs(alpha) / (math.sqrt(rank) if rslora else rank)
    if scale <= MAX_LORA_SCALE:
        return None
    formula = (
        f"{label} / sqrt(r) = {alpha:g} / sqrt({rank})"
        if rslora
        else (f"{label} / r = {alpha:g} / {rank}")
    )
    return f"its LoRA scale {formula} = {scale:g} is above {MAX_LORA_SCALE:g}"


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # a JSON int beyond any float
        return None
    return number if math.isfinite(number) else None


def non_finite_tensor(weights: Path) -> str | None:
    """The first tensor holding NaN or Inf, described; None when every value is finite.

    Reads every tensor: cheap at LoRA sizes (a few hundred MB at most, one tensor at a time).
    The header has been checked already, so the offsets read here are known to fit the file.
    """
    import torch
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        for name in f.keys():  # noqa: SIM118 (a safe_open handle is not a mapping)
            tensor = f.get_tensor(name)
            if not tensor.is_floating_point():
                continue
            values = tensor.float()  # isfinite is not implemented for every float8 type
            if not bool(torch.isfinite(values).all()):
                kind = "NaN" if bool(torch.isnan(values).any()) else "Inf"
                return f"the tensor '{name}' holds {kind} values"
    return None
