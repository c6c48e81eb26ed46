"""The persona API and persona selection over HTTP, on the fake engine, through the SDK."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest
from fastapi.testclient import TestClient
from openai.types.chat import ChatCompletionMessageParam

from tests.unit import personas_support
from tests.unit.personas_support import BASE, CountingEngine, start, write_adapter, write_bundle

CONTRACT_FIELDS = {
    "name", "version", "state", "error", "description", "base_model", "system_prompt",
    "defaults", "adapter_path", "rank", "size_bytes", "load_time_s", "requests_served",
    "last_used", "in_flight",
}  # fmt: skip
USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
SYSTEM_PROMPT = "You are Zhen Huan."


# The persona app's fixtures; the unit conftest's `sdk` drives this `client`.
root, engine, client = personas_support.root, personas_support.engine, personas_support.client
raise_server_exceptions = personas_support.raise_server_exceptions


@pytest.fixture
def zhenhuan(client: TestClient, root: Path) -> dict[str, object]:
    bundle = write_bundle(
        root / "zhenhuan",
        version="3",
        system_prompt=SYSTEM_PROMPT,
        defaults={"temperature": 0.3, "top_p": 0.8, "max_tokens": 7, "repetition_penalty": 1.05},
    )
    response = client.put("/v1/personas/zhenhuan", json={"path": str(bundle)})
    assert response.status_code == 201, response.text
    body: dict[str, object] = response.json()
    return body


def test_put_creates_then_swaps_and_reports_the_contract_fields(
    client: TestClient, zhenhuan: dict[str, object], root: Path
) -> None:
    assert set(zhenhuan) >= CONTRACT_FIELDS
    assert (zhenhuan["state"], zhenhuan["version"], zhenhuan["rank"]) == ("loaded", "3", 2)
    assert zhenhuan["defaults"] == {"temperature": 0.3, "top_p": 0.8, "max_tokens": 7,
                                    "repetition_penalty": 1.05}  # fmt: skip
    swapped = client.put(
        "/v1/personas/zhenhuan", json={"path": str(write_bundle(root / "v4", version="4"))}
    )
    assert swapped.status_code == 200
    assert swapped.json()["version"] == "4"
    assert client.get("/v1/personas/zhenhuan").json()["version"] == "4"
    listed = client.get("/v1/personas").json()
    assert listed["object"] == "list" and [p["name"] for p in listed["data"]] == ["zhenhuan"]


@pytest.mark.usefixtures("zhenhuan")
def test_unknown_persona_is_404_listing_the_valid_ones(
    client: TestClient, sdk: openai.OpenAI
) -> None:
    response = client.get("/v1/personas/nobody")
    assert response.status_code == 404
    assert "Valid personas: zhenhuan" in response.json()["error"]["message"]
    with pytest.raises(openai.NotFoundError) as err:
        sdk.chat.completions.create(model="nobody", messages=USER)
    assert "zhenhuan" in err.value.message and BASE in err.value.message


def test_invalid_bundles_are_400s_that_change_nothing(
    client: TestClient, engine: CountingEngine, root: Path, tmp_path: Path
) -> None:
    cases = {
        str(write_adapter(root / "dora", use_dora=True)): "DoRA",
        str(write_adapter(root / "big", rank=64)): "max_lora_rank",
        str(write_adapter(tmp_path / "elsewhere")): "outside the adapter roots",
        f"{root}/../elsewhere": "'..'",
        "relative/path": "must be absolute",
    }
    for path, named in cases.items():
        response = client.put("/v1/personas/bad", json={"path": path})
        assert response.status_code == 400, path
        assert named in response.json()["error"]["message"]
    assert client.get("/v1/personas").json()["data"] == []
    assert engine.add_calls == [] and engine.adapters == {}


def test_bad_persona_names_are_refused(client: TestClient, root: Path) -> None:
    path = str(write_adapter(root / "a"))
    for name in ("a@b", BASE, "abc%0A"):  # %0A: a trailing newline
        response = client.put(f"/v1/personas/{name}", json={"path": path})
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_persona_name"


@pytest.mark.usefixtures("zhenhuan")
def test_delete_frees_the_engine_and_unlists(
    client: TestClient, engine: CountingEngine, sdk: openai.OpenAI
) -> None:
    assert engine.adapters
    response = client.delete("/v1/personas/zhenhuan")
    assert response.json() == {"name": "zhenhuan", "deleted": True}
    assert engine.adapters == {}
    assert client.get("/v1/personas/zhenhuan").status_code == 404
    assert [m.id for m in sdk.models.list()] == [BASE]
    assert client.delete("/v1/personas/zhenhuan").status_code == 404


def test_vllm_load_and_unload_routes(
    client: TestClient, engine: CountingEngine, root: Path
) -> None:
    body = {"lora_name": "sql", "lora_path": str(write_adapter(root / "sql"))}
    response = client.post("/v1/load_lora_adapter", json=body)
    assert response.status_code == 200
    assert response.text == "Success: LoRA adapter 'sql' added successfully."
    assert response.headers["content-type"].startswith("text/plain")
    again = client.post("/v1/load_lora_adapter", json=body)
    assert again.status_code == 400 and "already been loaded" in again.json()["error"]["message"]
    inplace = client.post("/v1/load_lora_adapter", json={**body, "load_inplace": True})
    assert inplace.status_code == 200
    response = client.post("/v1/unload_lora_adapter", json={"lora_name": "sql"})
    assert response.text == "Success: LoRA adapter 'sql' removed successfully."
    assert engine.adapters == {}
    missing = client.post("/v1/unload_lora_adapter", json={"lora_name": "sql"})
    assert missing.status_code == 404


def test_models_list_personas_with_parent_and_root(
    sdk: openai.OpenAI, zhenhuan: dict[str, object]
) -> None:
    cards = {m.id: m.model_dump() for m in sdk.models.list()}
    assert cards["zhenhuan"]["parent"] == BASE
    assert cards["zhenhuan"]["root"] == zhenhuan["adapter_path"]


def test_persona_system_prompt_and_defaults_apply_where_the_request_is_silent(
    sdk: openai.OpenAI, zhenhuan: dict[str, object], engine: CountingEngine
) -> None:
    reply = sdk.chat.completions.create(model="zhenhuan", messages=USER)
    assert reply.model == "zhenhuan"
    prompt_ids, options, adapter = engine.requests[-1]
    assert engine.tokenizer.decode(prompt_ids) == f"<system>{SYSTEM_PROMPT}\n<user>hi\n<assistant>"
    assert (options.temperature, options.top_p, options.max_tokens) == (0.3, 0.8, 7)
    assert options.repetition_penalty == 1.05
    assert adapter is not None and adapter.int_id == zhenhuan["adapter_id"]


@pytest.mark.usefixtures("zhenhuan")
def test_the_requests_own_system_message_and_fields_win(
    sdk: openai.OpenAI, engine: CountingEngine
) -> None:
    own: list[ChatCompletionMessageParam] = [{"role": "system", "content": "Be brief."}, *USER]
    sdk.chat.completions.create(
        model="zhenhuan@3",
        messages=own,
        temperature=1.2,
        max_tokens=3,
    )
    prompt_ids, options, _ = engine.requests[-1]
    assert engine.tokenizer.decode(prompt_ids) == "<system>Be brief.\n<user>hi\n<assistant>"
    assert (options.temperature, options.top_p, options.max_tokens) == (1.2, 0.8, 3)


@pytest.mark.usefixtures("zhenhuan")
def test_base_model_requests_use_no_adapter(sdk: openai.OpenAI, engine: CountingEngine) -> None:
    sdk.chat.completions.create(model=BASE, messages=USER)
    assert engine.requests[-1][2] is None


def test_legacy_endpoint_takes_model_and_persona(
    client: TestClient, zhenhuan: dict[str, object], engine: CountingEngine
) -> None:
    for field in ("model", "persona"):
        response = client.post("/", json={"prompt": "hi", field: "zhenhuan"})
        assert response.status_code == 200
        prompt_ids, options, adapter = engine.requests[-1]
        assert adapter is not None and adapter.int_id == zhenhuan["adapter_id"]
        assert engine.tokenizer.decode(prompt_ids).startswith(f"<system>{SYSTEM_PROMPT}\n")
        assert options.max_tokens == 7
    assert client.get("/v1/personas/zhenhuan").json()["requests_served"] == 2


def test_persona_changes_need_the_admin_key(
    tmp_path: Path, engine: CountingEngine, root: Path
) -> None:
    path = str(write_adapter(root / "a"))
    with start(tmp_path, engine, root, admin_key="adm", api_key="api") as client:
        assert client.put("/v1/personas/a", json={"path": path}).status_code == 401
        api = {"Authorization": "Bearer api"}
        assert client.put("/v1/personas/a", json={"path": path}, headers=api).status_code == 401
        admin = {"Authorization": "Bearer adm"}
        assert client.put("/v1/personas/a", json={"path": path}, headers=admin).status_code == 201
        unload = client.post("/v1/unload_lora_adapter", json={"lora_name": "a"}, headers=api)
        assert unload.status_code == 401
        assert client.get("/v1/personas", headers=api).status_code == 200
        assert client.delete("/v1/personas/a", headers=admin).status_code == 200


def test_legacy_endpoint_applies_every_persona_default(
    client: TestClient, root: Path, engine: CountingEngine
) -> None:
    defaults = {
        "temperature": 0.3, "top_p": 0.8, "top_k": 12, "min_p": 0.05, "max_tokens": 7,
        "repetition_penalty": 1.05, "presence_penalty": 0.4, "frequency_penalty": 0.2,
    }  # fmt: skip
    bundle = write_bundle(root / "tuned", version="1", defaults=defaults)
    assert client.put("/v1/personas/tuned", json={"path": str(bundle)}).status_code == 201
    assert client.post("/", json={"prompt": "hi", "model": "tuned"}).status_code == 200
    options = engine.requests[-1][1]
    assert {key: getattr(options, key) for key in defaults} == defaults
