"""GGUF tokenizer metadata (llama.cpp's `tokenizer.ggml.*` keys) -> `Tokenizer`.

A GGUF carries no tokenizer.json: the vocabulary, merges and token types are rebuilt into a
`tokenizers` BPE here, either byte-level (split the way `tokenizer.ggml.pre` says llama.cpp
splits that model's text) or SentencePiece-style with byte fallback.
"""

from __future__ import annotations

from typing import Any

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors

from flintlm.loading.checkpoint import ModelLoadError
from flintlm.loading.tokenizer import Tokenizer

# llama.cpp token types
_UNKNOWN, _CONTROL, _USER_DEFINED = 2, 3, 4

# Pre-tokenizer split patterns, by model family (the regexes their tokenizer.json files use).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# `tokenizer.ggml.pre` value -> (split regex or None for GPT-2's own, digits one by one first)
_PRE_TOKENIZERS: dict[str, tuple[str | None, bool]] = {
    "default": (None, False),
    "gpt2": (None, False),
    "gpt-2": (None, False),
    "smollm": (None, True),
    "starcoder": (None, True),
    "refact": (None, True),
    "llama-bpe": (_LLAMA3_SPLIT, False),
    "llama3": (_LLAMA3_SPLIT, False),
    "llama-v3": (_LLAMA3_SPLIT, False),
    "smaug-bpe": (_LLAMA3_SPLIT, False),
    "qwen2": (_QWEN2_SPLIT, False),
    "deepseek-r1-qwen": (_QWEN2_SPLIT, False),
}
# llama.cpp applies a whole-word vocabulary hit before merges for these (tiktoken-style vocabs).
_IGNORE_MERGES = frozenset({"llama-bpe", "llama3", "llama-v3", "smaug-bpe"})


def tokenizer_from_gguf(metadata: dict[str, Any], path: str) -> Tokenizer:
    """Build the tokenizer a GGUF file describes: byte-level BPE ("gpt2") or SentencePiece
    BPE ("llama"); `ModelLoadError` for anything else."""
    model = metadata.get("tokenizer.ggml.model")
    try:
        tokens: list[str] = metadata["tokenizer.ggml.tokens"]
        if model == "gpt2":
            backend = _byte_level_bpe(metadata, tokens, path)
        elif model == "llama":
            backend = _sentencepiece_bpe(metadata, tokens)
        else:
            raise ModelLoadError(
                path, f"tokenizer model {model!r} is not supported ('gpt2' or 'llama' BPE)"
            )
    except KeyError as e:
        raise ModelLoadError(path, f"missing tokenizer metadata {e.args[0]}") from e
    _add_marked_tokens(backend, tokens, metadata.get("tokenizer.ggml.token_type"))

    def token(key: str) -> str | None:
        token_id = metadata.get(f"tokenizer.ggml.{key}")
        return tokens[token_id] if token_id is not None and 0 <= token_id < len(tokens) else None

    bos = token("bos_token_id")
    # SentencePiece vocabularies (Llama 2, Mistral) add BOS unless told otherwise.
    if metadata.get("tokenizer.ggml.add_bos_token", model == "llama") and bos is not None:
        bos_id = metadata["tokenizer.ggml.bos_token_id"]
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
        )
    extra_eos = [
        metadata[f"tokenizer.ggml.{key}"]
        for key in ("eot_token_id", "eom_token_id")
        if f"tokenizer.ggml.{key}" in metadata
    ]
    return Tokenizer(
        backend,
        name_or_path=path,
        chat_template=metadata.get("tokenizer.chat_template"),
        special_tokens={
            "bos_token": bos,
            "eos_token": token("eos_token_id"),
            "unk_token": token("unknown_token_id"),
            "pad_token": token("padding_token_id"),
        },
        extra_eos_token_ids=extra_eos,
    )


def _byte_level_bpe(metadata: dict[str, Any], tokens: list[str], path: str) -> tokenizers.Tokenizer:
    pre = metadata.get("tokenizer.ggml.pre", "default")
    if pre not in _PRE_TOKENIZERS:
        raise ModelLoadError(
            path, f"tokenizer pre-tokenizer {pre!r} is not supported ({', '.join(_PRE_TOKENIZERS)})"
        )
    backend = tokenizers.Tokenizer(
        models.BPE(
            {token: i for i, token in enumerate(tokens)},
            [_merge_pair(merge) for merge in metadata["tokenizer.ggml.merges"]],
            ignore_merges=pre in _IGNORE_MERGES,
        )
    )
    backend.pre_tokenizer = _pre_tokenizer(pre)
    backend.decoder = decoders.ByteLevel()
    return backend


def _sentencepiece_bpe(metadata: dict[str, Any], tokens: list[str]) -> tokenizers.Tokenizer:
    """Llama 2 / Mistral style: "▁" marks a word start, unknown characters fall back to
    <0xXX> byte tokens, merges rank by the merged piece's score."""
    merges = metadata.get("tokenizer.ggml.merges")
    pairs = (
        [_merge_pair(merge) for merge in merges]
        if merges
        else _merges_from_scores(tokens, metadata["tokenizer.ggml.scores"])
    )
    unk_id = metadata.get("tokenizer.ggml.unknown_token_id")
    backend = tokenizers.Tokenizer(
        models.BPE(
            {token: i for i, token in enumerate(tokens)},
            pairs,
            unk_token=tokens[unk_id] if unk_id is not None else None,
            fuse_unk=True,
            byte_fallback=True,
        )
    )
    add_prefix_space = metadata.get("tokenizer.ggml.add_space_prefix", True)
    backend.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="\u2581", prepend_scheme="first" if add_prefix_space else "never", split=False
    )
    steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_prefix_space:
        steps.append(decoders.Strip(" ", 1, 0))  # the space the pre-tokenizer put first
    backend.decoder = decoders.Sequence(steps)
    return backend


def _merges_from_scores(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """SentencePiece stores scores, not merges: every split of a piece into two pieces of the
    vocabulary is a merge, ranked by the merged piece's score (then longer left part first,
    then by id, as HF transformers ranks them, so both tokenize alike)."""
    ids = {token: i for i, token in enumerate(tokens)}
    ranked: list[tuple[float, int, int, str, str]] = []
    for token, score in zip(tokens, scores, strict=True):
        splits = [
            (token[:k], token[k:])
            for k in range(1, len(token))
            if token[:k] in ids and token[k:] in ids
        ]
        splits.sort(key=lambda pair: (ids[pair[0]], ids[pair[1]]))
        ranked += [(score, len(left), len(right), left, right) for left, right in splits]
    ranked.sort(key=lambda merge: merge[:3], reverse=True)  # stable: ties keep id order
    return [(left, right) for *_, left, right in ranked]


def _merge_pair(merge: str) -> tuple[str, str]:
    left, _, right = merge.partition(" ")  # byte-level tokens never hold a literal space
    return left, right


def _pre_tokenizer(pre: str) -> pre_tokenizers.PreTokenizer:
    split, split_digits = _PRE_TOKENIZERS[pre]
    steps: list[pre_tokenizers.PreTokenizer] = []
    if split_digits:
        steps.append(pre_tokenizers.Digits(individual_digits=True))
    if split is not None:
        steps.append(pre_tokenizers.Split(Regex(split), behavior="isolated"))
    # With no split regex of its own, ByteLevel applies GPT-2's.
    steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=split is None))
    return steps[0] if len(steps) == 1 else pre_tokenizers.Sequence(steps)


def _add_marked_tokens(
    backend: tokenizers.Tokenizer, tokens: list[str], token_types: list[int] | None
) -> None:
    """Control (and unknown) tokens become special added tokens and user-defined ones plain
    added tokens, so all are matched whole in text (as llama.cpp matches them) instead of cut
    into pieces.

    NOTE: HF's GGUF converter skips control tokens spelled outside the byte-level alphabet
    (e.g. DeepSeek's "<｜begin▁of▁sentence｜>"); llama.cpp matches those whole, and so do we.
    """
    if not token_types:
        return
    control, user_defined = [], []
    for token, token_type in zip(tokens, token_types, strict=False):
        if token_type in (_UNKNOWN, _CONTROL):
            control.append(AddedToken(token, special=True, normalized=False))
        elif token_type == _USER_DEFINED:
            user_defined.append(AddedToken(token, special=False, normalized=False))
    backend.add_special_tokens(control)
    backend.add_tokens(user_defined)
