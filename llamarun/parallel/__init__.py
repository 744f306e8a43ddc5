"""Tensor parallelism over torch.distributed: one model's weights split over the ranks of one host.

group.py   process groups (gloo on CPUs, NCCL on GPUs) and collectives that fail with the rank and op named
plan.py    which rows or columns of each checkpoint tensor a rank keeps, and the per-rank model config
layers.py  the wrappers that make a sharded Llama whole again: all-reduce, vocab-parallel embedding, logits gather
load.py    build rank r's shard, reading only its rows where the format allows (HF safetensors)
runner.py  rank 0 broadcasts each plain-data step; the other ranks run it on their shard
settings.py  `--tp N` / torchrun's WORLD_SIZE: how many ranks a load splits over
launch.py  start the workers (spawned here, or by torchrun) and hand rank 0 a ready engine

Pipeline stages (`--pp M`, tp x pp ranks; docs/parallel.md):
layout.py  `--pp M` and the rank layout (rank = stage * tp + tp rank); no torch
stage_plan.py  which contiguous layers a stage runs, which tensors it reads and under which names
stage_groups.py  each stage's tensor-parallel group, errors naming the global rank and stage
stage_link.py  p2p between stages (activations forward, sampled tokens back to rank 0), with timeouts
stage_model.py  build a stage's model (its layers, the embedding or head where it has them)
stage_runner.py  run one stage's part of each step, in micro-batches; the last stage samples
rank_memory.py  each rank's memory plan from its own shard, a failure naming the rank
pipeline_launch.py  start tp x pp ranks (spawned, or torchrun on many hosts); the hook llm/loading.py calls
worker_cli.py  what `serve`/`run` do on torchrun ranks other than 0
"""
