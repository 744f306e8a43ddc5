"""Every generation of one HTTP request reaches the engine in one client group (issue 10: fair scheduling).

The engine admits waiting groups round-robin (tests/engine/test_fair_admission.py); this checks the
other half, that the chat service puts a request's prompts x n generations in one group, and separate
requests in separate groups, through every API.
"""

from __future__ import annotations

import pytest
from conftest import DEFAULT

pytestmark = pytest.mark.timeout(60)


def test_one_request_is_one_group(client, loader) -> None:
    r = client.post("/v1/completions", json={"model": DEFAULT, "prompt": ["a", "b", "c"], "n": 2, "max_tokens": 2})
    assert r.status_code == 200 and len(r.json()["choices"]) == 6
    r = client.post("/v1/chat/completions", json={"model": DEFAULT, "n": 3, "max_tokens": 2,
                                                  "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200
    r = client.post("/api/generate", json={"model": DEFAULT, "prompt": "hi", "stream": False,
                                           "options": {"num_predict": 2}})
    assert r.status_code == 200
    calls = loader.last().calls
    groups = [c.group for c in calls]
    assert len(calls) == 10 and all(groups)
    assert len(set(groups[:6])) == 1 and len(set(groups[6:9])) == 1  # a request's generations share one
    assert len({groups[0], groups[6], groups[9]}) == 3  # different requests, different groups
    assert all(c.request_id.startswith(c.group) for c in calls)  # the group is the request's own id
