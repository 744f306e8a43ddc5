"""Soak test: well-behaved and hostile clients against one server for N minutes (issue 10).

Normal clients chat and stream through both APIs and record latency; hostile clients send what the
hardening issue found (deep nesting, huge numbers, lone surrogates, text/plain bodies, oversize and
unfinished bodies, prompt floods, server file paths, tiny num_ctx, dropped streams). Any 5xx, any
connection error of a normal client, or a normal request that fails is counted. With `--pid` the
server's resident memory is sampled.

    python benchmarks/soak.py --url http://127.0.0.1:11434 --model smollm2:135m --minutes 30 \
        --pid $(pgrep -f 'llamarun serve') --json benchmarks/results/soak-cpu.json

Not run in CI at this length; tests/server/test_soak_short.py runs it for ~15 s against fake models.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

JSON = {"content-type": "application/json"}


@dataclass
class SoakReport:
    """What the soak saw; `ok` is the verdict."""

    seconds: float = 0.0
    normal_requests: int = 0
    normal_failures: list[str] = field(default_factory=list)
    hostile_requests: int = 0
    hostile_statuses: dict[str, int] = field(default_factory=dict)
    server_errors: list[str] = field(default_factory=list)  # any 5xx but a 503/429 refusal
    latencies: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.server_errors and not self.normal_failures

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies) or [0.0]
        out = {k: v for k, v in asdict(self).items() if k not in ("latencies", "rss_mb")}
        out["normal_failures"] = self.normal_failures[:20]
        out["server_errors"] = self.server_errors[:20]
        out |= {"latency_p50_s": statistics.median(lat), "latency_p95_s": lat[int(0.95 * (len(lat) - 1))],
                "latency_max_s": lat[-1], "ok": self.ok}
        if self.rss_mb:
            out |= {"rss_start_mb": self.rss_mb[0], "rss_max_mb": max(self.rss_mb), "rss_end_mb": self.rss_mb[-1]}
        return out


def hostile_requests(model: str) -> list[tuple[str, str, dict[str, str], bytes]]:
    """(method, path, headers, body) of each hostile request; none may get a 5xx or break the server."""
    chat = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": False}
    deep = b'{"model": "x", "prompt": ' + b"[" * 6000 + b"]" * 6000 + b"}"
    return [
        ("POST", "/api/generate", JSON, deep),
        ("POST", "/v1/completions", JSON, b'{"model": "%s", "prompt": "x", "max_tokens": %s}'
         % (model.encode(), b"9" * 5000)),
        ("POST", "/v1/completions", JSON, b'{"model": "%s", "prompt": "x\\ud800y"}' % model.encode()),
        ("POST", "/api/chat", {"content-type": "text/plain"}, json.dumps(chat).encode()),
        ("POST", "/v1/completions", JSON, json.dumps({"model": model, "prompt": ["hi"] * 100, "n": 16}).encode()),
        ("POST", "/api/chat", JSON, json.dumps({**chat, "model": "/etc/shadow"}).encode()),
        ("POST", "/api/generate", JSON, json.dumps({"model": model, "prompt": "hi", "stream": False,
                                                    "options": {"num_ctx": 1}}).encode()),
        ("POST", "/api/chat", JSON, json.dumps({**chat, "messages": [{"role": "user", "content": "x"}]
                                                * 60_000}).encode()),
        ("POST", "/api/chat", JSON, b"x" * (9 * 2**20)),  # over the 8 MiB body cap
        ("POST", "/v1/chat/completions", JSON, json.dumps({"model": model, "messages": "nope",
                                                           "max_tokens": True}).encode()),
        ("POST", "/api/generate", JSON, bytes(random.Random(0).randrange(256) for _ in range(500))),
    ]


class Soak:
    """Runs the clients until `seconds` pass; thread-safe counting into one SoakReport."""

    def __init__(self, url: str, model: str, seconds: float, pid: int | None = None) -> None:
        self.url, self.model, self.seconds, self.pid = url.rstrip("/"), model, seconds, pid
        self.report = SoakReport()
        self.lock = threading.Lock()
        self.stop_at = 0.0

    def run(self, normal: int = 4, hostile: int = 2) -> SoakReport:
        self.stop_at = time.monotonic() + self.seconds
        t0 = time.monotonic()
        workers = [threading.Thread(target=self._normal, args=(i,)) for i in range(normal)]
        workers += [threading.Thread(target=self._hostile, args=(i,)) for i in range(hostile)]
        workers.append(threading.Thread(target=self._sample_memory))
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        self.report.seconds = time.monotonic() - t0
        return self.report

    def _normal(self, index: int) -> None:
        kinds = itertools.cycle(["ollama", "openai-stream", "ollama-stream", "openai"])
        for _ in range(index):
            next(kinds)
        with httpx.Client(base_url=self.url, timeout=120) as client:
            while time.monotonic() < self.stop_at:
                kind = next(kinds)
                t0 = time.monotonic()
                try:
                    ok, status = self._one_normal(client, kind)
                except httpx.HTTPError as err:
                    ok, status = False, f"{type(err).__name__}: {err}"
                with self.lock:
                    self.report.normal_requests += 1
                    if ok:
                        self.report.latencies.append(time.monotonic() - t0)
                    elif status not in (429, 503):  # a refusal under load is allowed, a failure is not
                        self.report.normal_failures.append(f"{kind}: {status}")

    def _one_normal(self, client: httpx.Client, kind: str) -> tuple[bool, Any]:
        messages = [{"role": "user", "content": "Say hello in five words."}]
        if kind == "ollama":
            r = client.post("/api/chat", json={"model": self.model, "messages": messages, "stream": False,
                                               "options": {"num_predict": 16}})
            return r.status_code == 200 and r.json().get("done") is True, r.status_code
        if kind == "openai":
            r = client.post("/v1/chat/completions", json={"model": self.model, "messages": messages,
                                                          "max_tokens": 16})
            return r.status_code == 200 and r.json()["choices"][0]["finish_reason"] is not None, r.status_code
        path = "/api/chat" if kind == "ollama-stream" else "/v1/chat/completions"
        body = {"model": self.model, "messages": messages, "stream": True, "max_tokens": 16,
                "options": {"num_predict": 16}}
        with client.stream("POST", path, json=body) as r:
            if r.status_code != 200:
                return False, r.status_code
            last = [line for line in r.iter_lines() if line.strip()][-1]
        done = '"done":true' in last if kind == "ollama-stream" else last == "data: [DONE]"
        return done, f"stream ended with {last[:80]!r}"

    def _hostile(self, index: int) -> None:
        cases = hostile_requests(self.model)
        rng = random.Random(index)
        with httpx.Client(base_url=self.url, timeout=120) as client:
            while time.monotonic() < self.stop_at:
                if rng.random() < 0.15:
                    self._drop_a_stream()
                    continue
                method, path, headers, body = rng.choice(cases)
                try:
                    status = client.request(method, path, headers=headers, content=body).status_code
                except httpx.HTTPError as err:  # the server may close a connection it refused (413)
                    status = type(err).__name__
                with self.lock:
                    self.report.hostile_requests += 1
                    key = f"{path} {status}"
                    self.report.hostile_statuses[key] = self.report.hostile_statuses.get(key, 0) + 1
                    if isinstance(status, int) and status >= 500 and status != 503:
                        self.report.server_errors.append(f"{method} {path}: {status}")

    def _drop_a_stream(self) -> None:
        """Start a stream and hang up after the first chunk: the server must abort it and free its blocks."""
        body = {"model": self.model, "messages": [{"role": "user", "content": "Tell a long story."}],
                "stream": True}
        try:
            with httpx.Client(base_url=self.url, timeout=60) as c, c.stream("POST", "/api/chat", json=body) as r:
                next(r.iter_lines(), None)
        except httpx.HTTPError:
            pass
        with self.lock:
            self.report.hostile_requests += 1
            self.report.hostile_statuses["dropped stream"] = self.report.hostile_statuses.get("dropped stream", 0) + 1

    def _sample_memory(self) -> None:
        while self.pid is not None and time.monotonic() < self.stop_at:
            try:
                for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        self.report.rss_mb.append(int(line.split()[1]) / 1024)
            except OSError:
                return
            time.sleep(min(10.0, self.seconds / 20))


def wait_until_up(url: str, seconds: float) -> bool:
    """Whether the server answers within `seconds`: a soak of a server still loading would count only refusals."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/api/version", timeout=5).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    return False


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:11434")
    p.add_argument("--model", default="smollm2:135m")
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--normal", type=int, default=4, help="well-behaved clients")
    p.add_argument("--hostile", type=int, default=2, help="hostile clients")
    p.add_argument("--pid", type=int, help="the server's process id, to sample its memory")
    p.add_argument("--json", type=Path, help="write the summary here (e.g. benchmarks/results/...)")
    p.add_argument("--wait", type=float, default=600.0,
                   help="seconds to wait for the server to answer /api/version before the clock starts")
    args = p.parse_args()
    if not wait_until_up(args.url, args.wait):
        print(f"soak: {args.url} did not answer within {args.wait:g} s; nothing was measured")
        return 2
    report = Soak(args.url, args.model, args.minutes * 60, args.pid).run(args.normal, args.hostile)
    summary = report.summary()
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
