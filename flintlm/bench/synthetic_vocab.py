"""A tokenizer for synthetic models: the embedded SmolLM2 GGUF's byte-level BPE, fitted to any
vocabulary size and written as GGUF `tokenizer.*` metadata.

Knows nothing of weights. Both flintlm and llama.cpp accept it: it is a real GGUF vocabulary,
only cut short (tiny test shapes) or padded with tokens no merge produces (large shapes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flintlm.loading.gguf_file import GGUFFile
from flintlm.loading.loader import DEFAULT_MODEL, resolve_model_path

if TYPE_CHECKING:
    from gguf import GGUFWriter

NORMAL_TOKEN = 1  # llama.cpp's token type for ordinary vocabulary entries
PADDING_TOKEN = "<flintlm_pad_{}>"  # ASCII only: every character is its own byte-level symbol
_SPECIAL_IDS = ("bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id")


@dataclass(frozen=True)
class Vocabulary:
    """GGUF tokenizer metadata: `tokens[i]` is token id i."""

    tokens: list[str]
    token_types: list[int]
    merges: list[str]  # "left right", in rank order
    pre: str  # llama.cpp's pre-tokenizer name
    special_ids: dict[str, int]  # e.g. {"bos_token_id": 1}
    chat_template: str | None


def embedded_vocabulary(size: int) -> Vocabulary:
    """The embedded model's vocabulary fitted to exactly `size` tokens.

    Raises:
        ValueError: `size` would cut off one of its special tokens.
    """
    meta = GGUFFile(resolve_model_path(DEFAULT_MODEL)).metadata
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    merges = meta["tokenizer.ggml.merges"]
    special_ids = {k: meta[f"tokenizer.ggml.{k}"] for k in _SPECIAL_IDS
                   if f"tokenizer.ggml.{k}" in meta}  # fmt: skip
    if any(token_id >= size for token_id in special_ids.values()):
        raise ValueError(f"vocabulary size {size} cuts off special tokens {special_ids}")
    if size <= len(tokens):
        tokens, types, merges = _truncated(tokens, types, merges, size)
    else:
        tokens, types = _padded(tokens, types, size)
    return Vocabulary(tokens, types, merges, meta["tokenizer.ggml.pre"], special_ids,
                      meta.get("tokenizer.chat_template"))


def _truncated(
    tokens: list[str], types: list[int], merges: list[str], size: int
) -> tuple[list[str], list[int], list[str]]:
    """The first `size` tokens, and only the merges whose parts and result all remain (a BPE
    rejects a merge into a token it does not have)."""
    kept = tokens[:size]
    known = set(kept)
    fitting = []
    for merge in merges:
        left, _, right = merge.partition(" ")
        if left in known and right in known and left + right in known:
            fitting.append(merge)
    return kept, types[:size], fitting


def _padded(tokens: list[str], types: list[int], size: int) -> tuple[list[str], list[int]]:
    extra = [PADDING_TOKEN.format(i) for i in range(len(tokens), size)]
    if not set(extra).isdisjoint(tokens):
        raise ValueError(f"padding tokens like {extra[0]!r} already exist in the vocabulary")
    return tokens + extra, types + [NORMAL_TOKEN] * len(extra)


def add_vocabulary(writer: GGUFWriter, vocab: Vocabulary) -> None:
    """Write `vocab` as the keys llama.cpp's converter writes for a byte-level BPE."""
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    writer.add_token_merges(vocab.merges)
    adders: dict[str, Any] = {
        "bos_token_id": writer.add_bos_token_id,
        "eos_token_id": writer.add_eos_token_id,
        "unknown_token_id": writer.add_unk_token_id,
        "padding_token_id": writer.add_pad_token_id,
    }
    for key, token_id in vocab.special_ids.items():
        adders[key](token_id)
    writer.add_add_bos_token(False)  # as the embedded model says: its chat template starts turns
    writer.add_add_space_prefix(False)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)
