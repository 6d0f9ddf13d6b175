"""Tokenizer: encode/decode and chat templates equal HF transformers' on the embedded GGUF and on
HF-saved folders; special and stop ids; token bytes; template errors."""

from __future__ import annotations

import json
from typing import Any

import pytest
from gguf import GGUFWriter

from flintlm.loading import Tokenizer, load_tokenizer
from tests.conftest import HANG_TIMEOUT_S

TEXTS = [
    "Hello world",
    "",
    " ",
    "   leading spaces",
    "trailing spaces   ",
    "tabs\tand\nnewlines\n\n\n",
    "\r\n windows line ends\r\n",
    "I'm sure they'll've done it, DON'T",
    "CamelCaseIdentifier snake_case_var",
    "def f(x):\n    return x ** 2  # square\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    '{"key": [1, 2.5, -3e10], "nested": {"a": null}}',
    "12345 67890 3.14159 1,000,000",
    "4123 x12312",
    "2024-01-31T12:34:56Z",
    "emoji 😀🎉👍🏽 and family 👨‍👩‍👧‍👦",
    "日本語のテキストです。",
    "中文文本，标点符号！",
    "한국어 문장입니다",
    "Ünïcödé àccents café naïve",
    "Привет, мир!",
    "مرحبا بالعالم",
    "math: ∑ x² ≤ ∞, α β γ",
    "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n",
    "text with <|endoftext|> inside",
    "<|im_end|><|im_end|>",
    "URL https://example.com/path?q=1&r=2#frag",
    "    indented code block",
    "!!!??? ... --- ***",
    "a" * 50,
    "mixed 😀中文 English123",
]

CONVERSATIONS = [
    [{"role": "user", "content": "Hi there"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}],
    [
        {"role": "user", "content": "Name a color."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another, in 中文 😀"},
    ],
]

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return load_tokenizer("default")


@pytest.mark.parametrize("text", TEXTS)
def test_encode_equals_hf(tokenizer: Tokenizer, hf_tokenizer: Any, text: str) -> None:
    assert tokenizer.encode(text) == hf_tokenizer.encode(text)
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert ids == hf_tokenizer.encode(text, add_special_tokens=False)
    for skip in (True, False):
        assert tokenizer.decode(ids, skip) == hf_tokenizer.decode(ids, skip_special_tokens=skip)


def test_token_strings_and_bytes(tokenizer: Tokenizer, hf_tokenizer: Any) -> None:
    for text in TEXTS:
        if "<|" in text:
            continue  # special tokens stand for no bytes of the text
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert [tokenizer.id_to_token(i) for i in ids] == hf_tokenizer.convert_ids_to_tokens(ids)
        assert b"".join(tokenizer.token_bytes(i) for i in ids) == text.encode("utf-8")
    assert tokenizer.token_bytes(tokenizer.encode("<|im_end|>")[0]) == b"<|im_end|>"
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tokenizer.id_to_token(tokenizer.vocab_size + 10)


def test_special_and_stop_ids(tokenizer: Tokenizer, hf_tokenizer: Any) -> None:
    assert tokenizer.vocab_size == 49152
    assert tokenizer.bos_token_id == hf_tokenizer.bos_token_id
    im_end = hf_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.eos_token_ids == {hf_tokenizer.eos_token_id, im_end}
    assert set(hf_tokenizer.all_special_ids) <= tokenizer.special_token_ids
    assert tokenizer.chat_template == hf_tokenizer.chat_template
    assert tokenizer.name_or_path.endswith(".gguf")


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_equals_hf(
    tokenizer: Tokenizer,
    hf_tokenizer: Any,
    messages: list[dict[str, str]],
    add_generation_prompt: bool,
) -> None:
    ours = tokenizer.apply_chat_template(
        messages, tools=TOOLS, add_generation_prompt=add_generation_prompt
    )
    theirs = hf_tokenizer.apply_chat_template(
        messages, tools=TOOLS, add_generation_prompt=add_generation_prompt, tokenize=False
    )
    assert ours == theirs


# A template that uses what HF gives templates: tools, tojson, bos/eos, loop controls,
# namespace, strftime_now, raise_exception and the {% generation %} tag.
CUSTOM_TEMPLATE = """{{ bos_token }}{% set ns = namespace(n=0) %}
{% if tools %}Tools: {{ tools | tojson(indent=2) }}
{% endif %}
{% for m in messages %}
{% if m.role == 'bad' %}{{ raise_exception('role bad is not allowed') }}{% endif %}
{% if m.role == 'skip' %}{% continue %}{% endif %}
{% set ns.n = ns.n + 1 %}
{% if m.role == 'assistant' %}{% generation %}{{ m.content }}{{ eos_token }}{% endgeneration %}
{% else %}[{{ ns.n }}] {{ m.role }}: {{ m.content | trim }} {{ {'é': 1} | tojson }}
{% endif %}
{% endfor %}
{% if add_generation_prompt %}Year {{ strftime_now('%Y') }}; \
{{ extra_var | default('none') }}>{% endif %}"""


@pytest.fixture(scope="module")
def custom_folder(hf_tokenizer: Any, tmp_path_factory: Any) -> str:
    folder = tmp_path_factory.mktemp("custom_tokenizer")
    hf_tokenizer.chat_template = CUSTOM_TEMPLATE
    try:
        hf_tokenizer.save_pretrained(folder)
    finally:
        hf_tokenizer.chat_template = load_tokenizer("default").chat_template
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0]}))
    return str(folder)


def test_folder_tokenizer_equals_hf(custom_folder: str) -> None:
    from transformers import AutoTokenizer

    ours, theirs = (
        Tokenizer.from_folder(custom_folder),
        AutoTokenizer.from_pretrained(custom_folder),
    )
    for text in TEXTS:
        assert ours.encode(text) == theirs.encode(text), text
    assert ours.eos_token_ids == {2, 0}  # generation_config's list
    messages = [*CONVERSATIONS[2], {"role": "skip", "content": "x"}]
    for tools in (None, TOOLS):
        kwargs: dict[str, Any] = {"tools": tools, "add_generation_prompt": True}
        assert ours.apply_chat_template(messages, **kwargs, extra_var="yes") == (
            theirs.apply_chat_template(messages, tokenize=False, **kwargs, extra_var="yes")
        )


def test_raise_exception_is_a_value_error(custom_folder: str) -> None:
    ours = Tokenizer.from_folder(custom_folder)
    with pytest.raises(ValueError, match="role bad is not allowed"):
        ours.apply_chat_template([{"role": "bad", "content": "x"}])


def _tokenizer_with_template(tmp_path: Any, template: str | None) -> Tokenizer:
    from tokenizers import Tokenizer as Backend
    from tokenizers import models

    backend = Backend(models.BPE({"a": 0, "b": 1}, []))
    backend.save(str(tmp_path / "tokenizer.json"))
    config = {"chat_template": template} if template is not None else {}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    return Tokenizer.from_folder(str(tmp_path))


def test_missing_or_broken_template(tmp_path: Any) -> None:
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(ValueError, match="no chat template"):
        _tokenizer_with_template(tmp_path, None).apply_chat_template(messages)
    with pytest.raises(ValueError, match="does not compile"):
        _tokenizer_with_template(tmp_path, "{% for %}").apply_chat_template(messages)
    with pytest.raises(ValueError, match="failed"):
        _tokenizer_with_template(tmp_path, "{{ messages[5].content }}").apply_chat_template(
            messages
        )


def test_sentencepiece_token_bytes(tmp_path: Any) -> None:
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, pre_tokenizers

    vocab = {"<unk>": 0, **{f"<0x{b:02X}>": 1 + b for b in range(256)}}
    vocab.update({"▁hi": 257, "▁": 258, "h": 259, "i": 260, "▁h": 261})
    backend = Backend(
        models.BPE(vocab, [("▁", "h"), ("▁h", "i")], byte_fallback=True, unk_token="<unk>")
    )
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    backend.save(str(tmp_path / "tokenizer.json"))
    tokenizer = Tokenizer.from_folder(str(tmp_path))
    ids = tokenizer.encode("hi é", add_special_tokens=False)
    assert b"".join(tokenizer.token_bytes(i) for i in ids) == " hi é".encode()
    assert tokenizer.token_bytes(1 + 0x0A) == b"\n"
    assert tokenizer.chat_template is None and tokenizer.eos_token_ids == frozenset()


def _write_vocab_gguf(path: str, metadata: dict[str, Any], pre: str) -> None:
    """A GGUF holding the first 4000 tokens of the embedded model's vocabulary (enough for
    every byte and common merges; small enough for HF to build quickly), split by `pre`.

    Two multi-digit tokens are added ("12", "123"): SmolLM's vocabulary has none, and digit
    grouping is where the pre-tokenizers differ most.
    """
    num_tokens = 4000
    tokens = metadata["tokenizer.ggml.tokens"][:num_tokens]
    kept = set(tokens)
    merges = [
        m
        for m in metadata["tokenizer.ggml.merges"]
        if all(part in kept for part in m.split(" ")) and m.replace(" ", "") in kept
    ]
    tokens = [*tokens, "12", "123"]
    merges += ["1 2", "12 3"]
    writer = GGUFWriter(path, "llama")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types([*metadata["tokenizer.ggml.token_type"][:num_tokens], 1, 1])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("pre", ["llama-bpe", "qwen2", "default"])
def test_pre_tokenizers_equal_hf(pre: str, tmp_path: Any, embedded_path: str) -> None:
    from transformers import AutoTokenizer

    from flintlm.loading.gguf_file import GGUFFile

    path = str(tmp_path / f"{pre}.gguf")
    _write_vocab_gguf(path, GGUFFile(embedded_path).metadata, pre)
    ours = load_tokenizer(path)
    theirs = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=f"{pre}.gguf")
    for text in TEXTS:
        assert ours.encode(text) == theirs.encode(text), text
    assert ours.encode("hi")[0] == 1  # add_bos_token puts BOS first


def test_pre_tokenizers_split_differently(tmp_path: Any, embedded_path: str) -> None:
    from flintlm.loading.gguf_file import GGUFFile

    metadata = GGUFFile(embedded_path).metadata
    encodings = {}
    for pre in ("llama-bpe", "qwen2", "default", "smollm"):
        path = str(tmp_path / f"{pre}.gguf")
        _write_vocab_gguf(path, metadata, pre)
        encodings[pre] = [load_tokenizer(path).encode(text) for text in TEXTS]
    # The parity test above would prove little if all splits agreed on these texts.
    assert len({json.dumps(e) for e in encodings.values()}) == 4


def test_tokenizer_imports_neither_transformers_nor_torch() -> None:
    # transformers takes seconds to import and is only the tests' reference; torch is not
    # needed to tokenize, so processes that only tokenize start fast.
    import subprocess
    import sys

    code = (
        "import sys; from flintlm.loading import load_tokenizer; "
        "t = load_tokenizer('default'); t.apply_chat_template([{'role': 'user', 'content': 'x'}]); "
        "assert not {'transformers', 'torch'} & set(sys.modules), 'heavy import'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=HANG_TIMEOUT_S)


SENTENCEPIECE_CORPUS = "the quick brown fox jumps over the lazy dog hello world then"
SENTENCEPIECE_TEXTS = [
    "the quick brown fox",
    "Hello world",
    " leading space and  two spaces",
    "unknown: 😀 中文 ü",
    "tabs\tand\nnewlines",
    "<s> written out </s>",
    "",
]


def _write_sentencepiece_gguf(path: str) -> None:
    """A Llama-2-style vocabulary: <unk>/<s>/</s>, 256 byte tokens, and every prefix of
    "▁word" for the corpus words, scored so shorter pieces merge first."""
    words = sorted(set(SENTENCEPIECE_CORPUS.split()))
    pieces = {"▁", *SENTENCEPIECE_CORPUS.replace(" ", "")}
    for word in words:
        pieces.update("▁" + word[:n] for n in range(1, len(word) + 1))
        pieces.update(word[:n] for n in range(2, len(word) + 1))
    pieces_sorted = sorted(pieces, key=lambda p: (len(p), p))
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), *pieces_sorted]
    types = [2, 3, 3, *([6] * 256), *([1] * len(pieces_sorted))]
    scores = [0.0] * 259 + [-float(i) for i in range(len(pieces_sorted))]
    writer = GGUFWriter(path, "llama")
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_scores(scores)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_sentencepiece_gguf_equals_hf(tmp_path: Any) -> None:
    from transformers import AutoTokenizer

    path = str(tmp_path / "spm.gguf")
    _write_sentencepiece_gguf(path)
    ours = load_tokenizer(path)
    theirs = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="spm.gguf")
    for text in SENTENCEPIECE_TEXTS:
        ids = ours.encode(text)
        assert ids == theirs.encode(text), text
        for skip in (True, False):
            assert ours.decode(ids, skip) == theirs.decode(ids, skip_special_tokens=skip), text
    assert ours.encode("the")[0] == ours.bos_token_id == 1  # BOS by default
    assert len(ours.encode("the lazy dog")) == 4  # whole words from the merges
    assert ours.eos_token_ids == {2}
    ids = ours.encode("hello 😀", add_special_tokens=False)
    assert b"".join(ours.token_bytes(i) for i in ids) == " hello 😀".encode()
