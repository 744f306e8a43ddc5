"""Benchmark results: one `LevelResult` per concurrency level, percentiles, the table and the JSON record.

Shared by the offline and the serving benchmark, so both report the same numbers the same way.
No torch import at module level: the serving benchmark measures a server and needs none.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llamarun.errors import LlamarunError


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100) with linear interpolation between closest ranks (numpy's default).

    NaN for no values: a level where every request failed has no latency to report.
    """
    if not 0 <= p <= 100:
        raise ValueError(f"percentile {p} is outside 0..100")
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = p / 100 * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class LevelResult:
    """What one concurrency level measured: totals, wall time, and per-request latencies (seconds)."""

    mode: str  # "offline" (engine driven directly) or "serving" (HTTP streaming)
    concurrency: int
    requests: int  # requests that completed
    prompt_tokens: int  # over all completed requests
    output_tokens: int
    wall_seconds: float  # first request sent -> last request done
    ttft: list[float] = field(default_factory=list)  # time to first token, per request
    tpot: list[float] = field(default_factory=list)  # time per output token after the first, per request
    failed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # mode-specific counters (preemptions, errors)
    # Prompt tokens / prefill seconds, per request; only the offline benchmark sees prefill times.
    prompt_tps: list[float] = field(default_factory=list)

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.wall_seconds if self.wall_seconds > 0 else math.nan

    @property
    def output_tps(self) -> float:
        return self.output_tokens / self.wall_seconds if self.wall_seconds > 0 else math.nan

    @property
    def total_tps(self) -> float:
        tokens = self.prompt_tokens + self.output_tokens
        return tokens / self.wall_seconds if self.wall_seconds > 0 else math.nan

    def summary(self) -> dict[str, Any]:
        """The numbers of this level as a flat JSON-ready dict (latencies in milliseconds)."""
        out: dict[str, Any] = {
            "concurrency": self.concurrency, "requests": self.requests, "failed": self.failed,
            "prompt_tokens": self.prompt_tokens, "output_tokens": self.output_tokens,
            "wall_seconds": round(self.wall_seconds, 4), "requests_per_s": _round(self.requests_per_s),
            "output_tokens_per_s": _round(self.output_tps), "total_tokens_per_s": _round(self.total_tps),
        }
        for name, values in (("ttft", self.ttft), ("tpot", self.tpot)):
            for p in (50, 99):
                out[f"{name}_p{p}_ms"] = _round(1000 * percentile(values, p))
            out[f"{name}_mean_ms"] = _round(1000 * sum(values) / len(values)) if values else None
        # A request's own rates: prefill speed, and decode speed as 1 / TPOT (at concurrency 1, the
        # single-stream decode rate; above it, what each of the concurrent streams sees).
        out["prompt_tokens_per_s"] = _round(percentile(self.prompt_tps, 50))
        tpot = percentile(self.tpot, 50)
        out["decode_tokens_per_s"] = _round(1 / tpot) if tpot > 0 else None
        out.update(self.extra)
        return out


def _round(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 3)


COLUMNS = [("concurrency", "conc", "{:d}"), ("requests", "reqs", "{:d}"),
           ("requests_per_s", "req/s", "{:.2f}"),
           ("output_tokens_per_s", "out tok/s", "{:.1f}"), ("total_tokens_per_s", "total tok/s", "{:.1f}"),
           ("ttft_p50_ms", "TTFT p50 ms", "{:.1f}"), ("ttft_p99_ms", "TTFT p99 ms", "{:.1f}"),
           ("tpot_p50_ms", "TPOT p50 ms", "{:.1f}"), ("tpot_p99_ms", "TPOT p99 ms", "{:.1f}"),
           ("prompt_tokens_per_s", "prompt tok/s", "{:.0f}"), ("decode_tokens_per_s", "tok/s/req", "{:.1f}")]


def format_table(levels: Sequence[LevelResult]) -> str:
    """A plain aligned table, one row per concurrency level."""
    header = [title for _, title, _ in COLUMNS]
    rows = []
    for level in levels:
        s = level.summary()
        rows.append(["-" if s.get(key) is None else fmt.format(s[key]) for key, _, fmt in COLUMNS])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(r, widths, strict=True)) for r in [header, *rows]]
    failed = sum(level.failed for level in levels)
    if failed:
        lines.append(f"{failed} request(s) failed; see the JSON record for the errors")
    return "\n".join(lines)


def describe_machine() -> dict[str, Any]:
    """CPU model and cores, torch threads, GPU name when CUDA is there, versions, and the load average now."""
    info: dict[str, Any] = {"cpu": _cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
                            "python": platform.python_version()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["cuda"] = torch.version.cuda
    except ImportError:  # the serving benchmark runs without torch
        pass
    info["triton"] = _package_version("triton")
    info["load_average"] = load_average()
    return info


def _package_version(name: str) -> str | None:
    """An installed package's version from its metadata, without importing it (None when absent)."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (None where the OS has none): the machine may be shared."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build_record(model: str, mode: str, settings: dict[str, Any], levels: Sequence[LevelResult],
                 machine: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON record of one benchmark run; `extra` adds top-level fields (weights, bandwidth, ...)."""
    record = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine or describe_machine(), "model": model, "mode": mode, "settings": settings,
        "levels": [level.summary() for level in levels],
        "raw": [{k: v for k, v in asdict(level).items() if k in ("concurrency", "ttft", "tpot", "prompt_tps")}
                for level in levels],
    }
    record.update(extra or {})
    return record


def write_record(path: str | Path, record: dict[str, Any]) -> Path:
    """Write the record as indented JSON, creating the folder; unwritable paths are a user error."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2) + "\n")
    except OSError as err:
        raise LlamarunError(f"cannot write the benchmark record to {path}: {err.strerror or err}",
                            "pass --json a path in a writable folder") from err
    return path


class RunRecord:
    """The JSON record of a run in progress, rewritten after every level (`write(..., complete=False)`),
    so a run stopped midway keeps what it measured; `complete` says whether it got to the end."""

    def __init__(self, path: str | Path | None, model: str, settings: dict[str, Any], mode: str = "offline") -> None:
        self.path, self.model, self.mode = path, model, mode
        self.settings = dict(settings)
        self.top: dict[str, Any] = {}  # top-level fields: weights, bandwidth, skipped levels
        self.notes: list[str] = []  # lines printed under the table
        self.machine: dict[str, Any] | None = None

    def describe_machine(self) -> None:
        """Describe the machine now (its load average before the measurement), once."""
        self.machine = self.machine or describe_machine()

    def write(self, levels: Sequence[LevelResult], complete: bool) -> Path | None:
        """Write the record with `levels` so far; nothing without a path."""
        if not self.path:
            return None
        self.describe_machine()
        return write_record(self.path, build_record(self.model, self.mode, self.settings, levels, self.machine,
                                                    extra={**self.top, "complete": complete}))
