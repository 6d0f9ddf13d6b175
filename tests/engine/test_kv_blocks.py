from flintlm.engine.kv_blocks import BlockManager
from tests.factories import make_request


def test_allocate_and_free_keep_pool_consistent():
    blocks = BlockManager(num_blocks=8, block_size=4)
    request = make_request(prompt_len=10)
    assert blocks.can_allocate(request, 10)
    blocks.allocate(request, 10)
    assert len(request.block_ids) == 3 and blocks.num_free_blocks == 5
    blocks.check_integrity()
    blocks.free(request)
    assert request.block_ids == [] and blocks.num_free_blocks == 8
    blocks.check_integrity()


def test_cannot_allocate_beyond_pool():
    blocks = BlockManager(num_blocks=2, block_size=4)
    assert not blocks.can_allocate(make_request(prompt_len=9), 9)


def test_full_blocks_are_found_by_a_request_with_the_same_prefix():
    blocks = BlockManager(num_blocks=16, block_size=4)
    first = make_request(prompt=list(range(13)))
    blocks.allocate(first, 13)
    second = make_request(prompt=[*range(12), 99, 100])
    hit = blocks.find_cached_prefix(second)
    assert hit == first.block_ids[:3]
    blocks.allocate(second, second.num_tokens - 12, hit)
    blocks.check_integrity()
    # shared blocks survive the first request's end
    blocks.free(first)
    assert blocks.find_cached_prefix(make_request(prompt=[*range(12), 7])) == hit
    blocks.check_integrity()


def test_salt_separates_tenants():
    blocks = BlockManager(num_blocks=16, block_size=4)
    owner = make_request(prompt=[*range(12), 1], salt="tenant-a")
    blocks.allocate(owner, owner.num_tokens)
    assert blocks.find_cached_prefix(make_request(prompt=[*range(12), 1],
                                                  salt="tenant-b")) == []
    assert blocks.find_cached_prefix(make_request(prompt=[*range(12), 1])) == []
    assert len(blocks.find_cached_prefix(make_request(prompt=[*range(12), 1],
                                                      salt="tenant-a"))) == 3


def test_at_least_one_token_is_left_to_compute():
    blocks = BlockManager(num_blocks=16, block_size=4)
    owner = make_request(prompt=list(range(8)))
    blocks.allocate(owner, 8)
    # same 8 tokens: only the first block may be reused, the last token must be recomputed
    assert len(blocks.find_cached_prefix(make_request(prompt=list(range(8))))) == 1


def test_lru_eviction_reclaims_unreferenced_cached_blocks():
    blocks = BlockManager(num_blocks=4, block_size=4)
    old = make_request(prompt=list(range(16)))
    blocks.allocate(old, 16)
    blocks.free(old)
    assert blocks.num_free_blocks == 4  # cached but free
    new = make_request(prompt=[500 + i for i in range(16)])
    assert blocks.can_allocate(new, 16)
    blocks.allocate(new, 16)
    blocks.check_integrity()
    assert blocks.find_cached_prefix(make_request(prompt=[*range(16), 1])) == []


def test_disabled_prefix_caching_never_hits():
    blocks = BlockManager(num_blocks=16, block_size=4, enable_prefix_caching=False)
    first = make_request(prompt=list(range(13)))
    blocks.allocate(first, 13)
    assert blocks.find_cached_prefix(make_request(prompt=list(range(13)))) == []


def test_prefix_hit_allocates_blocks_for_every_new_token():
    blocks = BlockManager(num_blocks=32, block_size=4)
    first = make_request(prompt=list(range(13)))
    blocks.allocate(first, 13)
    second = make_request(prompt=list(range(12)) + list(range(50, 60)))  # 22 tokens
    hit = blocks.find_cached_prefix(second)
    assert len(hit) == 3
    blocks.allocate(second, second.num_tokens - 12, hit)
    assert len(second.block_ids) == blocks.num_blocks_for(second.num_tokens)
    blocks.check_integrity()


def test_rollback_unpublishes_only_the_failed_steps_blocks():
    blocks = BlockManager(num_blocks=16, block_size=4)
    earlier = make_request(prompt=list(range(9)))
    blocks.allocate(earlier, 9)
    blocks.commit()  # the step that filled its two full blocks succeeded
    # the next step: a request sharing those two blocks fills two more, and a same-step
    # neighbour hits one of the new ones; then the runner fails
    failed = make_request(prompt=list(range(17)))
    hit = blocks.find_cached_prefix(failed)
    assert hit == earlier.block_ids[:2]
    blocks.allocate(failed, 17 - 8, hit)
    neighbour = make_request(prompt=[*range(12), 50])
    assert len(blocks.find_cached_prefix(neighbour)) == 3  # same-step sharing
    blocks.rollback()
    blocks.free(failed)
    blocks.check_integrity()
    # the blocks the failed step was writing are no longer a prefix; the committed ones are
    assert blocks.find_cached_prefix(make_request(prompt=list(range(17)))) == hit
    assert blocks.find_cached_prefix(neighbour) == hit
    assert blocks.num_used_blocks == len(earlier.block_ids)
