"""KV cache blocks: allocation, reference counts, and the prefix cache.

The cache is cut into fixed-size blocks of `block_size` token slots. A full block is named by a
chained hash (its tokens plus the hash of the block before it), so two requests that share a prompt
prefix share its blocks: a repeated system prompt is computed once. A block nobody uses any more
keeps its contents and hash in an LRU list and is only overwritten when a fresh block is needed.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence


def chain_hash(parent: int | None, tokens: Sequence[int]) -> int:
    """The name of a full block: its tokens and everything before it."""
    return hash((parent, tuple(tokens)))


class BlockPool:
    """Hands out block ids; remembers full blocks by hash for reuse."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_cache: bool = True) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("the KV cache needs at least one block of at least one token")
        self.num_blocks, self.block_size = num_blocks, block_size
        self.enable_prefix_cache = enable_prefix_cache
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))  # never used: pop() from the end
        self._refs = [0] * num_blocks
        self._hash_of: dict[int, int] = {}  # block -> hash, for full cached blocks
        self._block_of: dict[int, int] = {}  # hash -> block
        self._evictable: OrderedDict[int, None] = OrderedDict()  # unreferenced cached blocks, oldest first
        self.prefix_queries = 0
        self.prefix_hits = 0

    # ----- accounting -----

    @property
    def num_free(self) -> int:
        """Blocks that can be handed out now (never used, or cached but unreferenced)."""
        return len(self._free) + len(self._evictable)

    @property
    def num_used(self) -> int:
        return self.num_blocks - self.num_free

    # ----- allocation -----

    def allocate(self) -> int:
        """A block for new tokens; evicts the least recently used cached block if it must."""
        if self._free:
            block = self._free.pop()
        elif self._evictable:
            block, _ = self._evictable.popitem(last=False)
            del self._block_of[self._hash_of.pop(block)]
        else:
            raise RuntimeError("KV cache is out of blocks; the scheduler should have preempted")
        self._refs[block] = 1
        return block

    def release(self, blocks: Sequence[int]) -> None:
        """Drop one reference to each block; cached blocks stay findable until evicted."""
        # Reverse order: a request's last blocks are the least likely to be shared, so evict them first.
        for block in reversed(blocks):
            self._refs[block] -= 1
            if self._refs[block] == 0:
                if block in self._hash_of:
                    self._evictable[block] = None
                else:
                    self._free.append(block)

    # ----- prefix cache -----

    def lookup(self, hashes: Sequence[int]) -> list[int]:
        """Blocks holding the longest cached run of `hashes` from the start; each gains a reference."""
        found: list[int] = []
        if not self.enable_prefix_cache:
            return found
        for h in hashes:
            self.prefix_queries += 1
            block = self._block_of.get(h)
            if block is None:
                break
            self.prefix_hits += 1
            if self._refs[block] == 0:
                del self._evictable[block]
            self._refs[block] += 1
            found.append(block)
        # Count the misses of the rest of the prompt too, so the hit rate means "blocks reused".
        self.prefix_queries += max(len(hashes) - len(found) - 1, 0)
        return found

    def register(self, block: int, block_hash: int) -> None:
        """Name a block that just became full, so later requests can reuse it."""
        if not self.enable_prefix_cache or block in self._hash_of or block_hash in self._block_of:
            return
        self._hash_of[block] = block_hash
        self._block_of[block_hash] = block
