"""Token in, token out: running the model on prompts and generating continuations."""
