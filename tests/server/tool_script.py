"""Scripted tool-calling replies for the fake model: a call first, then an answer from the tool's result."""

from __future__ import annotations

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
JSON_CALL = '{"name": "get_weather", "parameters": {"city": "Oslo"}}'
PYTHONIC_CALLS = '[get_weather(city="Oslo"), get_weather(city="Lima")]'


def weather_script(call: str):
    """A script that answers with `call` until a tool result (FakeTemplate's `<|tool|>` line) is in the prompt."""

    def script(prompt: str) -> str:
        if "<|tool|>" not in prompt:
            return call
        results = [line.removeprefix("<|tool|>") for line in prompt.splitlines() if line.startswith("<|tool|>")]
        return f"It is {' and '.join(results)}."

    return script
