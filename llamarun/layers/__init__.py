"""Building blocks of the decoder: norms, rotary embeddings, the gated MLP."""
