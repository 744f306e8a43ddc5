"""`--verbose` statistics, in Ollama's words and format, plus peak memory."""

from __future__ import annotations

import resource
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llamarun.engine.stats import RequestStats


def format_duration(seconds: float) -> str:
    """Like Go's time.Duration printing that Ollama uses: 1.234s, 56.7ms, 890µs."""
    if seconds >= 1:
        return f"{seconds:.6g}s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.6g}ms"
    return f"{seconds * 1e6:.6g}µs"


def peak_memory_bytes(device: str) -> int:
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def stats_lines(stats: RequestStats, load_seconds: float, total_seconds: float, peak_bytes: int,
                extra: list[tuple[str, str]] = ()) -> list[str]:
    """Ollama's rows in its format, then ours (peak memory, energy, and `extra`: the weight formats)."""
    rows = [
        ("total duration", format_duration(total_seconds)),
        ("load duration", format_duration(load_seconds)),
        # The count is the whole prompt, as Ollama prints it; duration and rate are about the part
        # the model computed (the cached part was looked up), so the rate stays a prefill speed.
        ("prompt eval count", f"{stats.prompt_tokens} token(s)"),
        ("prompt cached count", f"{stats.cached_tokens} token(s)"),
        ("prompt eval duration", format_duration(stats.prompt_seconds)),
        ("prompt eval rate", f"{stats.prompt_tokens_per_second:.2f} tokens/s"),
        ("eval count", f"{stats.generated_tokens} token(s)"),
        ("eval duration", format_duration(stats.decode_seconds)),
        ("eval rate", f"{stats.decode_tokens_per_second:.2f} tokens/s"),
        ("peak memory", f"{peak_bytes / 2**20:.0f} MiB"),
    ]
    if stats.energy_joules is not None:  # metered on GPUs (engine/energy.py)
        from llamarun.engine.energy import co2_grams, grid_intensity

        per_token = stats.joules_per_token or 0.0
        rows.append(("energy", f"{stats.energy_joules:.2f} J ({per_token:.3f} J/token)"))
        rows.append(("CO2", f"{co2_grams(stats.energy_joules):.4f} g at {grid_intensity():g} g/kWh"))
    rows += extra
    return [f"{name + ':':<22}{value}" for name, value in rows]


def weight_rows(model: Any) -> list[tuple[str, str]]:
    """The format of each layer group and the weight bytes a decode step reads, from the built model."""
    from llamarun.quant.footprint import footprint_rows, model_footprint

    return footprint_rows(model_footprint(model))


def load_phase_row(phases: dict[str, float]) -> tuple[str, str]:
    """The `--verbose` row that splits the load duration into its phases (llm/loading.py)."""
    parts = [f"{name} {format_duration(phases[name])}" for name in ("checks", "weights", "engine") if name in phases]
    if phases.get("graphs"):
        parts[-1] += f" (CUDA graphs {format_duration(phases['graphs'])})"
    return "load phases", ", ".join(parts)


def print_stats(stats: RequestStats, device: str, load_seconds: float,
                extra: list[tuple[str, str]] = ()) -> None:
    """Print the statistics to stderr; `load_seconds` is 0 for requests that did not pay for the load."""
    load = load_seconds
    total = load + stats.prompt_seconds + stats.decode_seconds
    for line in stats_lines(stats, load, total, peak_memory_bytes(device), extra):
        print(line, file=sys.stderr)
