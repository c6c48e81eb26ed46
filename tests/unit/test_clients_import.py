"""The client package installs and imports with the base dependencies only: no torch, no vLLM.

A fresh venv gets `pip install <a copy of the source>` (the base dependencies of pyproject, no
extras), then imports the clients, runs `loragate chat --help`, and finds the web page's files
in the installed package. About 25 s, most of it pip.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import venv
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a venv and a pip install: half a minute

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "vllm", "transformers", "peft", "fastapi", "langchain_core", "requests")

PROBE = """
import importlib.util, json, sys
import loragate.clients
import loragate.clients.chat
import loragate.clients.openai_client
from importlib.resources import files
client = loragate.clients.gateway_client("http://127.0.0.1:9")
try:
    import loragate.clients.langchain
    langchain_error = None
except ModuleNotFoundError as exc:
    langchain_error = exc.name
print(json.dumps({
    "loaded": sorted({m.split(".")[0] for m in sys.modules}),
    "installed": {m: importlib.util.find_spec(m) is not None for m in %(heavy)r},
    "base_url": str(client.base_url),
    "web": sorted(p.name for p in files("loragate").joinpath("server/web").iterdir()),
    "langchain_error": langchain_error,
}))
"""


@pytest.fixture(scope="module")
def light_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("light")
    source = work / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    # A copy, so that pip's in-tree build writes nothing into the working tree.
    shutil.copytree(
        ROOT / "loragate", source / "loragate", ignore=shutil.ignore_patterns("__pycache__")
    )
    env_dir = work / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    install = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*install, str(source)], check=True, capture_output=True, timeout=600)
    return env_dir


def test_clients_import_without_torch_or_vllm(light_venv: Path) -> None:
    python = light_venv / "bin" / "python"
    done = subprocess.run(
        [str(python), "-c", PROBE % {"heavy": HEAVY}],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=light_venv,  # not the source tree: the installed package must be the one imported
    )
    probe = json.loads(done.stdout)
    assert probe["installed"] == dict.fromkeys(HEAVY, False)
    assert not set(HEAVY) & set(probe["loaded"])
    assert probe["base_url"] == "http://127.0.0.1:9/v1/"
    assert probe["web"] == ["app.js", "index.html", "status.js", "style.css"]
    assert probe["langchain_error"] in ("langchain_core", "langchain_openai")


def test_chat_command_runs_in_the_light_install(light_venv: Path) -> None:
    done = subprocess.run(
        [str(light_venv / "bin" / "loragate"), "chat", "--help"],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=light_venv,
    )
    assert "--persona" in done.stdout and "LORAGATE_BASE_URL" in done.stdout
