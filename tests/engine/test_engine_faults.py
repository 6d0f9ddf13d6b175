"""An engine that survives its own faults, on the embedded model (CPU, float32, the reference
numerics): a runner that raises mid-batch fails only that step's requests and leaves no unwritten
KV in the prefix cache; an engine loop that dies fails every request at once."""

from __future__ import annotations

import asyncio

import pytest

from flintlm import LLM, SamplingParams
from flintlm.engine.async_engine import AsyncEngine
from flintlm.engine.engine import Engine
from flintlm.engine.faults import FaultInjector, InjectedFault
from flintlm.engine.request import EngineDeadError, FinishReason, RequestOutput
from tests.conftest import HANG_TIMEOUT_S
from tests.reference import REFERENCE_PATHS

GREEDY = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
# ~100 tokens: several full 16-token blocks that a second request can find in the prefix cache
PREFIX = "You are a careful assistant. Answer briefly and precisely. " * 8


@pytest.fixture(scope="module")
def fresh() -> LLM:
    return LLM("default", dtype="float32", kv_cache_memory="32MiB", **REFERENCE_PATHS)


def test_fault_spec_parses_or_names_the_format() -> None:
    assert FaultInjector.parse("runner_batch=2, loop_step=7") == FaultInjector(
        runner_batch=2, loop_step=7)
    for bad in ("", "runner_call", "runner_call=0", "runner_call=x", "disk=1"):
        with pytest.raises(ValueError, match="runner_call=N"):
            FaultInjector.parse(bad)


def run_to_end(engine: Engine, request_id: str, prompt: list[int]) -> list[RequestOutput]:
    engine.add_request(request_id, prompt, GREEDY)
    outputs = []
    while engine.has_unfinished:
        outputs += engine.step()
        engine.block_manager.check_integrity()
    return outputs


def test_runner_fault_mid_batch_fails_that_step_and_poisons_no_prefix(fresh: LLM) -> None:
    faulty = Engine.from_config(fresh.config, faults=FaultInjector(runner_call=2))
    encode = faulty.tokenizer.encode
    question, other = encode(PREFIX + "What is 3 + 4?"), encode(PREFIX + "Name a colour.")
    faulty.add_request("decoding", encode("Water boils at"), GREEDY)
    assert [o.request_id for o in faulty.step()] == ["decoding"]  # runner call 1 succeeds
    faulty.add_request("question", question, GREEDY)
    faulty.add_request("other", other, GREEDY)  # shares the prefix's blocks within the step
    failed = faulty.step()  # call 2: one decode and two prefills in one batch; the runner raises
    assert sorted(o.request_id for o in failed) == ["decoding", "other", "question"]
    assert all(o.finish_reason is FinishReason.ERROR and o.error for o in failed)
    # honest counts: the decoding request keeps the one token it had, the others have none
    assert {o.request_id: o.usage.completion_tokens for o in failed} == {
        "decoding": 1, "other": 0, "question": 0}
    assert not faulty.has_unfinished and faulty.block_manager.num_used_blocks == 0
    faulty.block_manager.check_integrity()

    # the engine serves on, and the failed step's blocks are not served as a cached prefix
    expected = fresh.generate([question], GREEDY)[0].token_ids
    again = run_to_end(faulty, "question-again", question)
    assert again[-1].finish_reason is FinishReason.LENGTH
    assert [t for o in again for t in o.new_token_ids] == expected
    assert again[-1].usage.cached_tokens == 0
    # blocks written by a step that succeeded are cached as before, and read back the same
    cached = run_to_end(faulty, "question-cached", question)
    assert cached[-1].usage.cached_tokens >= len(PREFIX) // 8
    assert [t for o in cached for t in o.new_token_ids] == expected


def test_dead_engine_loop_fails_waiting_and_new_requests_fast(fresh: LLM) -> None:
    engine = Engine.from_config(fresh.config, faults=FaultInjector(loop_step=3))
    async_engine = AsyncEngine(engine, "default")
    prompt = engine.tokenizer.encode("Water boils at")
    params = SamplingParams(max_tokens=50, temperature=0.0, ignore_eos=True)

    async def scenario() -> None:
        async_engine.start()
        assert async_engine.is_alive and async_engine.failure is None
        received: list[RequestOutput] = []
        with pytest.raises(EngineDeadError):
            async for output in async_engine.generate("in-flight", prompt, params):
                received.append(output)
        assert len(received) == 2  # steps 1 and 2 ran; the loop died before step 3
        assert not async_engine.is_alive
        assert isinstance(async_engine.failure, InjectedFault)
        with pytest.raises(EngineDeadError):
            await anext(async_engine.generate("after", prompt, params))
        assert async_engine.num_in_flight == 0
        await async_engine.shutdown()

    asyncio.run(asyncio.wait_for(scenario(), HANG_TIMEOUT_S))
