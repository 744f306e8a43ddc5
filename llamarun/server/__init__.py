"""`llamarun serve`: the Ollama and OpenAI HTTP APIs over the batched engine.

`create_app(manager)` builds the FastAPI application; `ModelManager` decides which models are loaded.
"""

from llamarun.server.app import create_app
from llamarun.server.model_manager import ModelManager

__all__ = ["ModelManager", "create_app"]
