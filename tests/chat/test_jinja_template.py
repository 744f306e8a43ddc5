"""JinjaChatTemplate renders exactly as Transformers does; select_chat_template picks the right template."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import datetime

import pytest
from transformers.utils.chat_template_utils import render_jinja_template

from llamarun.chat import JinjaChatTemplate, Llama3ChatFormat, select_chat_template
from llamarun.chat.select import CHATML_TEMPLATE
from llamarun.errors import LlamarunError
from llamarun.text.tokenizer import Tokenizer


class HFTokenizerAdapter(Tokenizer):
    """A Transformers tokenizer behind our Tokenizer interface, so encode() can be compared with HF's ids."""

    def __init__(self, hf: object, add_bos: bool) -> None:
        self.hf = hf
        self.vocab_size = len(hf)
        self.bos_id = hf.bos_token_id
        self.eos_id = hf.eos_token_id
        self.special_ids = frozenset(hf.all_special_ids)
        self.add_bos = add_bos

    def encode(self, text: str, *, add_bos: bool = False, allow_special: bool = True) -> list[int]:
        ids = self.hf.encode(text, add_special_tokens=False, split_special_tokens=not allow_special)
        return [self.bos_id, *ids] if add_bos else ids

    def decode(self, ids: Sequence[int], *, skip_special: bool = False) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special)

    def token_bytes(self, token_id: int) -> bytes:
        return self.hf.convert_ids_to_tokens(token_id).encode()

    def token_to_id(self, token: str) -> int | None:
        token_id = self.hf.convert_tokens_to_ids(token)
        return None if token_id is None or token_id == self.hf.unk_token_id else token_id


class FakeTokenizer(Tokenizer):
    """A vocabulary of the given control tokens; any other character is one id (1000 + code point)."""

    def __init__(self, specials: Sequence[str], bos: str | None = None, add_bos: bool = False) -> None:
        self.specials = {s: i for i, s in enumerate(specials)}
        self.vocab_size = 1000 + 0x110000
        self.bos_id = self.specials.get(bos) if bos else None
        self.eos_id = None
        self.special_ids = frozenset(self.specials.values())
        self.add_bos = add_bos

    def encode(self, text: str, *, add_bos: bool = False, allow_special: bool = True) -> list[int]:
        parts = (
            re.split("(" + "|".join(map(re.escape, self.specials)) + ")", text) if allow_special else [text]
        )
        ids = [self.bos_id] if add_bos else []
        for part in parts:
            ids.extend(
                [self.specials[part]]
                if allow_special and part in self.specials
                else [1000 + ord(c) for c in part]
            )
        return ids

    def decode(self, ids: Sequence[int], *, skip_special: bool = False) -> str:
        raise NotImplementedError

    def token_bytes(self, token_id: int) -> bytes:
        names = {i: s for s, i in self.specials.items()}
        return names[token_id].encode() if token_id in names else chr(token_id - 1000).encode()

    def token_to_id(self, token: str) -> int | None:
        return self.specials.get(token)


@pytest.fixture(scope="module")
def smollm(default_gguf_reader, default_hf_tokenizer):
    """(the GGUF's own template, Transformers' tokenizer from the GGUF, our adapter of it); the reader and the
    tokenizer are the session's (tests/conftest.py)."""
    reader = default_gguf_reader
    source = reader.fields["tokenizer.chat_template"].contents()
    add_bos = bool(reader.fields["tokenizer.ggml.add_bos_token"].contents())
    hf = default_hf_tokenizer
    return source, hf, HFTokenizerAdapter(hf, add_bos)


def smollm_template(source: str, hf: object) -> JinjaChatTemplate:
    extra = {k: v for k, v in hf.special_tokens_map.items() if k not in ("bos_token", "eos_token")}
    return JinjaChatTemplate(source, bos_token=hf.bos_token, eos_token=hf.eos_token, special_tokens=extra)


DIALOGS = {
    "user_only": [{"role": "user", "content": "Hello!"}],
    "system_user": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi there"}],
    "multi_turn": [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And times 3?"},
        {"role": "assistant", "content": "12"},
    ],
    "unicode": [
        {"role": "system", "content": "Réponds en français. 日本語も。"},
        {"role": "user", "content": "Grüße aus Zürich 🦙 — नमस्ते\n\n  spaces  "},
    ],
    "tool_result": [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "Checking."},
        {"role": "tool", "content": '{"temp": 21}'},
    ],
}


@pytest.mark.parametrize("name", sorted(DIALOGS))
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_default_model_template_matches_transformers(name, add_generation_prompt, smollm):
    source, hf, ours = smollm
    dialog = DIALOGS[name]
    template = smollm_template(source, hf)
    expected = hf.apply_chat_template(dialog, tokenize=False, add_generation_prompt=add_generation_prompt)
    assert template.render(dialog, add_generation_prompt=add_generation_prompt) == expected
    expected_ids = hf.apply_chat_template(dialog, tokenize=True, add_generation_prompt=add_generation_prompt)[
        "input_ids"
    ]
    assert template.encode(dialog, ours, add_generation_prompt=add_generation_prompt) == expected_ids


def test_real_tool_template_matches_transformers():
    """Transformers ships Meta's Llama 4 template: tools, tojson(indent=4), tool calls, the tool role."""
    processing = pytest.importorskip("transformers.models.llama4.processing_llama4")
    source = processing.chat_template
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Wetter in einer Stadt",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    dialog = [
        {"role": "system", "content": "You help with weather."},
        {"role": "user", "content": "Wie ist das Wetter in Zürich?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Zürich"}}}
            ],
        },
        {"role": "tool", "content": "sonnig, 21 °C"},
    ]
    specials = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot|>"}
    template = JinjaChatTemplate(source, **specials)
    for gen in (True, False):
        for t in (tools, None):
            (expected,), _ = render_jinja_template(
                conversations=[dialog], tools=t, chat_template=source, add_generation_prompt=gen, **specials
            )
            assert template.render(dialog, add_generation_prompt=gen, tools=t) == expected
    # The template's own raise_exception reaches the user as one clear line.
    with pytest.raises(LlamarunError, match="Cannot put tools in the first user message"):
        template.render([{"role": "system", "content": "x"}], tools=tools)


HELPERS = (
    "{{ tools | tojson }}|{{ tools | tojson(indent=2) }}"
    "|{{ tools | tojson(separators=(',', ':'), sort_keys=true) }}"
    "|{{ tools | tojson(ensure_ascii=true) }}\n"
    "{% set ns = namespace(n=0) %}{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}"
    "{% generation %}{{ m.role }}:{{ m.content }};{% endgeneration %}"
    "{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}\n"
    "{{ bos_token }}|{{ eos_token }}|{{ add_generation_prompt }}\n"
    # Block tags on their own indented lines: trim_blocks and lstrip_blocks decide every newline here.
    "{% for m in messages %}\n    {% if m.role == 'user' %}\nU: {{ m.content }}\n    {% else %}\n"
    "A: {{ m.content }}\n    {% endif %}\n{% endfor %}\n"
)


@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_helpers_match_transformers(add_generation_prompt):
    tools = [{"z": "Zürich <b>&amp;</b>", "a": [1, 2.5, True, None]}]
    dialog = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ]
    (expected,), _ = render_jinja_template(
        conversations=[dialog],
        tools=tools,
        chat_template=HELPERS,
        add_generation_prompt=add_generation_prompt,
        bos_token="<s>",
        eos_token="</s>",
    )
    got = JinjaChatTemplate(HELPERS, bos_token="<s>", eos_token="</s>").render(
        dialog, tools=tools, add_generation_prompt=add_generation_prompt
    )
    assert got == expected
    assert json.dumps(tools, ensure_ascii=False) in got  # plain JSON: no HTML escaping, no \u escapes


def test_missing_tokens_render_empty_and_date_helpers_work():
    source = "[{{ bos_token }}][{{ eos_token }}]{{ strftime_now('%Y-%m-%d') }}|{{ date_string }}"
    text = JinjaChatTemplate(source, bos_token=None, eos_token=None).render(
        [{"role": "user", "content": "x"}]
    )
    now = datetime.now()
    assert text == f"[][]{now:%Y-%m-%d}|{now:%d %b %Y}"


@pytest.mark.parametrize(
    ("source", "needle"),
    [
        ("{% for m in messages %}\n{{ m.content }", "syntax error at line 2"),
        ("{% if x %}never closed", "syntax error"),
        (
            "{{ raise_exception('Conversation roles must alternate user/assistant') }}",
            "must alternate user/assistant",
        ),
        ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "failed on this chat"),
        ("{% set ns = namespace(_secret=1) %}", "failed on this chat"),
        ("{{ messages.append(1) }}", "failed on this chat"),
        ("{{ messages[0]['content'] + messages[0]['missing'] }}", "failed on this chat"),
        ("  ", "empty"),
    ],
)
def test_template_errors_are_clear(source, needle):
    with pytest.raises(LlamarunError, match=needle):
        JinjaChatTemplate(source, bos_token="<s>", eos_token="</s>").render(
            [{"role": "user", "content": "hi"}]
        )


def test_bad_messages_and_tools_are_refused():
    template = JinjaChatTemplate(
        "{{ tools | tojson }}{{ messages | length }}", bos_token=None, eos_token=None
    )
    with pytest.raises(LlamarunError, match="unknown role"):
        template.render([{"role": "narrator", "content": "x"}])
    with pytest.raises(LlamarunError, match="must be a string"):
        template.render([{"role": "user", "content": {"text": "x"}}])
    with pytest.raises(LlamarunError, match="not JSON data"):
        template.render([{"role": "user", "content": "x"}], tools=[{"f": object()}])
    no_tools = JinjaChatTemplate("{{ messages[0].content }}", bos_token=None, eos_token=None)
    with pytest.raises(LlamarunError, match="no place for tool definitions"):
        no_tools.render([{"role": "user", "content": "x"}], tools=[{"type": "function"}])


@pytest.mark.parametrize("writes_bos", [True, False])
@pytest.mark.parametrize("add_bos", [True, False])
def test_encode_adds_bos_once(writes_bos, add_bos):
    tok = FakeTokenizer(["<s>", "[INST]"], bos="<s>", add_bos=add_bos)
    source = (
        "{{ bos_token }}" if writes_bos else ""
    ) + "{% for m in messages %}[INST]{{ m.content }}{% endfor %}"
    ids = JinjaChatTemplate(source, bos_token="<s>", eos_token=None).encode(
        [{"role": "user", "content": "hi"}], tok
    )
    body = [tok.specials["[INST]"], 1000 + ord("h"), 1000 + ord("i")]
    assert ids == ([tok.bos_id] if writes_bos or add_bos else []) + body


def test_select_uses_the_models_own_template(smollm):
    source, hf, ours = smollm
    template = select_chat_template(source, ours)
    dialog = DIALOGS["multi_turn"]
    assert (
        template.encode(dialog, ours)
        == hf.apply_chat_template(dialog, add_generation_prompt=True)["input_ids"]
    )


def test_select_falls_back_to_chatml(smollm):
    _, hf, ours = smollm
    template = select_chat_template(None, ours)
    assert isinstance(template, JinjaChatTemplate) and template.source == CHATML_TEMPLATE
    # With a system turn, SmolLM2's own template is plain ChatML: the fallback must match it token for token.
    dialog = DIALOGS["system_user"] + [
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye"},
    ]
    for gen in (True, False):
        expected = hf.apply_chat_template(dialog, add_generation_prompt=gen)["input_ids"]
        assert template.encode(dialog, ours, add_generation_prompt=gen) == expected
    with pytest.raises(LlamarunError, match="no place for tool definitions"):
        template.render(dialog, tools=[{"type": "function", "function": {"name": "f"}}])


def test_select_llama3_and_none():
    llama3_vocab = [
        "<|begin_of_text|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eot_id|>",
        "<|im_start|>",
        "<|im_end|>",
    ]
    assert isinstance(select_chat_template(None, FakeTokenizer(llama3_vocab)), Llama3ChatFormat)
    assert isinstance(select_chat_template("   ", FakeTokenizer(llama3_vocab)), Llama3ChatFormat)
    # A template in the model wins over what its vocabulary suggests.
    assert isinstance(select_chat_template("{{ messages }}", FakeTokenizer(llama3_vocab)), JinjaChatTemplate)
    with pytest.raises(LlamarunError, match="model has no chat template; use a raw prompt"):
        select_chat_template(None, FakeTokenizer(["<s>", "</s>", "<|im_start|>"]))


def test_our_gguf_reader_and_tokenizer_give_transformers_ids(default_gguf, smollm):
    """End to end on our own stack: template and vocabulary read from the GGUF by llamarun itself."""
    reader = pytest.importorskip("llamarun.loaders.gguf.reader")
    gguf_tokenizer = pytest.importorskip("llamarun.text.gguf_tokenizer")
    meta = reader.read_gguf(default_gguf).metadata
    tok = gguf_tokenizer.tokenizer_from_gguf(meta)
    template = select_chat_template(meta.get("tokenizer.chat_template"), tok)
    _, hf, _ = smollm
    for name in ("user_only", "unicode", "tool_result"):
        dialog = DIALOGS[name]
        assert (
            template.encode(dialog, tok)
            == hf.apply_chat_template(dialog, add_generation_prompt=True)["input_ids"]
        )


NAMED = "{% for m in messages %}[{{ m.role }}{% if m.name %}:{{ m.name }}{% endif %}]{{ m.content }}{% endfor %}"


def test_message_names_reach_the_template_as_transformers_renders_them():
    chat = [{"role": "user", "content": "hi", "name": "ann"}, {"role": "assistant", "content": "yo"},
            {"role": "tool", "content": "42", "name": "calc", "tool_call_id": "c1"},
            {"role": "ipython", "content": "7", "name": "calc"}]  # Meta's name for the tool role
    ours = JinjaChatTemplate(NAMED, bos_token=None, eos_token=None).render(chat, add_generation_prompt=False)
    assert ours == "[user:ann]hi[assistant]yo[tool:calc]42[tool:calc]7"
    hf_chat = [{**m, "role": "tool" if m["role"] == "ipython" else m["role"]} for m in chat]
    theirs, _ = render_jinja_template(conversations=[hf_chat], chat_template=NAMED, add_generation_prompt=False)
    assert ours == theirs[0]


def test_a_message_name_must_be_text():
    with pytest.raises(LlamarunError, match="name must be a string"):
        JinjaChatTemplate(NAMED, bos_token=None, eos_token=None).render([{"role": "user", "content": "x", "name": 5}])
