"""The persona demo's check: serve the trained Zhen Huan persona and ask both models who they are.

    python scripts/persona_demo.py artifacts/personas

Starts `loragate serve --personas-dir DIR` on a free port, asks the data set's `你是谁`
(who are you) through the OpenAI SDK with model="zhenhuan" and with the base model (greedy, so
the result repeats), prints the replies, and exits 0 only if the persona's reply names 甄嬛 and
the base model's does not. The base model is also asked with the persona's system prompt,
to show what the adapter adds to it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
from openai.types.chat import ChatCompletionMessageParam

QUESTION = "你是谁？"  # noqa: RUF001 (full-width, as in the data set)
NAME = "甄嬛"
PERSONA = "zhenhuan"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(url: str, process: subprocess.Popen[bytes], timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit("the gateway exited during start-up (see persona-demo-gateway.log)")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise SystemExit(f"the gateway was not healthy after {timeout_s} s")


def ask(client: openai.OpenAI, model: str, system: str | None = None) -> str:
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": QUESTION}]
    if system:
        messages.insert(0, {"role": "system", "content": system})
    reply = client.chat.completions.create(
        model=model,
        messages=messages,
        temperature=0,
        max_tokens=64,
    )
    return reply.choices[0].message.content or ""


def check(client: openai.OpenAI) -> bool:
    persona = httpx.get(f"{client.base_url}personas/{PERSONA}", timeout=30).json()
    base = persona["base_model"]
    persona_reply = ask(client, PERSONA)
    base_reply = ask(client, base)
    prompted_reply = ask(client, base, system=persona["system_prompt"])
    print(f"persona {PERSONA} v{persona['version']} {persona.get('description', '')}")
    print(f"  {PERSONA}: {persona_reply!r}")
    print(f"  {base}: {base_reply!r}")
    print(f"  {base} with the persona's system prompt: {prompted_reply!r}")
    ok = NAME in persona_reply and NAME not in base_reply
    print("PASS" if ok else "FAIL", f"({NAME} in the persona's reply and not in the base model's)")
    return ok


def main(personas_dir: Path) -> int:
    port = free_port()
    args = [
        sys.executable, "-m", "loragate.cli", "serve",
        "--port", str(port), "--legacy-port", str(free_port()),
        "--personas-dir", str(personas_dir), "--kv-cache-memory-fraction", "0.2",
    ]  # fmt: skip
    with open("persona-demo-gateway.log", "wb") as log:
        process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            wait_healthy(f"http://127.0.0.1:{port}", process)
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", timeout=300)
            return 0 if check(client) else 1
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "artifacts/personas")))
