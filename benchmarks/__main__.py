"""`python -m benchmarks [--quick]`: see benchmarks/README.md and the README's Performance."""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import tempfile
from pathlib import Path

from benchmarks.plan import FULL, QUICK

RESULTS = Path(__file__).parent / "results"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Start loragate, vLLM's OpenAI server, the tutorial's server and loragate "
        "over an instant engine, one at a time on the same model; drive the same requests at "
        "each; write results.md, results.json and PNG plots; print each target as PASS/FAIL.",
    )
    parser.add_argument("--quick", action="store_true", help="a few minutes: fewer levels")
    parser.add_argument(
        "--out", type=Path, help=f"results directory (default {RESULTS}, or quick/ under it)"
    )
    parser.add_argument(
        "--servers",
        default="loragate,vllm,tutorial,instant",
        help="comma-separated subset of loragate,vllm,tutorial,instant",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        metavar="LOAD",
        help="first wait until the 1-minute load is under LOAD and other processes use under "
        "0.1 core; then wait for them to be quiet before each level, and run a level again "
        "(up to 3 times) when they used over 0.25 core while it ran",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # A SIGTERM unwinds like Ctrl-C, so that every server started is stopped with its children.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    from benchmarks import machine, runner

    plan = QUICK if args.quick else FULL
    out_dir = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = set(servers) - set(runner.ALL_SERVERS)
    if unknown:
        raise SystemExit(f"unknown servers: {', '.join(sorted(unknown))}")
    if args.wait_quiet is not None:
        machine.wait_until_quiet(args.wait_quiet)
    command = shlex.join(["python", "-m", "benchmarks", *(argv or sys.argv[1:])])
    work = Path(tempfile.mkdtemp(prefix="loragate-bench-"))  # kept: the servers' logs
    print(f"server logs and wrk scripts in {work}")
    passed = runner.run(plan, out_dir, work, servers, command, quiet=args.wait_quiet is not None)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
