"""CORS and the DNS-rebinding guard: which pages may call the server, preflights, and the Host check."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from conftest import DEFAULT, live_server, make_resolver
from fake_llm import DEFAULT_REPLY, FakeLoader
from fastapi.testclient import TestClient

from llamarun.server import ModelManager, create_app
from llamarun.server.origins import OriginPolicy, host_name, is_loopback, parse_origins

pytestmark = pytest.mark.timeout(60)
CHAT = {"model": DEFAULT, "messages": [{"role": "user", "content": "hi"}], "stream": False}


def preflight(client: Any, origin: str, path: str = "/api/chat", headers: str = "content-type") -> Any:
    return client.options(path, headers={"Origin": origin, "Access-Control-Request-Method": "POST",
                                         "Access-Control-Request-Headers": headers})


@pytest.fixture
def app_with(store):
    """app_with(**create_app kwargs) over fake models, and the pulls it was asked for."""
    pulls: list[str] = []

    def build(**kwargs: Any) -> Any:
        manager = ModelManager(FakeLoader(), resolve=make_resolver(store))
        return create_app(manager, store=store, pull=lambda name, **_: pulls.append(name), **kwargs)

    build.pulls = pulls
    return build


@pytest.mark.parametrize("origin", ["http://localhost:3000", "https://localhost", "http://127.0.0.1:8080",
                                    "http://[::1]:5173", "HTTP://LOCALHOST:3000"])
def test_a_local_origins_preflight_is_answered(app_with, origin: str) -> None:
    with TestClient(app_with()) as client:
        r = preflight(client, origin, headers="authorization, content-type, x-stainless-os")
    assert r.status_code == 204, r.text
    assert r.headers["access-control-allow-origin"] == origin
    allowed = {h.strip().lower() for h in r.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "x-stainless-os"} <= allowed
    assert "POST" in r.headers["access-control-allow-methods"]
    assert int(r.headers["access-control-max-age"]) > 0


@pytest.mark.parametrize("origin", ["http://evil.example", "http://localhost.evil.example:3000", "null",
                                    "file://", "ftp://localhost", "http://127.0.0.2.nip.io"])
def test_a_foreign_origins_preflight_is_refused(app_with, origin: str) -> None:
    with TestClient(app_with()) as client:
        r = preflight(client, origin)
    assert r.status_code == 403
    assert "access-control-allow-origin" not in r.headers
    assert "--origins" in r.json()["error"]


def test_allowed_answers_can_be_read_and_refused_requests_do_no_work(app_with) -> None:
    app = app_with()
    with TestClient(app) as client:
        # a web page's "simple" POST from elsewhere: refused before the pull starts
        r = client.post("/api/pull", content=b'{"model": "smollm2:135m", "stream": false}',
                        headers={"Origin": "http://evil.example", "Content-Type": "text/plain"})
        assert r.status_code == 403 and app_with.pulls == []
        r = client.post("/v1/chat/completions", json={**CHAT, "stream": False},
                        headers={"Origin": "https://evil.example"})
        assert r.status_code == 403 and r.json()["error"]["message"].startswith("Origin")
        assert app.state.manager.loaded() == []  # nothing was loaded for it
        r = client.post("/api/chat", json=CHAT, headers={"Origin": "http://localhost:3000"})
        assert r.status_code == 200 and r.json()["message"]["content"] == DEFAULT_REPLY
        assert r.headers["access-control-allow-origin"] == "http://localhost:3000"
        assert "origin" in r.headers["vary"].lower()
        # requests with no Origin (curl, SDKs) are not affected, and get no CORS headers
        r = client.post("/api/chat", json=CHAT)
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_origins_given_by_the_operator(app_with) -> None:
    with TestClient(app_with(origins=["https://app.example", "chrome-extension://*"])) as client:
        assert preflight(client, "https://app.example").status_code == 204
        assert preflight(client, "chrome-extension://abcdef").status_code == 204
        assert preflight(client, "https://app.example.evil").status_code == 403
        assert preflight(client, "http://localhost:1").status_code == 204  # the local ones stay
    with TestClient(app_with(origins=["*"])) as client:
        r = preflight(client, "https://anything.example")
        assert r.status_code == 204 and r.headers["access-control-allow-origin"] == "https://anything.example"


def test_the_servers_own_page_may_call_it(app_with) -> None:
    with TestClient(app_with(), base_url="http://192.168.1.5:11434") as client:
        r = client.post("/api/chat", json=CHAT, headers={"Origin": "http://192.168.1.5:11434"})
        assert r.status_code == 200
        assert preflight(client, "http://192.168.1.6:11434").status_code == 403


def test_preflights_need_no_api_key(app_with) -> None:
    with TestClient(app_with(api_key="k")) as client:
        assert preflight(client, "http://localhost:3000").status_code == 204
        r = client.post("/api/chat", json=CHAT, headers={"Origin": "http://localhost:3000"})
        assert r.status_code == 401  # the key is still needed for the request itself
        assert r.headers["access-control-allow-origin"] == "http://localhost:3000"  # so the page can say why


@pytest.mark.parametrize("host", ["localhost", "localhost:11434", "127.0.0.1:80", "[::1]:11434", "0.0.0.0:11434",
                                  "LOCALHOST"])
def test_a_loopback_server_answers_loopback_host_names(app_with, host: str) -> None:
    with TestClient(app_with(bind_host="127.0.0.1")) as client:
        assert client.get("/api/tags", headers={"Host": host}).status_code == 200


@pytest.mark.parametrize("host", ["evil.example", "evil.example:11434", "127.0.0.1.nip.io", "testserver"])
def test_a_rebinding_host_is_refused_on_loopback(app_with, host: str) -> None:
    with TestClient(app_with(bind_host="127.0.0.1")) as client:
        r = client.post("/api/chat", json=CHAT, headers={"Host": host})
        assert r.status_code == 403 and "DNS rebinding" in r.json()["error"]
        assert client.get("/health", headers={"Host": host}).status_code == 403
    with TestClient(app_with(bind_host="0.0.0.0")) as client:  # reachable by any name: no Host check
        assert client.get("/api/tags", headers={"Host": host}).status_code == 200


def test_rebinding_against_a_live_loopback_server(store) -> None:
    app = create_app(ModelManager(FakeLoader(), resolve=make_resolver(store)), store=store, bind_host="127.0.0.1")
    with live_server(app) as url:
        assert httpx.post(f"{url}/api/chat", json=CHAT, timeout=30).status_code == 200
        # a page on evil.example, its name now resolving to 127.0.0.1: same-origin, but the Host gives it away
        evil = {"Host": "evil.example:11434", "Origin": "http://evil.example:11434"}
        assert httpx.post(f"{url}/api/chat", json=CHAT, headers=evil, timeout=30).status_code == 403
        r = httpx.options(f"{url}/api/chat", headers={"Origin": "http://localhost:3000",
                                                      "Access-Control-Request-Method": "POST"}, timeout=30)
        assert r.status_code == 204


def test_policy_helpers() -> None:
    assert parse_origins(" https://a.example/ , ,b://c ") == ["https://a.example", "b://c"]
    assert parse_origins(None) == []
    assert [is_loopback(h) for h in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost")] == [True] * 5
    assert [is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.2", "example.com", None)] == [False] * 5
    assert [host_name(h) for h in ("[::1]:80", "::1", "Example.com:8", "a")] == ["::1", "::1", "example.com", "a"]
    assert OriginPolicy().origin_allowed("not a url ::: [", None) is False
    assert OriginPolicy().host_allowed(None) and OriginPolicy(check_host=True).host_allowed("")
