from flintlm.engine.request import FinishReason, RequestStatus
from tests.factories import fake_step, make_request, make_scheduler


def run_until_done(scheduler, max_steps=1000):
    steps = []
    while scheduler.has_unfinished and len(steps) < max_steps:
        steps.append(fake_step(scheduler))
    assert not scheduler.has_unfinished, "scheduler did not drain"
    return steps


def test_chunked_prefill_respects_token_budget():
    scheduler = make_scheduler(max_num_batched_tokens=8)
    request = make_request(prompt_len=20, max_tokens=2)
    scheduler.add_request(request)
    steps = run_until_done(scheduler)
    assert [s.num_batched_tokens for s in steps] == [8, 8, 4, 1]
    assert all(s.num_batched_tokens <= 8 for s in steps)
    assert request.output_token_ids == [5, 5]


def test_requests_join_and_leave_the_running_batch():
    scheduler = make_scheduler(max_num_batched_tokens=64)
    first = make_request(prompt_len=4, max_tokens=3)
    scheduler.add_request(first)
    fake_step(scheduler)
    second = make_request(prompt_len=4, max_tokens=5)
    scheduler.add_request(second)
    out = fake_step(scheduler)
    # the running request decodes one token while the new one prefills, in the same step
    assert {(s.request.request_id, s.num_scheduled_tokens) for s in out.scheduled} == {
        (first.request_id, 1), (second.request_id, 4)}
    run_until_done(scheduler)
    assert first.is_finished and second.is_finished
    assert scheduler.blocks.num_used_blocks == 0


def test_max_num_seqs_caps_the_batch():
    scheduler = make_scheduler(max_num_seqs=2, max_num_batched_tokens=100)
    for _ in range(5):
        scheduler.add_request(make_request(prompt_len=3, max_tokens=2))
    out = fake_step(scheduler)
    assert len(out.scheduled) == 2 and scheduler.num_waiting == 3


def test_preemption_by_recompute_when_blocks_run_out():
    # 5 blocks of 4 tokens: two requests growing to 11 computed tokens (3 blocks) each cannot
    # both fit
    scheduler = make_scheduler(num_blocks=5, block_size=4, max_num_batched_tokens=64,
                               prefix_caching=False)
    early = make_request(prompt_len=6, max_tokens=6, arrival=1.0)
    late = make_request(prompt_len=6, max_tokens=6, arrival=2.0)
    scheduler.add_request(early)
    scheduler.add_request(late)
    steps = run_until_done(scheduler)
    preempted = [rid for s in steps for rid in s.preempted_request_ids]
    assert late.request_id in preempted and early.request_id not in preempted
    assert early.output_token_ids == [5] * 6 and late.output_token_ids == [5] * 6
    assert late.num_preemptions >= 1
    assert scheduler.blocks.num_used_blocks == 0


def test_priority_orders_admission():
    scheduler = make_scheduler(max_num_seqs=1)
    low = make_request(prompt_len=3, priority=5, arrival=1.0)
    high = make_request(prompt_len=3, priority=0, arrival=2.0)
    scheduler.add_request(low)
    scheduler.add_request(high)
    out = fake_step(scheduler)
    assert [s.request for s in out.scheduled] == [high]


def test_prefix_hit_skips_cached_tokens_and_is_reported():
    scheduler = make_scheduler(block_size=4, max_num_batched_tokens=64)
    shared = list(range(100, 116))
    first = make_request(prompt=[*shared, 1, 2], max_tokens=1)
    scheduler.add_request(first)
    run_until_done(scheduler)
    second = make_request(prompt=[*shared, 3, 4], max_tokens=1)
    scheduler.add_request(second)
    out = fake_step(scheduler)
    assert out.scheduled[0].num_computed_tokens == 16
    assert out.scheduled[0].num_scheduled_tokens == 2
    assert second.num_cached_tokens == 16


def test_finish_frees_blocks_at_once():
    scheduler = make_scheduler()
    request = make_request(prompt_len=10, max_tokens=50)
    scheduler.add_request(request)
    fake_step(scheduler)
    assert scheduler.blocks.num_used_blocks > 0
    scheduler.finish_request(request, FinishReason.ABORT)
    assert scheduler.blocks.num_used_blocks == 0
    assert request.status is RequestStatus.FINISHED
    scheduler.blocks.check_integrity()


def test_waiting_request_can_be_aborted():
    scheduler = make_scheduler(max_num_seqs=1)
    running, waiting = make_request(), make_request()
    scheduler.add_request(running)
    scheduler.add_request(waiting)
    fake_step(scheduler)
    scheduler.finish_request(waiting, FinishReason.ABORT)
    assert scheduler.num_waiting == 0
