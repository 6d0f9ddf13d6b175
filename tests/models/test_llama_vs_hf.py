"""Parity with HF transformers on the embedded model in float32: logits at every position and
greedy tokens, through both the prefill path and the paged decode path."""

import pytest
import torch

from flintlm import LLM, SamplingParams
from flintlm.loading import load_checkpoint
from flintlm.models.attention import BatchLayout, SequenceSlice
from flintlm.models.llama import LlamaForCausalLM
from tests.reference import REFERENCE_PATHS, hf_model

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "<|im_start|>user\nWrite a haiku about the sea.<|im_end|>\n<|im_start|>assistant\n",
    "1, 2, 3, 5, 8, 13,",
    "Once upon a time, in a small village by the mountains, there lived",
    "Translate to French: I like green apples.",
    "Q: What is the boiling point of water in Kelvin?\nA:",
    "東京は日本の首都です。大阪は",
]
NUM_NEW_TOKENS = 64
RELATIVE_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def llm():
    # exact products on every path: the int8 activations a measured table may pick are held to
    # a looser bound in tests/kernels/test_fast_decode.py
    return LLM("default", dtype="float32", kv_cache_memory="256MiB", max_num_batched_tokens=128,
               **REFERENCE_PATHS)


def hf_logits(token_ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf_model()(torch.tensor([token_ids])).logits[0].float()


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours - reference).abs().max() / reference.abs().max()).item()


def test_prefill_logits_match_hf_at_every_position():
    checkpoint = load_checkpoint("default", torch.float32)
    with torch.device("meta"):
        model = LlamaForCausalLM(checkpoint.arch, max_positions=512)
    model.load_weights(checkpoint.weights)
    arch = checkpoint.arch
    for prompt in PROMPTS:
        ids = checkpoint.tokenizer.encode(prompt)
        n = len(ids)
        caches = [(torch.empty(8, 16, arch.num_kv_heads, arch.head_dim),
                   torch.empty(8, 16, arch.num_kv_heads, arch.head_dim))
                  for _ in range(arch.num_layers)]
        layout = BatchLayout([SequenceSlice(list(range(8)), 0, n)], torch.arange(n), 16)
        meta = model.attention.metadata(layout, torch.device("cpu"))
        with torch.no_grad():
            ours = model.compute_logits(model(torch.tensor(ids), torch.arange(n), caches, meta))
        assert relative_error(ours, hf_logits(ids)) < RELATIVE_TOLERANCE, prompt


def test_greedy_generation_matches_hf_token_for_token(llm):
    params = SamplingParams(max_tokens=NUM_NEW_TOKENS, temperature=0.0, ignore_eos=True,
                            logprobs=0)
    results = llm.generate(PROMPTS, params)
    for prompt, result in zip(PROMPTS, results, strict=True):
        generated = result.token_ids
        assert len(generated) == NUM_NEW_TOKENS
        full = result.prompt_token_ids + generated
        reference = hf_logits(full)
        num_prompt = len(result.prompt_token_ids)
        # HF's greedy choice at each position, fed HF's own previous choices (identical so far)
        hf_greedy = reference[num_prompt - 1:-1].argmax(-1).tolist()
        assert generated == hf_greedy, f"diverged on {prompt!r}"
        # the decode path's log-probabilities agree with HF's at every generated position
        hf_logprobs = reference[num_prompt - 1:-1].log_softmax(-1)
        ours = torch.tensor([lp.chosen.logprob for lp in result.outputs[0].logprobs])
        theirs = hf_logprobs.gather(1, torch.tensor(generated).unsqueeze(1)).squeeze(1)
        assert (ours - theirs).abs().max().item() < RELATIVE_TOLERANCE * max(
            1.0, theirs.abs().max().item())


def test_hf_generate_gives_the_same_text(llm):
    hf = hf_model()
    ids = llm.tokenizer.encode(PROMPTS[4])
    with torch.no_grad():
        hf_out = hf.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False,
                             eos_token_id=None, pad_token_id=0)[0, len(ids):].tolist()
    ours = llm.generate([ids], SamplingParams(max_tokens=24, temperature=0.0,
                                              ignore_eos=True))[0].token_ids
    assert ours == hf_out


def test_prompt_logprobs_match_hf(llm):
    ids = llm.tokenizer.encode(PROMPTS[1])
    result = llm.generate([ids], SamplingParams(max_tokens=0, prompt_logprobs=2))[0]
    assert result.token_ids == [] and result.outputs[0].finish_reason == "length"
    assert result.prompt_logprobs[0] is None and len(result.prompt_logprobs) == len(ids)
    reference = hf_logits(ids).log_softmax(-1)
    for position in range(1, len(ids)):
        entry = result.prompt_logprobs[position]
        assert entry.chosen.token_id == ids[position]
        assert abs(entry.chosen.logprob - reference[position - 1, ids[position]].item()) < 1e-3
        assert len(entry.top) == 2
        assert entry.top[0].token_id == reference[position - 1].argmax().item()
