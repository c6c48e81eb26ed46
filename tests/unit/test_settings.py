"""One settings source: flags over environment over config file over defaults."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from loragate.cli import build_parser
from loragate.cli_settings import settings_from_arguments
from loragate.engine.engine_args import Platform, engine_kwargs
from loragate.engine.environment import engine_environment
from loragate.engine.tether import GATEWAY_PID_ENV
from loragate.settings import RESERVED_CPU_ENV, ServerSettings


def parse(*argv: str) -> ServerSettings:
    return settings_from_arguments(ServerSettings, build_parser().parse_args(["serve", *argv]))


def test_defaults_suit_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LORAGATE_CONFIG", raising=False)
    settings = parse()
    assert (settings.port, settings.legacy_port) == (8000, 6006)
    assert settings.model is None and settings.enable_lora
    # Decided by the platform: loragate.engine.engine_args, tests/unit/test_engine_args.py.
    assert settings.kv_cache_memory_fraction is None and settings.max_model_len is None
    cpu = engine_kwargs(settings, "/m", "m", Platform("cpu", is_cpu=True))
    assert cpu["gpu_memory_utilization"] == 0.3


def test_precedence_flag_env_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "loragate.toml"
    config.write_text('port = 7000\nmax_loras = 3\napi_key = "from-file"\npersona = ["a=/x"]\n')
    monkeypatch.setenv("LORAGATE_CONFIG", str(config))
    monkeypatch.setenv("LORAGATE_MAX_LORAS", "5")
    settings = parse("--port", "7100")
    assert settings.port == 7100  # flag
    assert settings.max_loras == 5  # environment over file
    assert settings.api_key == "from-file"  # file over default
    assert settings.persona == ["a=/x"]


def test_repeatable_and_boolean_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LORAGATE_CONFIG", raising=False)
    settings = parse(
        "--personas-dir", "/a", "--personas-dir", "/b", "--no-enable-lora", "--legacy-port", "0"
    )  # fmt: skip
    assert settings.personas_dir == [Path("/a"), Path("/b")]
    assert not settings.enable_lora and not settings.legacy_enabled()


def test_invalid_value_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAGATE_KV_CACHE_MEMORY_FRACTION", "1.5")
    with pytest.raises(ValueError, match="kv_cache_memory_fraction"):
        parse()


def test_help_explains_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    text = capsys.readouterr().out
    for name in ServerSettings.model_fields:
        assert "--" + name.replace("_", "-") in text
    assert "LORAGATE_API_KEY" in text


@pytest.mark.parametrize(
    ("cores", "flag", "env", "reserved"),
    [
        (2, None, None, 0),  # small machine: the engine computes on every core
        (16, None, None, None),  # vLLM's own choice
        (2, None, "1", None),  # vLLM's variable already set: left to it
        (16, "2", None, 2),  # the flag wins
        (2, "1", "0", 1),
    ],
)
def test_small_machines_reserve_no_core_off_the_engine(
    monkeypatch: pytest.MonkeyPatch,
    cores: int,
    flag: str | None,
    env: str | None,
    reserved: int | None,
) -> None:
    monkeypatch.delenv("LORAGATE_CONFIG", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: cores)
    if env is None:
        monkeypatch.delenv(RESERVED_CPU_ENV, raising=False)
    else:
        monkeypatch.setenv(RESERVED_CPU_ENV, env)
    settings = parse(*(["--cpu-reserved-cores", flag] if flag else []))
    assert settings.resolved_cpu_reserved_cores() == reserved
    environment = engine_environment(settings, Platform("cpu", is_cpu=True))
    assert environment.pop(GATEWAY_PID_ENV) == str(os.getpid())
    assert environment == ({} if reserved is None else {RESERVED_CPU_ENV: str(reserved)})
