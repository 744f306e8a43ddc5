"""examples/agent_loop.py: its tools on their own, and its loop against a live server with a scripted fake model."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import openai
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "server"))  # the server tests' fake model and live server
from fake_llm import FakeLoader  # noqa: E402

from llamarun.bench.serving import serve_in_thread  # noqa: E402
from llamarun.server import ModelManager, create_app  # noqa: E402

pytestmark = pytest.mark.timeout(120)


def load_example():
    spec = importlib.util.spec_from_file_location("agent_loop", ROOT / "examples" / "agent_loop.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


agent = load_example()


@pytest.mark.parametrize(("expression", "expected"), [
    ("2 + 3 * 4", "14"), ("(2 + 3) * 4 / 5", "4"), ("-2 ** 2", "-4"), ("7 // 2 + 7 % 2", "4"),
    ("17.5 / 100 * 2,480", "434"), ("1 / 3", str(1 / 3)),
])
def test_calculator(expression, expected):
    assert agent.calculate(expression) == expected


@pytest.mark.parametrize("expression", ["__import__('os').system('echo hi')", "x + 1", "9 ** 9 ** 9", "1 / 0",
                                        "[1, 2]", "'a' * 3", "2 +"])
def test_calculator_refuses_what_is_not_arithmetic(expression):
    assert agent.calculate(expression).startswith("error:")


def test_file_search(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.md").write_text("Llamas are calm.\nCUDA graphs replay kernels.\n")
    (tmp_path / "b.txt").write_text("nothing here\n")
    (tmp_path / "blob.bin").write_bytes(b"\xff\xfe\x00cuda")
    assert agent.search_files("cuda GRAPHS", tmp_path) == "notes/a.md:2: CUDA graphs replay kernels."
    assert agent.search_files("alpaca", tmp_path) == "no line contains 'alpaca'"


def test_bad_calls_are_answered_not_raised(tmp_path):
    assert agent.run_tool("calculate", "{oops", tmp_path).startswith("error: bad arguments")
    assert agent.run_tool("calculate", '{"expr": "1"}', tmp_path).startswith("error: bad arguments")
    assert agent.run_tool("delete_everything", "{}", tmp_path) == "error: there is no tool named 'delete_everything'"


def scripted(prompt: str) -> str:
    """The fake model: search, then calculate with what the search found, then answer."""
    results = [line.removeprefix("<|tool|>") for line in prompt.splitlines() if line.startswith("<|tool|>")]
    if not results:
        return '{"name": "search_files", "parameters": {"phrase": "price"}}'
    if len(results) == 1:
        price = results[0].rsplit(" ", 1)[1]
        return f'[calculate(expression="{price} * 3")]'
    return f"Three cost {results[1]}."


def test_loop_runs_real_tools_against_a_served_model(tmp_path):
    (tmp_path / "prices.txt").write_text("apple price 1.25\n")
    loader = FakeLoader()
    loader.per_model["fake-agent"] = {"script": scripted}
    seen: list[str] = []
    with serve_in_thread(create_app(ModelManager(loader, resolve=lambda name: name))) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=30)
        answer = agent.agent_loop(client, "fake-agent", "What do three apples cost?", tmp_path, log=seen.append)
    assert answer == "Three cost 3.75."
    assert seen == ['search_files({"phrase": "price"}) -> prices.txt:1: apple price 1.25',
                    'calculate({"expression": "1.25 * 3"}) -> 3.75']
    last = loader.last("fake-agent").messages_seen[-1]
    assert [m["role"] for m in last[0]] == ["system", "user", "assistant", "tool", "assistant", "tool"]
    assert json.loads(json.dumps(last[1])) == agent.TOOLS  # the tools reached the template every turn
