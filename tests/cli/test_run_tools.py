"""Tools in `llamarun run`: `--tools FILE.json` / `--tool-choice`, calls shown parsed, results typed back (issue 11)."""

from __future__ import annotations

import argparse
import json
import os
import pty
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from tiny_tool_model import tiny_tool_model

from llamarun.chat.messages import ToolCall
from llamarun.cli import run_cmd
from llamarun.cli.run_tools import ask_results, forced_schema, format_call, load_tools
from llamarun.errors import LlamarunError

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Oslo", "Paris"]}},
                   "required": ["city"], "additionalProperties": False}}}
CALL_LINE = re.compile(r"tool call: (\w+) (\{[^\n]*\})\n")


def write(tmp_path: Path, data, name: str = "tools.json") -> str:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


# ----- the flags -----

def test_tools_file_shapes(tmp_path: Path) -> None:
    assert load_tools(None) is None
    assert load_tools(write(tmp_path, [WEATHER])) == [WEATHER]
    assert load_tools(write(tmp_path, {"tools": [WEATHER]})) == [WEATHER]  # a request body's field
    flat = WEATHER["function"]
    assert load_tools(write(tmp_path, flat)) == [flat]  # one flat tool


@pytest.mark.parametrize("content, fragment", [
    (None, "no such file"), ("{oops", "not a JSON file"), ("[]", "no tool definitions"),
    ('[{"type": "function", "function": {"description": "x"}}]', "tool 0 has no function name"),
    ('[{"name": "f", "parameters": [1]}]', "parameters must be a JSON schema object"),
])
def test_bad_tools_files_are_clear_errors(tmp_path: Path, content, fragment) -> None:
    path = str(tmp_path / "tools.json") if content is None else write(tmp_path, content)
    with pytest.raises(LlamarunError, match=re.escape(fragment)):
        load_tools(path)


def test_tool_choice_forces_a_call_schema() -> None:
    assert forced_schema([WEATHER], None) is None
    assert forced_schema([WEATHER], "auto") is None
    schema = forced_schema([WEATHER], "required")
    assert schema["properties"]["name"] == {"const": "get_weather"}
    assert forced_schema([WEATHER], "get_weather") == schema
    with pytest.raises(LlamarunError, match="not among the tools"):
        forced_schema([WEATHER], "get_time")
    with pytest.raises(LlamarunError, match="needs --tools"):
        forced_schema(None, "required")


def test_calls_are_shown_parsed_and_results_become_tool_messages() -> None:
    call = ToolCall("get_weather", {"city": "Oslo"}, id="call_1")
    assert format_call(call) == 'tool call: get_weather {"city": "Oslo"}'
    asked = []
    results = ask_results([call], lambda prompt: asked.append(prompt) or "12 C")
    assert asked == ["result of get_weather> "]
    assert [(m.role, m.content, m.tool_call_id, m.name) for m in results] == [("tool", "12 C", "call_1", "get_weather")]

    def eof(_prompt: str) -> str:
        raise EOFError

    assert ask_results([call], eof) is None


# ----- the interactive loop, with a scripted model -----

@dataclass
class FakeStream:
    text: str = ""
    tool_calls: list = field(default_factory=list)
    reply: object = None  # a real stream's Reply; guard_note reads its (absent) guard report

    def __iter__(self):
        if self.text:
            yield self.text


@dataclass
class FakeLLM:
    replies: list
    name: str = "fake"
    load_seconds: float = 0.0
    requests: list = field(default_factory=list)

    def stream(self, request) -> FakeStream:
        self.requests.append(request)
        return self.replies.pop(0)


def test_interactive_chat_sends_the_typed_result_back(monkeypatch, capsys, tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    run_cmd.register(parser.add_subparsers())
    args = parser.parse_args(["run", "m", "--tools", write(tmp_path, [WEATHER]), "--tool-choice", "required"])
    args.tool_list, args.forced_call = load_tools(args.tools), forced_schema([WEATHER], "required")
    call = ToolCall("get_weather", {"city": "Oslo"}, id="call_7")
    llm = FakeLLM([FakeStream(tool_calls=[call]), FakeStream("It is 12 C in Oslo.")])
    typed = iter(["Weather in Oslo?", "12 C", "/bye"])
    monkeypatch.setattr("builtins.input", lambda prompt="": print(prompt, end="") or next(typed))
    assert run_cmd._interactive(llm, args, run_cmd.sampling_params(args)) == 0
    out = capsys.readouterr().out
    assert 'tool call: get_weather {"city": "Oslo"}' in out and "result of get_weather> " in out
    assert "It is 12 C in Oslo." in out
    first, second = llm.requests
    assert first.tools == [WEATHER] and first.forced_call_schema is not None  # the reply to the user must call
    assert second.forced_call_schema is None  # the reply to the result is free, or it would call forever
    history = second.messages
    assert [m.role for m in history] == ["user", "assistant", "tool"]
    assert history[1].tool_calls == (call,)
    assert (history[2].content, history[2].tool_call_id) == ("12 C", "call_7")


# ----- the real command, on a tiny random model whose template takes tools -----

@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_tool_model(tmp_path_factory.mktemp("tools") / "tiny")


def llamarun(tmp_path: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    env = os.environ | {"LLAMARUN_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1", "PIP_NO_INDEX": "1"}
    return subprocess.run([sys.executable, "-m", "llamarun.cli.main", *args], capture_output=True, text=True,
                          env=env, timeout=300, **kw)


@pytest.mark.timeout(300)
def test_one_shot_prints_the_parsed_call_and_stops(tiny: Path, tmp_path: Path, seed_kernels) -> None:
    seed_kernels(tmp_path / "home")  # the session's compiled native kernels (tests/conftest.py)
    tools = write(tmp_path, [WEATHER])
    proc = llamarun(tmp_path, "run", str(tiny), "Weather in Oslo?", "--tools", tools, "--tool-choice", "required",
                    "--seed", "1", "--num-predict", "200")
    assert proc.returncode == 0, proc.stderr
    [(name, arguments)] = CALL_LINE.findall(proc.stdout)
    assert name == "get_weather" and json.loads(arguments)["city"] in ("Oslo", "Paris")
    assert '"name"' not in proc.stdout and '"parameters"' not in proc.stdout  # not the raw text of the call
    refused = llamarun(tmp_path, "run", str(tiny), "hi", "--tools", tools, "--raw")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr and "--raw" in refused.stderr


@pytest.mark.timeout(300)
def test_interactive_call_result_and_answer(tiny: Path, tmp_path: Path, seed_kernels) -> None:
    seed_kernels(tmp_path / "home")  # the session's compiled native kernels (tests/conftest.py)
    env = os.environ | {"LLAMARUN_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1", "PIP_NO_INDEX": "1"}
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "llamarun.cli.main", "run", str(tiny), "--tools",
                             write(tmp_path, [WEATHER]), "--tool-choice", "get_weather", "--seed", "2",
                             "--num-predict", "60", "--verbose"],
                            stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    os.close(slave)
    try:
        for line in ("Weather in Oslo?", "12 C", "/bye"):
            os.write(master, (line + "\n").encode())
            time.sleep(0.05)
        out, err = proc.communicate(timeout=240)
    finally:
        os.close(master)
    assert proc.returncode == 0, err
    assert len(CALL_LINE.findall(out)) == 1, out
    assert "result of get_weather> " in out
    # Two generations ran: the call, then the answer to the result, whose prompt holds the whole exchange.
    counts = [int(n) for n in re.findall(r"^prompt eval count:\s+(\d+)", err, re.M)]
    assert len(counts) == 1 and counts[0] > len("tool: 12 C"), err
