"""Keys on the real engine, through the official `openai` SDK: persona access, the limits with
OpenAI's headers and the SDK's own retries, revocation, and usage that adds up and survives a
restart of the gateway. Its own gateway: an admin key and two personas of the configuration."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Container, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types import CompletionUsage
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam
from playwright.sync_api import sync_playwright

from tests.integration.browser_support import CHROMIUM, CHROMIUM_ARGS
from tests.integration.client_support import make_bundle
from tests.integration.conftest import BASE_MODEL
from tests.integration.gateway import Gateway, running_gateway

pytestmark = pytest.mark.integration

ADMIN = "tenants-admin-secret"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}
USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello."}]


@dataclass
class Tenants:
    """The module's gateway, the state it keeps, and what the tests saw it answer."""

    gateway: Gateway
    args: list[str]
    state_dir: Path
    stack: ExitStack
    secrets: dict[str, str] = field(default_factory=dict)
    usage: dict[str, list[int]] = field(default_factory=dict)  # key: [prompt, completion]
    rpm_refused_at: float = 0.0
    clients: dict[tuple[str, int], openai.OpenAI] = field(default_factory=dict)

    def sdk(self, key: str, retries: int = 0) -> openai.OpenAI:
        """One client per key and retry count, closed with the module (no socket left open)."""
        if (key, retries) not in self.clients:
            self.clients[key, retries] = openai.OpenAI(
                base_url=self.gateway.base_url,
                api_key=self.secrets[key],
                max_retries=retries,
                timeout=300,
            )
        return self.clients[key, retries]

    def close(self) -> None:
        for client in self.clients.values():
            client.close()
        self.stack.close()

    def make_key(self, name: str, **definition: Any) -> openai.OpenAI:
        response = httpx.post(
            f"{self.gateway.base_url}/keys",
            json={"name": name, **definition},
            headers=ADMIN_HEADERS,
            timeout=30,
        )
        assert response.status_code == 201, response.text
        self.secrets[name] = response.json()["secret"]
        return self.sdk(name)

    def chat(self, key: str, model: str) -> ChatCompletion:
        reply = self.sdk(key).chat.completions.create(
            model=model, messages=USER, max_tokens=8, temperature=0
        )
        self.count(key, reply.usage)
        return reply

    def count(self, key: str, usage: CompletionUsage | None) -> None:
        assert usage is not None
        spent = self.usage.setdefault(key, [0, 0])
        spent[0] += usage.prompt_tokens
        spent[1] += usage.completion_tokens


@pytest.fixture(scope="module")
def tenants(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tenants]:
    root = tmp_path_factory.mktemp("tenants")
    bundles = {
        name: make_bundle(root / "bundles", name, seed=seed, description=f"tenant {name}")
        for name, seed in (("alpha", 31), ("beta", 32))
    }
    state_dir = root / "state"
    args = [
        "--admin-key", ADMIN,
        "--state-dir", str(state_dir),
        "--adapter-root", str(root / "bundles"),
        *(arg for name, path in bundles.items() for arg in ("--persona", f"{name}={path}")),
    ]  # fmt: skip
    with ExitStack() as stack:
        gateway = stack.enter_context(running_gateway(root / "gateway.log", args))
        tenants = Tenants(gateway, args, state_dir, stack)
        yield tenants
        tenants.close()


def test_a_key_restricted_to_a_persona_lists_and_uses_only_it(tenants: Tenants) -> None:
    client = tenants.make_key("team-alpha", personas=["alpha"])
    assert [m.id for m in client.models.list()] == [BASE_MODEL, "alpha"]
    assert tenants.chat("team-alpha", "alpha").choices[0].message.content
    with pytest.raises(openai.PermissionDeniedError) as chat:
        client.chat.completions.create(model="beta", messages=USER, max_tokens=4)
    assert f"It may use: {BASE_MODEL}, alpha." in chat.value.message
    with pytest.raises(openai.PermissionDeniedError):
        client.completions.create(model="beta", prompt="Hello", max_tokens=4)
    legacy = httpx.post(
        tenants.gateway.legacy_url,
        json={"prompt": "你好", "persona": "beta"},
        headers={"Authorization": f"Bearer {tenants.secrets['team-alpha']}"},
        timeout=60,
    )
    assert legacy.status_code == 403, legacy.text
    assert legacy.json()["error"]["code"] == "model_not_allowed"


def test_the_fourth_request_in_a_minute_of_an_rpm_3_key_gets_429(tenants: Tenants) -> None:
    tenants.make_key("rpm3", rpm=3)
    remaining = []
    for _ in range(3):
        raw = tenants.sdk("rpm3").chat.completions.with_raw_response.create(
            model="alpha", messages=USER, max_tokens=4
        )
        tenants.count("rpm3", raw.parse().usage)
        remaining.append(raw.headers["x-ratelimit-remaining-requests"])
    assert remaining == ["2", "1", "0"]
    with pytest.raises(openai.RateLimitError) as refused:
        tenants.sdk("rpm3").chat.completions.create(model="alpha", messages=USER, max_tokens=4)
    tenants.rpm_refused_at = time.monotonic()
    headers = refused.value.response.headers
    retry_after = int(headers["retry-after"])
    assert 1 <= retry_after <= 60
    assert headers["x-ratelimit-limit-requests"] == "3"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    reset = headers["x-ratelimit-reset-requests"]
    assert reset.endswith("s") and abs(int(reset.rstrip("ms")) - retry_after) <= 1
    # The SDK's retries wait as Retry-After says, then succeed (test_the_sdk_retries_...).


def test_a_tpm_key_is_refused_once_its_tokens_are_spent(tenants: Tenants) -> None:
    tenants.make_key("tpm", tpm=120)
    spent = 0
    for _ in range(8):
        try:
            reply = tenants.chat("tpm", "alpha")
        except openai.RateLimitError as refused:
            assert spent + 8 > 120, f"refused with {spent} of 120 tokens spent"
            assert refused.response.headers["x-ratelimit-limit-tokens"] == "120"
            assert int(refused.response.headers["x-ratelimit-remaining-tokens"]) < 8
            return
        assert reply.usage is not None
        spent += reply.usage.total_tokens
    pytest.fail(f"never refused; {spent} tokens spent")


def test_max_parallel_1_serialises_a_keys_requests(tenants: Tenants) -> None:
    tenants.make_key("single", max_parallel=1)
    spans: list[tuple[float, float]] = []
    lock = threading.Lock()

    def one() -> None:
        stream = tenants.sdk("single").chat.completions.create(
            model=BASE_MODEL, messages=USER, max_tokens=24, stream=True,
            stream_options={"include_usage": True},
        )  # fmt: skip
        first_token = None
        for chunk in stream:
            if first_token is None and chunk.choices and chunk.choices[0].delta.content:
                first_token = time.monotonic()
            if chunk.usage is not None:
                with lock:
                    tenants.count("single", chunk.usage)
        assert first_token is not None
        with lock:
            spans.append((first_token, time.monotonic()))

    threads = [threading.Thread(target=one) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert len(spans) == 2
    (_, first_end), (second_start, _) = sorted(spans)
    assert second_start >= first_end, f"the two overlapped: {spans}"


def test_a_revoked_key_gets_401_at_once(tenants: Tenants) -> None:
    client = tenants.make_key("leaver")
    assert client.models.list()
    revoke = subprocess.run(
        [sys.executable, "-m", "loragate.cli", "keys", "--state-dir", str(tenants.state_dir),
         "revoke", "leaver"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert revoke.returncode == 0, revoke.stdout + revoke.stderr
    with pytest.raises(openai.AuthenticationError) as refused:
        client.models.list()
    assert "revoked" in refused.value.message


@pytest.mark.browser
def test_the_web_page_offers_only_the_keys_personas_and_says_when_to_retry(
    tenants: Tenants,
) -> None:
    tenants.make_key("web", personas=["beta"], base_model=False, rpm=1)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = chromium.new_page()
            page.goto(tenants.gateway.url)
            page.wait_for_selector("body[data-ready=error]")  # no key yet: the settings open
            page.fill("#api-key", tenants.secrets["web"])
            page.dispatch_event("#api-key", "change")
            page.wait_for_selector("body[data-ready=true]")
            assert page.locator("#persona option").all_text_contents() == ["beta: tenant beta"]
            page.fill("#prompt", "Hello")
            page.press("#prompt", "Enter")
            finished = ".msg.assistant[data-state=done], .msg.assistant[data-state=length]"
            page.wait_for_selector(finished, timeout=180_000)
            page.fill("#prompt", "Again")
            page.press("#prompt", "Enter")
            page.wait_for_selector(".note.error", timeout=60_000)
            error = page.locator(".note.error").last.text_content() or ""
            assert "requests per minute (1)" in error and "Retry after" in error
        finally:
            chromium.close()


def test_the_sdk_retries_an_rpm_refusal_by_itself_once_the_window_passes(
    tenants: Tenants,
) -> None:
    assert tenants.rpm_refused_at, "runs after the rpm test"
    started = time.monotonic()
    reply = tenants.sdk("rpm3", retries=2).chat.completions.create(
        model="alpha", messages=USER, max_tokens=4
    )
    tenants.count("rpm3", reply.usage)
    assert time.monotonic() - started > 0.5  # it did wait


def test_usage_adds_up_to_the_responses_and_survives_a_restart(tenants: Tenants) -> None:
    # A row is written once the response's last byte is sent, a moment after the client has it.
    deadline = time.monotonic() + 10
    while _by_key(before := _usage(tenants.gateway), tenants.usage) != tenants.usage:
        assert time.monotonic() < deadline, (_by_key(before, tenants.usage), tenants.usage)
        time.sleep(0.2)
    assert any(row["key"] == "web" and row["completion_tokens"] for row in before)
    tenants.stack.close()  # SIGTERM: a clean shutdown writes every row
    log = tenants.state_dir.parent / "gateway-restarted.log"
    with running_gateway(log, tenants.args) as restarted:
        after = _usage(restarted)
        assert after == before
        for secret in (*tenants.secrets.values(), ADMIN):
            assert secret not in restarted.log()
        metrics = httpx.get(f"{restarted.url}/metrics", headers=ADMIN_HEADERS, timeout=30).text
    logs = (tenants.state_dir.parent / "gateway.log").read_text(errors="replace")
    stored = b"".join(path.read_bytes() for path in tenants.state_dir.iterdir() if path.is_file())
    for secret in (*tenants.secrets.values(), ADMIN):
        assert secret not in logs and secret not in metrics
        assert secret.encode() not in stored


def _usage(gateway: Gateway) -> list[dict[str, Any]]:
    response = httpx.get(f"{gateway.base_url}/usage", headers=ADMIN_HEADERS, timeout=30)
    response.raise_for_status()
    rows: list[dict[str, Any]] = response.json()["data"]
    return rows


def _by_key(rows: list[dict[str, Any]], keys: Container[str]) -> dict[str, list[int]]:
    """Tokens by key, of `keys` (those whose replies the test counted)."""
    totals: dict[str, list[int]] = {}
    for row in rows:
        if row["key"] not in keys:
            continue
        spent = totals.setdefault(row["key"], [0, 0])
        spent[0] += row["prompt_tokens"]
        spent[1] += row["completion_tokens"]
    return {key: spent for key, spent in totals.items() if spent != [0, 0]}
