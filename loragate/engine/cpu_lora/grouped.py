"""vLLM's CPU LoRA `bgmv_*` ops, computed as a few matrix products instead of one per token.

vLLM's pure-PyTorch ops (`vllm/lora/ops/torch_ops/lora_ops.py`) gather a copy of the adapter
matrix for every token (`weights[indices]`) and multiply token by token (a batched matrix-vector
product). A 100-token prompt on a persona copies its adapter 100 times per projection per layer:
on the CPU that made a persona's prefill about 9 times slower than the base model's. Here:

- a batch on one adapter, or whose adapters have `GROUPED_MIN_ROWS` tokens each (prefill), is
  one GEMM per adapter against the adapter's matrix, read in place;
- a batch of fewer tokens per adapter over several adapters (a decode step of many mixed
  personas) is one GEMM against all the engine's adapter slots stacked, each token keeping its
  own slot's block: more arithmetic, but one call instead of one per adapter or per token.
  Below `STACKED_MIN_ROWS` tokens vLLM's per-token op is faster; the isolation wrapper
  sends such batches to it.

Tokens with slot -1 (no adapter) are never written, as in vLLM's GPU kernels. The signatures
and the arithmetic (inputs and weights cast to the output's dtype, shrink scaled, expand adding
or assigning, padding trimmed to the common width) are vLLM's; only the order of the summation
inside a product may differ, as between any two GEMM shapes.

Measured (`PYTHONPATH=. python scripts/isolation_check.py ops`; shrink + expand, hidden 576 ->
rank 16 -> 1536, bf16, 8 slots, 2 threads as in the engine's worker here; vLLM's op / these):
1600 tokens on 1 adapter 61.9 / 1.6 ms, on 8 adapters 63.0 / 3.8 ms; 256 tokens on 8 adapters
2.72 / 0.76 ms; 64 on 8 0.74 / 0.37 ms; 32 on 8 0.45 / 0.32 ms; 16 on 1 0.30 / 0.12 ms.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

_FEW_ROWS = 256
# From this many tokens per adapter, one GEMM per adapter beats one against every slot (one
# thread): 256 tokens on 2 adapters 0.92 vs 1.23 ms, on 8 adapters 1.62 vs 1.32 ms; 64 on 2
# about equal.
GROUPED_MIN_ROWS = 64
# From this many tokens over several adapters, the stacked GEMM beats vLLM's per-token op, on
# the worker's 2 threads here: 16 tokens on 8 adapters 0.46 vs 0.36 ms, 32 on 8 0.41 vs 0.74,
# 64 on 8 0.45 vs 1.45, 128 on 8 0.75 vs 2.62 (shrink + expand pairs).
STACKED_MIN_ROWS = 32


def bgmv_shrink(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    scaling: float = 1.0,
    *,
    slots: list[int] | None = None,
) -> None:
    for rows, product in _products(
        inputs, lora_b_weights, output_tensor, lora_indices_tensor, slots
    ):
        output_tensor[rows, : product.shape[1]] = scaling * product


def bgmv_expand(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    add_inputs: bool = True,
    *,
    slots: list[int] | None = None,
) -> None:
    # vLLM's adapter and model may pad the output differently: write the common width.
    width = min(lora_b_weights.shape[-2], output_tensor.shape[1])
    for rows, product in _products(
        inputs, lora_b_weights, output_tensor, lora_indices_tensor, slots
    ):
        if add_inputs:
            output_tensor[rows, :width] += product[:, :width]
        else:
            output_tensor[rows, :width] = product[:, :width]


def bgmv_expand_slice(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    slice_offset: int,
    slice_size: int,
    add_inputs: bool = True,
    *,
    slots: list[int] | None = None,
) -> None:
    end = slice_offset + slice_size
    for rows, product in _products(
        inputs, lora_b_weights, output_tensor, lora_indices_tensor, slots
    ):
        if add_inputs:
            output_tensor[rows, slice_offset:end] += product
        else:
            output_tensor[rows, slice_offset:end] = product


def _products(
    inputs: torch.Tensor,
    weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices: torch.Tensor,
    slots: list[int] | None,
) -> Iterator[tuple[torch.Tensor | slice, torch.Tensor]]:
    """Rows of the batch and their products with their adapters' matrices."""
    slots = distinct_slots(lora_indices) if slots is None else slots
    adapters = sum(1 for slot in slots if slot >= 0)
    if adapters == 0:
        return
    dtype = output_tensor.dtype
    if len(slots) == 1 or lora_indices.shape[0] >= GROUPED_MIN_ROWS * adapters:
        for slot, rows in _slot_rows(lora_indices, slots):
            yield rows, _select(inputs, rows).to(dtype) @ _matrix(weights, slot).to(dtype).T
    else:
        rows = slice(None) if slots[0] >= 0 else adapter_rows(lora_indices)
        selected = _select(inputs, rows).to(dtype)
        yield rows, _stacked_product(selected, weights.to(dtype), _select(lora_indices, rows))


def _stacked_product(
    inputs: torch.Tensor, weights: torch.Tensor, lora_indices: torch.Tensor
) -> torch.Tensor:
    """Row i times the matrix of slot lora_indices[i], through one GEMM over every slot."""
    import torch

    slot_count, width_out, width_in = weights.shape[0], weights.shape[-2], weights.shape[-1]
    stack = weights.reshape(slot_count, width_out, width_in)
    rows = inputs.shape[0]
    if width_out <= width_in:  # shrink: every slot's (small) output, then each row's block
        every_slot = inputs @ stack.reshape(slot_count * width_out, width_in).T
        return every_slot.view(rows, slot_count, width_out)[torch.arange(rows), lora_indices]
    # expand: each row's input placed in its slot's block of a wide input, zeros elsewhere
    placed = inputs.new_zeros(rows, slot_count, width_in)
    placed[torch.arange(rows), lora_indices] = inputs
    by_input = stack.permute(1, 0, 2).reshape(width_out, slot_count * width_in)
    return placed.view(rows, slot_count * width_in) @ by_input.T


def _matrix(weights: torch.Tensor, slot: int) -> torch.Tensor:
    matrix = weights[slot]
    return matrix.squeeze(0) if matrix.dim() == 3 else matrix  # vLLM's (slots, 1, out, in)


def _select(tensor: torch.Tensor, rows: torch.Tensor | slice) -> torch.Tensor:
    return tensor[rows] if isinstance(rows, slice) else tensor.index_select(0, rows)


def adapter_rows(lora_indices: torch.Tensor) -> torch.Tensor:
    """The indices of the rows that have an adapter (slot >= 0)."""
    return (lora_indices >= 0).nonzero().squeeze(1)


def distinct_slots(lora_indices: torch.Tensor) -> list[int]:
    """The batch's slots, -1 included; sorted."""
    if lora_indices.shape[0] <= _FEW_ROWS:  # a decode step: cheaper in Python than torch.unique
        return sorted(set(lora_indices.tolist()))
    import torch

    slots: list[int] = torch.unique(lora_indices).tolist()
    return slots


def _slot_rows(
    lora_indices: torch.Tensor, slots: list[int]
) -> Iterator[tuple[int, torch.Tensor | slice]]:
    if len(slots) == 1:  # one adapter: all rows, without gathering them
        yield slots[0], slice(None)
        return
    for slot in slots:
        if slot >= 0:
            yield slot, (lora_indices == slot).nonzero().squeeze(1)
