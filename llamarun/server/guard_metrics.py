"""The safety guards' series in `/metrics`: verdicts by guard, subject kind, category and action, and check times.

Registered in the server's own registry only when guards are configured, so a server without guards
exposes exactly the series it always did. A finding with several categories counts once per category;
a safe one counts under the category "none", so the pass rate of each guard can be read off too.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from llamarun.safety.pipeline import Finding

CHECK_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class GuardMetrics:
    """Counts each recorded finding; an Observer for GuardPipeline (`pipeline.observers.append(m.observe)`)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.verdicts = Counter("llamarun_guard_verdicts", "Guard verdicts by guard, subject kind, category and "
                                "action (pass, warn, block).", ["guard", "kind", "category", "action"],
                                registry=registry)
        self.check_seconds = Histogram("llamarun_guard_check_seconds", "Time one guard took to judge one subject.",
                                       ["guard"], buckets=CHECK_BUCKETS, registry=registry)

    def observe(self, finding: Finding) -> None:
        v = finding.verdict
        for category in v.categories or ("none" if v.safe else "unsafe",):
            self.verdicts.labels(v.guard, finding.kind, category, finding.action).inc()
        self.check_seconds.labels(v.guard).observe(finding.seconds)
