"""The Python API.

    from llamarun.api import LLM
    llm = LLM("smollm2:135m")
    print(llm.chat([{"role": "user", "content": "Name three rivers."}]).text)

`LLM` answers one request at a time (the CLI uses it); `AsyncLLM` serves many at once on the
batched engine (the server uses it). Both go through the same chat service, engine, model and sampler.
Structured output: `llm.chat(messages, format=schema)` ("json", a JSON schema, or a `GrammarSpec`), or
`SamplingParams(grammar=GrammarSpec("regex", ...))`.
"""

from llamarun.chat.messages import Message, ToolCall
from llamarun.llm.async_llm import AsyncLLM
from llamarun.llm.chat_service import ChatRequest, ChatService
from llamarun.llm.sync import LLM, TextIterator
from llamarun.llm.text_stream import Completion, StreamChunk, TokenLogprob
from llamarun.sampling.grammar_spec import GrammarSpec
from llamarun.sampling.params import SamplingParams

__all__ = ["LLM", "AsyncLLM", "ChatRequest", "ChatService", "Completion", "GrammarSpec", "Message", "SamplingParams",
           "StreamChunk", "TextIterator", "TokenLogprob", "ToolCall"]
