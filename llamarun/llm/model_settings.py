"""A created model's settings (store/model_defaults.py) applied to one ChatRequest, under what it asks.

As in Ollama: the model's parameters fill only the sampling fields the client did not set
(`ChatRequest.given`), and its num_ctx only when the request names none; its opening messages go
before the conversation, and its system prompt before those unless the conversation starts with its
own system message; its template (Jinja) replaces the checkpoint's. Raw prompts get the parameters only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from llamarun.chat.messages import ChatTemplate, Message
from llamarun.errors import LlamarunError
from llamarun.llm.served import ServedModel
from llamarun.store.model_defaults import PARAMETERS, ModelDefaults

if TYPE_CHECKING:
    from llamarun.llm.chat_service import ChatRequest
    from llamarun.store.home import ModelStore

SettingsLookup = Callable[[str], "ModelDefaults | None"]  # model name -> its settings (None: none)


def apply_settings(req: ChatRequest, settings: ModelDefaults) -> ChatRequest:
    """`req` (a ChatRequest) with `settings` filled in under what the client asked."""
    given = req.given
    changes: dict[str, Any] = {}
    sampling: dict[str, Any] = {}
    for name, value in settings.parameters.items():
        field = PARAMETERS[name][0]
        if field == "num_ctx":
            if req.num_ctx is None:
                changes["num_ctx"] = value
        elif given is not None and field not in given:
            sampling[field] = tuple(value) if field == "stop" else value
    if sampling:
        changes["params"] = req.params.replace(**sampling)
    messages = req.messages
    if messages is not None and (settings.messages or settings.system):
        chat = [Message(m["role"], m["content"]) for m in settings.messages] + list(messages)
        if settings.system and not (messages and messages[0].role == "system"):
            chat.insert(0, Message("system", settings.system))
        changes["messages"] = chat
    if settings.template:
        changes["template"] = settings.template
    return dataclasses.replace(req, **changes) if changes else req


def store_settings(store: ModelStore) -> SettingsLookup:
    """Settings of store entries by name: a manifest read (no network, no checkpoint opened)."""
    from llamarun.store.catalog import canonical_ref, split_ref
    from llamarun.store.resolve import names_a_path

    def lookup(name: str) -> ModelDefaults | None:
        if names_a_path(name):  # paths hold no settings, and are checked by the model manager first
            return None
        try:
            manifest = store.get(*split_ref(canonical_ref(name)))
        except (LlamarunError, ValueError, OSError):
            return None  # the acquire that follows reports the name's real problem
        return ModelDefaults.from_dict(manifest.defaults) if manifest is not None and manifest.defaults else None

    return lookup


_templates: dict[tuple[int, str], ChatTemplate] = {}


def chat_template(model: ServedModel, source: str | None) -> ChatTemplate:
    """The model's own template, or the created model's Jinja `source` with the model's special tokens."""
    if not source:
        return model.template
    key = (id(model.tokenizer), source)
    if key not in _templates:
        from llamarun.chat.select import select_chat_template

        if len(_templates) > 64:
            _templates.clear()
        _templates[key] = select_chat_template(source, model.tokenizer)
    return _templates[key]
