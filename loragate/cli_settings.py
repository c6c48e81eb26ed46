"""Argparse flags made from a settings class: the settings stay the one source of truth."""

from __future__ import annotations

import argparse
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin

from pydantic_settings import BaseSettings

S = TypeVar("S", bound=BaseSettings)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _unwrap_optional(annotation: Any) -> Any:
    if get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def add_settings_arguments(
    parser: argparse.ArgumentParser, settings_cls: type[BaseSettings]
) -> None:
    prefix = settings_cls.model_config.get("env_prefix", "")
    for name, field in settings_cls.model_fields.items():
        annotation = _unwrap_optional(field.annotation)
        env = f"{prefix}{name}".upper()
        default = field.default if field.default_factory is None else "none"
        help_text = f"{field.description} [env {env}; default: {default}]"
        kwargs: dict[str, Any] = {"dest": name, "default": None, "help": help_text}
        if annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif get_origin(annotation) is list:
            (item,) = get_args(annotation)
            kwargs.update(action="append", type=Path if item is Path else str, metavar=name.upper())
        elif get_origin(annotation) is dict:  # KEY=VALUE pairs, parsed by the settings class
            kwargs.update(action="append", type=str, metavar="KEY=VALUE")
        elif get_origin(annotation) is typing.Literal:
            kwargs.update(choices=list(get_args(annotation)))
        else:
            kwargs.update(type=annotation if annotation in (int, float, Path) else str)
        parser.add_argument(_flag(name), **kwargs)


def settings_from_arguments(settings_cls: type[S], namespace: argparse.Namespace) -> S:
    """Explicit flags win; unset ones fall through to the environment and the config file."""
    given = {
        name: getattr(namespace, name)
        for name in settings_cls.model_fields
        if getattr(namespace, name, None) is not None
    }
    return settings_cls(**given)
