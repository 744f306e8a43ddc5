"""Attention backends: how a layer's q/k/v meet the KV cache. The model calls whichever is current."""
