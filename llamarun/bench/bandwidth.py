"""How close decoding comes to the memory bandwidth: the copy ceiling, and the bytes one decode step must read.

Decoding a token is bound by memory traffic: every weight of the decoder and head is read once per step,
plus each running sequence's keys and values. The ceiling we compare with is what a plain device-to-device
copy reaches on the same card (bytes read + written), measured once per run, rather than a datasheet figure.
"""

from __future__ import annotations

import statistics
import time

from llamarun.bench.report import LevelResult, percentile
from llamarun.config import ModelConfig

GiB = 1024**3


def measure_copy_bandwidth(device: str = "cuda", nbytes: int = 2 * GiB, repeats: int = 9) -> float:
    """Bytes per second of a large copy on `device`, counting bytes read plus written; median of `repeats`.

    On CUDA each copy is timed with events; elsewhere with the host clock. The source holds random bytes,
    not zeros, so nothing can short-cut the copy.
    """
    import torch

    src = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    cuda = src.device.type == "cuda"
    for _ in range(2):  # warm-up: first-touch and clock ramp-up are not timed
        dst.copy_(src)
    times = []
    for _ in range(repeats):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dst.copy_(src)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            t = time.perf_counter()
            dst.copy_(src)
            times.append(time.perf_counter() - t)
    del src, dst
    if cuda:
        torch.cuda.empty_cache()  # give the buffers back before the model is sized against free memory
    return 2 * nbytes / statistics.median(times)


def decode_weight_bytes(config: ModelConfig, bytes_per_element: int) -> int:
    """Weight bytes one decode step reads: all of them except the embedding table, of which it reads a row.

    With tied embeddings the table is also the output head, so it is read whole.
    """
    embed = config.vocab_size * config.hidden_size
    untouched = 0 if config.tie_word_embeddings else embed
    return (config.num_parameters - untouched) * bytes_per_element


def decode_step_bytes(config: ModelConfig, bytes_per_element: int, context_tokens: float,
                      weight_bytes: int | None = None) -> float:
    """Bytes a decode step must read: the weights once, plus K and V of `context_tokens` over all sequences.

    `weight_bytes` replaces the float estimate when the weights are packed (quant/footprint.py).
    """
    weights = decode_weight_bytes(config, bytes_per_element) if weight_bytes is None else weight_bytes
    return weights + context_tokens * config.kv_bytes_per_token(bytes_per_element)


def decode_bandwidth_fraction(step_bytes: float, steps_per_s: float, copy_bytes_per_s: float) -> float:
    """The share of the copy bandwidth a decode loop uses: bytes per step x steps per second / copy rate."""
    return step_bytes * steps_per_s / copy_bytes_per_s


def annotate_levels(levels: list[LevelResult], config: ModelConfig, bytes_per_element: int, *,
                    prompt_tokens: int, output_tokens: int, copy_bytes_per_s: float | None,
                    weight_bytes: int | None = None) -> None:
    """Add each level's decode bytes per step and, given the copy bandwidth, the share of it decoding used.

    A decode step of a level holds min(concurrency, requests) sequences, each attending over
    prompt + output/2 tokens on average; steps per second is 1 / TPOT p50. Above concurrency 1, prefill
    chunks share steps with decodes and lengthen TPOT, so the figure is a lower bound there.
    """
    for level in levels:
        sequences = min(level.concurrency, max(level.requests, 1))
        step = decode_step_bytes(config, bytes_per_element, sequences * (prompt_tokens + output_tokens / 2),
                                 weight_bytes)
        tpot = percentile(level.tpot, 50)
        fraction = None
        if copy_bytes_per_s and tpot > 0:  # NaN (no decodes) compares False
            fraction = float(f"{decode_bandwidth_fraction(step, 1 / tpot, copy_bytes_per_s):.4g}")
        level.extra["decode_bytes_per_step"] = int(step)
        level.extra["decode_bw_fraction"] = fraction
