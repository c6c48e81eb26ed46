"""The `loragate` command."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from loragate.cli_settings import add_settings_arguments, settings_from_arguments
from loragate.settings import ServerSettings

Handler = Callable[[argparse.Namespace], int]


def _serve(args: argparse.Namespace) -> int:
    from loragate.serve import run_server

    if args.config is not None:
        os.environ["LORAGATE_CONFIG"] = str(args.config)  # read by the settings' TOML source
    run_server(settings_from_arguments(ServerSettings, args))
    return 0


def _engine_args(args: argparse.Namespace) -> int:
    import json

    from loragate.engine.engine_args import describe, detect_platform, simulated_platform
    from loragate.server.runtime import resolve_model

    if args.config is not None:
        os.environ["LORAGATE_CONFIG"] = str(args.config)
    settings = settings_from_arguments(ServerSettings, args)
    platform = (
        detect_platform()
        if args.platform == "detected"
        else simulated_platform(args.platform, args.device_memory_gib, args.device_name)
    )
    model_path, served_name = resolve_model(settings)
    print(json.dumps(describe(settings, model_path, served_name, platform), indent=2))
    return 0


def _prepare_model(_: argparse.Namespace) -> int:
    from loragate.default_model import ensure_default_model

    print(ensure_default_model())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loragate",
        description="OpenAI-compatible gateway for Llama-3.1 with hot-loaded LoRA personas.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser(
        "serve",
        help="run the gateway (OpenAI API on --port, the tutorial's POST / on --legacy-port)",
        description="Run the gateway. Every flag also reads LORAGATE_<NAME> from the environment "
        "and from a TOML file named by LORAGATE_CONFIG; flags win.",
    )
    serve.add_argument(
        "--config", type=Path, help="TOML file of settings (keys as the flags, with underscores)"
    )
    add_settings_arguments(serve, ServerSettings)
    serve.set_defaults(handler=_serve)
    _add_engine_args_command(sub)
    prepare = sub.add_parser(
        "prepare-model",
        help="convert the embedded SmolLM2-135M-Instruct once (serve does it on first use)",
    )
    prepare.set_defaults(handler=_prepare_model)
    for register in _extra_commands():
        register(sub)
    return parser


def _add_engine_args_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    command = sub.add_parser(
        "engine-args",
        help="print the vLLM engine arguments `serve` would use, without starting the engine",
        description="Print, as JSON, the engine arguments `loragate serve` with the same flags "
        "would pass to vLLM, what it leaves to vLLM's own defaults, and the model's own context "
        "length (read from its config, no weights). --platform shows another host's: e.g. "
        "--platform cuda --device-memory-gib 80 for an 80 GB GPU.",
    )
    command.add_argument("--config", type=Path, help="TOML file of settings, as for serve")
    command.add_argument(
        "--platform",
        choices=["detected", "cpu", "cuda", "rocm"],
        default="detected",
        help="the platform to resolve for (default: the one vLLM detects here)",
    )
    command.add_argument(
        "--device-memory-gib", type=float, default=0, help="with --platform cuda: GPU memory"
    )
    command.add_argument(
        "--device-name", default="", help="with --platform cuda: its name (vLLM treats A100 apart)"
    )
    add_settings_arguments(command, ServerSettings)
    command.set_defaults(handler=_engine_args)


def _extra_commands() -> list[
    Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]
]:
    """Commands that live beside their feature (training, clients, benchmarks)."""
    from loragate.adapters.training.cli import add_train_command
    from loragate.clients.chat import register_chat_command
    from loragate.download import add_download_command
    from loragate.tenants.cli import add_keys_command

    return [register_chat_command, add_train_command, add_download_command, add_keys_command]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
