"""vLLM's CPU LoRA `bgmv_*` ops, computed one matrix product per adapter instead of per token.

vLLM's pure-PyTorch ops (`vllm/lora/ops/torch_ops/lora_ops.py`) gather a copy of the adapter
matrix for every token (`weights[indices]`) and multiply token by token (a batched matrix-vector
product). A 100-token prompt on a persona copies its adapter 100 times per projection per layer:
on the CPU that made a persona's prefill about 9 times slower than the base model's. Here the
tokens are grouped by adapter slot and each group is one GEMM against the slot's matrix, read in
place. Tokens with slot -1 (no adapter) are not touched, as in vLLM's GPU kernels.

The signatures and the arithmetic (inputs and weights cast to the output's dtype, shrink scaled,
expand adding or assigning, padding trimmed to the common width) are vLLM's; only the order of
the summation inside a product differs, as between any two GEMM shapes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

_FEW_ROWS = 256


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
    """For each adapter slot in the batch: its rows and their product with its matrix."""
    dtype = output_tensor.dtype
    for slot, rows in _slot_rows(
        lora_indices, distinct_slots(lora_indices) if slots is None else slots
    ):
        matrix = weights[slot]
        if matrix.dim() == 3:  # (1, out, in): vLLM's 4-D weight stacks
            matrix = matrix.squeeze(0)
        selected = inputs[rows] if isinstance(rows, slice) else inputs.index_select(0, rows)
        yield rows, selected.to(dtype) @ matrix.to(dtype).T


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
    if len(slots) == 1 and slots[0] >= 0:  # one adapter: all rows, without gathering them
        yield slots[0], slice(None)
        return
    for slot in slots:
        if slot >= 0:
            yield slot, (lora_indices == slot).nonzero().squeeze(1)
