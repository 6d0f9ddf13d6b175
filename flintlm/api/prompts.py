"""Requests -> prompt token ids: chat messages (tool definitions, tool calls and tool results
included) through the model's chat template, completion prompts in any of OpenAI's four forms.

A template with its own tool section gets the tools and the tool messages as HF transformers
passes them. A template without one (SmolLM2's) sees plain messages: the tool definitions go into
the system prompt (`TOOLS_PROMPT`), past calls into the assistant's text in the format the model is
asked to write (api/tool_calls.py), and tool results into a user turn inside <tool_response> tags.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from flintlm.api import tool_calls
from flintlm.api.errors import InvalidParam

if TYPE_CHECKING:
    from flintlm.api.protocol import ChatMessage, ToolDefinition
    from flintlm.loading.tokenizer import Tokenizer

# NOTE: no line breaks inside a sentence (the backslashes): this is what the model reads.
TOOLS_PROMPT = """# Tools

You can call functions to help with the user's request. Each function is described by a JSON \
object inside <tools></tools>; its parameters are a JSON schema:
<tools>
{tools}
</tools>

To call a function, write one block per call with the function's name and a JSON object of \
arguments that matches its parameters:
{example}"""


def tools_system_prompt(tools: list[ToolDefinition]) -> str:
    definitions = "\n".join(json.dumps(t.model_dump(exclude_none=True)) for t in tools)
    example = tool_calls.format_call("<function name>", "<arguments object>")
    return TOOLS_PROMPT.format(tools=definitions, example=example)


def has_tool_section(tokenizer: Tokenizer) -> bool:
    """Whether the chat template renders `tools` itself (Qwen2.5, Hermes, Llama 3.1 do)."""
    return "tools" in (getattr(tokenizer, "chat_template", None) or "")


def _role(message: ChatMessage) -> str:
    # NOTE: "developer" is OpenAI's newer name for "system"; templates only know the latter.
    return "system" if message.role == "developer" else message.role


def _native_message(message: ChatMessage, call_names: dict[str, str]) -> dict[str, Any]:
    """The message as HF chat templates with a tool section expect it."""
    rendered: dict[str, Any] = {"role": _role(message), "content": message.text()}
    if message.name:
        rendered["name"] = message.name
    if message.tool_calls:
        rendered["tool_calls"] = [
            {"id": call.id, "type": "function",
             "function": {"name": call.function.name,
                          "arguments": json.loads(call.function.arguments)}}
            for call in message.tool_calls]
    if message.role == "tool":
        rendered["tool_call_id"] = message.tool_call_id
        if message.tool_call_id in call_names:
            rendered.setdefault("name", call_names[message.tool_call_id])
    return rendered


def _plain_messages(messages: list[ChatMessage], tools: list[ToolDefinition]
                    ) -> list[dict[str, Any]]:
    """Messages for a template without a tool section: only roles and text."""
    rendered: list[dict[str, Any]] = []
    previous_was_tool = False
    for message in messages:
        role, text = _role(message), message.text()
        if message.tool_calls:
            calls = [tool_calls.format_call(c.function.name, c.function.arguments)
                     for c in message.tool_calls]
            text = "\n".join(([text] if text else []) + calls)
        if message.role == "tool":
            text = f"<tool_response>\n{text}\n</tool_response>"
            if previous_was_tool:  # the results of one turn's calls go in one user turn
                rendered[-1]["content"] += "\n" + text
                continue
            role = "user"
        entry: dict[str, Any] = {"role": role, "content": text}
        if message.name and message.role != "tool":
            entry["name"] = message.name
        rendered.append(entry)
        previous_was_tool = message.role == "tool"
    if tools:
        section = tools_system_prompt(tools)
        if rendered and rendered[0]["role"] == "system":
            rendered[0]["content"] = f"{rendered[0]['content']}\n\n{section}"
        else:
            rendered.insert(0, {"role": "system", "content": section})
    return rendered


def chat_template_messages(tokenizer: Tokenizer, messages: list[ChatMessage],
                           tools: list[ToolDefinition]) -> tuple[list[dict[str, Any]],
                                                                 list[dict[str, Any]] | None]:
    """The messages and `tools` argument to hand the chat template."""
    if has_tool_section(tokenizer):
        call_names = {call.id: call.function.name for m in messages for call in m.tool_calls or []}
        template_tools = [t.model_dump(exclude_none=True) for t in tools] or None
        return [_native_message(m, call_names) for m in messages], template_tools
    return _plain_messages(messages, tools), None


def render_chat(
    tokenizer: Tokenizer,
    messages: list[ChatMessage],
    *,
    tools: list[ToolDefinition] | None = None,
    add_generation_prompt: bool = True,
) -> list[int]:
    """Render messages with the chat template and tokenize; template errors are the caller's."""
    template_messages, template_tools = chat_template_messages(tokenizer, messages, tools or [])
    try:
        text = tokenizer.apply_chat_template(
            template_messages,
            tools=template_tools,
            add_generation_prompt=add_generation_prompt,
        )
    except Exception as exc:  # jinja's raise_exception() and friends: the messages broke a rule
        raise InvalidParam(f"the chat template rejected the messages: {exc}",
                           param="messages") from exc
    # The template already wrote the special tokens (BOS, role markers) as text.
    return tokenizer.encode(text, add_special_tokens=False)


def prompt_batch(prompt: str | list[str] | list[int] | list[list[int]]
                 ) -> list[str] | list[list[int]]:
    """OpenAI's prompt forms (text, texts, token ids, lists of token ids) as a list of prompts,
    each a text or a token-id list."""
    if isinstance(prompt, str):
        return [prompt]
    if prompt and isinstance(prompt[0], int):
        return [prompt]
    return prompt  # type: ignore[return-value]


def completion_prompts(
    tokenizer: Tokenizer, prompt: str | list[str] | list[int] | list[list[int]]
) -> list[list[int]]:
    """OpenAI's prompt forms -> token id lists."""
    return [_one_prompt(tokenizer, item) for item in prompt_batch(prompt)]


def _one_prompt(tokenizer: Tokenizer, item: str | list[int]) -> list[int]:
    if isinstance(item, str):
        token_ids = tokenizer.encode(item, add_special_tokens=True)
        if not token_ids and tokenizer.bos_token_id is not None:
            token_ids = [tokenizer.bos_token_id]
        if not token_ids:
            raise InvalidParam("prompt must not be empty", param="prompt")
        return token_ids
    return checked_token_ids(tokenizer, item)


def checked_token_ids(tokenizer: Tokenizer, item: list[int]) -> list[int]:
    """A token-id prompt, once every id is in the vocabulary (a 400 naming the first that is
    not; the tokenizer itself overflows on ids beyond 32 bits)."""
    vocab_size = tokenizer.vocab_size
    for token_id in item:
        if not 0 <= token_id < vocab_size:
            raise InvalidParam(f"prompt token id {token_id} is outside the vocabulary "
                               f"[0, {vocab_size})", param="prompt")
    return list(item)


def prompt_text(tokenizer: Tokenizer, prompt: str | list[str] | list[int] | list[list[int]],
                index: int, token_ids: list[int]) -> str:
    """The text of prompt `index` as the client sent it (decoded when it came as token ids)."""
    item = prompt_batch(prompt)[index]
    return item if isinstance(item, str) else tokenizer.decode(token_ids,
                                                               skip_special_tokens=False)
