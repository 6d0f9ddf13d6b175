"""The engine end to end on the embedded model (CPU, float32): batching, preemption, prefix
cache, sampling, stops, UTF-8 and bad input."""

import pytest

from flintlm import LLM, SamplingParams
from flintlm.engine.request import InvalidRequestError
from tests.reference import REFERENCE_PATHS

GREEDY = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
# Long enough that every request is still decoding while the long prompts prefill in chunks
# beside it, and that 8 of them overflow the preemption test's KV budget; each of the batch
# invariance test's 16 lone runs costs one step per token.
BATCH_GREEDY = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)

MIXED_PROMPTS = [
    "Hi",
    "The quick brown fox jumps over the lazy dog. " * 6,
    "List three colors:",
    "def add(a, b):",
    "In 1492, Columbus sailed",
    "The mitochondria is the powerhouse of the cell. " * 10,
    "Water boils at",
    "Dear John,\nI hope this letter finds you well. ",
    "SELECT * FROM users WHERE",
    "The meaning of life is",
    "Roses are red, violets are blue,",
    "A long time ago in a galaxy far, far away " * 4,
    "import numpy as np\n",
    "My favourite food is",
    "2 + 2 =",
    "The best way to learn a language is",
]


@pytest.fixture(scope="module")
def llm():
    # a small step budget forces chunked prefill of the long prompts; every step size takes the
    # same (exact) path, so batching changes no product (a measured table may mix paths)
    return LLM("default", dtype="float32", kv_cache_memory="128MiB", max_num_batched_tokens=48,
               max_num_seqs=16, **REFERENCE_PATHS)


def test_batch_invariance_with_chunked_prefill(llm):
    alone = [llm.generate([p], BATCH_GREEDY)[0].token_ids for p in MIXED_PROMPTS]
    batched = [r.token_ids for r in llm.generate(MIXED_PROMPTS, BATCH_GREEDY)]
    assert batched == alone


def test_preemption_keeps_outputs_identical(llm):
    prompts = MIXED_PROMPTS[:8]
    expected = [r.token_ids for r in llm.generate(prompts, BATCH_GREEDY)]
    # room for ~2 sequences' worth of blocks: the batch of 8 must preempt and recompute
    tight = LLM("default", dtype="float32", kv_cache_memory="12MiB", max_num_batched_tokens=48,
                enable_prefix_caching=False, **REFERENCE_PATHS)
    assert tight.engine.runner.kv_layout.num_tokens < 8 * 100
    results = [r.token_ids for r in tight.generate(prompts, BATCH_GREEDY)]
    assert tight.engine.stats().num_preemptions > 0
    assert results == expected
    assert tight.engine.block_manager.num_used_blocks == 0


def test_prefix_cache_hit_is_reported_and_skips_prefill(llm):
    prefix = "You are a careful assistant. Answer briefly and precisely. " * 8
    first = llm.generate([prefix + "What is 3 + 4?"], GREEDY)[0]
    before = llm.engine.stats().num_computed_tokens
    second = llm.generate([prefix + "What is 3 + 4?"], GREEDY)[0]
    computed = llm.engine.stats().num_computed_tokens - before
    num_prompt = len(second.prompt_token_ids)
    assert second.num_cached_tokens >= num_prompt - 16 and second.num_cached_tokens > 0
    assert first.num_cached_tokens < second.num_cached_tokens
    # only the uncached tail of the prompt and the decode steps ran
    assert computed <= (num_prompt - second.num_cached_tokens) + GREEDY.max_tokens
    assert second.token_ids == first.token_ids


def test_seeded_sampling_is_reproducible_whatever_the_batch(llm):
    params = SamplingParams(max_tokens=20, temperature=1.0, top_p=0.9, seed=1234)
    alone = llm.generate(["Tell me a story about a dragon."], params)[0].token_ids
    again = llm.generate(["Tell me a story about a dragon."], params)[0].token_ids
    batched = llm.generate(["Tell me a story about a dragon.", "Another prompt", "x y z"],
                           [params, SamplingParams(max_tokens=20, temperature=1.0),
                            SamplingParams(max_tokens=5, temperature=0.7, seed=9)])[0].token_ids
    assert alone == again == batched
    other_seed = SamplingParams(max_tokens=20, temperature=1.0, top_p=0.9, seed=4321)
    assert llm.generate(["Tell me a story about a dragon."], other_seed)[0].token_ids != alone


def test_sampling_knobs_keep_tokens_in_bounds(llm):
    params = SamplingParams(max_tokens=12, temperature=0.8, top_k=5, min_p=0.05,
                            repetition_penalty=1.3, presence_penalty=0.5,
                            frequency_penalty=0.5, seed=7)
    result = llm.generate(["Count: one, two, three,"], params)[0]
    assert 1 <= len(result.token_ids) <= 12


def test_logit_bias_forces_a_token(llm):
    token = llm.tokenizer.encode(" banana", add_special_tokens=False)[0]
    params = SamplingParams(max_tokens=3, temperature=0.0, logit_bias={token: 100.0})
    assert llm.generate(["I like"], params)[0].token_ids == [token] * 3


def test_stop_string_across_token_boundaries(llm):
    free = llm.generate(["The quick brown fox"], GREEDY)[0]
    # choose a stop string that starts inside one token and ends inside the next
    pieces = [llm.tokenizer.decode([t]) for t in free.token_ids]
    boundary = len(pieces[0]) + len(pieces[1])
    text = free.text
    stop = text[boundary - 2:boundary + 2]
    assert len(stop) == 4 and stop not in text[:boundary - 2]
    stopped = llm.generate(["The quick brown fox"], SamplingParams(
        max_tokens=24, temperature=0.0, ignore_eos=True, stop=[stop]))[0]
    assert stopped.outputs[0].finish_reason == "stop"
    assert stopped.outputs[0].stop_reason == stop
    assert stopped.text == text[:text.index(stop)]
    kept = llm.generate(["The quick brown fox"], SamplingParams(
        max_tokens=24, temperature=0.0, ignore_eos=True, stop=[stop],
        include_stop_str_in_output=True))[0]
    assert kept.text == text[:text.index(stop) + len(stop)]


def test_stop_token_ids_and_max_tokens(llm):
    free = llm.generate(["Hello"], GREEDY)[0]
    stop_id = free.token_ids[3]
    stopped = llm.generate(["Hello"], SamplingParams(max_tokens=24, temperature=0.0,
                                                     ignore_eos=True, stop_token_ids=[stop_id]))[0]
    assert stopped.token_ids == free.token_ids[:free.token_ids.index(stop_id) + 1]
    assert stopped.outputs[0].stop_reason == stop_id
    assert llm.generate(["Hello"], SamplingParams(max_tokens=5))[0].outputs[0].finish_reason \
        in ("length", "stop")


def test_utf8_streams_correctly(llm):
    emoji_ids = llm.tokenizer.encode("🙂🚀 你好世界", add_special_tokens=False)
    # force the model to emit these ids one by one through logit_bias, one request per step
    engine = llm.engine
    outputs = []
    request = engine.add_request("utf8", llm.tokenizer.encode("Say:"), SamplingParams(
        max_tokens=len(emoji_ids), temperature=0.0, ignore_eos=True))
    streamed = ""
    step = 0
    while engine.has_unfinished:
        # bias the next token to the next emoji/CJK id so the output is known in advance
        request.params.logit_bias = {emoji_ids[min(step, len(emoji_ids) - 1)]: 100.0}
        for out in engine.step():
            streamed += out.new_text
            assert "\ufffd" not in out.new_text
            outputs.append(out)
        step = len(request.output_token_ids)
    assert streamed == "🙂🚀 你好世界"
    assert outputs[-1].finish_reason is not None


def test_bad_input_raises_typed_errors_and_engine_keeps_serving(llm):
    engine = llm.engine
    vocab = engine.vocab_size
    cases = {
        "prompt": ([], SamplingParams()),
        "max_tokens": ([1, 2, 3], SamplingParams(max_tokens=-1)),
        "temperature": ([1, 2, 3], SamplingParams(temperature=-0.5)),
    }
    for param, (prompt, params) in cases.items():
        with pytest.raises(InvalidRequestError) as err:
            engine.add_request(f"bad-{param}", prompt, params)
        assert err.value.param == param
    with pytest.raises(InvalidRequestError) as err:
        engine.add_request("bad-ids", [1, vocab + 5, -3], SamplingParams())
    assert "vocabulary" in str(err.value)
    with pytest.raises(InvalidRequestError) as err:
        engine.add_request("too-long", [1] * (engine.max_model_len + 1), SamplingParams())
    assert err.value.code == "context_length_exceeded"
    assert not engine.has_unfinished
    assert llm.generate(["Still alive?"], GREEDY)[0].token_ids


def test_abort_frees_blocks_at_once(llm):
    engine = llm.engine
    engine.add_request("to-abort", llm.tokenizer.encode("Write a long essay."), SamplingParams(
        max_tokens=100, temperature=0.0))
    engine.step()
    assert engine.block_manager.num_used_blocks > 0
    final = engine.abort("to-abort")
    assert final.finish_reason.value == "abort"
    assert engine.block_manager.num_used_blocks == 0
    engine.block_manager.check_integrity()


def test_n_completions_share_the_prompt(llm):
    prompt = "Shared prompt for parallel sampling. " * 6
    result = llm.generate([prompt], SamplingParams(n=3, max_tokens=8, temperature=1.0,
                                                   seed=5))[0]
    assert len(result.outputs) == 3
    assert len({tuple(o.token_ids) for o in result.outputs}) > 1


def test_serving_runs_small_steps_on_one_thread(llm, monkeypatch):
    """limit_threads_for_small_steps (what AsyncEngine sets for serving): steps of <= N tokens
    run with one thread, larger ones with all of them, and the thread count is restored."""
    import torch

    runner = llm.engine.runner
    before = torch.get_num_threads()
    threads = 2  # whatever the suite set: two, so one thread is told apart
    torch.set_num_threads(threads)
    seen: list[tuple[int, int]] = []
    real_execute = runner._execute

    def recording(scheduler_output):
        seen.append((scheduler_output.num_batched_tokens, torch.get_num_threads()))
        return real_execute(scheduler_output)

    monkeypatch.setattr(runner, "_execute", recording)
    monkeypatch.setattr(runner, "single_thread_max_tokens", 0)
    monkeypatch.setattr(runner, "dispatch", None)  # no measured step times: the limit as given
    runner.limit_threads_for_small_steps(4)
    params = SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True)
    try:
        llm.generate([[1000 + i for i in range(12)]] * 2 + [[2000, 2001]], params)
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)
    assert any(tokens > 4 for tokens, _ in seen) and any(tokens <= 4 for tokens, _ in seen)
    for tokens, used in seen:
        assert used == (1 if tokens <= 4 else threads), (tokens, used)


def test_serving_keeps_every_thread_for_steps_measured_long(llm, monkeypatch):
    """With a dispatch table, only the step sizes it measured under SHORT_STEP_MS run on one
    thread while serving (a 1B model's single-token step is not one of them)."""
    from flintlm.engine.model_runner import SHORT_STEP_MS
    from flintlm.kernels.calibrate import DispatchTable, StepChoice

    runner = llm.engine.runner
    table = DispatchTable("avx2", "float32", (StepChoice(1, "int8", 2, SHORT_STEP_MS / 2),
                                              StepChoice(2, "int8", 2, SHORT_STEP_MS * 2),
                                              StepChoice(64, "int8", 2, SHORT_STEP_MS * 9)))
    monkeypatch.setattr(runner, "dispatch", table)
    monkeypatch.setattr(runner, "single_thread_max_tokens", 0)
    runner.limit_threads_for_small_steps(4)
    assert runner.single_thread_max_tokens == 1
    assert runner.threads_for(1) == 1 and runner.threads_for(2) is None
    runner.limit_threads_for_small_steps(0)
    assert runner.threads_for(1) is None
