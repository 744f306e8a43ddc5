"""`llamarun bench`: offline numbers on a tiny model, percentiles, the serving client against fake servers."""

from __future__ import annotations

import argparse
import asyncio
import json
import socket

import numpy as np
import pytest
from tiny_checkpoints import TinySpec, add_byte_tokenizer, make_weights, write_hf

from llamarun.bench import serving
from llamarun.bench.offline import run_offline, synthetic_prompts
from llamarun.bench.report import LevelResult, format_table, percentile
from llamarun.cli import bench_cmd
from llamarun.errors import LlamarunError

# ----- percentiles -----


@pytest.mark.parametrize("data", [[5.0], [3.0, 1.0], list(range(1, 11)), [0.2, 9.5, 1.1, 7.0, 7.0, 3.3, 100]])
def test_percentile_matches_numpy_linear(data):
    for p in (0, 10, 50, 90, 99, 100):
        assert percentile(data, p) == pytest.approx(float(np.percentile(data, p)))


def test_percentile_known_values_and_edges():
    assert percentile(list(range(1, 101)), 50) == pytest.approx(50.5)
    assert percentile([10, 20, 30, 40], 99) == pytest.approx(39.7)
    assert np.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_table_has_a_row_per_level_and_flags_failures():
    levels = [LevelResult("serving", c, 4, 40, 20, 2.0, [0.1] * 4, [0.01] * 4, failed=c - 1) for c in (1, 3)]
    table = format_table(levels).splitlines()
    assert "TTFT p50 ms" in table[0] and len(table) == 4
    assert table[2].split()[:4] == ["3", "4", "2.00", "10.0"]  # 20 output tokens in 2 s
    assert "2 request(s) failed" in table[3]


# ----- offline -----


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from llamarun.llm.loading import load_model

    spec = TinySpec()
    weights, _ = make_weights(spec, seed=3)
    folder = add_byte_tokenizer(write_hf(spec, weights, tmp_path_factory.mktemp("bench") / "tiny"))
    return folder, load_model(str(folder), context_length=128, kv_tokens=2048)


class PeakRunning:
    """The engine, with the most requests it held at once recorded (running + waiting)."""

    def __init__(self, engine):
        self.engine, self.peak = engine, 0

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def step(self):
        sched = self.engine.scheduler
        self.peak = max(self.peak, len(sched.running) + len(sched.waiting))
        return self.engine.step()


def test_offline_counts_and_consistent_numbers(tiny_model):
    _, lm = tiny_model
    engine = PeakRunning(lm.engine)
    r = run_offline(engine, vocab_size=lm.config.vocab_size, requests=7, concurrency=3, prompt_tokens=20,
                    output_tokens=5, seed=1)
    assert (r.requests, r.output_tokens, r.prompt_tokens) == (7, 7 * 5, 7 * 20)
    assert engine.peak == 3  # the queue kept exactly `concurrency` requests in the engine
    assert r.extra["finish_reasons"] == {"length": 7} and r.extra["preemptions"] == 0
    assert r.extra["prefix_hits"] == 0 and r.extra["cpu_per_wall"] > 0  # random prompts share no blocks
    assert len(r.ttft) == 7 and len(r.tpot) == 7
    assert all(0 < t <= r.wall_seconds for t in r.ttft)
    assert all(0 < t < r.wall_seconds / 4 for t in r.tpot)
    assert r.output_tps == pytest.approx(35 / r.wall_seconds)
    assert r.total_tps == pytest.approx(175 / r.wall_seconds)
    assert r.requests_per_s == pytest.approx(7 / r.wall_seconds)
    assert lm.engine.pool.num_used == 0  # every block came back
    s = r.summary()
    assert s["ttft_p50_ms"] <= s["ttft_p99_ms"] and s["tpot_p50_ms"] > 0


def test_offline_rejects_settings_that_cannot_run(tiny_model):
    _, lm = tiny_model
    with pytest.raises(LlamarunError, match="do not fit the context of 128"):
        run_offline(lm.engine, vocab_size=260, requests=1, concurrency=1, prompt_tokens=100, output_tokens=40)
    with pytest.raises(LlamarunError, match="--requests must be at least 1"):
        run_offline(lm.engine, vocab_size=260, requests=0, concurrency=1, prompt_tokens=4, output_tokens=4)


def test_synthetic_prompts_are_reproducible_and_distinct():
    a = synthetic_prompts(4, 16, 260, seed=5)
    assert a == synthetic_prompts(4, 16, 260, seed=5) and a != synthetic_prompts(4, 16, 260, seed=6)
    assert len({tuple(p) for p in a}) == 4 and all(len(p) == 16 and max(p) < 260 for p in a)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench_cmd.register(parser.add_subparsers())
    return parser.parse_args(["bench", *argv])


def test_cli_offline_prints_table_and_writes_record(tiny_model, tmp_path, capsys):
    folder, _ = tiny_model
    out = tmp_path / "sub" / "bench.json"
    args = parse(str(folder), "--concurrency", "1,2", "--requests", "3", "--prompt-tokens", "8",
                 "--output-tokens", "4", "--ctx", "64", "--json", str(out))
    assert args.handler(args) == 0
    text = capsys.readouterr().out
    assert "offline benchmark" in text and "out tok/s" in text
    record = json.loads(out.read_text())
    assert record["mode"] == "offline" and record["settings"]["concurrency"] == [1, 2]
    assert [lv["output_tokens"] for lv in record["levels"]] == [12, 12]
    assert record["machine"]["cores"] >= 1 and record["machine"]["cpu"]


@pytest.mark.parametrize("argv, message", [
    (["--concurrency", "1,x"], "bad --concurrency"), (["--concurrency", "0"], "bad --concurrency"),
    (["--output-tokens", "0"], "--output-tokens must be at least 1"),
    (["--ctx", "32", "--prompt-tokens", "30"], "do not fit the context"),
    (["--url", "localhost:1"], "bad --url"),
])
def test_cli_bad_settings_are_clear_errors(argv, message):
    args = parse("some-model", *argv)
    with pytest.raises(LlamarunError, match=message):
        args.handler(args)


# ----- serving, against a fake OpenAI SSE server -----


class FakeOpenAI:
    """A raw ASGI app streaming OpenAI chat chunks: a delay to the first token, then one per interval."""

    def __init__(self, first=0.03, interval=0.004, api_key=None):
        self.first, self.interval, self.api_key = first, interval, api_key
        self.bodies, self.in_flight, self.peak = [], 0, 0

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            while (msg := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        if self.api_key and (b"authorization", f"Bearer {self.api_key}".encode()) not in scope["headers"]:
            error = {"message": "bad key", "type": "invalid_request_error"}
            return await self._json(send, 401, {"error": error})
        if scope["path"] == "/v1/models":
            return await self._json(send, 200, {"object": "list", "data": [{"id": "fake:1"}]})
        req = json.loads(body)
        if req["model"] != "fake:1":
            return await self._json(send, 404, {"error": {"message": f"model '{req['model']}' not found"}})
        self.bodies.append(req)
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await self._stream(send, req)
        finally:
            self.in_flight -= 1

    async def _stream(self, send, req):
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        await asyncio.sleep(self.first)
        n = req["max_tokens"]
        for i in range(n):
            if i:
                await asyncio.sleep(self.interval)
            chunk = {"object": "chat.completion.chunk",
                     "choices": [{"index": 0, "delta": {"content": f"t{i} "}}]}
            await send({"type": "http.response.body", "body": f"data: {json.dumps(chunk)}\n\n".encode(),
                        "more_body": True})
        words = len(req["messages"][0]["content"].split())
        usage = {"choices": [], "usage": {"prompt_tokens": words, "completion_tokens": n}}
        tail = f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode()
        await send({"type": "http.response.body", "body": tail})

    async def _json(self, send, status, payload):
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": json.dumps(payload).encode()})


@pytest.mark.timeout(60)
def test_serving_level_against_fake_server():
    fake = FakeOpenAI()
    with serving.serve_in_thread(fake) as url:
        r = asyncio.run(serving.run_level(url, "fake:1", concurrency=4, requests=9, prompt_tokens=12,
                                          output_tokens=6, timeout=20))
    assert (r.requests, r.failed, r.output_tokens) == (9, 0, 9 * 6)
    assert r.prompt_tokens == 9 * 14  # "Request N:" + 12 words, counted by the fake's usage block
    assert fake.peak == 4
    assert all(t >= 0.03 for t in r.ttft) and all(0.004 <= t < 0.05 for t in r.tpot)
    body = fake.bodies[0]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 6 and body["temperature"] == 0
    assert r.output_tps == pytest.approx(54 / r.wall_seconds)


@pytest.mark.timeout(60)
def test_serving_cli_end_to_end_with_json(tmp_path, capsys):
    fake = FakeOpenAI(first=0.01, interval=0.001, api_key="k1")
    out = tmp_path / "serve.json"
    with serving.serve_in_thread(fake) as url:
        args = parse("--url", url, "--api-key", "k1", "--concurrency", "1,3", "--requests", "3",
                     "--output-tokens", "4", "--json", str(out))
        assert args.handler(args) == 0
    record = json.loads(out.read_text())
    assert record["model"] == "fake:1" and record["mode"] == "serving"  # named by /v1/models
    got = [(lv["concurrency"], lv["requests"], lv["output_tokens"]) for lv in record["levels"]]
    assert got == [(1, 3, 12), (3, 3, 12)]
    assert "serving benchmark of fake:1" in capsys.readouterr().out


@pytest.mark.timeout(60)
def test_serving_errors_are_clear():
    fake = FakeOpenAI(api_key="right")
    with serving.serve_in_thread(fake) as url:
        with pytest.raises(LlamarunError, match="HTTP 401: bad key"):
            asyncio.run(serving.warm_up(url, "fake:1", api_key="wrong"))
        with pytest.raises(LlamarunError, match="model 'nope' not found"):
            asyncio.run(serving.warm_up(url, "nope", api_key="right"))
        r = asyncio.run(serving.run_level(url, "fake:1", concurrency=2, requests=3, prompt_tokens=4,
                                          output_tokens=2, api_key="wrong", timeout=10))
        assert (r.requests, r.failed) == (0, 3) and r.extra["errors"] == ["HTTP 401: bad key"]
    with socket.socket() as s:  # a port that nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(LlamarunError, match="cannot reach a server"):
        asyncio.run(serving.warm_up(f"http://127.0.0.1:{port}", "fake:1", timeout=5))


@pytest.mark.timeout(120)
def test_serve_mode_benches_the_real_server_in_process(tiny_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LLAMARUN_HOME", str(tmp_path / "home"))
    folder, _ = tiny_model
    out = tmp_path / "real.json"
    args = parse(str(folder), "--serve", "--concurrency", "1,4", "--requests", "4", "--prompt-tokens", "6",
                 "--output-tokens", "5", "--ctx", "256", "--json", str(out))
    assert args.handler(args) == 0
    levels = json.loads(out.read_text())["levels"]
    assert [(lv["concurrency"], lv["requests"], lv["failed"]) for lv in levels] == [(1, 4, 0), (4, 4, 0)]
    # The tiny random model may hit its end token early, but never runs past max_tokens.
    assert all(4 <= lv["output_tokens"] <= 20 and lv["ttft_p50_ms"] > 0 for lv in levels)
    assert "serving benchmark" in capsys.readouterr().out
