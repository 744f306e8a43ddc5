"""LangChain's ChatOpenAI and ChatOllama with bind_tools against a live server (a scripted fake model)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conftest import live_server, make_resolver
from fake_llm import FakeLoader
from tool_script import JSON_CALL, WEATHER_TOOL, weather_script

from llamarun.server import ModelManager, create_app

langchain_openai = pytest.importorskip("langchain_openai")
langchain_ollama = pytest.importorskip("langchain_ollama")
from langchain_core.messages import HumanMessage, ToolMessage  # noqa: E402

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def url(store) -> Iterator[str]:
    loader = FakeLoader()
    loader.per_model["fake-json"] = {"script": weather_script(JSON_CALL)}
    with live_server(create_app(ModelManager(loader, resolve=make_resolver(store)), store=store)) as base:
        yield base


def round_trip(model) -> None:
    bound = model.bind_tools([WEATHER_TOOL])
    ask = [HumanMessage("Weather in Oslo?")]
    first = bound.invoke(ask)
    assert [(c["name"], c["args"]) for c in first.tool_calls] == [("get_weather", {"city": "Oslo"})]
    assert first.content == "" and not first.invalid_tool_calls
    call_id = first.tool_calls[0]["id"]
    second = bound.invoke([*ask, first, ToolMessage("12 °C", tool_call_id=call_id)])
    assert second.content == "It is 12 °C." and second.tool_calls == []
    chunks = list(bound.stream(ask))
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    assert [(c["name"], c["args"]) for c in merged.tool_calls] == [("get_weather", {"city": "Oslo"})]
    assert merged.content == ""


def test_chat_openai_bind_tools(url) -> None:
    round_trip(langchain_openai.ChatOpenAI(base_url=f"{url}/v1", api_key="none", model="fake-json",
                                           max_retries=0, timeout=30))


def test_chat_ollama_bind_tools(url) -> None:
    round_trip(langchain_ollama.ChatOllama(base_url=url, model="fake-json"))
