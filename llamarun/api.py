"""The Python API.

    from llamarun.api import LLM
    llm = LLM("smollm2:135m")
    print(llm.chat([{"role": "user", "content": "Name three rivers."}]).text)

`LLM` answers one request at a time (the CLI uses it); `AsyncLLM` serves many at once on the
batched engine (the server uses it). Both run the same engine, model and sampler.
"""

from llamarun.llm.async_llm import AsyncLLM, StreamChunk, TokenLogprob
from llamarun.llm.sync import LLM, Completion, TextIterator
from llamarun.sampling.params import SamplingParams

__all__ = ["LLM", "AsyncLLM", "Completion", "SamplingParams", "StreamChunk", "TextIterator", "TokenLogprob"]
