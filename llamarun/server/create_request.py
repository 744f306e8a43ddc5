"""The `/api/create` body, current (`from`, `files`, `system`, ...) or legacy (`modelfile`), checked into a plan.

Everything a creation could fail on that the client can fix is checked here, before the first status
line is streamed, so bad requests get a plain 4xx: the new name, the base model or the uploaded blobs,
parameter names and values, opening messages, and the template (store/model_defaults.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from llamarun.errors import ModelNotFoundError, RequestError
from llamarun.server.errors import ApiError
from llamarun.server.ollama_schemas import old_name_as_model
from llamarun.store.blobs import BlobStore
from llamarun.store.home import Manifest, ModelStore
from llamarun.store.model_defaults import ModelDefaults, settings_from_fields


class CreateBody(BaseModel):
    """POST /api/create, as Ollama's clients send it (older ones: `name` and `modelfile`)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    model: str = Field(min_length=1, max_length=4096)
    from_: str | None = Field(default=None, alias="from", max_length=4096)
    files: dict[str, str] | None = None
    adapters: dict[str, str] | None = None
    template: str | None = None
    system: str | None = None
    parameters: dict[str, Any] | None = None
    messages: list[Any] | None = None
    license: str | list[str] | None = None
    quantize: str | None = None
    modelfile: str | None = None
    stream: bool = True

    @model_validator(mode="before")
    @classmethod
    def _old_name_field(cls, data: Any) -> Any:
        return old_name_as_model(data)


@dataclass(frozen=True)
class CreatePlan:
    """A checked creation: the new name, what it is made from, and its settings."""

    name: str
    tag: str
    defaults: ModelDefaults
    base: Manifest | None = None  # a store entry to build on
    base_path: Path | None = None  # or a checkpoint path (allowed by the server's --models-dir)
    files: dict[str, Path] | None = None  # or uploaded blobs, by file name

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.tag}"


def plan_create(body: CreateBody, store: ModelStore, resolve_base: Any) -> CreatePlan:
    """Check `body` into a CreatePlan; `resolve_base(name)` -> ResolvedModel (raises ModelNotFoundError)."""
    from llamarun.store.catalog import canonical_ref, split_ref
    from llamarun.store.create import blob_files
    from llamarun.store.modelfile import parse_modelfile

    fields = _given(body)
    if body.modelfile:
        fields = parse_modelfile(body.modelfile) | fields  # fields of the JSON body win over the Modelfile's
    if body.quantize:
        raise RequestError("quantize is not supported by /api/create: create from a file that is already "
                           "quantized (or use `llamarun quantize` where your version has it)", param="quantize")
    if body.adapters:
        raise RequestError("adapters (LoRA) are not supported", param="adapters")
    try:
        name, tag = split_ref(canonical_ref(body.model))
        store.entry_dir(name, tag)
    except (ValueError, ModelNotFoundError) as err:
        raise ApiError(400, f"invalid model name: {err}", param="model") from None
    defaults = settings_from_fields(fields)
    if fields.get("files") and fields.get("from"):
        raise RequestError("give either from (a model) or files (uploaded blobs), not both", param="from")
    if fields.get("files"):
        return CreatePlan(name, tag, defaults, files=blob_files(BlobStore(store.root), fields["files"]))
    if not fields.get("from"):
        raise RequestError("nothing to create from: give from (a model name) or files (uploaded blobs)",
                           param="from")
    resolved = resolve_base(fields["from"])
    if resolved.manifest is not None:
        return CreatePlan(name, tag, defaults, base=resolved.manifest)
    return CreatePlan(name, tag, defaults, base_path=Path(resolved.path))


def _given(body: CreateBody) -> dict[str, Any]:
    data = {"from": body.from_, "files": body.files, "template": body.template, "system": body.system,
            "parameters": body.parameters, "messages": body.messages, "license": body.license}
    return {k: v for k, v in data.items() if v is not None}
