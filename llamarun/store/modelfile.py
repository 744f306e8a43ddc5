"""Ollama's Modelfile, the legacy `/api/create` body and `llamarun create -f`: instructions to create fields.

    FROM smollm2:135m
    PARAMETER temperature 0.2
    PARAMETER stop "<|im_end|>"
    SYSTEM \"\"\"You are terse.\"\"\"
    MESSAGE user Hi
    TEMPLATE "{{ ... }}"
    LICENSE \"\"\"...\"\"\"

Instructions are case-insensitive; a value is the rest of the line, a "quoted" string or a \"\"\"triple
quoted\"\"\" block over many lines; `#` starts a comment line. The result has the field names of the
current `/api/create` request (`from`, `parameters`, `system`, `template`, `messages`, `license`), so
both request shapes meet in one place. ADAPTER and unknown instructions are refused, never skipped.
"""

from __future__ import annotations

from typing import Any

from llamarun.errors import RequestError

_SINGLE = {"FROM": "from", "SYSTEM": "system", "TEMPLATE": "template"}


def parse_modelfile(text: str) -> dict[str, Any]:
    """The create fields a Modelfile gives; RequestError (param "modelfile") naming the line at fault."""
    out: dict[str, Any] = {}
    reader = _Reader(text)
    while (word := reader.instruction()) is not None:
        line = reader.line
        key = word.upper()
        if key in _SINGLE:
            out[_SINGLE[key]] = reader.value()
        elif key == "PARAMETER":
            name = reader.word()
            value = reader.value()
            params = out.setdefault("parameters", {})
            if name == "stop":  # the one parameter that may repeat: each line adds a stop string
                params.setdefault("stop", []).append(value)
            else:
                params[name] = value
        elif key == "MESSAGE":
            role = reader.word()
            out.setdefault("messages", []).append({"role": role, "content": reader.value()})
        elif key == "LICENSE":
            out.setdefault("license", []).append(reader.value())
        elif key == "ADAPTER":
            raise _error(line, "ADAPTER (LoRA adapters) is not supported")
        else:
            raise _error(line, f"unknown instruction '{word[:40]}'")
    if "from" not in out:
        raise RequestError("the Modelfile has no FROM line", param="modelfile")
    return out


def _error(line: int, what: str) -> RequestError:
    return RequestError(f"Modelfile line {line}: {what}", param="modelfile")


class _Reader:
    """A cursor over the Modelfile text."""

    def __init__(self, text: str) -> None:
        self.text, self.pos, self.line = text, 0, 1

    def _skip(self, chars: str) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in chars:
            self.line += self.text[self.pos] == "\n"
            self.pos += 1

    def instruction(self) -> str | None:
        """The next instruction word, skipping blank and comment lines; None at the end."""
        while True:
            self._skip(" \t\r\n")
            if self.pos >= len(self.text):
                return None
            if self.text[self.pos] == "#":
                end = self.text.find("\n", self.pos)
                self.pos = len(self.text) if end < 0 else end
                continue
            return self.word()

    def word(self) -> str:
        self._skip(" \t")
        start = self.pos
        while self.pos < len(self.text) and not self.text[self.pos].isspace():
            self.pos += 1
        if start == self.pos:
            raise _error(self.line, "an instruction is missing its argument")
        return self.text[start:self.pos]

    def value(self) -> str:
        self._skip(" \t")
        text, start = self.text, self.pos
        if text.startswith('"""', start):
            end = text.find('"""', start + 3)
            if end < 0:
                raise _error(self.line, 'a """ block is never closed')
            self.line += text.count("\n", start, end)
            self.pos = end + 3
            return text[start + 3:end]
        if text.startswith('"', start):
            end = start + 1
            while end < len(text) and text[end] != '"' and text[end] != "\n":
                end += 2 if text[end] == "\\" else 1
            if end >= len(text) or text[end] != '"':
                raise _error(self.line, "a quoted value is never closed on its line")
            self.pos = end + 1
            return text[start + 1:end].replace('\\"', '"').replace("\\\\", "\\")
        end = text.find("\n", start)
        end = len(text) if end < 0 else end
        self.pos = end
        value = text[start:end].strip()
        if not value:
            raise _error(self.line, "an instruction is missing its value")
        return value
