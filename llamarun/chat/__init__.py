"""Chat templates: messages -> prompt text and ids (a model's own Jinja template, native Llama 3, ChatML)."""

from llamarun.chat.jinja_template import JinjaChatTemplate
from llamarun.chat.llama3_format import Llama3ChatFormat
from llamarun.chat.messages import ChatTemplate, Message, ToolCall, parse_messages
from llamarun.chat.select import select_chat_template

__all__ = [
    "ChatTemplate",
    "JinjaChatTemplate",
    "Llama3ChatFormat",
    "Message",
    "ToolCall",
    "parse_messages",
    "select_chat_template",
]
