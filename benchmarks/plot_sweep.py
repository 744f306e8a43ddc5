"""Plot a concurrency sweep record: output tokens/s and TPOT against concurrency (needs matplotlib).

    python benchmarks/plot_sweep.py SWEEP.json OUT.png [--title "..."]
"""

from __future__ import annotations

import argparse
import json

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("sweep")
    ap.add_argument("png")
    ap.add_argument("--title", default="")
    args = ap.parse_args()
    with open(args.sweep) as f:
        levels = json.load(f)["levels"]
    conc = [lv["concurrency"] for lv in levels]
    fig, left = plt.subplots(figsize=(7, 4.2))
    left.plot(conc, [lv["output_tokens_per_s"] for lv in levels], "o-", color="tab:blue", label="output tok/s")
    left.set_xscale("log", base=2)
    left.set_xlabel("concurrent requests")
    left.set_ylabel("output tokens/s", color="tab:blue")
    right = left.twinx()
    right.plot(conc, [lv["tpot_p50_ms"] for lv in levels], "s--", color="tab:red", label="TPOT p50")
    right.set_ylabel("TPOT p50 (ms)", color="tab:red")
    left.set_xticks(conc, [str(c) for c in conc])
    left.set_title(args.title)
    left.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.png, dpi=120)


if __name__ == "__main__":
    main()
