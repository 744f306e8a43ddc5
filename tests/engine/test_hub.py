"""EngineHub: one driving thread for every model; run_sync, handover to run_forever, stop."""

from __future__ import annotations

import threading

import pytest

from llamarun.engine.hub import EngineHub


def test_run_sync_runs_on_the_driver_thread_and_returns_or_raises():
    hub = EngineHub()
    name = hub.run_sync(lambda: threading.current_thread().name)
    assert name == "llamarun-engines"
    with pytest.raises(ValueError, match="boom"):
        hub.run_sync(lambda: (_ for _ in ()).throw(ValueError("boom")))
    assert hub.run_sync(lambda: hub.run_sync(lambda: 7)) == 7  # nested: runs inline, no deadlock
    hub.stop()


def test_run_forever_takes_over_from_the_background_thread():
    hub = EngineHub()
    assert hub.run_sync(lambda: threading.current_thread().name) == "llamarun-engines"
    seen = []
    hub.call(lambda: seen.append(threading.current_thread().name))
    runner = threading.Thread(target=hub.run_forever, name="owner")
    runner.start()
    assert hub.run_sync(lambda: threading.current_thread().name) == "owner"
    hub.stop()
    runner.join(timeout=5)
    assert not runner.is_alive() and len(seen) == 1


def test_a_failing_message_does_not_stop_the_hub():
    hub = EngineHub()
    hub.call(lambda: 1 / 0)
    assert hub.run_sync(lambda: "alive") == "alive"
    hub.stop()


def test_after_run_forever_returns_a_background_driver_takes_over_again():
    hub = EngineHub()
    runner = threading.Thread(target=hub.run_forever, name="owner")
    runner.start()
    assert hub.run_sync(lambda: threading.current_thread().name) == "owner"
    hub.stop()
    runner.join(timeout=5)
    assert hub.run_sync(lambda: threading.current_thread().name) == "llamarun-engines"
    hub.stop()
