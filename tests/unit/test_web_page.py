"""The chat page's HTTP side: GET / and its assets, self-contained, beside the legacy POST /."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from loragate.engine.fake import FakeEngine
from loragate.server.routers.web import ASSET_TYPES, WEB_DIR


def test_get_root_is_the_chat_page_with_a_self_only_policy(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert '<script type="module" src="/web/app.js">' in page.text
    assert 'href="/web/style.css"' in page.text


def test_assets_are_served_with_their_types(client: TestClient) -> None:
    for name, media_type in ASSET_TYPES.items():
        response = client.get(f"/web/{name}")
        assert response.status_code == 200, name
        assert response.headers["content-type"] == media_type
        assert response.content == (WEB_DIR / name).read_bytes()


def test_unknown_asset_is_a_404_envelope(client: TestClient) -> None:
    for path in ("/web/nope.js", "/web/..%2F..%2Fsettings.py", "/web/index.html"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert response.json()["error"]["type"] == "not_found_error"


def test_nothing_is_loaded_from_another_origin() -> None:
    """Every src/href/url()/fetch target is on the gateway itself (or an inline data: URI)."""
    texts = {p.name: p.read_text() for p in WEB_DIR.iterdir() if p.is_file()}
    assert set(texts) == {"index.html", *ASSET_TYPES}
    for name, text in texts.items():
        targets = re.findall(
            r"""(?:src|href)=["']([^"']+)|url\(([^)]+)\)|fetch\(\s*["'`]([^"'`]+)""", text
        )
        for groups in targets:
            target = next(g for g in groups if g)
            assert target.startswith(("/", "data:")), f"{name} loads {target}"
        assert "@import" not in text, name


def test_post_root_stays_the_legacy_endpoint(client: TestClient, fake: FakeEngine) -> None:
    fake.enqueue(["你", "好"])
    response = client.post("/", json={"prompt": "你好"})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"response", "status", "time"}
    assert body["response"] == "你好"
