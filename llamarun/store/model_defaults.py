"""What a created model adds to its weights: a system prompt, a chat template, sampling parameters,
opening messages and a license (Ollama's Modelfile SYSTEM, TEMPLATE, PARAMETER, MESSAGE, LICENSE).

Stored in the entry's manifest (`defaults`), read back by the chat service, which applies them under
what each request asks (llm/model_defaults.py), and by `/api/show`. Parameters use Ollama's names and
are checked when the model is created, so a bad value is the creator's 400, not every user's later.
Torch-free.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from llamarun.errors import LlamarunError, RequestError

# Ollama's parameter name -> (SamplingParams field or "num_ctx", type).
PARAMETERS: dict[str, tuple[str, type]] = {
    "temperature": ("temperature", float), "top_k": ("top_k", int), "top_p": ("top_p", float),
    "min_p": ("min_p", float), "repeat_penalty": ("repetition_penalty", float),
    "repeat_last_n": ("repeat_last_n", int), "presence_penalty": ("presence_penalty", float),
    "frequency_penalty": ("frequency_penalty", float), "seed": ("seed", int),
    "num_predict": ("max_tokens", int), "stop": ("stop", list), "num_ctx": ("num_ctx", int),
}
MESSAGE_ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class ModelDefaults:
    """A created model's own settings; every field is optional."""

    system: str | None = None
    template: str | None = None  # a Jinja chat template, as in tokenizer_config.json
    parameters: dict[str, Any] = field(default_factory=dict)  # Ollama names, checked values
    messages: tuple[dict[str, str], ...] = ()  # {"role", "content"}: put before every conversation
    license: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["messages"] = list(self.messages)
        return {k: v for k, v in data.items() if v not in (None, {}, [])}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> ModelDefaults:
        data = data or {}
        return cls(system=data.get("system"), template=data.get("template"),
                   parameters=dict(data.get("parameters") or {}),
                   messages=tuple(dict(m) for m in data.get("messages") or ()), license=data.get("license"))

    def over(self, base: ModelDefaults) -> ModelDefaults:
        """These settings on top of `base`'s (a model made FROM another keeps what it does not change)."""
        return ModelDefaults(system=self.system if self.system is not None else base.system,
                             template=self.template if self.template is not None else base.template,
                             parameters={**base.parameters, **self.parameters},
                             messages=self.messages or base.messages,
                             license=self.license if self.license is not None else base.license)


def check_parameters(raw: dict[str, Any]) -> dict[str, Any]:
    """Ollama-named parameters with values of the right type (strings from a Modelfile converted), or a
    RequestError naming the bad one. Values are range-checked by building the SamplingParams they give."""
    from llamarun.sampling.params import SamplingParams

    out: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in PARAMETERS:
            raise RequestError(f"unknown or unsupported parameter '{name}' (supported: {', '.join(PARAMETERS)})",
                               param=f"parameters.{name}")
        out[name] = _typed(name, value, PARAMETERS[name][1])
    sampling = {PARAMETERS[k][0]: v for k, v in out.items() if k != "num_ctx"}
    if "stop" in sampling:
        sampling["stop"] = tuple(sampling["stop"])
    SamplingParams(**sampling)  # SamplingParamsError (a RequestError) names the field out of range
    if out.get("num_ctx") is not None and out["num_ctx"] < 16:
        raise RequestError(f"num_ctx={out['num_ctx']} is below 16", param="parameters.num_ctx")
    return out


def _typed(name: str, value: Any, kind: type) -> Any:
    bad = RequestError(f"parameter '{name}' must be {'a list of strings' if kind is list else kind.__name__}, "
                       f"not {value!r:.80}", param=f"parameters.{name}")
    if kind is list:
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise bad
        return values
    if isinstance(value, bool):
        raise bad
    try:
        if kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise bad
            return int(value) if not isinstance(value, str) else int(value.strip())
        return float(value)
    except (TypeError, ValueError):
        raise bad from None


def check_messages(raw: list[Any]) -> tuple[dict[str, str], ...]:
    """Opening messages as {"role", "content"} with a role Ollama's MESSAGE allows."""
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or m.get("role") not in MESSAGE_ROLES or not isinstance(m.get("content"), str):
            raise RequestError(f"messages[{i}] needs a role ({', '.join(MESSAGE_ROLES)}) and text content",
                               param=f"messages.{i}")
        out.append({"role": m["role"], "content": m["content"]})
    return tuple(out)


def settings_from_fields(fields: dict[str, Any]) -> ModelDefaults:
    """Checked settings from create fields (`system`, `template`, `parameters`, `messages`, `license`), as the
    JSON body or a Modelfile (store/modelfile.py) gives them."""
    template = fields.get("template")
    if template is not None:
        check_template(template)
    license_ = fields.get("license")
    if isinstance(license_, list):
        license_ = "\n\n".join(license_)
    return ModelDefaults(system=fields.get("system"), template=template,
                         parameters=check_parameters(fields.get("parameters") or {}),
                         messages=check_messages(fields.get("messages") or []), license=license_)


def check_template(source: str) -> None:
    """A Jinja chat template that parses. llamarun renders chats with Jinja, as Transformers does, so
    Ollama's Go templates (`{{ .Prompt }}`) are refused with a pointed message rather than misread."""
    from llamarun.chat.jinja_template import JinjaChatTemplate

    if "{{ ." in source or "{{- ." in source or "{{ if ." in source:
        raise RequestError("the template is an Ollama Go template; llamarun renders chats with Jinja: give a "
                           "Jinja chat template (the kind in tokenizer_config.json's chat_template)",
                           param="template")
    try:
        JinjaChatTemplate(source, bos_token=None, eos_token=None)
    except LlamarunError as err:
        raise RequestError(f"the template is not a valid Jinja chat template: {err.message}",
                           param="template") from None
