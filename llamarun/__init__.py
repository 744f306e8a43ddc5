"""llamarun: run Llama-family models from every checkpoint format, on CPUs and GPUs."""

__version__ = "0.1.0"
