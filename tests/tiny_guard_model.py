"""A tiny random Llama standing in for Llama Guard 3: the real architecture, Meta's Llama 3 tokenizer
(128256 ids, from `llama_models`) and the real Llama Guard chat template, written as an HF folder.

Its verdict text is forced through the grammar engine by the tests. Its probabilities are its own: the
layers' output projections are scaled down so the residual stream stays close to the current token's
embedding, and `boost` adds that direction (after the final norm) to chosen rows of the head: "\n\n" after
the prompt's last token, then `lean` ("unsafe" or "safe") after "\n\n". So the model writes its template's
blank line and leans to a verdict, to a degree the test picks, while every logit comes out of a real
forward pass.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import llama_models
import torch
from llama_guard_templates import GUARD_1B_TEMPLATE, GUARD_8B_TEMPLATE
from tiny_checkpoints import TinySpec

VOCAB = 128256
END_HEADER = 128007  # <|end_header_id|>: the prompt's last token
NEWLINES = 271  # "\n\n": the token before the verdict
UNSAFE = 39257  # "unsafe"
SAFE = 19193  # "safe"
SPEC = TinySpec(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                num_kv_heads=2, llama3_rope=True, max_position_embeddings=16384)


def tiny_guard_weights(lean: int, boost: float, seed: int = 0) -> dict[str, torch.Tensor]:
    """HF-named float32 weights (see the module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    h, i, hd = SPEC.hidden_size, SPEC.intermediate_size, SPEC.head_dim
    w: dict[str, torch.Tensor] = {"model.embed_tokens.weight": torch.randn(VOCAB, h, generator=gen)}
    for layer in range(SPEC.num_layers):
        p = f"model.layers.{layer}."
        shapes = {"self_attn.q_proj": (SPEC.num_heads * hd, h), "self_attn.k_proj": (SPEC.num_kv_heads * hd, h),
                  "self_attn.v_proj": (SPEC.num_kv_heads * hd, h), "self_attn.o_proj": (h, SPEC.num_heads * hd),
                  "mlp.gate_proj": (i, h), "mlp.up_proj": (i, h), "mlp.down_proj": (h, i)}
        for name, shape in shapes.items():
            scale = 0.001 if name in ("self_attn.o_proj", "mlp.down_proj") else 0.2
            w[p + name + ".weight"] = torch.randn(*shape, generator=gen) * scale
        w[p + "input_layernorm.weight"] = torch.ones(h)
        w[p + "post_attention_layernorm.weight"] = torch.ones(h)
    w["model.norm.weight"] = torch.ones(h)
    head = torch.randn(VOCAB, h, generator=gen) * 0.05  # [vocab, hidden]
    embed = w["model.embed_tokens.weight"]
    # After the template's last token the model prefers "\n\n"; after "\n\n" it prefers `lean`.
    head[NEWLINES] += boost * embed[END_HEADER] / embed[END_HEADER].norm()
    head[lean] += boost * embed[NEWLINES] / embed[NEWLINES].norm()
    w["lm_head.weight"] = head
    return w


def write_tiny_guard(folder: Path, *, style: str = "1b", lean: int = UNSAFE, boost: float = 0.0, seed: int = 0
                     ) -> Path:
    """An HF folder: config.json, model.safetensors, Meta's tokenizer.model, the Llama Guard `style` template."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    config = SPEC.hf_config() | {"bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009]}
    (folder / "config.json").write_text(json.dumps(config))
    save_file(tiny_guard_weights(lean, boost, seed), str(folder / "model.safetensors"))
    shutil.copy(Path(llama_models.__file__).parent / "llama3" / "tokenizer.model", folder / "tokenizer.model")
    template = GUARD_1B_TEMPLATE if style == "1b" else GUARD_8B_TEMPLATE
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "chat_template": template, "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}))
    return folder
