"""The benchmark's arithmetic: percentiles, level figures, targets, wrk output, the report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks.loadgen import LevelRun, RequestRecord
from benchmarks.overhead import OverheadResult, define_keys, parse_wrk, wrk_script
from benchmarks.plan import BASE, FULL, MIX8, PERSONA, QUICK
from benchmarks.plots import write_plots
from benchmarks.report import BenchResults, markdown, write
from benchmarks.runner import stages
from benchmarks.servers import LORAGATE, TUTORIAL, VLLM
from benchmarks.stats import ColdStart, LevelResult, percentile, summarise
from benchmarks.targets import evaluate
from loragate.tenants.key_store import KeyStore
from loragate.tenants.keys import digest


def test_percentile_interpolates_like_numpy() -> None:
    assert percentile([3.0, 1.0, 2.0, 4.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 95) == pytest.approx(4.8)
    assert percentile([7.0], 95) == 7.0
    assert math.isnan(percentile([], 50))


def test_summarise_counts_tokens_over_wall_time_and_keeps_errors_apart() -> None:
    good = [
        RequestRecord(True, start=0.0, end=1.0, ttft=0.1, itl=[0.02, 0.04], output_tokens=3),
        RequestRecord(True, start=0.5, end=2.0, ttft=0.3, itl=[0.06], output_tokens=2),
    ]
    bad = RequestRecord(False, start=0.0, end=0.1, error="HTTP 500: boom")
    runs = [LevelRun([good[0], bad], wall_s=1.5, load_1min=0.3), LevelRun([good[1]], wall_s=0.5)]
    result = summarise(LORAGATE, BASE, 2, runs)
    assert (result.requests, result.errors) == (3, 1)
    assert result.output_tokens_per_s == 2.5
    assert result.requests_per_s == 1.0
    assert result.ttft_p50_ms == pytest.approx(200.0)
    assert result.itl_p50_ms == pytest.approx(40.0)
    assert result.first_error == "HTTP 500: boom"
    assert (result.passes, result.load_1min_max) == (2, 0.3)


def _level(server: str, workload: str, c: int, tok_s: float, ttft: float) -> LevelResult:
    return LevelResult(server, workload, c, 10, 0, 1.0, 1.0, tok_s, ttft, ttft, 5, 5, 100, 32, 90)


def test_targets_pass_and_fail_on_the_measured_figures() -> None:
    levels = [
        _level(LORAGATE, BASE, 1, 96.0, 50.0),
        _level(VLLM, BASE, 1, 100.0, 48.0),
        _level(LORAGATE, BASE, 16, 90.0, 80.0),  # 0.9 x vLLM: below 0.95
        _level(VLLM, BASE, 16, 100.0, 60.0),  # TTFT 1.33 x: above 1.1
        _level(TUTORIAL, BASE, 16, 5.0, 9000.0),  # 18 x
        _level(LORAGATE, PERSONA, 16, 50.0, 100.0),
        _level(LORAGATE, MIX8, 16, 39.0, 100.0),  # 0.78 x
    ]
    cold = [ColdStart(LORAGATE, [400.0, 420.0], [100.0, 110.0], 0)]
    overhead = [
        OverheadResult(False, 1, 1000, 0, 900.0, 1.5, 2.0, 3.0),
        OverheadResult(False, 64, 9000, 0, 1200.0, 50.0, 60.0, 70.0),
    ]
    checks = {c.target: c for c in evaluate(levels, cold, overhead, (1, 16))}
    verdicts = [c.passed for c in checks.values()]
    assert verdicts == [True, True, False, False, True, False, False, True, True]
    cold_check = next(c for c in checks.values() if "cold" in c.target)
    assert "+305.0 ms" in cold_check.measured
    assert any("1200 requests/s" in c.measured for c in checks.values())


def test_a_missing_measurement_fails_its_target() -> None:
    checks = evaluate([], [], [], (1,))
    assert checks and not any(c.passed for c in checks)
    assert all("not measured" in c.measured for c in checks)


def test_wrk_lua_embeds_the_body_and_its_report_parses() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "50% ]] off"}]}
    script = wrk_script(body)
    assert f"[==[{json.dumps(body)}]==]" in script
    assert "%d" in script and "%%" not in script
    output = (
        'Running 1s test\nWRK_JSON {"requests": 500, "duration_us": 2000000, "errors": 1, '
        '"non_2xx": 2, "p50_us": 1500, "p90_us": 2500, "p99_us": 9000, "mean_us": 1600.0}\n'
    )
    result = parse_wrk(output, stream=True, concurrency=64)
    assert result == OverheadResult(True, 64, 500, 3, 250.0, 1.5, 2.5, 9.0)


def test_plans_bound_the_requests_and_make_personas_for_their_mixes() -> None:
    assert FULL.requests_at(16) == 32 and FULL.requests_at(64) == FULL.max_requests == 64
    assert FULL.requests_at(1) == FULL.min_requests
    assert FULL.requests_at(1, PERSONA) == 4 and FULL.requests_at(16, MIX8) == 16
    assert FULL.personas_needed == 8 and QUICK.personas_needed == 8
    assert set(FULL.concurrencies) == {1, 4, 16, 64}


def test_base_passes_run_abba_and_only_loragate_does_cold_trials() -> None:
    order = [
        (stage.server, {(lv.workload, lv.run_pass) for lv in stage.levels}, stage.cold_trials)
        for stage in stages(FULL, [LORAGATE, VLLM, TUTORIAL])
    ]
    every = {(w, 0) for w in FULL.workloads}
    assert order == [
        (LORAGATE, every, True),
        (VLLM, every | {(BASE, 1)}, False),
        (LORAGATE, {(BASE, 1)}, False),
        (TUTORIAL, {(BASE, 0)}, False),
    ]
    assert [s.server for s in stages(QUICK, [VLLM, LORAGATE])] == [LORAGATE, VLLM]


@pytest.mark.slow  # matplotlib: 3 s to import it and draw four figures
def test_report_writes_json_markdown_and_plots(tmp_path: Path) -> None:
    levels = [_level(s, BASE, c, 100.0 * c, 50.0) for s in (LORAGATE, VLLM) for c in (1, 16)]
    overhead = [OverheadResult(False, 1, 1000, 0, 900.0, 1.5, 2.0, 3.0)]
    meta = {
        "command": "python -m benchmarks --quick",
        "plan": {**QUICK.__dict__, "workloads": [BASE]},
        "started": "2026-01-01T00:00:00+00:00",
        "duration_min": 3.5,
        "commit": "abc1234",
        "cpus": 2,
        "vllm_version": "0.32.0",
        "load_start": (0.1, 0.2, 0.3),
        "load_end": (0.5, 0.4, 0.3),
        "others_at_start": {"cores": 0.01, "busy": []},
        "disturbed_cores": 0.25,
        "max_attempts": 3,
        "model": "SmolLM2-135M-Instruct",
        "isolation_plugin": True,
        "startup_s": {LORAGATE: 30.0},
    }
    results = BenchResults(meta, levels, [], overhead, evaluate(levels, [], overhead, (1, 16)))
    plots = write_plots(levels, [BASE], overhead, tmp_path)
    report = write(results, tmp_path, plots)
    assert {p.name for p in tmp_path.glob("*.png")} == {
        "throughput.png", "ttft.png", "itl.png", "overhead.png"
    }  # fmt: skip
    text = report.read_text()
    assert text == markdown(results, plots)
    assert "| **PASS** | base model, concurrency 1: loragate output tokens/s" in text
    assert "| loragate | 16 | 10 | 0 | 90 | 1.00 | 1600.0 | 1.00 x |" in text
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["levels"][0]["server"] == LORAGATE and len(saved["targets"]) == len(results.checks)


def test_the_overhead_targets_are_checked_with_keys_defined_too() -> None:
    overhead = [
        OverheadResult(False, 1, 1000, 0, 900.0, 1.5, 2.0, 3.0),
        OverheadResult(False, 1, 1000, 0, 450.0, 2.2, 3.0, 4.0, keys=1000),
    ]
    checks = {c.target: c.passed for c in evaluate([], [], overhead, (1,)) if "instant" in c.target}
    assert checks == {
        "instant engine: >= 500 non-streamed requests/s": True,
        "instant engine: <= 2 ms added latency p50, non-streamed, concurrency 1": True,
        "instant engine, 1000 keys defined: >= 500 non-streamed requests/s": False,
        "instant engine, 1000 keys defined: <= 2 ms added latency p50, non-streamed, "
        "concurrency 1": False,
    }


def test_a_wrk_script_with_a_key_sends_it() -> None:
    script = wrk_script({"model": "m"}, key="lg-secret")
    assert 'wrk.headers["Authorization"] = "Bearer lg-secret"' in script


def test_keys_for_the_overhead_run_are_stored_with_limits(tmp_path: Path) -> None:
    secret = define_keys(tmp_path, 5)
    store = KeyStore(tmp_path)
    try:
        keys = store.keys()
    finally:
        store.close()
    assert len(keys) == 5 and digest(secret) in keys
    assert all(key.limits.rpm for key in keys.values())
