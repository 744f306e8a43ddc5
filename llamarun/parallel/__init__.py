"""Tensor parallelism over torch.distributed: one model's weights split over the ranks of one host.

group.py   process groups (gloo on CPUs, NCCL on GPUs) and collectives that fail with the rank and op named
plan.py    which rows or columns of each checkpoint tensor a rank keeps, and the per-rank model config
layers.py  the wrappers that make a sharded Llama whole again: all-reduce, vocab-parallel embedding, logits gather
load.py    build rank r's shard, reading only its rows where the format allows (HF safetensors)
runner.py  rank 0 broadcasts each plain-data step; the other ranks run it on their shard
settings.py  `--tp N` / torchrun's WORLD_SIZE: how many ranks a load splits over
launch.py  start the workers (spawned here, or by torchrun) and hand rank 0 a ready engine
"""
