"""The chat page in headless Chromium (Debian's, driven by Playwright) on the real gateway.

Screenshots of each step go to artifacts/screenshots/ (gitignored) for a human to judge.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from playwright.sync_api import Browser, Page, Route, sync_playwright

from tests.integration.browser_support import CHROMIUM, CHROMIUM_ARGS
from tests.integration.client_support import (
    delete_persona,
    make_bundle,
    persona_info,
    put_persona,
    registered_persona,
)
from tests.integration.conftest import BASE_MODEL
from tests.integration.gateway import Gateway

pytestmark = pytest.mark.browser

SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"
PERSONA = "web-muse"
DESCRIPTION = "A persona of the browser test"
REPLY_TIMEOUT_MS = 180_000
# Records the last reply's length at every change, to see it arrive piece by piece.
WATCH_LENGTHS = """() => {
  window.replyLengths = [];
  new MutationObserver(() => {
    const bubbles = document.querySelectorAll('.msg.assistant .bubble');
    if (bubbles.length) window.replyLengths.push(bubbles[bubbles.length - 1].textContent.length);
  }).observe(document.getElementById('messages'),
             {subtree: true, childList: true, characterData: true});
}"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def persona(gateway: Gateway, workspace: Path) -> Iterator[str]:
    defaults = {"temperature": 0.3, "top_p": 0.8, "max_tokens": 200}
    with registered_persona(
        gateway,
        workspace / "web-bundles",
        PERSONA,
        seed=21,
        description=DESCRIPTION,
        defaults=defaults,
    ) as name:
        yield name


def open_page(browser: Browser, gateway: Gateway, **context: Any) -> Page:
    page = browser.new_context(**context).new_page()
    page.goto(gateway.url)
    page.wait_for_selector("body[data-ready=true]")
    return page


@pytest.fixture
def page(browser: Browser, gateway: Gateway) -> Iterator[Page]:
    page = open_page(browser, gateway, viewport={"width": 1280, "height": 860})
    yield page
    page.context.close()


def send(page: Page, text: str) -> None:
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")


def last_reply(page: Page) -> Any:
    return page.locator(".msg.assistant").last


def wait_reply_longer_than(page: Page, chars: int) -> None:
    # A function, not an expression string: the page's CSP forbids eval, which those need.
    page.wait_for_function(
        """(chars) => {
          const bubbles = document.querySelectorAll('.msg.assistant .bubble');
          return bubbles.length && bubbles[bubbles.length - 1].textContent.length > chars;
        }""",
        arg=chars,
        timeout=REPLY_TIMEOUT_MS,
    )


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


def test_pick_a_persona_and_watch_the_reply_stream(
    page: Page, gateway: Gateway, persona: str
) -> None:
    requests: list[str] = []
    bodies: list[dict[str, Any]] = []
    page.on("request", lambda r: requests.append(r.url))
    page.on(
        "request",
        lambda r: (
            bodies.append(json.loads(r.post_data or "{}"))
            if r.url.endswith("/v1/chat/completions")
            else None
        ),
    )
    options = page.locator("#persona option").all_text_contents()
    assert options[0] == f"{BASE_MODEL} (base model)"
    assert f"{persona}: {DESCRIPTION}" in options

    page.select_option("#persona", persona)
    assert page.text_content("#empty-title") == f"Chat with {persona}"
    # The persona's sampling defaults fill the controls.
    assert page.input_value("#temperature-number") == "0.3"
    assert page.input_value("#top-p-number") == "0.8"
    assert page.input_value("#max-tokens") == "200"
    shot(page, "01-persona-picked")

    page.fill("#max-tokens", "96")
    page.check("#ignore-eos")  # a reply of exactly 96 tokens: long enough to watch it stream
    before = persona_info(gateway, persona)["requests_served"]
    page.evaluate(WATCH_LENGTHS)
    send(page, "Tell me about the sea.")
    page.wait_for_selector('.msg.assistant[data-state="streaming"]', timeout=REPLY_TIMEOUT_MS)
    wait_reply_longer_than(page, 20)
    shot(page, "02-streaming")
    page.wait_for_selector('.msg.assistant[data-state="length"]', timeout=REPLY_TIMEOUT_MS)
    lengths: list[int] = page.evaluate("window.replyLengths")
    assert len(set(lengths)) >= 5, lengths  # the text grew in many steps, not all at once
    assert lengths == sorted(lengths)
    reply = last_reply(page)
    assert reply.locator(".who").text_content() == persona
    assert "96 tokens" in reply.locator(".meta").text_content()
    assert persona_info(gateway, persona)["requests_served"] == before + 1

    send(page, "And the mountains?")
    page.locator('.msg.assistant[data-state="length"]').nth(1).wait_for(timeout=REPLY_TIMEOUT_MS)
    shot(page, "03-two-turns")
    # The second request carried the whole conversation.
    assert [m["role"] for m in bodies[-1]["messages"]] == ["user", "assistant", "user"]
    assert bodies[-1]["model"] == persona and bodies[-1]["max_tokens"] == 96
    assert bodies[-1]["temperature"] == 0.3 and bodies[-1]["ignore_eos"] is True
    assert requests and all(url.startswith(gateway.url) for url in requests), requests


def engine_idle(gateway: Gateway, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        status = httpx.get(f"{gateway.base_url}/engine/status", timeout=10).json()
        if status["unfinished_requests"] == 0:
            return True
        time.sleep(0.2)
    return False


def test_stop_a_long_reply(page: Page, gateway: Gateway) -> None:
    page.fill("#max-tokens", "1500")
    page.check("#ignore-eos")
    send(page, "Write a very long story about a lighthouse keeper.")
    wait_reply_longer_than(page, 40)
    assert page.is_visible("#stop") and not page.is_visible("#send")
    page.click("#stop")
    page.wait_for_selector('.msg.assistant[data-state="stopped"]', timeout=10_000)
    stopped_at = len(last_reply(page).locator(".bubble").text_content())
    assert engine_idle(gateway, within_s=20), "the engine kept generating after the stop"
    time.sleep(1)
    assert len(last_reply(page).locator(".bubble").text_content()) == stopped_at
    assert "stopped" in last_reply(page).locator(".meta").text_content()
    assert page.is_visible("#send") and not page.is_visible("#stop")
    shot(page, "04-stopped")


def test_errors_are_shown(page: Page, gateway: Gateway, workspace: Path) -> None:
    page.fill("#temperature-number", "5")
    send(page, "Hello?")
    error = page.locator(".note.error").last
    error.wait_for(timeout=30_000)
    assert "Invalid value for 'temperature'" in (error.text_content() or "")
    assert page.locator(".msg.user.failed").count() == 1
    shot(page, "05-error-out-of-range")

    # A persona deleted while the page still offers it.
    doomed = "web-doomed"
    bundle = make_bundle(workspace / "web-bundles", doomed, seed=22, description="Soon gone")
    put_persona(gateway, doomed, bundle)
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    page.select_option("#persona", doomed)
    delete_persona(gateway, doomed)
    send(page, "Are you there?")
    page.locator(".note.error", has_text=doomed).wait_for(timeout=30_000)
    assert "does not exist" in (page.locator(".note.error").last.text_content() or "")
    # The page refreshes its persona list after that error.
    page.wait_for_selector(f'#persona option[value="{doomed}"]', state="detached")
    switched = page.locator(".note.info").last.text_content()
    assert switched == f"{doomed} is no longer available: now talking to {BASE_MODEL}"
    shot(page, "06-error-persona-deleted")


def test_error_event_in_the_middle_of_a_stream(page: Page) -> None:
    """The gateway's mid-stream error event (its unit tests make one) as the page receives it."""
    chunk = {"choices": [{"index": 0, "delta": {"content": "Half a repl"}, "finish_reason": None}]}
    error = {"error": {"message": "The engine failed mid-reply", "type": "internal_error"}}
    events = f"data: {json.dumps(chunk)}\n\ndata: {json.dumps(error)}\n\ndata: [DONE]\n\n"

    def midway_failure(route: Route) -> None:
        route.fulfill(status=200, content_type="text/event-stream", body=events)

    page.route("**/v1/chat/completions", midway_failure)
    send(page, "Hello?")
    page.wait_for_selector('.msg.assistant[data-state="error"]', timeout=30_000)
    assert last_reply(page).locator(".bubble").text_content() == "Half a repl"
    assert page.locator(".note.error").last.text_content() == "The engine failed mid-reply"
    shot(page, "07-error-mid-stream")


WEATHER: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}]


def test_a_forced_tool_call_is_shown(page: Page) -> None:
    bodies: list[dict[str, Any]] = []
    page.on(
        "request",
        lambda r: (
            bodies.append(json.loads(r.post_data or "{}"))
            if r.url.endswith("/v1/chat/completions")
            else None
        ),
    )
    page.fill("#tools", "[{not json")
    send(page, "What is the weather in Paris?")
    assert "Tools in the settings: not JSON" in (page.locator(".note.error").text_content() or "")
    assert page.locator(".msg").count() == 0 and not bodies  # nothing sent

    page.fill("#tools", json.dumps(TOOLS, indent=2))
    assert page.text_content("#tools-status") == "Offered: get_weather"
    page.select_option("#tool-choice", "get_weather")  # forced: the call is certain
    page.fill("#max-tokens", "60")
    send(page, "What is the weather in Paris?")
    page.wait_for_selector('.msg.assistant[data-state="done"] .tool-call', timeout=REPLY_TIMEOUT_MS)
    reply = last_reply(page)
    assert reply.locator(".tool-name").all_text_contents() == ["get_weather"]
    shown = reply.locator(".tool-args").text_content() or ""
    arguments = json.loads(shown)
    jsonschema.validate(arguments, WEATHER)
    assert shown == json.dumps(arguments, indent=2)  # pretty-printed once complete
    assert not reply.locator(".bubble").is_visible()  # no text: only the call
    assert "tool call" in (reply.locator(".meta").text_content() or "")
    assert bodies[-1]["tools"] == TOOLS
    assert bodies[-1]["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    shot(page, "10-tool-call")

    # The next turn carries the call in the history; with tool choice none, the reply is text.
    page.select_option("#tool-choice", "none")
    send(page, "Thank you.")
    finished = '.msg.assistant:is([data-state="done"], [data-state="length"])'
    page.locator(finished).nth(1).wait_for(timeout=REPLY_TIMEOUT_MS)
    messages = bodies[-1]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    (call,) = messages[1]["tool_calls"]
    assert call["id"] and call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == arguments
    assert bodies[-1]["tool_choice"] == "none"
    assert last_reply(page).locator(".tool-call").count() == 0
    assert last_reply(page).locator(".bubble").text_content()
    shot(page, "11-after-a-tool-call")


def test_phone_sized_screen(browser: Browser, gateway: Gateway) -> None:
    phone = open_page(
        browser,
        gateway,
        viewport={"width": 390, "height": 844},
        is_mobile=True,
        has_touch=True,
        device_scale_factor=2,
    )
    try:
        assert not phone.is_visible("#settings")  # the settings start folded away on a phone
        send(phone, "What is the capital of France?")
        # "length" too: the model may use up the page's default max tokens before its EOS.
        finished = '.msg.assistant:is([data-state="done"], [data-state="length"])'
        phone.wait_for_selector(finished, timeout=REPLY_TIMEOUT_MS)
        width = phone.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, "the page scrolls sideways on a phone"
        composer = phone.locator("#composer").bounding_box()
        assert composer is not None and composer["y"] > 700
        shot(phone, "08-phone-chat")
        phone.click("#toggle-settings")
        assert phone.is_visible("#settings") and phone.is_visible("#backdrop")
        shot(phone, "09-phone-settings")
        phone.click("#backdrop", position={"x": 20, "y": 400})
        assert not phone.is_visible("#settings")
    finally:
        phone.context.close()


STATUS_CELL = """([model, cls]) => {
  const row = document.querySelector(`#status-rows tr[data-model="${model}"]`);
  return row ? row.querySelector(`td.${cls}`).textContent : null;
}"""


def status_cell(page: Page, model: str, cls: str) -> str | None:
    text: str | None = page.evaluate(STATUS_CELL, [model, cls])
    return text


def test_the_status_view_follows_a_reply_live(page: Page, persona: str) -> None:
    page.wait_for_selector("body[data-status-ready=true]", timeout=30_000)
    page.wait_for_selector(f'#status-rows tr[data-model="{persona}"]', timeout=30_000)
    served = int(status_cell(page, persona, "served") or "0")
    page.select_option("#persona", persona)
    page.fill("#max-tokens", "8")
    send(page, "Hello")
    page.wait_for_selector('.msg.assistant[data-state]:not([data-state="streaming"])',
                           timeout=REPLY_TIMEOUT_MS)  # fmt: skip
    page.wait_for_function(
        """([model, served]) => {
          const row = document.querySelector(`#status-rows tr[data-model="${model}"]`);
          return row && Number(row.querySelector("td.served").textContent) === served + 1
            && row.querySelector("td.ttft").textContent.endsWith(" ms");
        }""",
        arg=[persona, served],
        timeout=30_000,
    )
    assert status_cell(page, persona, "state") == "loaded"
    assert status_cell(page, persona, "in-flight") == "0"
    assert status_cell(page, BASE_MODEL, "state") == "base model"
    ttft = status_cell(page, persona, "ttft")
    assert ttft is not None and int(ttft.removesuffix(" ms")) > 0
    page.locator(".status").screenshot(path=str(SCREENSHOTS / "06-status.png"))
