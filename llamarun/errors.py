"""User-facing errors.

Every error a user can cause (a missing model, a corrupt file, a config that does not match its
tensors) is raised as a `LlamarunError`. The CLI prints it as one line, with what to do about it,
and exits non-zero; tracebacks are for bugs only.
"""

from __future__ import annotations


class LlamarunError(Exception):
    """An error caused by input, with a hint telling the user what to do."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ModelNotFoundError(LlamarunError):
    """A model name or path that resolves to nothing."""


class CheckpointError(LlamarunError):
    """A checkpoint that is truncated, corrupt, or has a wrong magic number."""


class UnsupportedError(LlamarunError):
    """A format, quantization type or architecture llamarun does not run."""


class ConfigMismatchError(LlamarunError):
    """A model config that does not agree with the tensors in the checkpoint."""


class UnavailableError(LlamarunError):
    """The model cannot answer now (a parallel rank died or hung): the server says 503, not 400."""


class DoesNotFitError(LlamarunError):
    """The memory plan says the model and its KV cache do not fit."""


class DownloadError(LlamarunError):
    """A download failed, was refused (gated repo), or did not verify."""


class RequestError(LlamarunError):
    """A request that cannot run as asked. `param` names the request field at fault (OpenAI's names, which
    the OpenAI API reports), `code` is a machine-readable reason such as "context_length_exceeded"."""

    def __init__(self, message: str, hint: str | None = None, *, param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message, hint)
        self.param = param
        self.code = code
