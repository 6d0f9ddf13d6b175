"""Requests -> prompt token ids: chat messages through the model's chat template, completion
prompts in any of OpenAI's four forms. Tool definitions go to the template here when tool calling
lands (with parsing of tool calls out of the generated text next to it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flintlm.api.errors import InvalidParam

if TYPE_CHECKING:
    from flintlm.api.protocol import ChatMessage
    from flintlm.loading.tokenizer import Tokenizer


def _template_message(message: ChatMessage) -> dict[str, Any]:
    # NOTE: "developer" is OpenAI's newer name for "system"; templates only know the latter.
    role = "system" if message.role == "developer" else message.role
    rendered: dict[str, Any] = {"role": role, "content": message.text()}
    if message.name:
        rendered["name"] = message.name
    return rendered


def render_chat(
    tokenizer: Tokenizer,
    messages: list[ChatMessage],
    *,
    tools: list[dict[str, Any]] | None = None,
    add_generation_prompt: bool = True,
) -> list[int]:
    """Render messages with the chat template and tokenize; template errors are the caller's."""
    try:
        text = tokenizer.apply_chat_template(
            [_template_message(m) for m in messages],
            tools=tools,
            add_generation_prompt=add_generation_prompt,
        )
    except Exception as exc:  # jinja's raise_exception() and friends: the messages broke a rule
        raise InvalidParam(f"the chat template rejected the messages: {exc}",
                           param="messages") from exc
    # The template already wrote the special tokens (BOS, role markers) as text.
    return tokenizer.encode(text, add_special_tokens=False)


def completion_prompts(
    tokenizer: Tokenizer, prompt: str | list[str] | list[int] | list[list[int]]
) -> list[list[int]]:
    """OpenAI's prompt forms (text, texts, token ids, lists of token ids) -> token id lists."""
    if isinstance(prompt, str):
        batch: list[str] | list[list[int]] = [prompt]
    elif prompt and isinstance(prompt[0], int):
        batch = [prompt]  # type: ignore[list-item]
    else:
        batch = prompt  # type: ignore[assignment]
    return [_one_prompt(tokenizer, item) for item in batch]


def _one_prompt(tokenizer: Tokenizer, item: str | list[int]) -> list[int]:
    if isinstance(item, str):
        token_ids = tokenizer.encode(item, add_special_tokens=True)
        if not token_ids and tokenizer.bos_token_id is not None:
            token_ids = [tokenizer.bos_token_id]
        if not token_ids:
            raise InvalidParam("prompt must not be empty", param="prompt")
        return token_ids
    vocab_size = tokenizer.vocab_size
    for token_id in item:
        if not 0 <= token_id < vocab_size:
            raise InvalidParam(f"prompt token id {token_id} is outside the vocabulary "
                               f"[0, {vocab_size})", param="prompt")
    return list(item)


def prompt_text(tokenizer: Tokenizer, prompt: str | list[str] | list[int] | list[list[int]],
                index: int, token_ids: list[int]) -> str:
    """The text of prompt `index` as the client sent it (decoded when it came as token ids)."""
    if isinstance(prompt, str):
        return prompt
    item = prompt[index] if prompt and not isinstance(prompt[0], int) else prompt
    return item if isinstance(item, str) else tokenizer.decode(token_ids,
                                                               skip_special_tokens=False)
