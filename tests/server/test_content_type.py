"""POST bodies must be JSON: a cross-site "simple" request (text/plain, multipart) gets a 415 (issue 10, item 2)."""

from __future__ import annotations

import json

import pytest
from conftest import DEFAULT
from fastapi.testclient import TestClient

pytestmark = pytest.mark.timeout(60)
USER = [{"role": "user", "content": "hi"}]
ROUTES = [
    ("POST", "/api/generate", {"model": DEFAULT, "prompt": "hi", "stream": False}),
    ("POST", "/api/chat", {"model": DEFAULT, "messages": USER, "stream": False}),
    ("POST", "/api/show", {"model": DEFAULT}),
    ("POST", "/api/pull", {"model": DEFAULT, "stream": False}),
    ("POST", "/v1/chat/completions", {"model": DEFAULT, "messages": USER}),
    ("POST", "/v1/completions", {"model": DEFAULT, "prompt": "hi"}),
    ("DELETE", "/api/delete", {"model": "fake-never-there"}),
]
HOSTILE = ["text/plain", "text/plain;charset=UTF-8", "multipart/form-data; boundary=x", "application/xml"]
FRIENDLY = [None, "application/json", "application/json; charset=utf-8", "application/x-www-form-urlencoded"]


@pytest.fixture
def counting_client(make_app, loader):
    pulls: list[str] = []

    def pull(name: str, *, store=None):
        pulls.append(name)  # the answer is not used with stream: false

    with TestClient(make_app(pull=pull)) as client:
        yield client, pulls, loader


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_non_json_content_types_are_refused_before_anything_runs(counting_client, method, path, body) -> None:
    client, pulls, loader = counting_client
    for kind in HOSTILE:  # a web page's cross-site "simple" POST
        r = client.request(method, path, content=json.dumps(body), headers={"content-type": kind})
        assert r.status_code == 415, (kind, r.text)
        error = r.json()["error"]
        message = error["message"] if path.startswith("/v1/") else error
        assert "application/json" in message and kind.split(";")[0] in message
    assert pulls == [] and loader.instances == []  # refused before anything loaded or pulled
    for kind in FRIENDLY:  # JSON clients, and curl -d (form-encoded), still work
        headers = {} if kind is None else {"content-type": kind}
        r = client.request(method, path, content=json.dumps(body), headers=headers)
        assert r.status_code in (200, 404), (kind, r.status_code, r.text)  # 404: the deleted model
        assert r.status_code == 200 or path == "/api/delete"
