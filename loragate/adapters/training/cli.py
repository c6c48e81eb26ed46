"""The `loragate train` subcommand."""

from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError

from loragate.adapters.training.recipe import TrainSettings
from loragate.cli_settings import add_settings_arguments, settings_from_arguments
from loragate.validation_errors import first_problem


def add_train_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "train",
        help="train a LoRA persona on an instruction data set (the tutorial's recipe)",
        description="Fine-tune a LoRA persona with the Llama-3.1 tutorial's recipe and write a "
        "persona bundle for --personas-dir or PUT /v1/personas/NAME. Every flag also reads "
        "LORAGATE_TRAIN_<NAME> from the environment.",
    )
    add_settings_arguments(parser, TrainSettings)
    # Publishing flags, not part of the recipe.
    parser.add_argument(
        "--register",
        metavar="URL",
        help="gateway URL: PUT the bundle to /v1/personas/NAME there, as a new version",
    )
    parser.add_argument("--api-key", help="bearer key for --register (the gateway's admin key)")
    parser.set_defaults(handler=run_train)


def run_train(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_arguments(TrainSettings, args)
    except ValidationError as exc:
        problem = first_problem(exc.errors())
        flag = problem.dotted("-")
        detail = f"--{flag.replace('_', '-')}: {problem.message}" if flag else problem.message
        print(f"loragate train: {detail}")
        return 2
    return _train(settings, args.register, args.api_key)


def _train(settings: TrainSettings, register: str | None, api_key: str | None) -> int:
    from loragate.adapters.manifest import ManifestError
    from loragate.adapters.training.bundle import RegistrationError, register_bundle
    from loragate.adapters.training.dataset import DatasetError
    from loragate.adapters.training.formatting import TrainingFormatError
    from loragate.adapters.training.trainer import TrainingError, train_persona

    try:
        result = train_persona(settings)
    except (DatasetError, TrainingFormatError, TrainingError, ManifestError) as exc:
        print(f"loragate train: {exc}", file=sys.stderr)
        return 1
    manifest = result.manifest
    print(
        f"Wrote persona {manifest.name!r} version {manifest.version} to {result.bundle_dir} "
        f"({manifest.training.get('steps')} steps, final loss "
        f"{manifest.training.get('final_loss')})"
    )
    if register:
        try:
            info = register_bundle(register, settings.persona_name, result.bundle_dir, api_key)
        except RegistrationError as exc:
            print(f"loragate train: {exc}", file=sys.stderr)
            return 1
        print(
            f"Registered {info.get('name')!r} version {info.get('version')} "
            f"at {register} (state: {info.get('state')})"
        )
    return 0
