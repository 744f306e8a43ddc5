"""`llamarun eval`: what a weight format costs in accuracy on the user's own model and text.

formats.py (a format name -> the options the loader takes), text.py (the shipped text, tokens),
windows.py (which positions each forward scores), forward.py (one window's logits, a throwaway cache),
reference.py (the reference's log-probabilities kept on disk), metrics.py (perplexity, KL, top-1),
loader.py (one format loaded, and the bytes its linear weights take), run.py (the loop), report.py.
"""
