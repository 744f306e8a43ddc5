"""Bodies that once returned a 500 are a 400 that keeps the connection (issue 10, item 6), fuzzed over raw bytes.

Deep nesting, integers with thousands of digits and lone surrogates each failed inside Python's json or
the tokenizer; a 500 made the server drop the keep-alive connection, so the client's next, valid
request failed too. These run on a real uvicorn server over one http.client connection per test.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
from conftest import DEFAULT, live_server, make_resolver
from fake_llm import FakeLoader
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llamarun.errors import DownloadError
from llamarun.server import ModelManager, create_app
from llamarun.store.default_model import install_default_model_from
from llamarun.store.home import ModelStore

pytestmark = pytest.mark.timeout(240)
USER = [{"role": "user", "content": "hi"}]
VALID = {  # one well-behaved body per POST route
    "/api/generate": {"model": DEFAULT, "prompt": "hi", "stream": False},
    "/api/chat": {"model": DEFAULT, "messages": USER, "stream": False},
    "/api/show": {"model": DEFAULT},
    "/v1/chat/completions": {"model": DEFAULT, "messages": USER, "max_tokens": 4},
    "/v1/completions": {"model": DEFAULT, "prompt": "hi", "max_tokens": 4},
}
DEEP = b'{"model": "' + DEFAULT.encode() + b'", "prompt": ' + b"[" * 5000 + b"]" * 5000 + b"}"
HOSTILE = {
    "nested 5,000 levels": DEEP,
    "nested 150 levels": b'{"model": "x", "tools": [' + b'{"a": ' * 150 + b"1" + b"}" * 150 + b"]}",
    "a 5,000-digit integer": b'{"model": "x", "prompt": "hi", "max_tokens": ' + b"9" * 5000 + b"}",
    "a 5,000-digit integer in a list": b'{"model": "x", "prompt": [' + b"1" * 5000 + b"]}",
    "a lone surrogate": b'{"model": "' + DEFAULT.encode() + b'", "prompt": "x\\ud800y", "raw": true}',
    "a lone low surrogate": b'{"model": "' + DEFAULT.encode() + b'", "prompt": "\\udfffx", "stream": false}',
    "a lone surrogate in a message": b'{"model": "x", "messages": [{"role": "user", "content": "\\ud83d"}]}',
    "a lone surrogate in a key": b'{"model": "x", "prompt": "hi", "\\ud800": 1}',
}


class Connection:
    """One keep-alive HTTP/1.1 connection to the live server: a request that resets it fails the next."""

    def __init__(self, base: str) -> None:
        url = urlparse(base)
        self.conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)

    def post(self, path: str, body: bytes, content_type: str | None = "application/json") -> tuple[int, bytes]:
        headers = {"Content-Type": content_type} if content_type else {}
        self.conn.request("DELETE" if path == "/api/delete" else "POST", path, body=body, headers=headers)
        response = self.conn.getresponse()
        return response.status, response.read()

    def still_works(self, path: str | None = None) -> None:
        """A valid request on the same connection succeeds (no ConnectionResetError)."""
        body = VALID[path] if path else {"model": "fake-ok", "prompt": "hi", "max_tokens": 2}  # not in the store
        status, data = self.post(path or "/v1/completions", json.dumps(body).encode())
        assert status == 200, (path, data[:300])
        assert self.conn.sock is not None  # the server kept the connection open


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, default_gguf: Path) -> Iterator[str]:
    """A live server over fake models, on a store of its own (the fuzzer may delete its model)."""
    own = ModelStore(tmp_path_factory.mktemp("decode-home"))
    install_default_model_from(default_gguf, own)
    manager = ModelManager(FakeLoader(reply="ok"), resolve=make_resolver(own))
    with live_server(create_app(manager, store=own, pull=_no_pull)) as url:
        yield url


def _no_pull(name: str, *, store=None):
    raise DownloadError(f"no network in this test ({name[:20]})")


@pytest.mark.parametrize("path", list(VALID))
@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_bodies_are_400_and_keep_the_connection(base: str, path: str, case: str) -> None:
    conn = Connection(base)
    status, data = conn.post(path, HOSTILE[case])
    assert status == 400, (case, status, data[:300])
    error = json.loads(data)["error"]
    message = error["message"] if path.startswith("/v1/") else error
    assert any(word in message for word in ("deeper than 100", "too many digits", "surrogate", "invalid")), message
    conn.still_works(path)


def test_moderate_nesting_and_surrogate_pairs_still_work(base: str) -> None:
    conn = Connection(base)
    tools = [{"type": "function", "function": {"name": "f", "parameters": json.loads(
        '{"a": ' * 40 + "1" + "}" * 40)}}]
    status, data = conn.post("/v1/chat/completions", json.dumps(
        {"model": DEFAULT, "messages": USER, "tools": tools, "max_tokens": 2}).encode())
    assert status == 200, data[:300]
    status, data = conn.post("/v1/completions", b'{"model": "' + DEFAULT.encode()
                             + b'", "prompt": "smile \\ud83d\\ude00", "max_tokens": 2}')
    assert status == 200, data[:300]  # a surrogate pair is one character, as JSON means it


ROUTES = [*VALID, "/api/pull", "/api/delete"]
fragments = st.sampled_from([b"{", b"}", b"[", b"]", b'"', b":", b",", b"\\ud800", b"\\u0000", b"9" * 40,
                             b"1e999", b"NaN", b"-Infinity", b"true", b"null", b'"model"', b'"prompt"',
                             b'"messages"', DEFAULT.encode(), b"\xff", b"\xc3", b"\x00", b"[" * 200,
                             b"[" * 1200, b"7" * 4400])


def mutate(valid: bytes, pieces: list[bytes], at: int) -> bytes:
    cut = at % (len(valid) + 1)
    return valid[:cut] + b"".join(pieces) + valid[cut:]


raw_bodies = (st.binary(max_size=80)
              | st.lists(fragments, max_size=12).map(b"".join)
              | st.builds(mutate, st.sampled_from([json.dumps(b).encode() for b in VALID.values()]),
                          st.lists(fragments, min_size=1, max_size=4), st.integers(0, 200)))


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(raw=raw_bodies, path=st.sampled_from(ROUTES),
       content_type=st.sampled_from(["application/json", None, "application/x-www-form-urlencoded"]))
def test_fuzzed_raw_bytes_keep_the_connection(base: str, raw: bytes, path: str, content_type: str | None) -> None:
    conn = Connection(base)
    try:
        status, data = conn.post(path, raw, content_type)
        assert status < 500, (path, raw[:200], status, data[:300])
        conn.still_works()
    finally:
        conn.conn.close()
