"""The memory plan: sizes add up, a model that cannot fit says what would."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from llamarun.config import ModelConfig, RopeScaling
from llamarun.errors import DoesNotFitError
from llamarun.store.catalog import lookup, smaller_variants
from llamarun.utils.memory import available_memory, plan_memory

GB = 1000**3


def _llama(hidden: int, inter: int, layers: int, heads: int) -> ModelConfig:
    # Shapes from the published config.json files (see REFERENCE.md).
    return ModelConfig(vocab_size=128256, hidden_size=hidden, intermediate_size=inter, num_layers=layers,
                       num_heads=heads, num_kv_heads=8, head_dim=128, rope_theta=500000.0,
                       rope_scaling=RopeScaling(), max_position_embeddings=131072)


LLAMA_70B = _llama(8192, 28672, 80, 64)
LLAMA_8B = _llama(4096, 14336, 32, 32)
LLAMA_70B_BF16 = int(141.1 * GB)


def catalog_smaller(ref: str, weight_bytes: int) -> list[tuple[str, int]]:
    """What llm.loading passes as `smaller`: the catalog's smaller downloads of the same model."""
    return [(e.ref, e.approx_bytes) for e in smaller_variants(ref, weight_bytes)]


def test_parts_add_up_and_kv_scales_with_context_and_element_size() -> None:
    plan = plan_memory(LLAMA_8B, int(16.06 * GB), 8192, available_bytes=100 * GB)
    assert plan.kv_bytes_per_token == 2 * 32 * 8 * 128 * 2  # K and V, every layer, bf16
    assert plan.kv_cache_bytes == plan.kv_bytes_per_token * 8192
    assert plan.total_bytes == plan.weight_bytes + plan.kv_cache_bytes + plan.overhead_bytes
    assert plan.check() is plan
    fp8 = plan_memory(LLAMA_8B, int(16.06 * GB), 8192, kv_bytes_per_element=1, available_bytes=100 * GB)
    assert fp8.kv_cache_bytes * 2 == plan.kv_cache_bytes


def test_too_long_context_names_the_largest_round_context_that_fits() -> None:
    available = 24 * GB
    plan = plan_memory(LLAMA_8B, int(16.06 * GB), 131072, available_bytes=available)
    with pytest.raises(DoesNotFitError) as err:
        plan.check()
    ctx = int(re.search(r"a context of (\d+) tokens would fit", str(err.value)).group(1))
    assert ctx % 1024 == 0 and ctx >= 1024
    # The suggestion really fits, and one more step of 1024 would not.
    plan_memory(LLAMA_8B, int(16.06 * GB), ctx, available_bytes=available).check()
    assert not plan_memory(LLAMA_8B, int(16.06 * GB), ctx + 1024, available_bytes=available).fits


def test_70b_bf16_on_one_h100_suggests_a_smaller_quantization() -> None:
    plan = plan_memory(LLAMA_70B, LLAMA_70B_BF16, 8192, device="cuda:0", available_bytes=79 * GB,
                       model_name="llama3.3:70b", smaller=catalog_smaller("llama3.3:70b", LLAMA_70B_BF16))
    with pytest.raises(DoesNotFitError) as err:
        plan.check()
    msg = str(err.value)
    assert "llama3.3:70b-q4_K_M" in msg and "llama3.3:70b-mlx-4bit" in msg
    assert "context of" not in msg  # weights alone do not fit: no context can help
    assert "141.1 GB" in msg and "79.0 GB" in msg and msg.startswith("llama3.3:70b needs")


def test_without_a_catalog_model_the_advice_is_generic() -> None:
    plan = plan_memory(LLAMA_70B, int(141.1 * GB), 4096, available_bytes=24 * GB)
    with pytest.raises(DoesNotFitError, match="more memory"):
        plan.check()


def test_smaller_variant_must_itself_fit() -> None:
    # 30 GB: the 42.5 GB Q4_K_M does not fit either, so it must not be suggested.
    smaller = catalog_smaller("llama3.3:70b", LLAMA_70B_BF16)
    assert any(ref.endswith("q4_K_M") for ref, _ in smaller)
    plan = plan_memory(LLAMA_70B, LLAMA_70B_BF16, 8192, available_bytes=30 * GB, model_name="llama3.3:70b",
                       smaller=smaller)
    with pytest.raises(DoesNotFitError) as err:
        plan.check()
    assert "q4_K_M" not in str(err.value)


def test_only_the_two_largest_smaller_variants_that_fit_are_named() -> None:
    smaller = [("m:huge", 90 * GB), ("m:q8", 40 * GB), ("m:q6", 30 * GB), ("m:q4", 20 * GB)]
    plan = plan_memory(LLAMA_70B, LLAMA_70B_BF16, 8192, available_bytes=50 * GB, model_name="m",
                       smaller=smaller)
    with pytest.raises(DoesNotFitError) as err:
        plan.check()
    msg = str(err.value)
    assert "m:q8" in msg and "m:q6" in msg and "m:huge" not in msg and "m:q4" not in msg


def test_cpu_available_memory_comes_from_meminfo() -> None:
    with open("/proc/meminfo") as f:
        total_kb = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
    free = available_memory("cpu")
    assert free is not None and 0 < free <= total_kb * 1024
    plan = plan_memory(LLAMA_8B, 1, 128)
    assert plan.available_bytes is not None and plan.available_bytes > 0


def test_unknown_device_memory_does_not_block() -> None:
    plan = plan_memory(LLAMA_70B, int(141.1 * GB), 131072, device="mps")
    assert plan.available_bytes is None and plan.fits


def test_planning_for_cpu_imports_neither_torch_nor_the_store() -> None:
    code = """
import sys
from llamarun.config import ModelConfig
from llamarun.utils.memory import plan_memory
c = ModelConfig(vocab_size=10, hidden_size=8, intermediate_size=16, num_layers=1, num_heads=2, num_kv_heads=1,
                head_dim=4)
plan_memory(c, 100, 16).check()
try:
    plan_memory(c, 10**10, 16, available_bytes=10**9, model_name="m:big", smaller=[("m:small", 1)]).check()
except Exception as e:
    print(type(e).__name__, "m:small" in str(e))
print("torch" in sys.modules, "llamarun.store" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["DoesNotFitError", "True", "False", "False"]


def test_the_embedding_cache_counts_in_the_plan() -> None:
    """One context of throwaway KV cache plus float32 hidden states: what an embedding of the longest input holds
    beside the engine's cache."""
    ctx = 8192
    without = plan_memory(LLAMA_8B, int(16.06 * GB), 4 * ctx, available_bytes=100 * GB)
    plan = plan_memory(LLAMA_8B, int(16.06 * GB), 4 * ctx, available_bytes=100 * GB, scratch_tokens=ctx)
    per_token = LLAMA_8B.kv_bytes_per_token(2) + 4 * LLAMA_8B.hidden_size
    assert plan.scratch_bytes == ctx * per_token and plan.total_bytes == without.total_bytes + ctx * per_token
    # Memory for everything but the scratch: fits without it, not with it, and the error names it.
    tight = without.total_bytes + ctx * per_token // 2
    assert plan_memory(LLAMA_8B, int(16.06 * GB), 4 * ctx, available_bytes=tight).fits
    with pytest.raises(DoesNotFitError, match="embedding cache"):
        plan_memory(LLAMA_8B, int(16.06 * GB), 4 * ctx, available_bytes=tight, scratch_tokens=ctx).check()
    assert plan_memory(LLAMA_8B, int(16.06 * GB), 4 * ctx, available_bytes=tight,
                       scratch_tokens=ctx).largest_context() < 4 * ctx


def test_the_advice_never_names_the_model_itself() -> None:
    # Issue 10, item 9: `run smollm2:135m --ctx 100000000` suggested "the smaller smollm2:135m". Loaded in
    # f32 the model takes more than its own Q4 download, which made it look like a smaller variant.
    own = lookup("smollm2:135m")
    assert own is not None
    assert all(e.ref != own.ref for e in smaller_variants("smollm2:135m", 10 * own.approx_bytes))
    assert all(e.ref != own.ref for e in smaller_variants("smollm2", 10 * own.approx_bytes))  # via its alias
    assert all(e.approx_bytes < own.approx_bytes for e in smaller_variants("smollm2", 10 * own.approx_bytes))
    # A larger variant is still offered its smaller siblings
    names = [e.ref for e in smaller_variants("llama3.3:70b", 10 * LLAMA_70B_BF16)]
    assert "llama3.3:70b" not in names and "llama3.3:70b-q4_K_M" in names
