"""`serve --max-queue` (429 with Retry-After beyond it) and draining (503 for new requests) (issue 10)."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from conftest import DEFAULT, live_server

from llamarun.server.admission import Admission

pytestmark = pytest.mark.timeout(60)


def wait_until(condition, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_beyond_max_queue_new_requests_get_429_and_admitted_ones_finish(make_app, loader) -> None:
    loader.defaults.update(token_delay=0.01, reply="y" * 200)  # 2 s streams
    app = make_app()
    app.state.admission.max_queue = 2
    body = {"model": DEFAULT, "prompt": "go", "stream": True}
    with live_server(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        with client.stream("POST", "/api/generate", json=body) as a, \
                client.stream("POST", "/api/generate", json=body) as b:
            lines_a, lines_b = a.iter_lines(), b.iter_lines()
            next(lines_a), next(lines_b)  # two requests running: the queue is full
            r = client.post("/api/generate", json={**body, "stream": False})
            assert r.status_code == 429 and r.headers["retry-after"] == "1", r.text
            assert "busy" in r.json()["error"]
            r = client.post("/v1/chat/completions", json={"model": DEFAULT, "messages": [
                {"role": "user", "content": "x"}]})
            assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"
            assert client.get("/health").status_code == 200  # only model work is queued
            assert client.get("/api/tags").status_code == 200
            assert '"done":true' in list(lines_a)[-1] and '"done":true' in list(lines_b)[-1]
        assert wait_until(lambda: app.state.admission.queued == 0)  # the server finishes just after the client
        r = client.post("/api/generate", json={**body, "stream": False})
        assert r.status_code == 200 and r.json()["response"] == "y" * 200


def test_a_flood_beyond_the_queue_is_refused_without_slowing_admitted_streams(make_app, loader) -> None:
    loader.defaults.update(token_delay=0.01, reply="z" * 100)
    app = make_app()
    app.state.admission.max_queue = 4
    statuses: list[int] = []
    body = {"model": DEFAULT, "prompt": "go", "stream": False}
    with live_server(app) as url:
        def one() -> None:
            with httpx.Client(base_url=url, timeout=30) as c:
                statuses.append(c.post("/api/generate", json=body).status_code)
        threads = [threading.Thread(target=one) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted(set(statuses)) == [200, 429] and statuses.count(200) >= 4, statuses
    assert wait_until(lambda: app.state.admission.queued == 0 and app.state.admission.in_flight == 0)


def test_draining_refuses_new_requests_with_503(make_app) -> None:
    app = make_app()
    with live_server(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        assert client.get("/health").status_code == 200
        app.state.admission.start_draining()
        r = client.post("/api/chat", json={"model": DEFAULT, "messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 503 and r.headers["retry-after"] and "shutting down" in r.json()["error"]
        r = client.post("/v1/completions", json={"model": DEFAULT, "prompt": "x"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "server_draining"
        assert client.get("/health").status_code == 503  # load balancers stop sending here


def test_wait_idle_times_out_while_requests_run() -> None:
    adm = Admission(1)
    assert adm.enter(True) and adm.enter(False) and not adm.enter(True)  # other requests never queue
    assert adm.in_flight == 2 and adm.queued == 1
    assert not adm.wait_idle(0.1)
    adm.leave(True)
    adm.leave(False)
    assert adm.wait_idle(0.1)
    with pytest.raises(ValueError):
        Admission(0)
