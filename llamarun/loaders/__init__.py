"""Checkpoint formats (GGUF, HF safetensors, MLX, Meta) read into canonical tensors."""
