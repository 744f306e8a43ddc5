"""A tiny random Llama (HF folder, byte vocabulary) whose chat template has a place for tools.

Random weights write nothing sensible, so tests force what they check through the grammar (a forced
tool call, a response schema): the output must then be a valid call or a valid object all the same.
"""

from __future__ import annotations

import json
from pathlib import Path

from tiny_checkpoints import CHAT_TEMPLATE, TinySpec, add_byte_tokenizer, make_weights, write_hf

STOP = 0
TOOLS_TEMPLATE = "{% if tools %}tools: {{ tools | tojson }}\n{% endif %}" + CHAT_TEMPLATE


def tiny_tool_model(folder: Path, seed: int = 3) -> Path:
    """Write the model under `folder` and return its path (give it to `llamarun run` or a server)."""
    spec = TinySpec()
    path = add_byte_tokenizer(write_hf(spec, make_weights(spec, seed=seed)[0], folder))
    (path / "tokenizer_config.json").write_text(json.dumps({"chat_template": TOOLS_TEMPLATE}))
    # Byte 0 ends a turn: a grammar needs a stop token to finish on (random weights know no end of turn).
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": STOP}))
    return path
