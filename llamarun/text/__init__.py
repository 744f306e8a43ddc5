"""Text <-> token ids: tokenizers behind one interface, and streaming detokenization."""
