"""The GPU decode benchmark in one command: llamarun on random Llama 3.1 8B weights beside gpt-fast.

    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_decode.py --out $OUT            # on the GPU machine (~8 min at most)
    python benchmarks/gpu_decode.py --smoke --out /tmp/smoke                  # every stage on the CPU, tiny shapes

Stages, in order, each in a process of its own with its own time limit, so that one failing or hanging
stage is logged and the next still runs:
  (a) env        nvidia-smi's line for the card; python, torch, CUDA and triton versions
  (b) bandwidth  device-to-device copy bandwidth (bytes read + written, median of 9 copies of 2 GiB)
  (c) batch1     llamarun bench --random-weights llama3.1-8b: batch 1, 128 prompt / 256 output, 3 requests
  (d) sweep      the same at concurrency 1, 8, 64, 256 with 512 prompt / 128 output, requests = concurrency;
                 levels estimated not to fit the time left are skipped (time is kept back for the peer)
  (e) peer       benchmarks/peer_gpt_fast.py: gpt-fast's compiled decode at batch 1, 128 prompt / 256 new
  (f) summary    one table with llamarun / gpt-fast ratios and bandwidth fractions, summary.json

Everything lands in --out as JSON (env, bandwidth, batch1, sweep, peer, summary) plus gpu_decode.log;
benchmarks/write_record.py turns that folder into a record under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import write_record  # noqa: E402  (beside this file)

# What each stage is given: the real run on the GPU, and the smoke run of the same stages on the CPU.
REAL = {"shape": "llama3.1-8b", "device": "cuda", "batch1": (128, 256, 3), "sweep": (512, 128, [1, 8, 64, 256]),
        "copy_bytes": 2 * 1024**3, "peer": []}
SMOKE = {"shape": "tiny", "device": "cpu", "batch1": (16, 8, 3), "sweep": (16, 8, [1, 2, 4]),
         "copy_bytes": 64 * 1024**2, "peer": ["--tiny", "--no-compile", "--device", "cpu"]}
ENV_CODE = """
import json, platform, sys
from importlib import metadata
import torch
def version(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "triton": version("triton"), "cuda_available": torch.cuda.is_available()}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(gpu=p.name, gpu_memory_gb=round(p.total_memory / 1e9, 1), sm_count=p.multi_processor_count)
print(json.dumps(info))
"""
BANDWIDTH_CODE = """
import json, sys
from llamarun.bench.bandwidth import measure_copy_bandwidth
device, nbytes = sys.argv[1], int(sys.argv[2])
bw = measure_copy_bandwidth(device, nbytes=nbytes)
print(json.dumps({"device": device, "copy_bytes": nbytes, "repeats": 9, "copy_gb_s": round(bw / 1e9, 1)}))
"""


class Runner:
    """Runs stages against one overall deadline, logging everything to the console and gpu_decode.log."""

    def __init__(self, out: Path, budget: float) -> None:
        self.out, self.start, self.deadline = out, time.monotonic(), time.monotonic() + budget
        self.log = (out / "gpu_decode.log").open("a")
        self.stages: dict[str, dict] = {}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def say(self, line: str) -> None:
        stamped = f"[{time.monotonic() - self.start:6.1f}s] {line}"
        print(stamped, flush=True)
        self.log.write(stamped + "\n")
        self.log.flush()

    def run(self, name: str, cmd: list[str], timeout: float) -> str | None:
        """Run one stage; its stdout (None when it failed). A stage over its time is killed with its children."""
        timeout = min(timeout, self.left())
        if timeout < 5:
            self.say(f"{name}: skipped, {self.left():.0f} s left in the budget")
            self.stages[name] = {"ok": False, "skipped": True}
            return None
        shown = " ".join("<code>" if "\n" in part else part for part in cmd)
        self.say(f"{name}: start (limit {timeout:.0f} s): {shown}")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               "PYTHONUNBUFFERED": "1"}
        t0 = time.monotonic()
        try:  # a session of its own: a timeout kills compile workers and other children too
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, start_new_session=True)
        except OSError as err:
            self.say(f"{name}: could not start: {err}")
            self.stages[name] = {"ok": False, "error": str(err)}
            return None
        lines: list[str] = []
        reader = threading.Thread(target=self._pump, args=(name, proc, lines), daemon=True)
        reader.start()
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        reader.join(timeout=10)
        seconds = round(time.monotonic() - t0, 1)
        ok = proc.returncode == 0 and not timed_out
        self.stages[name] = {"ok": ok, "rc": proc.returncode, "timed_out": timed_out, "seconds": seconds}
        self.say(f"{name}: {'done' if ok else 'FAILED'} in {seconds} s"
                 + (" (killed at its time limit)" if timed_out else f" (exit {proc.returncode})" if not ok else ""))
        return "".join(lines) if ok else None

    def _pump(self, name: str, proc: subprocess.Popen, lines: list[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            self.log.write(f"  {name}| {line}")
            print(f"  {name}| {line}", end="", flush=True)
        self.log.flush()


def last_json(text: str | None) -> dict | None:
    """The last line of a stage's output that parses as a JSON object."""
    for line in reversed((text or "").splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def save(out: Path, name: str, data: dict | None) -> None:
    if data is not None:
        (out / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu_decode_out"), help="folder for the results")
    ap.add_argument("--budget", type=float, help="seconds for all stages (default 510; smoke 300)")
    ap.add_argument("--peer-reserve", type=float, help="seconds kept for the gpt-fast stage (default 240; smoke 60)")
    ap.add_argument("--gpt-fast", default=str(ROOT / ".peers" / "gpt-fast"), help="gpt-fast checkout")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU: test the harness itself")
    opts = ap.parse_args(argv)
    plan = SMOKE if opts.smoke else REAL
    budget = opts.budget or (300.0 if opts.smoke else 510.0)
    reserve = opts.peer_reserve if opts.peer_reserve is not None else (60.0 if opts.smoke else 240.0)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    r = Runner(out, budget)
    py = sys.executable
    r.say(f"gpu_decode: budget {budget:.0f} s, {reserve:.0f} s kept for the peer, results in {out}")

    # (a) the card and the versions
    env: dict = {"llamarun_commit": _git_head()}
    smi = r.run("env-smi", ["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm,"
                            "clocks.max.mem,power.limit", "--format=csv,noheader"], 20)
    env["nvidia_smi"] = smi.strip() if smi else None
    env.update(last_json(r.run("env", [py, "-c", ENV_CODE], 60)) or {})
    save(out, "env", env)

    # (b) the copy bandwidth every stage is rated against
    bw = last_json(r.run("bandwidth", [py, "-c", BANDWIDTH_CODE, plan["device"], str(plan["copy_bytes"])], 90))
    save(out, "bandwidth", bw)
    copy = ["--copy-bandwidth", str(bw["copy_gb_s"])] if bw and bw.get("copy_gb_s") else []
    bench = [py, "-m", "llamarun.cli.main", "bench", "--random-weights", plan["shape"], "--device", plan["device"],
             *copy]

    # (c) batch 1, as the peer runs it
    prompt, output, requests = plan["batch1"]
    limit = min(150.0, r.left() - reserve - 60)
    r.run("batch1", [*bench, "--concurrency", "1", "--requests", str(requests), "--prompt-tokens", str(prompt),
                     "--output-tokens", str(output), "--time-budget", f"{max(limit - 25, 10):.0f}",
                     "--json", str(out / "batch1.json")], limit)

    # (d) the concurrency sweep, in what is left before the peer's share
    prompt, output, levels = plan["sweep"]
    limit = r.left() - reserve
    listed = ",".join(map(str, levels))
    r.run("sweep", [*bench, "--concurrency", listed, "--requests", listed, "--prompt-tokens", str(prompt),
                    "--output-tokens", str(output), "--time-budget", f"{max(limit - 25, 10):.0f}",
                    "--json", str(out / "sweep.json")], limit)

    # (e) the peer, on (c)'s workload: the folder is carried to the machine; its code never enters this repository
    prompt, output, _ = plan["batch1"]
    if Path(opts.gpt_fast, "model.py").is_file():
        r.run("peer", [py, str(HERE / "peer_gpt_fast.py"), "--gpt-fast", opts.gpt_fast, *plan["peer"],
                       "--prompt-tokens", str(prompt), "--new-tokens", str(output), *copy,
                       "--json", str(out / "peer.json")], r.left() - 10)
    else:
        r.say(f"peer: skipped, no gpt-fast checkout at {opts.gpt_fast}")
        r.stages["peer"] = {"ok": False, "error": f"no gpt-fast checkout at {opts.gpt_fast}"}

    # (f) one table
    summary = write_record.summarize(out, stages=r.stages)
    save(out, "summary", summary)
    r.say(f"all stages done in {time.monotonic() - r.start:.0f} s")
    print(write_record.format_summary(summary), flush=True)
    return 0


def _git_head() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


if __name__ == "__main__":
    sys.exit(main())
