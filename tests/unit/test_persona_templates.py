"""A persona's own chat template and tool parser (persona.toml), served and trained with."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from loragate.adapters.manifest import PersonaManifest, read_bundle, write_manifest
from loragate.adapters.training.bundle import CHAT_TEMPLATE_FILE, publish_bundle
from loragate.engine.fake import FakeEngine
from loragate.server.app import create_app
from tests import llama31
from tests.unit.personas_support import (
    BASE,
    TINY_MODEL,
    make_settings,
    persona_state_factory,
    write_bundle,
    write_model_dir,
)

# Slow by nature: vLLM's tool parsers or a 128k-vocabulary tokenizer load first (seconds);
# `make test` runs it, `make unit` does not.
pytestmark = pytest.mark.slow

TEMPLATE = "PERSONA|{% for m in messages %}{{ m.role }}:{{ m.content }}|{% endfor %}"


@pytest.fixture
def fake() -> FakeEngine:
    engine = llama31.Llama31Engine(llama31.shared_tokenizer())
    engine.hf_config = dict(TINY_MODEL)  # the persona adapters are made for the tiny model
    return engine


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "adapters").mkdir()
    return tmp_path / "adapters"


@pytest.fixture
def client(tmp_path: Path, fake: FakeEngine, root: Path) -> Iterator[TestClient]:
    factory = persona_state_factory(fake, write_model_dir(tmp_path / "model"))
    with TestClient(create_app(make_settings(root), factory)) as test_client:
        yield test_client


def bundle_with(root: Path, **manifest: Any) -> Path:
    bundle = write_bundle(root / "templated", system_prompt="You are a pirate.")
    updated = read_bundle(bundle).manifest.model_copy(update=manifest)
    write_manifest(bundle, updated)
    return bundle


def test_a_personas_template_renders_its_requests(
    client: TestClient, fake: FakeEngine, root: Path
) -> None:
    bundle = bundle_with(root, chat_template="my.jinja", tool_parser="hermes")
    (bundle / "my.jinja").write_text(TEMPLATE)
    assert client.put("/v1/personas/pirate", json={"path": str(bundle)}).status_code == 201
    body = {"model": "pirate", "messages": [{"role": "user", "content": "Ahoy?"}]}
    assert client.post("/v1/chat/completions", json=body).status_code == 200
    ((prompt, _, _),) = fake.requests
    assert fake.tokenizer.decode(prompt) == "PERSONA|system:You are a pirate.|user:Ahoy?|"
    base = {"model": BASE, "messages": body["messages"]}
    client.post("/v1/chat/completions", json=base)  # the base model keeps its own template
    assert fake.tokenizer.decode(fake.requests[1][0]).startswith("<|begin_of_text|>")


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        ({"tool_parser": "nope"}, "is not one of vLLM's"),
        ({"chat_template": "missing.jinja"}, "cannot be read"),
        ({"chat_template": "../outside.jinja"}, "inside the bundle"),
    ],
)
def test_a_bad_template_or_parser_is_refused(
    client: TestClient, root: Path, manifest: dict[str, Any], message: str
) -> None:
    (root / "outside.jinja").write_text(TEMPLATE)
    bundle = bundle_with(root, **manifest)
    response = client.put("/v1/personas/pirate", json={"path": str(bundle)})
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]["message"]


def test_training_publishes_the_template_it_trained_with(tmp_path: Path) -> None:
    def save_adapter(directory: Path) -> None:
        from tests.unit.personas_support import write_adapter

        write_adapter(directory)

    manifest = PersonaManifest(chat_template=CHAT_TEMPLATE_FILE)
    bundle = publish_bundle(tmp_path / "b", manifest, save_adapter, {CHAT_TEMPLATE_FILE: TEMPLATE})
    assert (bundle / CHAT_TEMPLATE_FILE).read_text() == TEMPLATE
    assert read_bundle(bundle).manifest.chat_template == CHAT_TEMPLATE_FILE
