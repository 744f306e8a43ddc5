"""/v1/responses through the official openai client: whole and streamed, usage, previous_response_id, and a 400
naming each unsupported field that would change the answer."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest
from conftest import DEFAULT, live_server, make_resolver
from fake_llm import DEFAULT_REPLY, FakeLoader

from llamarun.server import ModelManager, create_app

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def live(store) -> Iterator[tuple[str, FakeLoader]]:
    loader = FakeLoader()
    with live_server(create_app(ModelManager(loader, resolve=make_resolver(store)), store=store)) as url:
        yield url, loader


@pytest.fixture(scope="module")
def client(live) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live[0]}/v1", api_key="unused", max_retries=0, timeout=30)


def test_text_in_text_out_with_usage(client, live) -> None:
    loader = live[1]
    r = client.responses.create(model=DEFAULT, input="Say hello", instructions="Be brief.", temperature=0.3)
    assert r.status == "completed" and r.output_text == DEFAULT_REPLY
    assert r.output[0].role == "assistant" and r.output[0].content[0].type == "output_text"
    fake = loader.last(DEFAULT)
    assert [(m["role"], m["content"]) for m in fake.messages_seen[-1][0]] == [("system", "Be brief."),
                                                                              ("user", "Say hello")]
    prompt_tokens = len(fake.calls[-1].prompt_ids)
    assert r.usage.input_tokens == prompt_tokens and r.usage.output_tokens == len(DEFAULT_REPLY.encode())
    assert r.usage.total_tokens == prompt_tokens + r.usage.output_tokens
    assert (fake.calls[-1].params.temperature, fake.calls[-1].params.top_p) == (0.3, 1.0)


def test_message_list_input_and_max_output_tokens(client, live) -> None:
    r = client.responses.create(model=DEFAULT, max_output_tokens=5, input=[
        {"role": "developer", "content": "sys"},
        {"role": "user", "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "c"}]},
        {"role": "user", "content": "d"}])
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.output_text == DEFAULT_REPLY.encode()[:5].decode() and r.usage.output_tokens == 5
    seen = live[1].last(DEFAULT).messages_seen[-1][0]
    assert [(m["role"], m["content"]) for m in seen] == [("system", "sys"), ("user", "ab"), ("assistant", "c"),
                                                         ("user", "d")]


def test_streamed_events_in_order_with_sequence_numbers(client) -> None:
    events = list(client.responses.create(model=DEFAULT, input="hi", stream=True))
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == DEFAULT_REPLY == events[-4].text == events[-1].response.output_text
    assert events[-1].response.usage.output_tokens == len(DEFAULT_REPLY.encode())
    assert events[0].response.id == events[-1].response.id


def test_previous_response_id_continues_the_conversation(client, live) -> None:
    first = client.responses.create(model=DEFAULT, input="one", instructions="first rules")
    client.responses.create(model=DEFAULT, input="two", previous_response_id=first.id, instructions="new rules")
    seen = [(m["role"], m["content"]) for m in live[1].last(DEFAULT).messages_seen[-1][0]]
    assert seen == [("system", "new rules"), ("user", "one"), ("assistant", DEFAULT_REPLY), ("user", "two")]
    unkept = client.responses.create(model=DEFAULT, input="x", store=False)
    for missing in (unkept.id, "resp_nope"):
        with pytest.raises(openai.BadRequestError) as err:
            client.responses.create(model=DEFAULT, input="y", previous_response_id=missing)
        assert err.value.body["param"] == "previous_response_id"


@pytest.mark.parametrize(("extra", "param"), [
    ({"tools": [{"type": "function", "name": "f", "parameters": {}}]}, "tools"),
    ({"text": {"format": {"type": "json_object"}}}, "text.format"),
    ({"reasoning": {"effort": "high"}}, "reasoning"),
    ({"truncation": "auto"}, "truncation"),
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "input.0.content"),
    ({"input": [{"type": "function_call_output", "call_id": "c", "output": "1"}]}, "input.0"),
    ({"temperature": 3}, "temperature"),
])
def test_unsupported_fields_get_a_400_naming_them(live, extra, param) -> None:
    r = httpx.post(f"{live[0]}/v1/responses", json={"model": DEFAULT, "input": "hi", **extra})
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_memory_drops_the_oldest_beyond_its_count_or_text_budget() -> None:
    from llamarun.chat.messages import Message
    from llamarun.server.errors import ApiError
    from llamarun.server.responses_schemas import ResponseMemory

    memory = ResponseMemory(limit=2, max_chars=10)
    memory.keep("a", [Message("user", "1234")])
    memory.keep("b", [Message("user", "1234")])
    memory.keep("c", [Message("user", "12")])  # three kept would pass the count
    assert [m.content for m in memory.earlier("b")] == ["1234"]
    with pytest.raises(ApiError):
        memory.earlier("a")
    memory.keep("d", [Message("user", "123456789")])  # 2 + 9 chars > 10: "b" and "c" go
    assert memory.earlier("d") and all(_gone(memory, k) for k in "bc")


def _gone(memory, key: str) -> bool:
    from llamarun.server.errors import ApiError

    try:
        memory.earlier(key)
    except ApiError:
        return True
    return False
