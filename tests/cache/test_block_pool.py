"""BlockPool: reference counts, chained block hashes, LRU eviction of cached blocks, hit counters."""

from __future__ import annotations

import pytest

from llamarun.cache.block_pool import BlockPool, chain_hash


def chain(*blocks: list[int]) -> list[int]:
    """Chained hashes of consecutive full blocks."""
    hashes, parent = [], None
    for tokens in blocks:
        parent = chain_hash(parent, tokens)
        hashes.append(parent)
    return hashes


def test_allocate_until_empty_then_release_refills():
    pool = BlockPool(3, 4)
    blocks = [pool.allocate() for _ in range(3)]
    assert sorted(blocks) == [0, 1, 2] and pool.num_free == 0 and pool.num_used == 3
    with pytest.raises(RuntimeError, match="out of blocks"):
        pool.allocate()
    pool.release(blocks[:2])
    assert pool.num_free == 2
    assert {pool.allocate(), pool.allocate()} == set(blocks[:2])


def test_shared_block_is_free_only_after_every_reference_is_released():
    pool = BlockPool(2, 4)
    block = pool.allocate()
    h = chain([1, 2, 3, 4])[0]
    pool.register(block, h)
    assert pool.lookup([h]) == [block]  # a second request shares it: two references
    pool.release([block])
    assert pool.num_free == 1  # still held by the other
    pool.release([block])
    assert pool.num_free == 2


def test_chained_hash_names_the_whole_prefix():
    a = chain([1, 2], [3, 4])
    b = chain([9, 9], [3, 4])
    assert a[1] != b[1]  # same tokens, different history: a different block
    assert chain([1, 2], [3, 4]) == a
    assert chain([1, 2], [3, 5])[0] == a[0] and chain([1, 2], [3, 5])[1] != a[1]


def test_lookup_returns_the_longest_cached_run_from_the_start():
    pool = BlockPool(8, 2)
    hashes = chain([1, 2], [3, 4], [5, 6])
    blocks = [pool.allocate() for _ in hashes]
    for block, h in zip(blocks, hashes, strict=True):
        pool.register(block, h)
    assert pool.lookup(hashes) == blocks
    assert pool.lookup(chain([1, 2], [3, 4], [7, 7])) == blocks[:2]
    assert pool.lookup(chain([0, 2], [3, 4])) == []  # a miss at the start ends the run


def test_registering_a_hash_twice_keeps_the_first_block():
    pool = BlockPool(4, 2)
    h = chain([1, 2])[0]
    first, second = pool.allocate(), pool.allocate()
    pool.register(first, h)
    pool.register(second, h)  # the same content computed twice: the second copy stays unnamed
    assert pool.lookup([h]) == [first]
    pool.release([second])
    assert pool.num_free == 3 and pool.lookup([h]) == [first]


def test_unreferenced_cached_blocks_are_evicted_least_recently_released_first():
    pool = BlockPool(3, 2)
    hashes = chain([1, 2], [3, 4], [5, 6])
    blocks = [pool.allocate() for _ in hashes]
    for block, h in zip(blocks, hashes, strict=True):
        pool.register(block, h)
    pool.release(blocks)  # released last block first: a request's tail is the least likely to be shared
    assert pool.num_free == 3 and pool.lookup(hashes) == blocks  # still findable, and now referenced again
    pool.release(blocks)
    assert pool.allocate() == blocks[2]  # evicts the tail first
    assert pool.lookup(hashes) == blocks[:2]
    pool.release(blocks[:2])
    assert pool.allocate() == blocks[1] and pool.allocate() == blocks[0]
    assert pool.lookup(hashes) == []


def test_a_reused_block_moves_to_the_back_of_the_eviction_order():
    pool = BlockPool(2, 1)
    ha, hb = chain([1])[0], chain([2])[0]
    a, b = pool.allocate(), pool.allocate()
    pool.register(a, ha)
    pool.register(b, hb)
    pool.release([a])
    pool.release([b])  # LRU order: a, b
    assert pool.lookup([ha]) == [a]
    pool.release([a])  # a used again: LRU order is now b, a
    assert pool.allocate() == b
    assert pool.lookup([hb]) == [] and pool.lookup([ha]) == [a]


def test_hit_counters_count_blocks_reused_over_blocks_asked():
    pool = BlockPool(8, 2)
    hashes = chain([1, 2], [3, 4])
    for h in hashes:
        pool.register(pool.allocate(), h)
    pool.lookup(hashes + chain([1, 2], [3, 4], [5, 6])[2:])  # two hits, then one miss
    assert (pool.prefix_hits, pool.prefix_queries) == (2, 3)
    pool.lookup(chain([7, 7], [8, 8], [9, 9]))  # a miss at the start: three blocks asked, none reused
    assert (pool.prefix_hits, pool.prefix_queries) == (2, 6)


def test_prefix_cache_off_never_names_or_finds_blocks():
    pool = BlockPool(2, 2, enable_prefix_cache=False)
    h = chain([1, 2])[0]
    block = pool.allocate()
    pool.register(block, h)
    assert pool.lookup([h]) == [] and pool.prefix_queries == 0
    pool.release([block])
    assert pool.num_free == 2


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError):
        BlockPool(0, 16)
    with pytest.raises(ValueError):
        BlockPool(4, 0)
