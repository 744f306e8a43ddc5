"""What a request's output must match, as plain data: travels in SamplingParams, so steps stay picklable.

No torch and no grammar library here: the scheduler, the step types and the API layer all import this. The
runner turns a spec into a compiled grammar (llamarun/structured/), and an engine that cannot compile it
says which part is unsupported.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from llamarun.errors import RequestError

KINDS = ("json", "json_schema", "regex", "ebnf", "choice")
MAX_SPEC_CHARS = 1_000_000  # a schema or grammar this long is a mistake or an attack, not a format


@dataclass(frozen=True, eq=False)
class GrammarSpec:
    """A grammar the output must match.

    kind / value:
      "json"         any JSON object (value None)
      "json_schema"  a JSON schema (value: dict)
      "regex"        a regular expression the whole output matches (value: str)
      "ebnf"         a GBNF grammar with a `root` rule, as llama.cpp and xgrammar take it (value: str)
      "choice"       exactly one of the strings (value: list or tuple of str; stored as a tuple)

    Equality and hashing go by `key`, the kind plus a canonical text of the value, which is also what
    compiled grammars are cached by.
    """

    kind: str
    value: Any = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise RequestError(f"grammar kind {self.kind!r} is not one of {', '.join(KINDS)}", param="grammar")
        value = self.value
        if self.kind == "json":
            if value is not None:
                raise RequestError("a 'json' grammar takes no value (any JSON object)", param="grammar")
        elif self.kind == "json_schema":
            if not isinstance(value, dict):
                raise RequestError("a JSON schema must be an object", param="grammar")
        elif self.kind in ("regex", "ebnf"):
            if not isinstance(value, str) or not value:
                raise RequestError(f"a {self.kind} grammar must be a non-empty string", param="grammar")
        else:  # choice
            if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value \
                    or not all(isinstance(c, str) and c for c in value):
                raise RequestError("a choice grammar needs a list of non-empty strings", param="grammar")
            object.__setattr__(self, "value", tuple(value))
        try:
            text = _canonical(self.value) if self.kind in ("json_schema", "choice") else (self.value or "")
        except (TypeError, ValueError) as err:
            raise RequestError(f"the JSON schema is not plain JSON: {err}", param="grammar") from None
        if len(text) > MAX_SPEC_CHARS:
            raise RequestError(f"the {self.kind} grammar is {len(text)} characters long, "
                               f"at most {MAX_SPEC_CHARS} are allowed", param="grammar")
        object.__setattr__(self, "_key", f"{self.kind}:{text}")

    @property
    def key(self) -> str:
        """The kind and a canonical text of the value (sorted keys): one compiled grammar per key."""
        return self._key  # type: ignore[attr-defined]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GrammarSpec) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __reduce__(self) -> tuple[Any, tuple[str, Any]]:
        return (GrammarSpec, (self.kind, self.value))


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
