"""Rewrites of JSON schemas around known gaps of the grammar engine, applied before compiling.

xgrammar 0.2.9 compiles a string with `minLength`/`maxLength` to a repetition of `[^"\\\r\n]`, which lets raw
control characters (U+0000-U+001F) into the string: invalid JSON that Python's and pydantic's parsers refuse.
Such strings (with no pattern or format of their own) get the equivalent pattern over characters that need no
escape, so the output always parses (the price: a length-limited string holds no quote or backslash).
"""

from __future__ import annotations

from typing import Any

_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties")
_SUBSCHEMAS = ("items", "additionalProperties", "not", "if", "then", "else", "contains")


def fix_schema(schema: Any) -> Any:
    """A copy of `schema` with length-limited plain strings given a pattern of unescaped characters."""
    if isinstance(schema, list):
        return [fix_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in _SUBSCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [fix_schema(s) for s in out[key]]
    for key in _SUBSCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {name: fix_schema(s) for name, s in out[key].items()}
    for key in _SUBSCHEMAS:
        if isinstance(out.get(key), dict):
            out[key] = fix_schema(out[key])
    if _length_limited_string(out):
        low, high = out.pop("minLength", 0), out.pop("maxLength", "")
        out["pattern"] = f'^[^\\x00-\\x1f"\\\\]{{{low},{high}}}$'
    return out


def _length_limited_string(node: dict[str, Any]) -> bool:
    limits = [node.get(k) for k in ("minLength", "maxLength") if k in node]
    return (node.get("type") == "string" and bool(limits) and all(isinstance(v, int) and v >= 0 for v in limits)
            and not any(k in node for k in ("pattern", "format", "enum", "const")))
