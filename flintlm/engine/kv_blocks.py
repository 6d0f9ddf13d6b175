"""The KV-cache block pool: block ids, reference counts, prefix hashes and the LRU free list.

Plain Python ints and lists only (no tensors), so it is testable without a device. The model runner
owns the KV tensors; this module only decides which block ids a request's tokens live in.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flintlm.engine.request import Request


def hash_block(parent_hash: bytes | None, token_ids: list[int], salt: str | None) -> bytes:
    """Hash of one full block, chained to its parent so equal blocks at different depths differ.

    NOTE: a keyed cryptographic hash, not Python's `hash()`: one tenant must not be able to craft
    a collision with another tenant's block (the salt is part of every block's hash).
    """
    digest = hashlib.blake2b(digest_size=16)
    digest.update(parent_hash or b"root")
    digest.update((salt or "").encode())
    digest.update(array("q", token_ids).tobytes())
    return digest.digest()


class BlockManager:
    """Owns the lifecycle of KV blocks.

    Invariants (checked by `check_integrity`):
      * every block is either referenced (ref_count > 0) or in the free list, never both;
      * a block in `_cached` maps hash -> block and the block remembers that hash;
      * free blocks keep their hash (and so stay reusable) until they are handed out again;
      * a hash names computed KV: blocks hashed since the last `commit()` are being written by
        the step in flight, and `rollback()` (that step failed) takes their hashes back.
    Freed blocks without a hash go to the front of the free list (reused first, keeping memory
    touched small); hashed ones go to the back, so the least recently used is evicted first.
    """

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        if num_blocks < 1:
            raise ValueError(f"the KV cache needs at least one block, got {num_blocks}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self._ref_counts = [0] * num_blocks
        self._block_hash: list[bytes | None] = [None] * num_blocks
        self._cached: dict[bytes, int] = {}
        self._free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        # Per request: the hash chain of its full blocks computed so far (a cache, not state).
        self._request_hashes: dict[str, list[bytes]] = {}
        self._uncommitted: list[int] = []  # blocks hashed by the step in flight

    # -- queries -------------------------------------------------------------------------------

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self._free)

    def num_blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def find_cached_prefix(self, request: Request) -> list[int]:
        """Block ids holding the longest cached prefix of `request`'s tokens (full blocks only).

        At least one token is always left to compute, since its logits are needed to sample.
        """
        if not self.enable_prefix_caching or request.params.prompt_logprobs is not None:
            return []
        hashes = self._hashes_for(request, (request.num_tokens - 1) // self.block_size)
        block_ids = []
        for block_hash in hashes:
            block_id = self._cached.get(block_hash)
            if block_id is None:
                break
            block_ids.append(block_id)
        return block_ids

    def can_allocate(self, request: Request, num_new_tokens: int,
                     cached_block_ids: list[int] = ()) -> bool:  # type: ignore[assignment]
        num_needed = self._num_new_blocks(request, num_new_tokens, len(cached_block_ids))
        num_reclaimed = sum(1 for b in cached_block_ids if self._ref_counts[b] == 0)
        return num_needed <= len(self._free) - num_reclaimed

    # -- commands ------------------------------------------------------------------------------

    def allocate(self, request: Request, num_new_tokens: int,
                 cached_block_ids: list[int] = ()) -> None:  # type: ignore[assignment]
        """Give `request` blocks for `num_new_tokens` more tokens (after `cached_block_ids`).

        The caller checked `can_allocate`. Full blocks are registered in the prefix cache as soon
        as their tokens are scheduled: the runner writes each layer's KV before reading it, so a
        request that hits them in the same step still reads computed values (`n` copies of one
        prompt share its prefill). Until `commit()` they are provisional: see `rollback()`.
        """
        num_new_blocks = self._num_new_blocks(request, num_new_tokens, len(cached_block_ids))
        for block_id in cached_block_ids:
            if self._ref_counts[block_id] == 0:
                del self._free[block_id]
            self._ref_counts[block_id] += 1
            request.block_ids.append(block_id)
        for _ in range(num_new_blocks):
            request.block_ids.append(self._take_free_block())
        if self.enable_prefix_caching:
            num_tokens_after = request.num_computed_tokens + len(cached_block_ids) * \
                self.block_size + num_new_tokens
            self._register_full_blocks(request, num_tokens_after // self.block_size)

    def free(self, request: Request) -> None:
        """Drop `request`'s references; tail blocks first, so shared prefixes outlive them."""
        for block_id in reversed(request.block_ids):
            self._ref_counts[block_id] -= 1
            if self._ref_counts[block_id] == 0:
                self._free[block_id] = None
                if self._block_hash[block_id] is None:
                    self._free.move_to_end(block_id, last=False)
        request.block_ids = []
        self._request_hashes.pop(request.request_id, None)

    def commit(self) -> None:
        """The step in flight wrote its KV: the blocks it hashed now hold what their hash names."""
        self._uncommitted.clear()

    def rollback(self) -> None:
        """The step in flight failed: take back the hashes it published, so no later request
        reads KV that was never written. Only that step's requests can hold those blocks (a hit
        on one is a hit within the same step); they fail with it and free them unhashed."""
        for block_id in self._uncommitted:
            block_hash = self._block_hash[block_id]
            if block_hash is not None and self._cached.get(block_hash) == block_id:
                del self._cached[block_hash]
            self._block_hash[block_id] = None
        self._uncommitted.clear()

    def reset_prefix_cache(self) -> None:
        for block_hash, block_id in list(self._cached.items()):
            if self._ref_counts[block_id] == 0:
                del self._cached[block_hash]
                self._block_hash[block_id] = None

    def check_integrity(self) -> None:
        """Raise AssertionError if the pool's bookkeeping is inconsistent (for tests)."""
        for block_id in range(self.num_blocks):
            is_free = block_id in self._free
            is_referenced = self._ref_counts[block_id] > 0
            assert is_free != is_referenced, f"block {block_id}: free={is_free} ref={is_referenced}"
            assert self._ref_counts[block_id] >= 0
        for block_hash, block_id in self._cached.items():
            assert self._block_hash[block_id] == block_hash, f"block {block_id} hash mismatch"

    # -- internals -----------------------------------------------------------------------------

    def _num_new_blocks(self, request: Request, num_new_tokens: int, num_cached: int) -> int:
        num_tokens_after = request.num_computed_tokens + num_cached * self.block_size + \
            num_new_tokens
        return max(0, self.num_blocks_for(num_tokens_after) - len(request.block_ids) - num_cached)

    def _take_free_block(self) -> int:
        block_id, _ = self._free.popitem(last=False)
        old_hash = self._block_hash[block_id]
        if old_hash is not None:  # evict: the block's old content is about to be overwritten
            if self._cached.get(old_hash) == block_id:
                del self._cached[old_hash]
            self._block_hash[block_id] = None
        self._ref_counts[block_id] = 1
        return block_id

    def _hashes_for(self, request: Request, num_full_blocks: int) -> list[bytes]:
        hashes = self._request_hashes.setdefault(request.request_id, [])
        if len(hashes) < num_full_blocks:
            tokens = request.all_token_ids
            bs = self.block_size
            for i in range(len(hashes), num_full_blocks):
                parent = hashes[-1] if hashes else None
                hashes.append(hash_block(parent, tokens[i * bs:(i + 1) * bs], request.cache_salt))
        return hashes[:num_full_blocks]

    def _register_full_blocks(self, request: Request, num_full_blocks: int) -> None:
        num_full_blocks = min(num_full_blocks, len(request.block_ids))
        for i, block_hash in enumerate(self._hashes_for(request, num_full_blocks)):
            block_id = request.block_ids[i]
            if self._block_hash[block_id] is None and block_hash not in self._cached:
                self._block_hash[block_id] = block_hash
                self._cached[block_hash] = block_id
                self._uncommitted.append(block_id)
