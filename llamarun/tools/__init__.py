"""Tool calling: parsing the calls a Llama 3.x model writes, one module per format, and streaming them.

`parse.ToolCallParser` picks the format (llm/tool_stage.py streams it, holding back text that may start a
call so no client sees half a call); `choice.py` validates `tool_choice` and builds the JSON schema that
forces a call; `wire.py` writes calls in OpenAI's and Ollama's shapes.
"""

from llamarun.tools.calls import new_call_id, tool_names
from llamarun.tools.choice import ToolChoice, forced_call_schema, resolve_tool_choice
from llamarun.tools.parse import ParsedReply, ToolCallParser

__all__ = [
    "ParsedReply",
    "ToolCallParser",
    "ToolChoice",
    "forced_call_schema",
    "new_call_id",
    "resolve_tool_choice",
    "tool_names",
]
