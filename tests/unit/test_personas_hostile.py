"""Hostile persona paths and files over HTTP: each is a 400 in OpenAI's envelope, never a 500.

Both registration routes are driven (PUT /v1/personas/{name} and vLLM's load_lora_adapter), on
the fake engine; nothing refused reaches the engine or the listing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx2  # the test client's (starlette's) httpx
import pytest
from fastapi.testclient import TestClient

from tests.unit import personas_support
from tests.unit.personas_support import (
    DEEP,
    CountingEngine,
    start,
    write_adapter,
    write_bundle,
    write_deep_header,
)

Route = Callable[[TestClient, str, str], httpx2.Response]

root, engine, client = personas_support.root, personas_support.engine, personas_support.client


@pytest.fixture
def raise_server_exceptions() -> bool:
    """Not raised in the test: an unhandled error must show as the 500 that a client would get."""
    return False


def put_persona(client: TestClient, name: str, path: str) -> httpx2.Response:
    return client.put(f"/v1/personas/{name}", json={"path": path})


def load_lora_adapter(client: TestClient, name: str, path: str) -> httpx2.Response:
    return client.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path})


ROUTES = pytest.mark.parametrize("route", [put_persona, load_lora_adapter], ids=["put", "load"])


def refused(response: httpx2.Response) -> str:
    """The message of a 400 in OpenAI's envelope."""
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    message: str = error["message"]
    return message


def assert_unchanged(client: TestClient, engine: CountingEngine) -> None:
    assert client.get("/v1/personas").json()["data"] == []
    assert engine.add_calls == [] and engine.adapters == {}


@ROUTES
def test_a_path_with_a_nul_byte(
    client: TestClient, engine: CountingEngine, root: Path, route: Route
) -> None:
    write_adapter(root / "a")
    assert "NUL" in refused(route(client, "p", f"{root}/a\x00/etc"))
    assert_unchanged(client, engine)


@ROUTES
def test_over_long_paths_and_names(
    client: TestClient, engine: CountingEngine, root: Path, route: Route
) -> None:
    message = refused(route(client, "p", f"{root}/{'a' * 5000}"))
    assert "characters long" in message and len(message) < 300
    message = refused(route(client, "p", f"{root}/{'a' * 300}"))  # one component over NAME_MAX
    assert "File name too long" in message and len(message) < 400
    path = str(write_adapter(root / "a"))
    message = refused(route(client, "n" * 5000, path))
    assert "Invalid persona name" in message and len(message) < 500
    assert_unchanged(client, engine)


@ROUTES
def test_a_path_through_a_regular_file(
    client: TestClient, engine: CountingEngine, root: Path, route: Route
) -> None:
    (root / "somefile").write_text("not a directory")
    assert "does not exist" in refused(route(client, "p", f"{root}/somefile/adapter"))
    assert "is not a directory" in refused(route(client, "p", f"{root}/somefile"))
    assert_unchanged(client, engine)


@ROUTES
def test_deeply_nested_files(
    client: TestClient, engine: CountingEngine, root: Path, route: Route
) -> None:
    config = write_adapter(root / "config")
    (config / "adapter_config.json").write_text(DEEP)
    header = write_adapter(root / "header")
    write_deep_header(header / "adapter_model.safetensors")
    manifest = write_bundle(root / "manifest")
    (manifest / "persona.toml").write_text(f"x = {DEEP}\n")
    for path, file in [(config, "adapter_config.json"), (header, "adapter_model.safetensors"),
                       (manifest, "persona.toml")]:  # fmt: skip
        message = refused(route(client, "p", str(path)))
        assert file in message and "nested too deeply" in message
    assert_unchanged(client, engine)


@ROUTES
def test_a_symlink_out_of_the_roots_is_refused_without_saying_where_it_leads(
    client: TestClient, engine: CountingEngine, root: Path, tmp_path: Path, route: Route
) -> None:
    secret = write_adapter(tmp_path / "secret-place")
    (root / "link").symlink_to(secret)
    (root / "dangling").symlink_to(tmp_path / "no-such-place")
    inside = write_adapter(root / "weights-out")
    (inside / "adapter_model.safetensors").unlink()
    (inside / "adapter_model.safetensors").symlink_to(secret / "adapter_model.safetensors")
    for path in (root / "link", root / "dangling", inside):
        message = refused(route(client, "p", str(path)))
        assert "leads outside the adapter roots" in message
        assert "secret-place" not in message and "no-such-place" not in message
    assert_unchanged(client, engine)


def test_a_deeply_nested_bundle_in_a_personas_dir_does_not_stop_start_up(
    tmp_path: Path, engine: CountingEngine, root: Path
) -> None:
    personas_dir = root / "personas"
    write_bundle(personas_dir / "deep")
    (personas_dir / "deep" / "persona.toml").write_text(f"x = {DEEP}\n")
    write_bundle(personas_dir / "good")
    server = start(
        tmp_path, engine, root, raise_server_exceptions=False, personas_dir=[personas_dir]
    )
    with server as client:
        listed = {p["name"]: p for p in client.get("/v1/personas").json()["data"]}
        assert listed["good"]["state"] == "registered"
        assert listed["deep"]["state"] == "failed"
        assert "nested too deeply" in listed["deep"]["error"]
        reply = client.post("/v1/chat/completions", json={
            "model": "deep", "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
        assert reply.status_code == 400 and "nested too deeply" in reply.text
