"""`loragate download`: the right repo and call on each hub, and one clear line when offline.

The real hub libraries are driven up to the network boundary: their endpoint is a local port
where nothing listens, which is what an offline machine looks like to them.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from loragate.cli import main
from loragate.download import is_offline_error, repo_id_for

LLAMA_MS = "LLM-Research/Meta-Llama-3.1-8B-Instruct"
LLAMA_HF = "meta-llama/Llama-3.1-8B-Instruct"


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # closed again: connections are refused


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, repo_id: str, **kwargs: Any) -> str:
        self.calls.append((repo_id, kwargs))
        Path(kwargs["local_dir"]).mkdir(parents=True)
        return str(kwargs["local_dir"])


@pytest.mark.parametrize(
    ("model", "source", "repo_id"),
    [
        ("llama-3.1-8b-instruct", "modelscope", LLAMA_MS),
        ("llama-3.1-8b-instruct", "hf", LLAMA_HF),
        (LLAMA_HF, "modelscope", LLAMA_MS),
        (LLAMA_MS, "hf", LLAMA_HF),
        ("Qwen/Qwen2.5-7B-Instruct", "hf", "Qwen/Qwen2.5-7B-Instruct"),
    ],
)
def test_repo_ids(model: str, source: Any, repo_id: str) -> None:
    assert repo_id_for(model, source) == repo_id


def test_modelscope_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A stand-in module: importing the real one takes seconds (the offline test drives it).
    recorder = Recorder()
    stand_in = types.ModuleType("modelscope")
    stand_in.__dict__.update(snapshot_download=recorder)
    monkeypatch.setitem(sys.modules, "modelscope", stand_in)
    argv = ["download", LLAMA_MS, "--source", "modelscope", "--dir", str(tmp_path)]
    assert main([*argv, "--revision", "master"]) == 0
    target = tmp_path / "LLM-Research" / "Meta-Llama-3.1-8B-Instruct"  # the tutorial's layout
    assert recorder.calls == [
        (LLAMA_MS, {"local_dir": str(target), "endpoint": None, "revision": "master"})
    ]
    assert f"loragate serve --model {target}" in capsys.readouterr().out


def test_hugging_face_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    recorder = Recorder()
    monkeypatch.setattr(huggingface_hub, "snapshot_download", recorder)
    argv = ["download", "llama-3.1-8b-instruct", "--source", "hf", "--dir", str(tmp_path)]
    assert main([*argv, "--endpoint", "https://mirror.example"]) == 0
    target = tmp_path / "meta-llama" / "Llama-3.1-8B-Instruct"
    assert recorder.calls == [
        (LLAMA_HF, {"local_dir": str(target), "endpoint": "https://mirror.example"})
    ]


@pytest.mark.slow  # a process each, importing its hub library and retrying the connection
@pytest.mark.parametrize("source", ["hf", "modelscope"])
def test_offline_ends_with_a_clear_message(source: str, tmp_path: Path) -> None:
    """Run as the user runs it (a process of its own): stderr ends in one line, no traceback."""
    argv = ["download", "llama-3.1-8b-instruct", "--source", source, "--dir", str(tmp_path)]
    done = subprocess.run(
        [sys.executable, "-m", "loragate.cli", *argv, "--endpoint", closed_port_url()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    hub = {"hf": "the Hugging Face hub", "modelscope": "ModelScope"}[source]
    last_line = done.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"loragate download: cannot reach {hub}")
    assert "offline" in last_line and "Traceback" not in done.stderr


def test_missing_hub_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "modelscope", None)  # import fails as if not installed
    assert main(["download", LLAMA_MS, "--dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "needs the package 'modelscope'" in err and "loragate[download]" in err


def test_offline_is_read_from_the_cause_chain() -> None:
    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except OSError as inner:
            raise FileNotFoundError("no local snapshot") from inner
    except FileNotFoundError as outer:
        assert is_offline_error(outer)
    assert not is_offline_error(ValueError("401 Unauthorized"))
