"""Where one CPU decode step of the default model goes: native kernels, PyTorch ops, and the Python around them.

    python benchmarks/cpu_decode_profile.py [--weights auto] [--steps 64] [--threads N]

Measured on the engine hub's thread, as `run` and `serve` step it, after a prompt fills the cache:
1. the plain step time (engine.step() over `--steps` decode steps, nothing attached);
2. the time inside each native kernel (kernels/cpu, called through ctypes), by wrapping them with timers (an
   all-decode step runs as one native call, engine/cpu_decode.py: it is timed whole, the head inside it too);
3. PyTorch's own ops (torch.profiler, self CPU time by op) over the same number of steps;
4. cProfile's heaviest Python functions by own time (it slows Python down, so read it for the ranking).
The remainder of (1) after (2) and (3) is Python: module calls, the scheduler, batch packing, the sampler.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time
from collections import defaultdict

PROMPT = "Explain in three paragraphs how a refrigerator works, and why its back is warm."


def _timed_kernels(totals: dict[str, list[float]]) -> None:
    """Wrap every loaded native kernel so its calls add (seconds, count) to `totals`."""
    from llamarun.kernels.cpu import build

    build.load(), build.load_w4a8(), build.load_decode_attention(), build.load_small_ops()

    def wrap(name, fn):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            entry = totals[name]
            entry[0] += time.perf_counter() - t0
            entry[1] += 1
            return out
        return timed

    for name, fn in list(build._loaded.items()):
        if fn is None or name == "decode_step":  # a library, not a function: timed through DecodeStep below
            continue
        if name == "small_ops":
            build._loaded[name] = (wrap("add_rms_norm", fn[0]), wrap("rotary", fn[1]), wrap("silu_mul", fn[2]))
        else:
            build._loaded[name] = wrap(name, fn)
    from llamarun.engine.cpu_decode import DecodeStep

    DecodeStep.__call__ = wrap("decode_step+head", DecodeStep.__call__)  # the one-call native step (and its head)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--weights", default="auto")
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    from llamarun.utils.threads import prepare

    prepare(args.threads)
    import torch

    from llamarun.api import LLM
    from llamarun.sampling.params import SamplingParams
    from llamarun.store.default_model import ensure_default_model

    llm = LLM(str(ensure_default_model()), weights=args.weights)
    engine = llm.engine
    ids = llm.prompt_ids(PROMPT)
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])

    def decode(steps: int, first: int) -> float:
        """Seconds per decode step over `steps` steps of a fresh request (prompt and first token not counted)."""
        engine.add_request([first, *ids[1:]], SamplingParams.greedy(max_tokens=steps + 2), stop_ids=())
        engine.step()  # the prompt (a 512-token budget takes it whole)
        engine.step()  # the first decode step: warms any lazy set-up
        t0 = time.perf_counter()
        for _ in range(steps):
            engine.step()
        seconds = (time.perf_counter() - t0) / steps
        while engine.has_unfinished:
            engine.step()
        return seconds

    def on_hub(fn):
        return llm.served.hub.run_sync(fn)

    print(f"weights {llm.weights}, threads {torch.get_num_threads()}, {len(ids)} prompt tokens")
    plain = min(on_hub(lambda r=r: decode(args.steps, ids[0] + r + 1)) for r in range(3))
    print(f"plain step: {plain * 1e3:.2f} ms ({1 / plain:.1f} tok/s), best of 3 runs of {args.steps} steps")

    on_hub(lambda: _timed_kernels(totals))
    timed = on_hub(lambda: decode(args.steps, ids[0] + 10))
    print(f"\nwith kernel timers: {timed * 1e3:.2f} ms per step; inside native kernels per step:")
    native = 0.0
    for name, (seconds, calls) in sorted(totals.items(), key=lambda kv: -kv[1][0]):
        per_step = seconds / (args.steps + 1)  # the timed decode also ran its first step and the last one
        native += per_step if not (name == "gemv_w8a8" and "decode_step+head" in totals) else 0.0  # inside it
        print(f"  {name:16s} {per_step * 1e3:6.2f} ms  {calls / (args.steps + 1):5.0f} calls  "
              f"{seconds / calls * 1e6:6.1f} us/call")
    print(f"  {'all native':16s} {native * 1e3:6.2f} ms ({native / timed:.0%} of the step)")

    from torch.profiler import ProfilerActivity, profile

    def profiled():  # on the hub thread: the profiler records the thread it was entered on
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            decode(args.steps, ids[0] + 11)
        return prof

    events = on_hub(profiled).key_averages()
    aten = sum(e.self_cpu_time_total for e in events if e.key.startswith("aten::")) / 1e6 / (args.steps + 3)
    print(f"\ntorch ops (aten::*, self CPU time) per step: {aten * 1e3:.2f} ms (prompt step included); heaviest:")
    print(events.table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=40))

    profiler = cProfile.Profile()
    on_hub(lambda: (profiler.enable(), decode(args.steps, ids[0] + 12), profiler.disable()))
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
    print("\ncProfile, own time (slowed by the profiler):")
    print("\n".join(out.getvalue().splitlines()[:45]))


if __name__ == "__main__":
    main()
