"""The numbers inside an adapter: a finite scale of sane size, and weights without NaN or Inf.

Shapes can fit the model while the numbers are poison: one NaN in lora_B turns every reply of the
persona into garbage, and a scale of 1e30 overflows the activations just as surely. Nothing
further down checks either, so they are refused here, with the problem named.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from loragate.adapters.safetensors_header import TensorInfo

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


# A float is NaN or Inf when its exponent bits are all ones (Inf: and its mantissa all zeros):
# (the unsigned integer of its width, the exponent's bits, the mantissa's). float8 e4m3fn is
# apart: no Inf, and NaN only with every exponent and mantissa bit set.
_IEEE_BITS: dict[str, tuple[type[np.unsignedinteger[Any]], int, int]] = {
    "F64": (np.uint64, 0x7FF0_0000_0000_0000, 0x000F_FFFF_FFFF_FFFF),
    "F32": (np.uint32, 0x7F80_0000, 0x007F_FFFF),
    "F16": (np.uint16, 0x7C00, 0x03FF),
    "BF16": (np.uint16, 0x7F80, 0x007F),
    "F8_E5M2": (np.uint8, 0x7C, 0x03),
    "F8_E4M3": (np.uint8, 0x7F, 0x00),
}
_CHUNK_BYTES = 64 * 1024 * 1024  # the bool masks of one chunk at a time, whatever the tensor


def non_finite_tensor(weights: Path, tensors: Mapping[str, TensorInfo]) -> str | None:
    """The first tensor holding NaN or Inf, described; None when every value is finite.

    Reads the bits of every float tensor in place (a memory map, no torch): cheap at LoRA sizes.
    `tensors` is the file's header, already checked, so its spans are known to fit the file.
    """
    data = np.memmap(weights, dtype=np.uint8, mode="r")
    for name, info in tensors.items():
        bits = _IEEE_BITS.get(info.dtype)
        if bits is None:  # an integer or bool tensor
            continue
        begin, end = info.span
        kind = _special_kind(data[begin:end], *bits)
        if kind is not None:
            return f"the tensor '{name}' holds {kind} values"
    return None


def _special_kind(
    raw: np.ndarray[Any, np.dtype[np.uint8]],
    width: type[np.unsignedinteger[Any]],
    exponent: int,
    mantissa: int,
) -> str | None:
    step = _CHUNK_BYTES - _CHUNK_BYTES % np.dtype(width).itemsize
    for start in range(0, len(raw), step):
        values = raw[start : start + step].view(width)
        special = values[(values & width(exponent)) == width(exponent)]
        if special.size:
            return "NaN" if mantissa == 0 or bool((special & width(mantissa)).any()) else "Inf"
    return None
