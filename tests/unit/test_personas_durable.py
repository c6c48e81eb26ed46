"""Durable personas on the fake engine: what the API registers survives a restart of the app.

Each "restart" is a new app (and a new fake engine) on the same --state-dir, as `loragate serve`
started again would be.
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient
from openai.types.chat import ChatCompletionMessageParam

from loragate import state_db
from loragate.adapters import persona_store
from loragate.adapters.persona_store import DATABASE, MIGRATIONS, PersonaStore
from tests.unit import personas_support
from tests.unit.personas_support import CountingEngine, start, write_adapter, write_bundle

root = personas_support.root
USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
SYSTEM_PROMPT = "You are Zhen Huan."


@contextmanager
def serving(
    tmp_path: Path, root: Path, *, engine: CountingEngine | None = None, **settings: Any
) -> Iterator[TestClient]:
    """The persona app on tmp_path/state (personas_support's state directory) until exit."""
    with start(tmp_path, engine or CountingEngine(load_delay=0), root, **settings) as client:
        yield client


def put(client: TestClient, name: str, path: Path) -> dict[str, object]:
    response = client.put(f"/v1/personas/{name}", json={"path": str(path)})
    assert response.status_code in (200, 201), response.text
    body: dict[str, object] = response.json()
    return body


def sdk(client: TestClient) -> openai.OpenAI:
    return openai.OpenAI(
        base_url="http://testserver/v1", api_key="x", http_client=client, max_retries=0
    )


def listed(client: TestClient) -> dict[str, dict[str, object]]:
    return {p["name"]: p for p in client.get("/v1/personas").json()["data"]}


def saved_history(tmp_path: Path, name: str) -> list[persona_store.SavedVersion]:
    store = PersonaStore(tmp_path / "state")
    try:
        return store.history(name)
    finally:
        store.close()


def test_a_persona_put_at_run_time_is_served_after_a_restart(tmp_path: Path, root: Path) -> None:
    bundle = write_bundle(root / "zhenhuan", version="3", system_prompt=SYSTEM_PROMPT)
    with serving(tmp_path, root) as first:
        assert put(first, "zhenhuan", bundle)["state"] == "loaded"
    engine = CountingEngine(load_delay=0)
    with serving(tmp_path, root, engine=engine) as second:
        info = second.get("/v1/personas/zhenhuan").json()
        assert (info["state"], info["version"], info["error"]) == ("registered", "3", None)
        assert info["system_prompt"] == SYSTEM_PROMPT
        assert "zhenhuan" in [m.id for m in sdk(second).models.list()]
        reply = sdk(second).chat.completions.create(model="zhenhuan@3", messages=USER)
        assert reply.model == "zhenhuan"
        prompt_ids, _, adapter = engine.requests[-1]
        assert adapter is not None and adapter.int_id in engine.adapters
        assert engine.tokenizer.decode(prompt_ids).startswith(f"<system>{SYSTEM_PROMPT}\n")
        assert second.get("/v1/personas/zhenhuan").json()["state"] == "loaded"


def test_a_swap_is_what_comes_back_and_every_version_stays_in_the_history(
    tmp_path: Path, root: Path
) -> None:
    v1, v2 = write_bundle(root / "z-v1", version="1"), write_bundle(root / "z-v2", version="2")
    with serving(tmp_path, root) as first:
        first_id = put(first, "z", v1)["adapter_id"]
        second_id = put(first, "z", v2)["adapter_id"]
    with serving(tmp_path, root) as second:
        assert second.get("/v1/personas/z").json()["version"] == "2"
        sdk(second).chat.completions.create(model="z@2", messages=USER)
    history = saved_history(tmp_path, "z")
    assert [(h.version, h.path, h.adapter_id) for h in history] == [
        ("1", v1.resolve(), first_id),
        ("2", v2.resolve(), second_id),
    ]
    assert history[0].replaced is not None and history[0].registered <= history[0].replaced
    assert history[1].replaced is None and history[1].deleted is None
    assert history[0].replaced <= history[1].registered


def test_a_deleted_persona_is_not_restored_and_its_history_stays(
    tmp_path: Path, root: Path
) -> None:
    bundle = write_bundle(root / "z")
    with serving(tmp_path, root) as first:
        put(first, "z", bundle)
        assert first.delete("/v1/personas/z").status_code == 200
    with serving(tmp_path, root) as second:
        assert second.get("/v1/personas/z").status_code == 404
        assert listed(second) == {}
        put(second, "z", bundle)  # registered again: saved again
    [deleted, again] = saved_history(tmp_path, "z")
    assert deleted.deleted is not None and again.deleted is None
    with serving(tmp_path, root) as third:
        assert listed(third)["z"]["state"] == "registered"


def test_vllms_load_and_unload_routes_are_saved_too(tmp_path: Path, root: Path) -> None:
    body = {"lora_name": "sql", "lora_path": str(write_adapter(root / "sql"))}
    with serving(tmp_path, root) as first:
        assert first.post("/v1/load_lora_adapter", json=body).status_code == 200
        assert first.post("/v1/load_lora_adapter", json={**body, "load_inplace": True}).is_success
    with serving(tmp_path, root) as second:
        assert listed(second)["sql"]["version"] == "1"  # a bare adapter's
        unload = second.post("/v1/unload_lora_adapter", json={"lora_name": "sql"})
        assert unload.status_code == 200
    assert len(saved_history(tmp_path, "sql")) == 2
    with serving(tmp_path, root) as third:
        assert listed(third) == {}


def test_a_bundle_gone_or_refused_comes_back_failed_with_the_reason(
    tmp_path: Path, root: Path
) -> None:
    bundles = {name: write_bundle(root / name) for name in ("gone", "broken", "kept")}
    with serving(tmp_path, root) as first:
        for name, path in bundles.items():
            put(first, name, path)
    shutil.rmtree(bundles["gone"])
    write_adapter(bundles["broken"] / "adapter", use_dora=True)
    with serving(tmp_path, root) as second:
        personas = listed(second)
        assert {name: p["state"] for name, p in personas.items()} == {
            "gone": "failed", "broken": "failed", "kept": "registered",
        }  # fmt: skip
        assert "does not exist" in str(personas["gone"]["error"])
        assert "DoRA" in str(personas["broken"]["error"])
        assert personas["gone"]["adapter_path"] == str(bundles["gone"].resolve())
        assert [m.id for m in sdk(second).models.list()][1:] == ["kept"]
        refused = second.post("/v1/chat/completions", json={"model": "gone", "messages": USER})
        assert refused.json()["error"]["code"] == "persona_unavailable"
        sdk(second).chat.completions.create(model="kept", messages=USER)
        assert second.delete("/v1/personas/gone").status_code == 200  # seen, and let go
    with serving(tmp_path, root) as third:
        assert sorted(listed(third)) == ["broken", "kept"]


def test_configured_personas_are_not_saved(tmp_path: Path, root: Path) -> None:
    personas_dir = root / "personas"
    write_bundle(personas_dir / "from-dir")
    cli = write_adapter(root / "cli")
    configured: dict[str, Any] = {"personas_dir": [personas_dir], "persona": [f"from-cli={cli}"]}
    with serving(tmp_path, root, **configured) as first:
        assert sorted(listed(first)) == ["from-cli", "from-dir"]
        put(first, "api", write_bundle(root / "api"))
    with serving(tmp_path, root) as second:
        assert sorted(listed(second)) == ["api"]


def test_a_saved_persona_comes_back_over_a_configured_one_of_its_name(
    tmp_path: Path, root: Path
) -> None:
    configured: dict[str, Any] = {"persona": [f"z={write_bundle(root / 'z-cli', version='cli')}"]}
    with serving(tmp_path, root, **configured) as first:
        assert listed(first)["z"]["version"] == "cli"
        put(first, "z", write_bundle(root / "z-api", version="api"))
    with serving(tmp_path, root, **configured) as second:  # the API's came later: it wins
        assert listed(second)["z"]["version"] == "api"


def test_a_damaged_database_stops_start_up_with_a_clear_error(tmp_path: Path, root: Path) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / DATABASE).write_bytes(b"this is not SQLite\n" * 512)
    with pytest.raises(RuntimeError) as error, serving(tmp_path, root):
        pass
    message = str(error.value)
    assert f"{tmp_path / 'state' / DATABASE} cannot be opened: file is not a database" in message
    assert "move it aside" in message


def test_a_database_of_a_newer_loragate_stops_start_up(tmp_path: Path, root: Path) -> None:
    (tmp_path / "state").mkdir()
    with sqlite3.connect(tmp_path / "state" / DATABASE) as db:
        db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    db.close()
    with pytest.raises(RuntimeError, match="written by a newer loragate"), serving(tmp_path, root):
        pass


@contextmanager
def write_locked(database: Path) -> Iterator[None]:
    """Another process's write transaction, held open."""
    other = sqlite3.connect(database, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        other.execute("ROLLBACK")
        other.close()


def test_a_locked_database_refuses_changes_with_a_503_and_changes_nothing(
    tmp_path: Path, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(state_db, "BUSY_TIMEOUT_S", 0.05)
    engine = CountingEngine(load_delay=0)
    with serving(tmp_path, root, engine=engine) as client:
        put(client, "a", write_bundle(root / "a", version="1"))
        loaded = dict(engine.adapters)
        with write_locked(tmp_path / "state" / DATABASE):
            for response in (
                client.put("/v1/personas/b", json={"path": str(write_bundle(root / "b"))}),
                client.put("/v1/personas/a", json={"path": str(write_bundle(root / "a2"))}),
                client.delete("/v1/personas/a"),
            ):
                assert response.status_code == 503, response.text
                error = response.json()["error"]
                assert (error["type"], error["code"]) == (
                    "service_unavailable_error", "persona_store_unavailable",
                )  # fmt: skip
                assert DATABASE in error["message"] and "lock" in error["message"]
            assert sorted(listed(client)) == ["a"] and listed(client)["a"]["version"] == "1"
            assert engine.adapters == loaded  # b's adapter and a's new one left the engine again
            sdk(client).chat.completions.create(model="a", messages=USER)  # it serves on
        put(client, "b", root / "b")
    with write_locked(tmp_path / "state" / DATABASE), serving(tmp_path, root) as restarted:
        # Start-up only reads: a writer's lock (WAL) does not hold it up.
        assert sorted(listed(restarted)) == ["a", "b"]


def test_the_migrations_run_once_and_keep_the_data(tmp_path: Path) -> None:
    store = PersonaStore(tmp_path)
    store.save("z", "1", tmp_path / "z", 1)
    store.close()
    again = PersonaStore(tmp_path)
    try:
        assert [v.name for v in again.current()] == ["z"]
        assert again.mark_deleted("z") and not again.mark_deleted("z")
        assert again.current() == []
    finally:
        again.close()
    with sqlite3.connect(tmp_path / DATABASE) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    db.close()
