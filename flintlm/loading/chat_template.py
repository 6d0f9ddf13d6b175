"""Chat templates, rendered the way HF transformers renders them, so prompts match the model card.

Templates come from model files, i.e. from strangers: they run in jinja2's immutable sandbox
with HF's globals (`raise_exception`, `strftime_now`), its `tojson` (no HTML escaping) and its
whitespace rules (trim_blocks, lstrip_blocks). Every failure surfaces as `ValueError`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}`: HF marks assistant spans with it; render as is."""

    tags = {"generation"}  # noqa: RUF012 - jinja2 declares it a plain set attribute

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller: Any) -> str:
        return caller()


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


@functools.lru_cache(maxsize=16)
def compile_chat_template(source: str) -> jinja2.Template:
    """Compile `source` once per process; raises `ValueError` on a syntax error."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationTag, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise ValueError(f"the model's chat template does not compile: {e}") from e


def render_chat_template(
    source: str,
    messages: list[dict[str, Any]],
    *,
    tools: list[dict[str, Any]] | None,
    add_generation_prompt: bool,
    special_tokens: Mapping[str, str | None],
    template_kwargs: Mapping[str, Any],
) -> str:
    """Render `messages` into a prompt string.

    Args:
        special_tokens: template variables such as `bos_token` and `eos_token`.
        template_kwargs: extra variables some templates read (e.g. Qwen3's `enable_thinking`).

    Raises:
        ValueError: the template does not compile, or fails (incl. its own `raise_exception`).
    """
    template = compile_chat_template(source)
    variables = {**special_tokens, **template_kwargs}
    try:
        return template.render(
            messages=messages, tools=tools, add_generation_prompt=add_generation_prompt, **variables
        )
    except Exception as e:  # NOTE: whatever a foreign template raises is its error
        raise ValueError(f"the model's chat template failed: {e}") from e
