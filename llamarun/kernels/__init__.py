"""Triton kernels for the GPU path, each beside a pure-torch reference (CPU oracle for tests).

Modules import Triton at load time, so nothing on the CPU path imports this package:
`attention/paged_triton.py` is reached only through the GPU backend choice.

- `attention_tile.py`: one K/V tile of the paged cache folded into an online softmax (shared by both attention kernels)
- `decode_attention.py`: one query per sequence, GQA heads together, split-K plus a log-sum-exp merge
- `prefill_attention.py`: causal flash attention for prefill chunks over the paged cache
- `kv_store.py`: this step's keys/values into their cache slots
- `norm.py`: RMSNorm and fused residual-add + RMSNorm
- `rotary.py`: rotary embedding of q and k in place
- `activation.py`: silu(gate) * up from the merged gate/up projection
"""
