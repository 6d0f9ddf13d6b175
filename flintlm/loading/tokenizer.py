"""The engine's tokenizer: a `tokenizers.Tokenizer` plus the facts the server needs about it.

Built from an HF folder here (`Tokenizer.from_folder`) or from GGUF metadata
(`loading/gguf_tokenizer.py`). Must not import transformers: it costs seconds at startup.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Iterable
from typing import Any

import tokenizers

from flintlm.loading.chat_template import render_chat_template
from flintlm.loading.checkpoint import ModelLoadError

# Tokens that end a chat turn when the template writes them; added to the stop ids if present.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<|endoftext|>", "<end_of_turn>")
_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@functools.cache
def byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level spelling, reversed: {printable stand-in character: byte value}.

    Printable bytes stand for themselves; the other 68 map to code points from 256 upward,
    in byte order (GPT-2's `bytes_to_unicode`).
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    alphabet = {chr(b): b for b in printable}
    next_code = 256
    for b in range(256):
        if b not in printable:
            alphabet[chr(next_code)] = b
            next_code += 1
    return alphabet


class Tokenizer:
    """Text <-> token ids, the chat template, and which ids end a request.

    Invariants: `eos_token_ids` holds the model's eos id plus every end-of-turn token its chat
    template writes; `special_token_ids` are the ids `decode(skip_special_tokens=True)` drops.
    `vocab_size` counts the tokenizer's ids, which may be fewer than the model's embedding rows.
    """

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        *,
        name_or_path: str,
        chat_template: str | None,
        special_tokens: dict[str, str | None],
        extra_eos_token_ids: Iterable[int] = (),
    ) -> None:
        """
        Args:
            special_tokens: {"bos_token": ..., "eos_token": ..., ...} as chat templates see them.
            extra_eos_token_ids: more ids that end generation (generation_config, GGUF eot).
        """
        self._backend = backend
        self.name_or_path = name_or_path
        self.chat_template = chat_template
        self._special_tokens = special_tokens
        self.vocab_size: int = backend.get_vocab_size(with_added_tokens=True)
        self.bos_token_id = self._id_of(special_tokens.get("bos_token"))
        eos_ids = {self._id_of(special_tokens.get("eos_token")), *extra_eos_token_ids}
        for token in END_OF_TURN_TOKENS:
            if chat_template and token in chat_template:
                eos_ids.add(self._id_of(token))
        self.eos_token_ids: frozenset[int] = frozenset(i for i in eos_ids if i is not None)
        added = backend.get_added_tokens_decoder()
        self.special_token_ids = frozenset(i for i, tok in added.items() if tok.special)
        self._added_ids = frozenset(added)
        self._is_byte_level = _decoder_is_byte_level(backend)
        self._token_bytes: dict[int, bytes] = {}

    @classmethod
    def from_folder(cls, folder: str) -> Tokenizer:
        """Load `tokenizer.json` with `tokenizer_config.json`, `chat_template.jinja` and
        `generation_config.json` where present."""
        path = os.path.join(folder, "tokenizer.json")
        if not os.path.isfile(path):
            raise ModelLoadError(path, "no such file (a model folder needs tokenizer.json)")
        try:
            backend = tokenizers.Tokenizer.from_file(path)
        except Exception as e:  # NOTE: the tokenizers library raises bare Exception
            raise ModelLoadError(path, f"cannot parse tokenizer ({e})") from e
        config = read_json_object(os.path.join(folder, "tokenizer_config.json"))
        special = {
            name: _token_content(config.get(name))
            for name in ("bos_token", "eos_token", "unk_token", "pad_token")
        }
        template_path = os.path.join(folder, "chat_template.jinja")
        if os.path.isfile(template_path):
            with open(template_path, encoding="utf-8") as f:
                chat_template: str | None = f.read()
        else:
            chat_template = _pick_template(config.get("chat_template"))
        generation = read_json_object(os.path.join(folder, "generation_config.json"))
        eos = generation.get("eos_token_id")
        extra_eos = [eos] if isinstance(eos, int) else list(eos or [])
        return cls(
            backend,
            name_or_path=folder,
            chat_template=chat_template,
            special_tokens=special,
            extra_eos_token_ids=extra_eos,
        )

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`; special tokens written in `text` always map to their ids."""
        return self._backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._backend.decode(token_ids, skip_special_tokens=skip_special_tokens)

    def id_to_token(self, token_id: int) -> str:
        """The vocabulary's spelling of a token (e.g. "Ġworld"); see `token_bytes` for its text."""
        token = self._backend.id_to_token(token_id)
        if token is None:
            raise ValueError(f"token id {token_id} is outside the vocabulary ({self.vocab_size})")
        return token

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes a token stands for: b" world" for "Ġworld", b"\\n" for "<0x0A>"."""
        cached = self._token_bytes.get(token_id)
        if cached is None:
            cached = self._token_bytes[token_id] = self._spell_bytes(token_id)
        return cached

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        **template_kwargs: Any,
    ) -> str:
        """Render `messages` with the model's chat template, as HF transformers would.

        Raises:
            ValueError: the model has no chat template, or the template fails on this input.
        """
        if not self.chat_template:
            raise ValueError(f"model {self.name_or_path} has no chat template; use completions")
        return render_chat_template(
            self.chat_template,
            messages,
            tools=tools,
            add_generation_prompt=add_generation_prompt,
            special_tokens=self._special_tokens,
            template_kwargs=template_kwargs,
        )

    def _id_of(self, token: str | None) -> int | None:
        return None if token is None else self._backend.token_to_id(token)

    def _spell_bytes(self, token_id: int) -> bytes:
        token = self.id_to_token(token_id)
        if token_id in self._added_ids:
            return token.encode("utf-8")
        if self._is_byte_level:
            alphabet = byte_level_alphabet()
            if all(ch in alphabet for ch in token):
                return bytes(alphabet[ch] for ch in token)
            return token.encode("utf-8")
        match = _BYTE_FALLBACK.fullmatch(token)
        if match:
            return bytes([int(match.group(1), 16)])
        return token.replace("\u2581", " ").encode("utf-8")  # SentencePiece's word marker


def _decoder_is_byte_level(backend: tokenizers.Tokenizer) -> bool:
    decoder = backend.decoder
    if decoder is None:
        return False
    return '"ByteLevel"' in decoder.__getstate__().decode("utf-8", "replace")


def read_json_object(path: str, *, required: bool = False) -> dict[str, Any]:
    """A JSON object file; a missing optional file reads as {}, anything else wrong is a
    ModelLoadError naming the file (also used by the safetensors loader for config.json)."""
    if not os.path.isfile(path):
        if required:
            raise ModelLoadError(path, "no such file")
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise ModelLoadError(path, f"cannot parse JSON ({e})") from e
    if not isinstance(data, dict):
        raise ModelLoadError(path, "expected a JSON object")
    return data


def _token_content(value: Any) -> str | None:
    """tokenizer_config.json writes a special token as a string or as {"content": ...}."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _pick_template(value: Any) -> str | None:
    """`chat_template` is a string, or a list of {"name", "template"} where "default" wins."""
    if isinstance(value, list):
        named = {item.get("name"): item.get("template") for item in value if isinstance(item, dict)}
        return named.get("default")
    return value if isinstance(value, str) else None
