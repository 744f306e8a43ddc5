"""The L2 prefetch before attention (kernels/l2_prefetch.py): its byte plan, and on GPUs that it changes nothing."""

from __future__ import annotations

import pytest
import torch

from llamarun.kernels.l2_prefetch import plan


def test_the_plan_takes_small_tensors_whole_and_an_equal_prefix_of_the_big_ones_rows():
    mib = 2**20
    # 70B's o projection in INT4: 8192 rows of 4096 bytes, and two tables of 1 MiB as 256 rows of 4096
    prefixes = plan([(8192, 4096), (256, 4096), (256, 4096)], 20 * mib)
    assert prefixes[1:] == [4096, 4096]  # the small ones whole
    assert prefixes[0] == (20 * mib - 2 * mib) // 8192 // 16 * 16 == 2304  # what is left, in units of 16 bytes
    assert sum(p * r for p, (r, _) in zip(prefixes, [(8192, 0), (256, 0), (256, 0)])) <= 20 * mib
    assert plan([(8192, 4096)], 64 * mib) == [4096]  # never more than a row
    assert plan([(8192, 4096)], 8) == [0]  # a budget below one unit a row fetches nothing


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the bulk prefetch runs on CUDA only")
def test_prefetching_leaves_every_tensor_as_it_was():
    from llamarun.kernels.l2_prefetch import prefetch_l2

    tensors = [torch.randn(1000, 512, device="cuda", dtype=torch.bfloat16), torch.randn(77, device="cuda"),
               torch.randint(0, 255, (4096, 2048), device="cuda", dtype=torch.uint8)]
    before = [t.clone() for t in tensors]
    prefetch_l2(tensors)
    torch.cuda.synchronize()
    assert all(torch.equal(a, b) for a, b in zip(tensors, before))
