"""scripts/soak.py's pure parts (scripts/soak_report.py): what counts as ok, a clear error or
lost, the chaos timeline, the recovery time, the verdict; and, marked slow, a few seconds of
the whole loop over the fake engine (no vLLM)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from loragate.server.app import create_app
from scripts.soak import Run, parse_args, sample_after_recovery, soak
from scripts.soak_report import (
    OK,
    Outcome,
    Results,
    Rss,
    Tally,
    chaos_schedule,
    classify_response,
    classify_stream,
    classify_transport,
    growth_pct,
    outages,
    plan_call,
    recovery_after,
    sse_payloads,
    table,
)
from tests.unit.personas_support import (
    CountingEngine,
    make_settings,
    persona_state_factory,
    write_bundle,
    write_model_dir,
)


def envelope(code: str | None, type_: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"message": "no", "type": type_, "param": None, "code": code}}


def chunk(content: str, finish: str | None = None, index: int = 0) -> str:
    delta = {"content": content}
    return json.dumps({"choices": [{"index": index, "delta": delta, "finish_reason": finish}]})


def dumps(body: Any) -> bytes:
    return json.dumps(body).encode()


# -- Non-streamed replies -------------------------------------------------------------------


def test_a_200_completion_with_finish_reasons_is_ok() -> None:
    body = {"choices": [{"index": 0, "finish_reason": "stop"}, {"finish_reason": "length"}]}
    assert classify_response(200, dumps(body)) == OK


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (429, envelope("rate_limit_exceeded", "rate_limit_error"), "http 429 rate_limit_exceeded"),
        (404, envelope("model_not_found"), "http 404 model_not_found"),
        # No code: the envelope's type names the kind.
        (503, envelope(None, "service_unavailable_error"), "http 503 service_unavailable_error"),
    ],
)
def test_a_status_over_400_with_the_envelope_is_a_clear_error(
    status: int, body: dict[str, Any], kind: str
) -> None:
    assert classify_response(status, dumps(body)) == Outcome("error", kind)


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (502, b"<html>Bad Gateway</html>", "lost: http 502 bare"),
        (500, dumps({"detail": "boom"}), "lost: http 500 bare"),
        (500, dumps({"error": "a string, not an envelope"}), "lost: http 500 bare"),
        (200, b"not json", "lost: 200 without choices"),
        (200, dumps({"choices": []}), "lost: 200 without choices"),
        (200, dumps({"choices": [{"finish_reason": None}]}), "lost: 200 without finish_reason"),
        (204, b"", "lost: http 204"),
    ],
)
def test_anything_else_is_lost(status: int, body: bytes, kind: str) -> None:
    assert classify_response(status, body) == Outcome("lost", kind)


# -- Streams --------------------------------------------------------------------------------


def test_sse_payloads_are_the_data_fields() -> None:
    lines = ["data: {}", "", ": keep-alive", "event: x", "data:[DONE]"]
    assert sse_payloads(lines) == ["{}", "[DONE]"]


def test_a_stream_of_content_then_finish_then_done_is_ok() -> None:
    assert classify_stream([chunk("Hel"), chunk("lo"), chunk("", "stop"), "[DONE]"]) == OK


def test_a_usage_chunk_without_choices_is_part_of_a_good_stream() -> None:
    usage = json.dumps({"choices": [], "usage": {"completion_tokens": 2}})
    assert classify_stream([chunk("Hi", "length"), usage, "[DONE]"]) == OK


def test_every_choice_of_a_stream_must_finish() -> None:
    both = [chunk("a", index=0), chunk("b", index=1), chunk("", "stop", index=0)]
    assert classify_stream([*both, "[DONE]"]) == Outcome(
        "lost", "lost: [DONE] without finish_reason"
    )
    assert classify_stream([*both, chunk("", "stop", index=1), "[DONE]"]) == OK


def test_an_error_event_then_done_is_a_clear_error() -> None:
    events = [chunk("Hel"), json.dumps(envelope("engine_dead", "server_error")), "[DONE]"]
    assert classify_stream(events) == Outcome("error", "stream error engine_dead")


@pytest.mark.parametrize(
    ("events", "kind"),
    [
        ([chunk("Hel"), chunk("lo")], "lost: stream without [DONE]"),
        ([], "lost: stream without [DONE]"),
        ([chunk("Hel"), json.dumps(envelope("engine_dead"))], "lost: error event without [DONE]"),
        ([chunk("Hel"), "[DONE]"], "lost: [DONE] without finish_reason"),
        (["[DONE]"], "lost: [DONE] without content"),
        ([chunk("a", "stop"), "[DONE]", chunk("b")], "lost: events after [DONE]"),
        ([json.dumps(envelope("x")), chunk("a"), "[DONE]"], "lost: events after an error event"),
        (["{not json", "[DONE]"], "lost: an event that is no chunk"),
    ],
)  # fmt: skip
def test_a_stream_that_neither_finishes_nor_fails_clearly_is_lost(
    events: list[str], kind: str
) -> None:
    assert classify_stream(events) == Outcome("lost", kind)


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (httpx.ReadTimeout("slow"), "lost: timeout"),
        (TimeoutError(), "lost: timeout"),
        (httpx.RemoteProtocolError("cut"), "lost: connection (RemoteProtocolError)"),
        (httpx.ConnectError("refused"), "lost: connection (ConnectError)"),
    ],
)
def test_a_timeout_or_a_cut_connection_is_lost(exc: BaseException, kind: str) -> None:
    assert classify_transport(exc) == Outcome("lost", kind)


# -- Counting -------------------------------------------------------------------------------


def test_the_tally_counts_by_phase_and_kind_ok_first_lost_last() -> None:
    tally = Tally()
    refused = Outcome("error", "http 429 rate_limit_exceeded")
    timeout = Outcome("lost", "lost: timeout")
    for phase, outcome in [("traffic", OK), ("traffic", OK), ("burst", refused), ("burst", OK)]:
        tally.record(phase, outcome)
    tally.record("traffic", timeout)
    assert tally.total() == 5 and tally.total("ok") == 3 and tally.total("lost") == 1
    assert tally.total("ok", phase="burst") == 1
    assert tally.rows(["traffic", "burst"]) == [
        ["ok", "2", "1", "3"],
        ["http 429 rate_limit_exceeded", "0", "1", "1"],
        ["lost: timeout", "1", "0", "1"],
        ["total", "3", "2", "5"],
    ]


def test_latency_of_full_answers_in_the_traffic_only() -> None:
    tally = Tally()
    assert tally.latency() == "no full answer"
    for seconds in range(1, 101):
        tally.record("traffic", OK, float(seconds))
    tally.record("burst", OK, 1000.0)
    tally.record("traffic", Outcome("lost", "lost: timeout"), 500.0)
    assert tally.latency() == "p50 51.0 s, p95 96.0 s, max 100.0 s"


def test_plan_call_mixes_models_apis_and_streaming() -> None:
    rng = random.Random(0)
    calls = [plan_call(rng, "base", ["p1", "p2"], 32) for _ in range(2000)]
    models = [body["model"] for _, body in calls]
    assert 0.4 < models.count("base") / len(calls) < 0.6 and {"p1", "p2"} <= set(models)
    chat = [body for path, body in calls if path == "/v1/chat/completions"]
    completions = [body for path, body in calls if path == "/v1/completions"]
    assert 0.7 < len(chat) / len(calls) < 0.8 and all("messages" in b for b in chat)
    assert all("prompt" in b for b in completions)
    for bodies in (chat, completions):
        assert 0.4 < sum(b["stream"] for b in bodies) / len(bodies) < 0.6
    assert all(8 <= body["max_tokens"] <= 32 for _, body in calls)
    assert {body["model"] for _, body in (plan_call(rng, "base", [], 8) for _ in range(50))} == {
        "base"
    }


# -- The chaos timeline ---------------------------------------------------------------------


def test_chaos_comes_after_the_warmup_with_one_kill_and_one_burst() -> None:
    events = chaos_schedule(1800, 60, 30, kill=True, burst=True)
    actions = [e.action for e in events]
    assert actions.count("kill") == 1 and actions.count("burst") == 1
    assert actions.count("swap") >= 20 and actions.count("readd") >= 20
    assert all(60 < e.at < 60 + 0.9 * 1740 for e in events)
    assert [e.at for e in events] == sorted(e.at for e in events)
    kill = next(e.at for e in events if e.action == "kill")
    assert kill < 1800 / 2  # the new engine warms up again before the end's RSS sample


def test_a_short_run_still_swaps_and_readds_once() -> None:
    events = chaos_schedule(100, 60, 300, kill=False, burst=False)
    assert sorted(e.action for e in events) == ["readd", "swap"]
    assert all(60 < e.at < 100 for e in events)


def test_the_duration_must_exceed_the_warmup() -> None:
    with pytest.raises(ValueError):
        chaos_schedule(60, 60, 30, kill=True, burst=True)


# -- Recovery and RSS -----------------------------------------------------------------------

HEALTH = [
    (0.0, "ok"),
    (10.0, "ok"),  # the kill at 10.1: still ok until the gateway notices
    (10.2, "ok"),
    (11.3, "recovering"),
    (30.0, "unreachable"),
    (40.3, "ok"),
    (50.0, "failed"),
    (52.0, "ok"),
]


def test_the_recovery_runs_from_the_kill_to_the_first_ok_after_an_unhealthy_answer() -> None:
    assert recovery_after(HEALTH, 10.1) == pytest.approx(30.2)
    assert recovery_after(HEALTH, 41.0) == pytest.approx(11.0)


def test_no_recovery_when_health_never_went_bad_or_never_came_back() -> None:
    assert recovery_after([(0.0, "ok"), (1.0, "ok")], 0.5) is None
    assert recovery_after([(1.0, "recovering"), (2.0, "failed")], 0.5) is None


def test_outages_are_the_spans_of_non_ok_answers() -> None:
    assert outages(HEALTH) == [(11.3, 40.3), (50.0, 52.0)]
    assert outages([(0.0, "ok"), (1.0, "recovering")]) == [(1.0, None)]


def test_growth_pct() -> None:
    assert growth_pct(100, 105) == pytest.approx(5.0)
    assert growth_pct(200, 150) == pytest.approx(-25.0)
    assert growth_pct(0, 10) == 0.0


def results(tally: Tally, rss: list[Rss], kill_at: float | None = 10.1) -> Results:
    return Results(
        tally=tally,
        chaos=[(10.1, "kill", "SIGKILL VLLM::EngineCore pid 7")],
        health=HEALTH,
        kill_at=kill_at,
        rss=rss,
        elapsed=60,
        ended_at=60,
        concurrency=16,
        warmup=5,
        max_growth_pct=5.0,
        kill_asked=True,
    )


MIB = 2**20
FLAT = [Rss("gateway", 100 * MIB, 104 * MIB, 102 * MIB, 103 * MIB), Rss("engine", 2**30, 2**30)]


def test_a_run_passes_with_clear_errors_flat_rss_and_a_recovery() -> None:
    tally = Tally()
    tally.record("traffic", OK, 2.0)
    tally.record("traffic", Outcome("error", "stream error engine_dead"))
    run = results(tally, FLAT)
    assert run.failures() == []
    text = run.render()
    assert "| ok " in text and "| stream error engine_dead" in text and "requests lost: 0" in text
    assert "full answers took p50 2.0 s, p95 2.0 s, max 2.0 s; 0.0 requests/s" in text
    assert "/health ok after 30.2 s" in text and "longest non-ok /health span: 29.0 s" in text
    gateway = "| gateway |     100.0 |           102.0 |              103.0 |   104.0 | +4.0 % |"
    assert gateway + "         +1.0 % |" in text
    engine = "| engine  |    1024.0 |               - |                  - |  1024.0 | +0.0 % |"
    assert engine + "              - |" in text
    assert text.endswith("PASS")
    assert json.loads(json.dumps(run.as_json()))["recovery_s"] == pytest.approx(30.2)


def test_a_run_fails_on_a_lost_request_rss_growth_or_no_recovery() -> None:
    tally = Tally()
    tally.record("traffic", OK)
    tally.record("traffic", Outcome("lost", "lost: timeout"))
    grown = [Rss("gateway", 100, 106), Rss("engine", 0, 50)]  # no start sample: not judged
    # Killed at 45 s: /health failed at 50 s, ok at 52 s, so the engine came back.
    failures = results(tally, grown, kill_at=45.0).failures()
    assert failures == ["1 request(s) lost", "gateway RSS grew 6.0 % (over 5 %)"]
    never = results(tally, FLAT, kill_at=53.0).failures()
    assert "the engine did not come back after the kill (/health never ok again)" in never
    assert "the engine core was not killed (none found)" in results(Tally(), FLAT, None).failures()
    assert "no request succeeded" in results(Tally(), FLAT).failures()


def test_table_is_markdown_with_numbers_right_aligned() -> None:
    assert table(["a", "n"], [["x", "1"], ["yy", "10"]]).splitlines() == [
        "| a  | n  |",
        "|----|----|",
        "| x  |  1 |",
        "| yy | 10 |",
    ]


def test_the_flags_default_to_the_30_minute_run_at_16() -> None:
    args = parse_args([])
    assert (args.concurrency, args.duration, args.warmup, args.kill, args.burst) == (
        16,
        1800,
        60,
        True,
        True,
    )
    assert parse_args(["--no-kill", "--duration", "120", "--warmup", "20"]).kill is False
    with pytest.raises(SystemExit):
        parse_args(["--duration", "30", "--warmup", "60"])


# -- The whole loop, over the fake engine ---------------------------------------------------


@pytest.fixture
def fake_gateway(tmp_path: Path) -> Iterator[tuple[str, list[Path]]]:
    """The persona app over a fake engine, served by uvicorn in a thread; two bundles."""
    root = tmp_path / "adapters"
    bundles = [write_bundle(root / name) for name in ("a", "b")]
    model_dir = write_model_dir(tmp_path / "model")
    factory = persona_state_factory(CountingEngine(load_delay=0), model_dir)
    app = create_app(make_settings(root, log_level="warning"), factory)
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listening]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{listening.getsockname()[1]}", bundles
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        listening.close()


@pytest.mark.slow
async def test_a_short_soak_over_the_fake_engine_loses_nothing(
    fake_gateway: tuple[str, list[Path]],
) -> None:
    url, bundles = fake_gateway
    flags = ["--url", url, "--duration", "3", "--warmup", "1", "--churn-interval", "0.4"]
    flags += ["--no-kill", "--concurrency", "4", "--max-num-seqs", "2"]
    flags += ["--max-waiting-requests", "2", "--readd-gap", "0.2"]
    run = Run(parse_args(flags), url, None, bundles=bundles)
    rss = await soak(run)
    assert run.tally.total("lost") == 0 and run.tally.total("ok", phase="traffic") > 10
    assert run.tally.total(phase="burst") == 3 * (2 + 2)
    actions = {action for _, action, _ in run.chaos_log}
    assert actions == {"burst", "swap", "readd"}, run.chaos_log
    assert all("FAILED" not in result for _, _, result in run.chaos_log), run.chaos_log
    assert run.health and all(status == "ok" for _, status in run.health)
    assert rss == []  # no process to measure


async def test_rss_is_sampled_a_warmup_after_the_recovery() -> None:
    run = Run(parse_args(["--warmup", "0.2", "--duration", "10"]), "http://x", os.getpid())
    run.kill_at = run.now()
    sampling = asyncio.create_task(sample_after_recovery(run))
    run.health.append((run.now(), "recovering"))
    await asyncio.sleep(0.3)
    assert run.rss_after_recovery is None  # not back yet
    run.health.append((run.now(), "ok"))
    await asyncio.wait_for(sampling, 5)
    assert run.rss_after_recovery is not None and run.rss_after_recovery[0] > 0
