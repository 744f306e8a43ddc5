"""Read `/metrics` text the way Prometheus would: every line must parse, samples keyed by name and labels."""

from __future__ import annotations

import re

from prometheus_client.parser import text_string_to_metric_families

Key = tuple[str, frozenset[tuple[str, str]]]
SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? '
                    r"(-?[0-9.e+-]+|\+Inf|-Inf|NaN)$")


def parse_metrics(text: str) -> dict[Key, float]:
    """Every sample of the exposition `text`; fails on any line that is not valid Prometheus text."""
    for line in text.splitlines():
        if not line.startswith(("# HELP ", "# TYPE ")):
            assert SAMPLE.match(line), f"not a Prometheus sample: {line!r}"
    samples: dict[Key, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in samples, f"sample {key} appears twice"
            samples[key] = s.value
    return samples


def at(samples: dict[Key, float], name: str, **labels: str) -> float:
    """The value of sample `name` with exactly these labels (KeyError if there is none)."""
    return samples[(name, frozenset(labels.items()))]


def family_types(text: str) -> dict[str, str]:
    """Family name -> type ('counter', 'gauge', 'histogram'), as the parser reads them."""
    return {f.name: f.type for f in text_string_to_metric_families(text)}
