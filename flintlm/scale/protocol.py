"""What crosses the ingress -> engine replica hop, as plain dataclasses (pickled by Ray).

`RoutedRequest.prefix_blocks` are the hashes the replica's prefix cache will compute for the
prompt's full blocks (tenant salt included), so a router can send a prefix where it is cached
without tokenizing or hashing again. No Ray import here: the routers and tests read it too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from flintlm.engine.kv_blocks import hash_block

if TYPE_CHECKING:
    from flintlm.engine.request import SamplingParams

# Routing looks at most this many leading blocks: a shared system prompt lives at the front,
# and a longer key only costs the router time.
MAX_ROUTING_BLOCKS = 256


@dataclass(frozen=True)
class RoutedRequest:
    """One engine request as the ingress sends it to an engine replica."""

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    priority: int = 0
    cache_salt: str | None = None
    prefix_blocks: list[str] = field(default_factory=list)
    """Hex hashes of the prompt's leading full KV blocks, chained as `kv_blocks.hash_block`."""

    @property
    def prompt(self) -> str:
        """The prefix as text for Ray's PrefixCacheAffinityRouter, which matches characters:
        the block hashes joined, so a match is a run of whole salted blocks."""
        return "".join(self.prefix_blocks)


@dataclass(frozen=True)
class ReplicaInfo:
    """What the ingress needs from the engine replicas before it serves."""

    model_name: str
    max_model_len: int
    block_size: int
    max_waiting: int


def prefix_block_hashes(prompt_token_ids: list[int], block_size: int,
                        cache_salt: str | None) -> list[str]:
    """The hex hashes of the prompt's leading full blocks, as the engine's prefix cache chains
    them (a block's hash covers every token before it and the tenant's salt)."""
    hashes: list[str] = []
    parent: bytes | None = None
    num_full = min(len(prompt_token_ids) // block_size, MAX_ROUTING_BLOCKS)
    for index in range(num_full):
        block = prompt_token_ids[index * block_size:(index + 1) * block_size]
        parent = hash_block(parent, block, cache_salt)
        hashes.append(parent.hex())
    return hashes
