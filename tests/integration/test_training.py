"""`loragate train` on the real default model, CPU only, and its bundle served by the real gateway.

A few steps on a handful of rows of huanhuan.json: enough to write a real adapter that visibly
changes the persona's greedy reply, not enough to learn the persona (`make persona-demo` does).
"""

# ruff: noqa: RUF001 (the data set is Chinese: its full-width punctuation is meant)

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import httpx
import openai
from openai.types.chat import ChatCompletionMessageParam

from loragate.adapters.manifest import read_bundle
from tests.integration.conftest import BASE_MODEL
from tests.integration.gateway import Gateway

HUANHUAN = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "huanhuan.json"
SYSTEM = "现在你要扮演皇帝身边的女人--甄嬛"
QUICK_RUN = [
    "--data", str(HUANHUAN),
    "--system-prompt", SYSTEM,
    "--max-rows", "6",
    "--eval-fraction", "0.34",  # 2 of the 6 rows held out, for an eval loss
    "--max-length", "96",
    "--batch-size", "2",
    "--gradient-accumulation", "1",
    "--learning-rate", "1e-2",  # large, so that three steps visibly move the output
    "--save-steps", "2",
    "--logging-steps", "1",
    "--threads", "1",
]  # fmt: skip


def train(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "loragate.cli", "train", *QUICK_RUN, *args],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def greedy_reply(client: openai.OpenAI, model: str, *, with_system: bool) -> str:
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "你是谁？"}]
    if with_system:
        messages.insert(0, {"role": "system", "content": SYSTEM})
    reply = client.chat.completions.create(
        model=model,
        messages=messages,
        temperature=0,
        max_tokens=24,
    )
    return reply.choices[0].message.content or ""


def test_trained_bundle_is_served_and_changes_the_persona(
    gateway: Gateway, client: openai.OpenAI, workspace: Path, tmp_path: Path
) -> None:
    bundle_dir = workspace / "trained" / "zh-quick"
    common = ["--name", "zh-quick", "--output", str(bundle_dir)]
    common += ["--checkpoint-dir", str(tmp_path / "checkpoints"), "--register", gateway.url]
    first = train(*common, "--max-steps", "2")
    assert "Registered 'zh-quick' version 1" in first.stdout
    assert "'loss'" in first.stdout + first.stderr  # the loss, logged as it goes

    manifest = read_bundle(bundle_dir).manifest
    assert (manifest.version, manifest.base_model) == ("1", BASE_MODEL)
    assert manifest.system_prompt == SYSTEM
    training = manifest.training
    assert training["data_sha256"] == hashlib.sha256(HUANHUAN.read_bytes()).hexdigest()
    assert (training["eval_rows"], training["steps"], training["skipped_rows"]) == (2, 2, 0)
    # Rows whose prompt alone fills --max-length 96 teach nothing and are left out, and counted.
    assert training["rows"] + training["eval_rows"] + training["too_long_rows"] == 6
    assert training["final_loss"] > 0 and training["eval_loss"] > 0
    assert (tmp_path / "checkpoints" / "checkpoint-2").is_dir()

    # --resume continues at step 2 and the new bundle is swapped in as version 2.
    second = train(*common, "--max-steps", "3", "--resume")
    assert "Resuming from" in second.stdout and "checkpoint-2" in second.stdout
    assert "Registered 'zh-quick' version 2" in second.stdout
    assert read_bundle(bundle_dir).manifest.training["steps"] == 3
    info = httpx.get(f"{gateway.base_url}/personas/zh-quick", timeout=30).json()
    assert (info["version"], info["system_prompt"]) == ("2", SYSTEM)

    # Same conversation: the persona (its system prompt added by the gateway) against the base
    # model given that system prompt itself. Only the adapter differs.
    persona = greedy_reply(client, "zh-quick", with_system=False)
    base = greedy_reply(client, BASE_MODEL, with_system=True)
    assert persona and base
    assert persona != base, persona
    assert greedy_reply(client, "zh-quick", with_system=True) == persona
