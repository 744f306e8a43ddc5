"""Small shared helpers: memory planning, progress bars. Nothing here imports torch at import time."""
