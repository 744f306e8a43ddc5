"""Choosing a model's chat template: its own first, then a format its vocabulary shows it was trained on."""

from __future__ import annotations

from llamarun.chat.jinja_template import JinjaChatTemplate
from llamarun.chat.llama3_format import BEGIN_OF_TEXT, END_HEADER, EOT, START_HEADER, Llama3ChatFormat
from llamarun.chat.messages import ChatTemplate
from llamarun.errors import LlamarunError
from llamarun.text.tokenizer import Tokenizer

# Plain ChatML (<|im_start|>role\ncontent<|im_end|>\n ...), written for models that ship the ChatML control
# tokens but no template. It has no tool format, so `tools` are refused rather than silently dropped.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_LLAMA3_TOKENS = (BEGIN_OF_TEXT, START_HEADER, END_HEADER, EOT)
_CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")


def select_chat_template(jinja_source: str | None, tokenizer: Tokenizer) -> ChatTemplate:
    """The template to use for a model.

    Order: the model's own Jinja template when it has one; else the native Llama 3 format when the
    vocabulary has the Llama 3 header tokens; else plain ChatML when it has <|im_start|>/<|im_end|>;
    else a LlamarunError, because guessing a format makes a model talk nonsense.
    """
    if jinja_source is not None and jinja_source.strip():
        return JinjaChatTemplate(
            jinja_source,
            bos_token=_token_text(tokenizer, tokenizer.bos_id),
            eos_token=_token_text(tokenizer, tokenizer.eos_id),
        )
    if all(tokenizer.token_to_id(t) is not None for t in _LLAMA3_TOKENS):
        return Llama3ChatFormat()
    if all(tokenizer.token_to_id(t) is not None for t in _CHATML_TOKENS):
        return JinjaChatTemplate(
            CHATML_TEMPLATE,
            bos_token=_token_text(tokenizer, tokenizer.bos_id),
            eos_token=_token_text(tokenizer, tokenizer.eos_id),
        )
    raise LlamarunError(
        "model has no chat template; use a raw prompt",
        hint="this looks like a base model: call generate with plain text instead of chat messages",
    )


def _token_text(tokenizer: Tokenizer, token_id: int | None) -> str | None:
    if token_id is None:
        return None
    return tokenizer.token_bytes(token_id).decode("utf-8", errors="replace")
