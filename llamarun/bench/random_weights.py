"""Llama models of real shapes with random weights, built straight on the target device, with their engine.

For measuring speed without a checkpoint: no download, no tokenizer (prompts are random ids), and no copy
of the weights in host memory. The model is built on the meta device (no memory at all), every tensor is
then materialized with `torch.empty` on the device in the compute dtype and filled in place: linear and
embedding weights from N(0, 0.02), norm weights with ones. With those scales each projection keeps its
input's magnitude within a small factor, so activations stay finite in bf16 through all the layers.
An 8B model is ready in seconds on a GPU (one fill kernel per tensor).

With a quantization method the linears are drawn and packed one at a time (`quantize_linears`), so
only one float linear exists at any moment: a 70B shape quantizes to INT4/FP8 on a card that could
not hold it in bf16.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from llamarun.config import ModelConfig, RopeScaling
from llamarun.engine.llm_engine import EngineConfig, LLMEngine
from llamarun.errors import DoesNotFitError, LlamarunError
from llamarun.layers.norm import RMSNorm
from llamarun.layers.rotary import RotaryEmbedding
from llamarun.models.llama import LlamaForCausalLM
from llamarun.parallel.plan import ShardPlan
from llamarun.parallel.settings import tensor_parallel_size
from llamarun.quant.method import QuantMethod, replace_submodule
from llamarun.quant.modes import head_method_for, method_for, resolve_weights, weight_bytes

WEIGHT_STD = 0.02  # the usual initializer scale for Llama-shaped models
BLOCK_SIZE = 16  # EngineConfig's default KV block

# Shapes from the models' Hugging Face config.json (see shared/REFERENCE.md); `tiny` is a toy for tests.
PRESETS: dict[str, ModelConfig] = {
    "llama3.1-8b": ModelConfig(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32,
        num_kv_heads=8, head_dim=128, rms_norm_eps=1e-5, rope_theta=500000.0, rope_scaling=RopeScaling(),
        max_position_embeddings=131072, tie_word_embeddings=False),
    # Llama 3.2 1B: the shape Llama Guard 3 1B is pruned from; the guard benchmarks use it as the guard.
    "llama3.2-1b": ModelConfig(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_layers=16, num_heads=32,
        num_kv_heads=8, head_dim=64, rms_norm_eps=1e-5, rope_theta=500000.0,
        rope_scaling=RopeScaling(factor=32.0), max_position_embeddings=131072, tie_word_embeddings=True),
    "llama3.3-70b": ModelConfig(
        vocab_size=128256, hidden_size=8192, intermediate_size=28672, num_layers=80, num_heads=64,
        num_kv_heads=8, head_dim=128, rms_norm_eps=1e-5, rope_theta=500000.0, rope_scaling=RopeScaling(),
        max_position_embeddings=131072, tie_word_embeddings=False),
    "tiny": ModelConfig(
        vocab_size=512, hidden_size=64, intermediate_size=160, num_layers=2, num_heads=4, num_kv_heads=2,
        head_dim=16, rms_norm_eps=1e-5, rope_theta=500000.0, rope_scaling=RopeScaling(),
        max_position_embeddings=4096, tie_word_embeddings=False),
}


def preset_config(name: str) -> ModelConfig:
    """The config of a named shape; an unknown name is a user error listing the known ones."""
    if name not in PRESETS:
        raise LlamarunError(f"unknown --random-weights shape '{name}'", f"choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


@torch.no_grad()
def build_random_model(config: ModelConfig, *, device: str | torch.device, dtype: torch.dtype, seed: int = 0,
                       std: float = WEIGHT_STD, method: QuantMethod | None = None,
                       head_method: QuantMethod | str | None = "same") -> LlamaForCausalLM:
    """A model of `config`'s shape in eval mode, every weight random, allocated only on `device`.

    `method` packs every linear as soon as it is drawn; the output head too, unless `head_method` says otherwise
    (a method, or None to keep the head in `dtype`).
    """
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to(dtype=dtype)  # still meta: only the dtype the tensors will get changes
    generator = torch.Generator(device=device).manual_seed(seed)
    if method is not None:
        head = method if head_method == "same" else head_method
        quantize_linears(model, method, device=device, generator=generator, std=std, head_method=head)
    packed = method is not None
    if packed:  # only what is still on the meta device gets memory; packed buffers stay as they are
        _materialize_meta(model, device)
    else:
        model.to_empty(device=device)  # uninitialized memory on the device itself, none on the host
    norms = {id(m.weight) for m in model.modules() if isinstance(m, RMSNorm)}
    for param in model.parameters():  # a tied weight is listed once
        if id(param) in norms:
            param.fill_(1.0)
        elif not packed:
            param.normal_(0.0, std, generator=generator)
    # The rotary buffer is derived, not random: compute it as a checkpoint-built model does.
    model.model.rotary = RotaryEmbedding(config).to(device)
    if config.tie_word_embeddings and method is None:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.eval().requires_grad_(False)


def quantize_linears(model: LlamaForCausalLM, method: QuantMethod, *, device: str | torch.device,
                     generator: torch.Generator, std: float, head_method: QuantMethod | None) -> None:
    """Draw each linear's weight on `device`, pack it (the head by `head_method`; None keeps it float), and put
    the packed module in its place.

    The embedding table is drawn first, so a tied head packs the table's values. Peak memory is the
    packed model plus one float linear (and its float32 copy while it is quantized).
    """
    embed = model.model.embed_tokens
    embed.weight = nn.Parameter(torch.empty(embed.weight.shape, dtype=embed.weight.dtype, device=device)
                                .normal_(0.0, std, generator=generator), requires_grad=False)
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    for name in linears:
        linear = model.get_submodule(name)
        if name == "lm_head" and model.config.tie_word_embeddings:
            weight = embed.weight.detach()
        else:
            weight = torch.empty(linear.weight.shape, dtype=linear.weight.dtype, device=device)  # [N, K]
            weight.normal_(0.0, std, generator=generator)
        packs = head_method if name == "lm_head" else method
        if packs is None:  # the head kept in the compute dtype: the table itself when tied, else its drawn weight
            tied = model.config.tie_word_embeddings
            linear.weight = embed.weight if tied else nn.Parameter(weight, requires_grad=False)
        else:
            replace_submodule(model, name, packs.create(packs.quantize(weight)))
        del weight


def _materialize_meta(model: nn.Module, device: str | torch.device) -> None:
    """Give every parameter still on the meta device uninitialized memory on `device` (norms, here)."""
    for module in model.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            if param.is_meta:
                module._parameters[name] = nn.Parameter(torch.empty_like(param, device=device),
                                                        requires_grad=False)


def kv_tokens_for(concurrency: int, context_length: int, block_size: int = BLOCK_SIZE) -> int:
    """KV slots for `concurrency` requests of a full context each, plus one spare block per request."""
    return concurrency * (-(-context_length // block_size) + 1) * block_size


def check_fits(name: str, config: ModelConfig, dtype: torch.dtype, device: str, *, concurrency: int,
               context_length: int, available_bytes: int | None = None, weights: str = "exact") -> int:
    """The KV cache size in tokens for `concurrency` full contexts, or DoesNotFitError saying what would fit.

    `available_bytes` defaults to what the device reports free (cudaMemGetInfo, MemAvailable).
    """
    from llamarun.utils.memory import plan_memory

    element = dtype.itemsize
    kv_tokens = kv_tokens_for(concurrency, context_length)
    plan = plan_memory(config, weight_bytes(config, weights, element), kv_tokens, device=device,
                       kv_bytes_per_element=element, available_bytes=available_bytes)
    if plan.fits:
        return kv_tokens
    assert plan.available_bytes is not None
    per_request = kv_tokens_for(1, context_length) * plan.kv_bytes_per_token
    spare = plan.available_bytes - plan.weight_bytes - plan.overhead_bytes
    most = max(spare, 0) // per_request
    held = str(dtype).removeprefix("torch.") if weights == "exact" else weights
    need = (f"{name} with random {held} weights needs {_gb(plan.total_bytes)} "
            f"(weights {_gb(plan.weight_bytes)} + KV cache {_gb(plan.kv_cache_bytes)} for {concurrency} requests "
            f"of {context_length} tokens + overhead {_gb(plan.overhead_bytes)}) but {device} has "
            f"{_gb(plan.available_bytes)} free")
    if most >= 1:
        hint = f"at most {most} concurrent requests of {context_length} tokens would fit; lower --concurrency"
    else:
        hint = "the weights alone do not fit: use a device with more memory or a smaller shape"
    raise DoesNotFitError(need, hint)


@dataclass
class RandomModel:
    """A random-weight model ready to bench: its engine and what the report needs to say about it."""

    name: str
    config: ModelConfig
    engine: LLMEngine
    device: str
    dtype: torch.dtype
    context_length: int
    load_seconds: float
    weights: str = "exact"
    ranks: int = 1  # tensor-parallel ranks the model is split over (one GPU each)
    parallel: Any = None  # the TensorParallel handle (workers to stop) when ranks > 1

    def close(self) -> None:
        """Stop the tensor-parallel workers, if any (the process's exit does it otherwise)."""
        if self.parallel is not None:
            self.parallel.close()

    @property
    def weight_bytes(self) -> int:
        return weight_bytes(self.config, self.weights, self.dtype.itemsize)


def load_random_model(name: str, *, device: str | None = None, concurrency: int, context_length: int,
                      seed: int = 0, dtype: torch.dtype | None = None,
                      available_bytes: int | None = None, weights: str = "exact") -> RandomModel:
    """Check memory, build the named shape with random weights on `device`, and wrap it in an engine.

    The KV cache holds `concurrency` full contexts at once, so the benchmark measures batching, not
    preemption; the engine may run that many requests together. `dtype` defaults to the device's
    compute dtype (bf16 on GPUs, float32 on CPUs). `weights` ("exact", or a quantization format such as
    "int4-g128") is checked against the device and shape before anything is allocated.
    """
    from llamarun.utils.devices import check_device, default_device, default_dtype

    t0 = time.perf_counter()
    config = preset_config(name)
    device = check_device(device or default_device())
    dtype = dtype or default_dtype(device)
    if not 16 <= context_length <= config.max_position_embeddings:
        raise LlamarunError(f"context length {context_length} is outside 16..{config.max_position_embeddings}",
                            "pass a --ctx in that range")
    weights = resolve_weights("exact" if weights == "auto" else weights, device=device, config=config)
    ranks = tensor_parallel_size()
    # Each rank holds its own shard: check what rank 0's shard needs against one device.
    shard = config if ranks == 1 else ShardPlan(config, 0, ranks).local_config()
    kv_tokens = check_fits(name, shard, dtype, device, concurrency=concurrency, context_length=context_length,
                           available_bytes=available_bytes, weights=weights)
    # More running requests than the engine's default only when the benchmark asks for them.
    running = {"max_running": concurrency} if concurrency > EngineConfig.max_running else {}
    engine_config = EngineConfig(context_length=context_length, kv_tokens=kv_tokens, block_size=BLOCK_SIZE,
                                 **running)
    if ranks > 1:  # every rank draws its own shard on its own GPU (parallel/random_shard.py)
        from llamarun.parallel.launch import ShardSpec, start_tensor_parallel
        from llamarun.parallel.random_shard import RANDOM_FORMAT

        spec = ShardSpec(name, RANDOM_FORMAT, engine_config, str(dtype).removeprefix("torch."), device, weights)
        parallel = start_tensor_parallel(spec, ranks)
        engine = parallel.engine
    else:
        parallel = None
        model = build_random_model(config, device=device, dtype=dtype, seed=seed, method=method_for(weights),
                                   head_method=head_method_for(weights))
        engine = LLMEngine(model, engine_config, dtype=dtype, device=device)
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)  # the fills are queued; count them in the build time
    return RandomModel(name=name, config=config, engine=engine, device=device, dtype=dtype,
                       context_length=context_length, load_seconds=time.perf_counter() - t0, weights=weights,
                       ranks=ranks, parallel=parallel)


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.0f} MB"
