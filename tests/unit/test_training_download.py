"""`loragate train --data URL`: downloaded once into the cache, then read from there offline.

The URL is served by a local http.server over a small data set in tmp_path, and the cache is
pointed into tmp_path by LORAGATE_CACHE_DIR.
"""

# ruff: noqa: RUF001 (the rows are Chinese: their full-width punctuation is meant)

from __future__ import annotations

import functools
import hashlib
import json
import socket
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from loragate.adapters.training.dataset import DatasetError
from loragate.adapters.training.recipe import TrainSettings
from loragate.adapters.training.remote import (
    DataDownloadError,
    cached_data_path,
    fetch_data_set,
    is_url,
)
from loragate.adapters.training.trainer import Examples, _training_metadata, load_training_data
from loragate.cli import main

ROWS = [
    {"instruction": "你是谁？", "input": "", "output": "我是甄嬛，家父是大理寺少卿甄远道。"},
    {"instruction": "皇上驾到！", "input": "", "output": "臣妾恭迎皇上。"},
    {"instruction": "娘娘。", "input": "", "output": "你放心，本宫到任何时候都不会自轻自贱。"},
]


class _QuietHandler(SimpleHTTPRequestHandler):
    requests: list[str]

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.requests.append(self.path)
        super().do_GET()


class LocalServer:
    def __init__(self, root: Path) -> None:
        self.requests: list[str] = []
        handler = type("Handler", (_QuietHandler,), {"requests": self.requests})
        self._server = ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(handler, directory=str(root))
        )
        # Polled every 10 ms, so that stop() does not wait half a second (the default).
        serve = functools.partial(self._server.serve_forever, poll_interval=0.01)
        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()
        self.base = f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "cache"
    monkeypatch.setenv("LORAGATE_CACHE_DIR", str(directory))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")  # a proxy must not see the local server
    return directory


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[LocalServer, Path]]:
    root = tmp_path / "www"
    (root / "dataset").mkdir(parents=True)
    path = root / "dataset" / "huanhuan.json"
    path.write_text(json.dumps(ROWS, ensure_ascii=False, indent=1), encoding="utf-8")
    server = LocalServer(root)
    try:
        yield server, path
    finally:
        server.stop()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # closed again: connections are refused


def test_downloaded_once_then_reused_without_the_server(
    cache: Path, served: tuple[LocalServer, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    server, source = served
    url = f"{server.base}/dataset/huanhuan.json"
    settings = TrainSettings(data=url)
    assert settings.data_url == url and settings.persona_name == "huanhuan"

    data = load_training_data(settings)
    copy = cached_data_path(url)
    assert data.path == copy and copy.parent == cache / "data" and copy.suffix == ".json"
    assert copy.name == hashlib.sha256(url.encode()).hexdigest() + ".json"
    assert copy.read_bytes() == source.read_bytes()
    assert data.sha256 == hashlib.sha256(source.read_bytes()).hexdigest()
    assert [r.output for r in data.rows] == [r["output"] for r in ROWS]
    assert server.requests == ["/dataset/huanhuan.json"]
    assert [p.name for p in copy.parent.iterdir()] == [copy.name]  # no temporary file left
    assert f"Downloading {url}" in capsys.readouterr().out

    server.stop()  # the second run has no network to use
    again = load_training_data(TrainSettings(data=url, max_rows=2))
    assert again.path == copy and again.sha256 == data.sha256 and len(again.rows) == 2
    assert "downloaded earlier" in capsys.readouterr().out
    assert server.requests == ["/dataset/huanhuan.json"]


@pytest.mark.usefixtures("cache")
def test_another_url_is_another_copy(served: tuple[LocalServer, Path]) -> None:
    server, source = served
    jsonl = source.parent / "rows.jsonl"
    jsonl.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in ROWS), encoding="utf-8")
    first = fetch_data_set(f"{server.base}/dataset/huanhuan.json")
    second = fetch_data_set(f"{server.base}/dataset/rows.jsonl")
    assert first != second and second.suffix == ".jsonl"
    assert second.read_bytes() == jsonl.read_bytes()


def test_404_is_a_clear_error_and_caches_nothing(
    cache: Path, served: tuple[LocalServer, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    server, _ = served
    url = f"{server.base}/dataset/missing.json"
    with pytest.raises(DataDownloadError, match=r"HTTP 404 Not Found") as caught:
        fetch_data_set(url)
    assert isinstance(caught.value, DatasetError) and url in str(caught.value)
    assert not cached_data_path(url).exists()
    assert list((cache / "data").iterdir()) == []  # nor a temporary file

    code = main(["train", "--data", url, "--output", str(cache / "out")])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith(f"loragate train: cannot download the data set {url}: HTTP 404")
    assert "Traceback" not in err


def test_unreachable_host_is_a_clear_error(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"{closed_port_url()}/huanhuan.json"
    code = main(["train", "--data", url, "--output", str(cache / "out")])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith(f"loragate train: cannot reach 127.0.0.1 to download the data set {url}")
    assert "pass its path to --data" in err and "Traceback" not in err
    assert not cached_data_path(url).exists()


def test_cli_reads_a_downloaded_data_set(
    cache: Path, served: tuple[LocalServer, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    # A data set with a bad row stops the run right after the download, before any model loads.
    server, source = served
    source.write_text(json.dumps([*ROWS, {"instruction": "问"}], ensure_ascii=False))
    url = f"{server.base}/dataset/huanhuan.json"
    code = main(["train", "--data", url, "--output", str(cache / "out")])
    captured = capsys.readouterr()
    assert code == 1 and f"Downloading {url}" in captured.out
    assert "row 4: 'output' is missing" in captured.err
    assert cached_data_path(url).read_bytes() == source.read_bytes()


@pytest.mark.usefixtures("cache")
def test_the_manifest_records_the_url(served: tuple[LocalServer, Path]) -> None:
    server, _ = served
    url = f"{server.base}/dataset/huanhuan.json"
    settings = TrainSettings(data=url)
    data = load_training_data(settings)
    state = SimpleNamespace(log_history=[{"loss": 2.0}], global_step=1, epoch=1.0)
    examples = Examples(train=[], held_out=[], too_long=0)
    training = _training_metadata(
        settings, data, examples, state, SimpleNamespace(training_loss=2.0), False
    )
    assert training["data_file"] == "huanhuan.json" and training["data_url"] == url
    assert training["data_sha256"] == data.sha256

    local = TrainSettings(data=str(data.path))
    training = _training_metadata(
        local, data, examples, state, SimpleNamespace(training_loss=2.0), False
    )
    assert training["data_file"] == data.path.name and training["data_url"] is None


def test_what_counts_as_a_url() -> None:
    assert is_url("https://example.org/a.json") and is_url("HTTP://example.org/a.jsonl")
    assert not is_url("data/huanhuan.json") and not is_url("ftp://example.org/a.json")
    assert TrainSettings(data="data/huanhuan.json").data_url is None
    with pytest.raises(ValueError, match="names no file: give the persona a --name"):
        TrainSettings(data="https://example.org/")
    assert TrainSettings(data="https://example.org/", name="p").persona_name == "p"
