"""Durable personas on the real engine (issue 14): a persona PUT at run time answers after the
gateway process restarts on the same --state-dir.

Two gateways of its own, one after the other (the session gateway is not used): the first
registers personas through the API and stops; the second starts on the same state directory.
"""

from __future__ import annotations

import shutil
import time

import openai
import pytest

from tests.integration.conftest import BASE_MODEL
from tests.integration.gateway import Gateway, running_gateway
from tests.integration.lora_factory import make_lora_adapter
from tests.integration.persona_support import (
    COMPARED_TOKENS,
    PERSONA_STD,
    PersonaApi,
    greedy_tokens,
)

pytestmark = pytest.mark.integration

PERSONA = "durable"


def openai_client(gateway: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key="x", max_retries=0, timeout=300)


def test_a_persona_put_at_run_time_answers_after_a_gateway_restart(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    home = tmp_path_factory.mktemp("durable")
    adapter = make_lora_adapter(home / "adapters" / PERSONA, seed=21, std=PERSONA_STD)
    gone = shutil.copytree(adapter, home / "adapters" / "gone")
    args = ["--adapter-root", str(home / "adapters"), "--state-dir", str(home / "state")]

    with running_gateway(home / "first.log", args) as first, PersonaApi(first) as api:
        client = openai_client(first)
        base = greedy_tokens(client, BASE_MODEL)
        assert api.put_ok(PERSONA, adapter)["version"] == "1"
        before = greedy_tokens(client, PERSONA)
        assert before[:COMPARED_TOKENS] != base[:COMPARED_TOKENS], "the adapter changes nothing"
        api.put_ok("durable-gone", gone)
        api.put_ok("durable-deleted", adapter)
        api.delete("durable-deleted")
    shutil.rmtree(gone)  # its bundle disappears while the gateway is down

    started = time.monotonic()
    with running_gateway(home / "second.log", args) as second, PersonaApi(second) as api:
        restart_s = time.monotonic() - started
        personas = {p["name"]: p for p in api.listing()}
        assert sorted(personas) == [PERSONA, "durable-gone"]  # the deleted one stays deleted
        assert (personas[PERSONA]["state"], personas[PERSONA]["version"]) == ("registered", "1")
        assert personas["durable-gone"]["state"] == "failed"
        assert "does not exist" in personas["durable-gone"]["error"]
        client = openai_client(second)
        assert PERSONA in [m.id for m in client.models.list()]
        after = greedy_tokens(client, PERSONA)
        assert after[:COMPARED_TOKENS] == before[:COMPARED_TOKENS]
        assert after[:COMPARED_TOKENS] != greedy_tokens(client, BASE_MODEL)[:COMPARED_TOKENS]
        with pytest.raises(openai.BadRequestError, match="refused at start-up"):
            client.chat.completions.create(
                model="durable-gone", messages=[{"role": "user", "content": "Hi"}], max_tokens=4
            )
        assert api.get(PERSONA).json()["state"] == "loaded"
    print(f"gateway restarted and healthy in {restart_s:.1f} s")
