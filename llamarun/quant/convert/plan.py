"""What loading a checkpoint packed will do, said from metadata alone (no torch): `show` can print it."""

from __future__ import annotations

from collections import Counter

GGUF_EXACT_INT4 = ("Q4_0", "Q4_1", "Q4_K")
GGUF_FLOAT = ("F32", "F16", "BF16")


def gguf_target(type_name: str) -> tuple[str, bool] | None:
    """(layout, exact) a GGUF linear weight of this type becomes, or None when it stays float."""
    if type_name in GGUF_FLOAT:
        return None
    if type_name in GGUF_EXACT_INT4:
        return "int4 g32", True
    return "int8 per channel", False


def describe_plan(linears: list[tuple[str, str | None, bool]]) -> str:
    """[(source, layout or None, exact)] per linear weight -> "kept packed: 210 Q4_1 -> int4 g32 (exact);
    re-quantized (smallest error, measured at load): 1 Q6_K -> int8 per channel"."""
    counts = Counter(linears)
    exact = [f"{n} {src} -> {dst}" for (src, dst, ok), n in counts.items() if dst and ok]
    approx = [f"{n} {src} -> {dst}" for (src, dst, ok), n in counts.items() if dst and not ok]
    floats = [f"{n} {src}" for (src, dst, _), n in counts.items() if dst is None]
    parts = []
    if exact:
        parts.append(f"kept packed: {', '.join(exact)} (exact)")
    if approx:
        parts.append(f"re-quantized (smallest error, measured at load): {', '.join(approx)}")
    if floats and (exact or approx):
        parts.append(f"float: {', '.join(floats)}")
    return "; ".join(parts)


def gguf_plan(linear_types: list[str]) -> str:
    """The plan for a GGUF file, from the type names of its linear weights."""
    rows = []
    for name in linear_types:
        target = gguf_target(name)
        rows.append((name, target[0] if target else None, target[1] if target else True))
    return describe_plan(rows)
