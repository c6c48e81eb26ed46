"""Keys over HTTP on the fake engine, through the official SDKs: who may use which persona,
limits with OpenAI's headers, the key API, usage, and secrets kept out of every record."""

from __future__ import annotations

import io
import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from fastapi.testclient import TestClient
from openai.types.chat import ChatCompletionMessageParam

from loragate.adapters.manifest import read_bundle, write_manifest
from loragate.cli import main as loragate_main
from loragate.clients.chat import TerminalChat, default_model, model_names
from loragate.engine.fake import Hold
from loragate.tenants.errors import InvalidKeyError
from loragate.tenants.key_store import KeyStore
from loragate.tenants.keys import ApiKey, Limits, digest
from tests.unit import personas_support
from tests.unit.conftest import wait_for
from tests.unit.personas_support import BASE, CountingEngine, start, write_bundle

ADMIN = "the-admin-secret"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}
USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
root = personas_support.root  # the persona app's adapter root, by name


def serving(tmp_path: Path, root: Path, **settings: Any) -> TestClient:
    return start(tmp_path, CountingEngine(load_delay=0), root, admin_key=ADMIN, **settings)


@pytest.fixture
def gateway(tmp_path: Path, root: Path) -> Iterator[TestClient]:
    with serving(tmp_path, root) as client:
        for name in ("alpha", "beta"):
            body = {"path": str(write_bundle(root / name))}
            put = client.put(f"/v1/personas/{name}", json=body, headers=ADMIN_HEADERS)
            assert put.status_code == 201, put.text
        yield client


def make_key(client: TestClient, name: str, **definition: Any) -> str:
    response = client.post("/v1/keys", json={"name": name, **definition}, headers=ADMIN_HEADERS)
    assert response.status_code == 201, response.text
    secret: str = response.json()["secret"]
    return secret


def sdk(client: TestClient, key: str, retries: int = 0) -> openai.OpenAI:
    return openai.OpenAI(
        base_url="http://testserver/v1", api_key=key, http_client=client, max_retries=retries
    )


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_a_key_sees_and_uses_only_its_personas_on_every_route(gateway: TestClient) -> None:
    key = make_key(gateway, "team-a", personas=["al*"])
    client = sdk(gateway, key)
    assert [m.id for m in client.models.list()] == [BASE, "alpha"]
    assert client.models.retrieve("alpha").parent == BASE  # type: ignore[attr-defined]
    with pytest.raises(openai.PermissionDeniedError):
        client.models.retrieve("beta")
    personas = gateway.get("/v1/personas", headers=bearer(key)).json()["data"]
    assert [p["name"] for p in personas] == ["alpha"]
    assert client.chat.completions.create(model="alpha", messages=USER).choices[0].message.content

    with pytest.raises(openai.PermissionDeniedError) as chat:
        client.chat.completions.create(model="beta", messages=USER)
    assert chat.value.code == "model_not_allowed"
    assert f"It may use: {BASE}, alpha." in chat.value.message
    with pytest.raises(openai.PermissionDeniedError):
        client.completions.create(model="beta@1", prompt="hi")
    with pytest.raises(openai.PermissionDeniedError):
        client.responses.create(model="beta", input="hi")
    claude = anthropic.Anthropic(
        base_url="http://testserver", api_key=key, http_client=gateway, max_retries=0
    )
    with pytest.raises(anthropic.PermissionDeniedError):
        claude.messages.create(
            model="beta", max_tokens=4, messages=[{"role": "user", "content": "hi"}]
        )
    legacy = gateway.post("/", json={"prompt": "你好", "persona": "beta"}, headers=bearer(key))
    assert legacy.status_code == 403 and legacy.json()["error"]["code"] == "model_not_allowed"
    assert gateway.get("/v1/personas/beta", headers=bearer(key)).status_code == 403
    body = {"model": "beta", "prompt": "hi"}
    tokenize = gateway.post("/tokenize", json=body, headers=bearer(key))
    assert tokenize.status_code == 403
    # A name outside its globs is a 403 whether or not it exists (nothing is given away); one
    # inside them that does not exist is a 404 listing only what this key may use.
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="gamma", messages=USER)
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="almond", messages=USER)
    assert "beta" not in unknown.value.message and "alpha" in unknown.value.message


def test_a_key_without_the_base_model_may_not_use_it(gateway: TestClient) -> None:
    client = sdk(gateway, make_key(gateway, "alpha-only", personas=["alpha"], base_model=False))
    assert [m.id for m in client.models.list()] == ["alpha"]
    with pytest.raises(openai.PermissionDeniedError) as refused:
        client.chat.completions.create(model=BASE, messages=USER)
    assert "It may use: alpha." in refused.value.message
    legacy = gateway.post("/", json={"prompt": "hi"}, headers=bearer(client.api_key))
    assert legacy.status_code == 403


def test_requests_per_minute_answer_429_with_openai_headers(gateway: TestClient) -> None:
    client = sdk(gateway, make_key(gateway, "slow", rpm=3))
    remaining = []
    for _ in range(3):
        raw = client.chat.completions.with_raw_response.create(model="alpha", messages=USER)
        assert raw.headers["x-ratelimit-limit-requests"] == "3"
        remaining.append(raw.headers["x-ratelimit-remaining-requests"])
        assert raw.headers["x-ratelimit-reset-requests"].endswith("s")
    assert remaining == ["2", "1", "0"]
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model="alpha", messages=USER)
    headers = refused.value.response.headers
    assert refused.value.code == "rate_limit_exceeded"
    assert 55 <= int(headers["retry-after"]) <= 60  # the first request leaves the minute then
    assert 54_000 < int(headers["retry-after-ms"]) <= 60_000
    assert headers["x-ratelimit-remaining-requests"] == "0"
    # The legacy route counts against the same key.
    legacy = gateway.post("/", json={"prompt": "hi"}, headers=bearer(client.api_key))
    assert legacy.status_code == 429


def test_tokens_per_minute_are_counted_from_the_engines_usage(gateway: TestClient) -> None:
    client = sdk(gateway, make_key(gateway, "frugal", tpm=60))
    spent = 0
    for _ in range(10):
        try:
            reply = client.chat.completions.create(model="alpha", messages=USER, max_tokens=5)
        except openai.RateLimitError as refused:
            assert spent + 5 > 60, "refused although the tokens fit"
            headers = refused.response.headers
            assert headers["x-ratelimit-limit-tokens"] == "60"
            assert int(headers["x-ratelimit-remaining-tokens"]) == max(0, 60 - spent)
            break
        assert reply.usage is not None
        spent += reply.usage.total_tokens
    else:
        pytest.fail("never refused")
    assert spent > 0


def test_a_revoked_key_is_refused_at_once(gateway: TestClient) -> None:
    client = sdk(gateway, make_key(gateway, "leaver"))
    client.models.list()
    revoked = gateway.delete("/v1/keys/leaver", headers=ADMIN_HEADERS)
    assert revoked.status_code == 200 and revoked.json()["revoked"] is not None
    with pytest.raises(openai.AuthenticationError) as refused:
        client.models.list()
    assert "revoked" in refused.value.message
    again = gateway.delete("/v1/keys/leaver", headers=ADMIN_HEADERS)
    assert again.status_code == 404


def test_keys_made_and_revoked_by_the_cli_count_at_the_next_request(
    gateway: TestClient, tmp_path: Path
) -> None:
    state_dir = tmp_path / "state"
    store = KeyStore(state_dir)  # another connection, as `loragate keys create` is
    _, secret = store.create(ApiKey("from-cli", personas=("beta",)))
    store.close()
    client = sdk(gateway, secret)
    assert [m.id for m in client.models.list()] == [BASE, "beta"]
    assert loragate_main(["keys", "--state-dir", str(state_dir), "revoke", "from-cli"]) == 0
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_the_key_api_is_for_admin_keys_and_shows_no_secret(gateway: TestClient) -> None:
    key = make_key(gateway, "member")
    assert gateway.get("/v1/keys", headers=bearer(key)).status_code == 401
    assert gateway.post("/v1/keys", json={"name": "x"}, headers=bearer(key)).status_code == 401
    assert gateway.get("/v1/usage", headers=bearer(key)).status_code == 401
    listed = gateway.get("/v1/keys", headers=ADMIN_HEADERS).json()["data"]
    assert {k["name"]: k["source"] for k in listed} == {"admin-key": "flag", "member": "store"}
    assert key not in json.dumps(listed) and "digest" not in listed[1]
    duplicate = gateway.post("/v1/keys", json={"name": "member"}, headers=ADMIN_HEADERS)
    assert duplicate.status_code == 400 and duplicate.json()["error"]["code"] == "key_exists"
    builtin = gateway.delete("/v1/keys/admin-key", headers=ADMIN_HEADERS)
    assert builtin.status_code == 400 and "flags" in builtin.json()["error"]["message"]
    invalid = gateway.post("/v1/keys", json={"name": "x", "rpm": 0}, headers=ADMIN_HEADERS)
    assert invalid.status_code == 400 and invalid.json()["error"]["param"] == "rpm"
    # An admin key may do everything the API does, persona changes included.
    assert sdk(gateway, make_key(gateway, "ops", admin=True)).models.list()


def test_an_expired_key_is_refused(gateway: TestClient) -> None:
    client = sdk(gateway, make_key(gateway, "old", expires="2020-01-01"))
    with pytest.raises(openai.AuthenticationError) as refused:
        client.models.list()
    assert "expired" in refused.value.message


def test_usage_adds_up_to_the_responses_and_survives_a_restart(
    tmp_path: Path, root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with serving(tmp_path, root) as first:
        first.put("/v1/personas/alpha", json={"path": str(write_bundle(root / "alpha"))},
                  headers=ADMIN_HEADERS)  # fmt: skip
        client = sdk(first, make_key(first, "team"))
        prompt = completion = 0
        for model in ("alpha", "alpha", BASE):
            reply = client.chat.completions.create(model=model, messages=USER)
            assert reply.usage is not None
            prompt += reply.usage.prompt_tokens
            completion += reply.usage.completion_tokens
        stream = client.chat.completions.create(
            model="alpha", messages=USER, stream=True, stream_options={"include_usage": True}
        )
        last = list(stream)[-1].usage
        assert last is not None
        prompt, completion = prompt + last.prompt_tokens, completion + last.completion_tokens
        live = first.get("/v1/usage", headers=ADMIN_HEADERS).json()["data"]
    with serving(tmp_path, root) as restarted:
        kept = restarted.get("/v1/usage?key=team", headers=ADMIN_HEADERS).json()["data"]
    assert kept == live
    by_model = {row["persona"]: row for row in kept}
    assert by_model["alpha"]["requests"] == 3 and by_model[BASE]["requests"] == 1
    assert sum(row["prompt_tokens"] for row in kept) == prompt
    assert sum(row["completion_tokens"] for row in kept) == completion
    capsys.readouterr()
    assert loragate_main(["keys", "--state-dir", str(tmp_path / "state"), "usage", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == kept


def test_secrets_appear_in_no_log_metric_or_database(
    gateway: TestClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    key = make_key(gateway, "quiet", rpm=100)
    client = sdk(gateway, key)
    client.chat.completions.create(model="alpha", messages=USER)
    with pytest.raises(openai.PermissionDeniedError):
        sdk(gateway, make_key(gateway, "other", personas=["nothing"])).models.retrieve("beta")
    metrics = gateway.get("/metrics", headers=ADMIN_HEADERS).text
    gateway.get("/v1/usage", headers=ADMIN_HEADERS)  # the rows written
    stored = b"".join(path.read_bytes() for path in (tmp_path / "state").iterdir())
    assert "model=alpha@1 tokens=20+2 key=quiet" in caplog.text  # who, by name
    for secret in (key, ADMIN):
        assert secret not in caplog.text and secret not in metrics
        assert secret.encode() not in stored
    assert digest(key).encode() in stored  # what is kept instead
    assert b"quiet" in stored  # the usage rows name the key


def test_a_keys_file_defines_keys_and_wins_over_a_stored_one(tmp_path: Path, root: Path) -> None:
    state_dir = tmp_path / "state"
    store = KeyStore(state_dir)
    _, stored_secret = store.create(ApiKey("shared", limits=Limits(rpm=1)))
    store.close()
    secret = "lg-from-the-keys-file"
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text(
        f'[[key]]\nname = "shared"\ndigest = "{digest(secret)}"\npersonas = ["beta"]\n'
    )
    with serving(tmp_path, root, keys_file=keys_file) as client:
        assert [m.id for m in sdk(client, secret).models.list()] == [BASE]  # beta: not yet put
        with pytest.raises(openai.AuthenticationError):
            sdk(client, stored_secret).models.list()
        listed = client.get("/v1/keys", headers=ADMIN_HEADERS).json()["data"]
        assert [k["source"] for k in listed if k["name"] == "shared"] == ["file"]


def test_a_personas_own_cap_holds_for_all_keys_together(tmp_path: Path, root: Path) -> None:
    bundle = write_bundle(root / "hot")
    manifest = read_bundle(bundle).manifest
    write_manifest(bundle, manifest.model_copy(update={"max_parallel": 1}))
    engine = CountingEngine(load_delay=0)
    first_hold = Hold()
    engine.enqueue(["a", first_hold, "b"])
    with start(tmp_path, engine, root, admin_key=ADMIN) as client:
        put = client.put("/v1/personas/hot", json={"path": str(bundle)}, headers=ADMIN_HEADERS)
        assert put.status_code == 201, put.text
        keys = [make_key(client, name) for name in ("one", "two", "three")]
        replies: dict[str, Any] = {}

        def chat(key: str) -> None:
            replies[key] = client.post(
                "/v1/chat/completions",
                json={"model": "hot", "messages": USER},
                headers=bearer(key),
            )

        running = threading.Thread(target=chat, args=(keys[0],))
        running.start()
        wait_for(lambda: len(engine.requests) == 1)
        queued = threading.Thread(target=chat, args=(keys[1],))
        queued.start()
        time.sleep(0.2)
        assert len(engine.requests) == 1  # the second waits for the persona's one slot
        chat(keys[2])  # a third finds the queue full: come back later
        assert replies[keys[2]].status_code == 429
        assert "persona hot" in replies[keys[2]].json()["error"]["message"]
        # The base model is not the persona: it answers meanwhile.
        base = client.post("/v1/chat/completions", json={"model": BASE, "messages": USER},
                           headers=bearer(keys[2]))  # fmt: skip
        assert base.status_code == 200
        assert client.portal is not None
        client.portal.call(first_hold.released.set)
        running.join(10)
        queued.join(10)
        assert [replies[k].status_code for k in keys[:2]] == [200, 200]
        assert replies[keys[0]].json()["choices"][0]["message"]["content"] == "ab"


def test_the_terminal_chat_offers_the_keys_models_and_says_when_to_retry(
    gateway: TestClient,
) -> None:
    client = sdk(gateway, make_key(gateway, "terminal", personas=["beta"], base_model=False, rpm=1))
    known = model_names(client)
    assert known == ["beta"]
    out = io.StringIO()
    chat = TerminalChat(client, default_model(client, known), out=out)
    chat.handle("hello")
    chat.handle("again")
    printed = out.getvalue()
    assert "beta> Hello world" in printed
    assert "[error] Rate limit reached for key terminal on requests per minute (1)." in printed
    assert "Retry after" in printed


def test_hostile_key_definitions_and_names_are_refused_with_a_400_or_403(
    gateway: TestClient,
) -> None:
    huge = gateway.post("/v1/keys", json={"name": "big", "rpm": 2**70}, headers=ADMIN_HEADERS)
    assert huge.status_code == 400 and huge.json()["error"]["param"] == "rpm"
    client = sdk(gateway, make_key(gateway, "narrow", personas=["alpha"]))
    with pytest.raises(openai.PermissionDeniedError) as refused:
        client.chat.completions.create(model="b" * 100_000, messages=USER)
    assert len(refused.value.message) < 1000 and "100000 characters" in refused.value.message


def test_a_bad_keys_file_stops_the_start(tmp_path: Path, root: Path) -> None:
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text("x = " + "[" * 100_000 + "]" * 100_000)
    with (
        pytest.raises(InvalidKeyError, match=re.escape(str(keys_file))),
        serving(tmp_path, root, keys_file=keys_file),
    ):
        pass
    keys_file.write_text('[[key]]\nname = "a"\ndigest = "sha256:00"\n')
    with (
        pytest.raises(InvalidKeyError, match="key 1: "),
        serving(tmp_path, root, keys_file=keys_file),
    ):
        pass
