"""IncrementalDetokenizer on the embedded model's tokenizer: streamed text equals the full
decode, never shows half a character, stops on strings that span tokens, decodes a bounded
window per step."""

from __future__ import annotations

from typing import Any

import pytest

from flintlm.engine.detokenizer import IncrementalDetokenizer
from flintlm.loading import Tokenizer, load_tokenizer

STREAMED_TEXTS = [
    "Plain English, with punctuation!",
    "Emoji 😀🎉👍🏽 and a family 👨‍👩‍👧‍👦 in a row",
    "日本語のテキストです。中文文本，标点符号！한국어 문장입니다",
    "Mixed: café ∑ x² ≤ ∞ — «quotes» 😀中文 done",
    "def f(x):\n    return x ** 2\n\n\n",
]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return load_tokenizer("default")


def stream(
    detok: IncrementalDetokenizer, token_ids: list[int], chunk: int = 1
) -> tuple[list[str], str | None]:
    """Feed `token_ids` `chunk` at a time until a stop string matches; the deltas and the stop."""
    deltas = []
    for start in range(0, len(token_ids), chunk):
        delta, stop = detok.append(token_ids[start : start + chunk])
        deltas.append(delta)
        if stop is not None:
            return deltas, stop
    return deltas, None


@pytest.mark.parametrize("text", STREAMED_TEXTS)
@pytest.mark.parametrize("chunk", [1, 3])
def test_streamed_text_equals_full_decode(tokenizer: Tokenizer, text: str, chunk: int) -> None:
    ids = tokenizer.encode(text)
    detok = IncrementalDetokenizer(tokenizer, tokenizer.encode("Say something:"))
    deltas, stop = stream(detok, ids, chunk)
    deltas.append(detok.flush())
    assert stop is None
    assert "".join(deltas) == tokenizer.decode(ids) == text == detok.output_text
    assert not any("\ufffd" in delta for delta in deltas)


def test_multibyte_characters_are_split_across_tokens(tokenizer: Tokenizer) -> None:
    # The premise of the test above: these texts do cut characters between tokens.
    ids = tokenizer.encode("😀 日本")
    pieces = [tokenizer.decode([i]) for i in ids]
    assert any("\ufffd" in piece for piece in pieces)


def test_stop_string_spanning_tokens(tokenizer: Tokenizer) -> None:
    text = "The answer is forty-two. END OF STORY and more"
    ids = tokenizer.encode(text)
    detok = IncrementalDetokenizer(tokenizer, [], stop=["OF STORY", "never"])
    deltas, stop = stream(detok, ids)
    assert stop == "OF STORY"
    assert "".join(deltas) == detok.output_text == "The answer is forty-two. END "
    # " OF" and " STORY" are separate tokens: the match was across a token boundary.
    assert len(tokenizer.encode(" OF STORY")) > 1
    with pytest.raises(RuntimeError):
        detok.append(ids[-1:])
    assert detok.flush() == ""


def test_include_stop_str_in_output(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("Count: one, two, three, four")
    detok = IncrementalDetokenizer(
        tokenizer, [], stop=["two, thr"], include_stop_str_in_output=True
    )
    deltas, stop = stream(detok, ids)
    assert stop == "two, thr"
    assert "".join(deltas) == detok.output_text == "Count: one, two, thr"


def test_earliest_stop_string_wins(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("alpha beta gamma")
    detok = IncrementalDetokenizer(tokenizer, [], stop=["gamma", "beta gam", "a b"])
    deltas, stop = stream(detok, ids, chunk=len(ids))
    assert (stop, "".join(deltas)) == ("a b", "alph")


def test_holds_back_only_a_possible_stop_prefix(tokenizer: Tokenizer) -> None:
    detok = IncrementalDetokenizer(tokenizer, [], stop=["<END>", "xyz"])
    emitted = "".join(stream(detok, tokenizer.encode("Hello world <EN"))[0])
    assert emitted == "Hello world "  # "<EN" could still become "<END>"
    # The held text comes out when the request ends for another reason (length, eos).
    assert detok.flush() == "<EN"
    assert detok.output_text == "Hello world <EN"


def test_held_text_released_when_the_prefix_breaks(tokenizer: Tokenizer) -> None:
    detok = IncrementalDetokenizer(tokenizer, [], stop=["<END>"])
    deltas, stop = stream(detok, tokenizer.encode("a <EN b <END> c"))
    assert stop == "<END>"
    assert "".join(deltas) == "a <EN b "


def test_stop_string_inside_multibyte_text(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("前面😀停止😀后面")
    detok = IncrementalDetokenizer(tokenizer, [], stop=["停止"])
    deltas, stop = stream(detok, ids)
    assert stop == "停止" and "".join(deltas) == "前面😀"
    assert not any("\ufffd" in delta for delta in deltas)


def test_special_tokens_kept_when_asked(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("Hi<|im_end|>")
    for skip, expected in ((True, "Hi"), (False, "Hi<|im_end|>")):
        detok = IncrementalDetokenizer(tokenizer, [], skip_special_tokens=skip)
        deltas, _ = stream(detok, ids)
        assert "".join(deltas) + detok.flush() == expected


def test_incomplete_character_at_the_end_is_flushed(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("ok 😀")
    partial = ids[:-1]  # ends in the middle of the emoji's bytes
    detok = IncrementalDetokenizer(tokenizer, [])
    deltas, _ = stream(detok, partial)
    assert "".join(deltas) == "ok"
    # Ending there, the dangling bytes show as a full decode shows them.
    assert detok.flush() == tokenizer.decode(partial)[len("ok") :]


class CountingTokenizer:
    """Wraps a tokenizer and records how many ids each decode call is given."""

    def __init__(self, inner: Tokenizer) -> None:
        self.inner = inner
        self.decode_lengths: list[int] = []

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        self.decode_lengths.append(len(token_ids))
        return self.inner.decode(token_ids, skip_special_tokens)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_decodes_a_bounded_window_per_step(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("Streaming 中文 and emoji 😀 text. " * 40)
    counting = CountingTokenizer(tokenizer)
    detok = IncrementalDetokenizer(counting, tokenizer.encode("a prompt of several tokens here"))
    deltas, _ = stream(detok, ids)
    assert "".join(deltas) + detok.flush() == tokenizer.decode(ids)
    assert len(ids) > 300 and max(counting.decode_lengths) <= 12


def _sentencepiece_tokenizer(folder: Any) -> Tokenizer:
    """A tiny Llama-2-style tokenizer: "▁" marks word starts; its decoder strips the first."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, pre_tokenizers

    vocab = {"<unk>": 0, **{f"<0x{b:02X}>": 1 + b for b in range(256)}}
    vocab.update({"▁": 257, "▁hello": 258, "▁world": 259})
    merges = [("▁", "hello"), ("▁", "world")]
    for word in ("hello", "world"):  # spell both words out of letters
        for i in range(1, len(word)):
            vocab.setdefault(word[:i], len(vocab))
            vocab.setdefault(word[i], len(vocab))
            merges.append((word[:i], word[i]))
        vocab.setdefault(word, len(vocab))
    backend = Backend(models.BPE(vocab, merges, byte_fallback=True, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    backend.save(str(folder / "tokenizer.json"))
    return Tokenizer.from_folder(str(folder))


def test_sentencepiece_keeps_the_space_after_the_prompt(tmp_path: Any) -> None:
    tokenizer = _sentencepiece_tokenizer(tmp_path)
    output = tokenizer.encode("world world é", add_special_tokens=False)
    assert tokenizer.decode(output) == "world world é"  # a lone decode drops the first space
    detok = IncrementalDetokenizer(tokenizer, tokenizer.encode("hello"))
    deltas, _ = stream(detok, output)
    # After the prompt "hello", the output reads " world world é"; "é" is two byte tokens,
    # held until both arrived.
    assert [d for d in deltas if d] == [" world", " world", " ", "é"]
    assert detok.flush() == ""
