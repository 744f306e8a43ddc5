"""A CI-sized run (~15 s) of benchmarks/soak.py: hostile and normal clients together against fake models.

No 5xx for any request, no failure of a well-behaved client, latency within reach, nothing left in
flight. The 30-minute run against a real model is `python benchmarks/soak.py` (not in CI).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from conftest import DEFAULT, live_server

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
from soak import Soak

pytestmark = pytest.mark.timeout(120)


def test_a_short_soak_has_no_server_errors_and_no_failed_normal_requests(make_app, loader) -> None:
    loader.defaults.update(token_delay=0.002, reply="a few words of reply text")
    app = make_app()
    with live_server(app) as url:
        report = Soak(url, DEFAULT, seconds=15).run(normal=3, hostile=2)
    summary = report.summary()
    assert report.ok, summary
    assert report.normal_requests > 20 and report.hostile_requests > 10, summary
    assert summary["latency_p95_s"] < 10, summary
    statuses = {k.rsplit(" ", 1)[-1] for k in report.hostile_statuses}
    assert statuses <= {"400", "404", "413", "415", "stream"} | {"ReadError", "RemoteProtocolError",
                                                                 "WriteError"}, summary
    deadline = time.monotonic() + 5  # the last responses' cleanup may trail the clients by a moment
    while app.state.admission.in_flight and time.monotonic() < deadline:
        time.sleep(0.01)
    assert app.state.admission.in_flight == 0
