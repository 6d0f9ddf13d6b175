"""The `flintlm` command: serve | chat | generate | bench (keys and usage join with the platform).

Each command parses its flags into a `FlintConfig` and calls one function. A flag left out falls
back to FLINTLM_<FLAG> (read through `flintlm.env`), then to the config default; `--help` text is
the config field's docstring.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

import typer

from flintlm import env
from flintlm.config import (
    CacheConfig,
    FlintConfig,
    ModelConfig,
    SchedulerConfig,
    ServerConfig,
    field_docs,
    parse_size,
)

app = typer.Typer(
    name="flintlm", help="An OpenAI-compatible LLM server with its own PyTorch engine.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)

try:  # the benchmark app is optional: a missing or broken module must not break the CLI
    from flintlm.bench.cli import bench_app
except ImportError:
    bench_app = None
if bench_app is not None:
    app.add_typer(bench_app, name="bench")
# `keys` and `usage` (platform) mount here the same way.

_SECTIONS = {"model": ModelConfig, "cache": CacheConfig, "scheduler": SchedulerConfig,
             "server": ServerConfig}
_FIELD_SECTION = {f.name: (section, f) for section, cls in _SECTIONS.items()
                  for f in dataclasses.fields(cls)}
_SIZE_FIELDS = {"kv_cache_memory", "max_kv_cache_memory"}


def _help(name: str) -> str:
    section, _ = _FIELD_SECTION[name]
    return f"{field_docs(_SECTIONS[section])[name]} [env: {env.var_name(name)}]"


def _opt(name: str, *decls: str) -> Any:
    return typer.Option(*decls, help=_help(name), show_default=False)


def _convert(name: str, value: Any) -> Any:
    """A flag value or an environment string -> the config field's type."""
    _, field = _FIELD_SECTION[name]
    if name in _SIZE_FIELDS:
        return parse_size(value)
    if not isinstance(value, str) or str(field.type).startswith("str"):
        return value
    kind = str(field.type).split(" |")[0]
    if kind == "bool":
        return env.parse_bool(name, value)
    return {"int": int, "float": float}[kind](value)


def build_config(flags: dict[str, Any]) -> FlintConfig:
    """Flags (None when not given) + FLINTLM_* environment + defaults -> a validated config.

    Raises:
        typer.BadParameter: a value that does not parse or that the config refuses.
    """
    values: dict[str, dict[str, Any]] = {section: {} for section in _SECTIONS}
    try:
        for name, (section, _) in _FIELD_SECTION.items():
            value = flags.get(name)
            if value is None:
                value = env.lookup(name)
            if value is not None:
                values[section][name] = _convert(name, value)
        return FlintConfig(**{s: _SECTIONS[s](**kw) for s, kw in values.items()})
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc


@app.command()
def serve(
    model: Annotated[str | None, _opt("model")] = None,
    served_model_name: Annotated[str | None, _opt("served_model_name")] = None,
    dtype: Annotated[str | None, _opt("dtype")] = None,
    device: Annotated[str | None, _opt("device")] = None,
    max_model_len: Annotated[int | None, _opt("max_model_len")] = None,
    seed: Annotated[int | None, _opt("seed")] = None,
    kernels: Annotated[str | None, _opt("kernels")] = None,
    quantized_max_tokens: Annotated[int | None, _opt("quantized_max_tokens")] = None,
    block_size: Annotated[int | None, _opt("block_size")] = None,
    kv_cache_memory: Annotated[str | None, _opt("kv_cache_memory")] = None,
    kv_cache_fraction: Annotated[float | None, _opt("kv_cache_fraction")] = None,
    max_kv_cache_memory: Annotated[str | None, _opt("max_kv_cache_memory")] = None,
    enable_prefix_caching: Annotated[bool | None, _opt("enable_prefix_caching")] = None,
    max_num_seqs: Annotated[int | None, _opt("max_num_seqs")] = None,
    max_num_batched_tokens: Annotated[int | None, _opt("max_num_batched_tokens")] = None,
    max_waiting: Annotated[int | None, _opt("max_waiting")] = None,
    host: Annotated[str | None, _opt("host")] = None,
    port: Annotated[int | None, _opt("port")] = None,
    api_key: Annotated[str | None, _opt("api_key")] = None,
    drain_timeout_s: Annotated[float | None, _opt("drain_timeout_s")] = None,
    log_level: Annotated[str | None, _opt("log_level")] = None,
) -> None:
    """Serve the OpenAI-compatible API (/v1/chat/completions, /v1/completions, ...)."""
    config = build_config(locals())
    from flintlm.server import serve as run_server

    run_server(config)


# Engine flags shared by the in-process `chat` and `generate`.
ModelOpt = Annotated[str | None, _opt("model")]
DtypeOpt = Annotated[str | None, _opt("dtype")]
DeviceOpt = Annotated[str | None, _opt("device")]
MaxLenOpt = Annotated[int | None, _opt("max_model_len")]
KVOpt = Annotated[str | None, _opt("kv_cache_memory")]
BaseUrlOpt = Annotated[str | None, typer.Option(
    help="Talk to a running server at this URL (e.g. http://127.0.0.1:8000/v1) instead of "
         "loading the model in-process. [env: FLINTLM_BASE_URL]")]
KeyOpt = Annotated[str | None, typer.Option(
    help="API key for --base-url. [env: FLINTLM_API_KEY]")]
MaxTokensOpt = Annotated[int | None, typer.Option(
    help="Most tokens per reply (default: up to the context length).")]
TemperatureOpt = Annotated[float, typer.Option(help="Sampling temperature; 0 is greedy.")]


@app.command()
def chat(
    model: ModelOpt = None, dtype: DtypeOpt = None, device: DeviceOpt = None,
    max_model_len: MaxLenOpt = None, kv_cache_memory: KVOpt = None,
    base_url: BaseUrlOpt = None, api_key: KeyOpt = None,
    system: Annotated[str | None, typer.Option(help="A system prompt.")] = None,
    max_tokens: MaxTokensOpt = None, temperature: TemperatureOpt = 0.7,
) -> None:
    """Chat in the terminal, replies streamed as they are generated (/reset, /exit)."""
    backend = _backend(locals())
    history = [{"role": "system", "content": system}] if system else []
    asyncio.run(_chat_loop(backend, history, max_tokens, temperature))


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="The prompt (a user message unless --raw).")],
    model: ModelOpt = None, dtype: DtypeOpt = None, device: DeviceOpt = None,
    max_model_len: MaxLenOpt = None, kv_cache_memory: KVOpt = None,
    base_url: BaseUrlOpt = None, api_key: KeyOpt = None,
    raw: Annotated[bool, typer.Option(help="Complete the text as is, no chat template.")] = False,
    max_tokens: Annotated[int, typer.Option(help="Most tokens to generate.")] = 256,
    temperature: TemperatureOpt = 0.0,
) -> None:
    """Generate one reply to PROMPT and print it as it streams."""
    backend = _backend(locals())
    request: Any = prompt if raw else [{"role": "user", "content": prompt}]
    try:
        asyncio.run(_print_reply(backend, request, max_tokens, temperature, close=True))
    except Exception as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


def _backend(flags: dict[str, Any]) -> _LocalBackend | _RemoteBackend:
    base_url = flags.get("base_url") or env.lookup("base_url")
    if base_url:
        return _RemoteBackend(base_url, flags.get("api_key") or env.lookup("api_key"),
                              flags.get("model"))
    return _LocalBackend(build_config({k: v for k, v in flags.items() if k in _FIELD_SECTION}))


async def _chat_loop(backend: _LocalBackend | _RemoteBackend, history: list[dict[str, str]],
                     max_tokens: int | None, temperature: float) -> None:
    try:
        while True:
            try:
                line = (await asyncio.to_thread(input, "> ")).strip()
            except EOFError:
                break
            if line in ("/exit", "/quit"):
                break
            if line == "/reset":
                del history[int(bool(history) and history[0]["role"] == "system"):]
                continue
            if not line:
                continue
            history.append({"role": "user", "content": line})
            try:
                reply = await _print_reply(backend, history, max_tokens, temperature)
            except Exception as exc:  # noqa: BLE001 - report it and keep the session going
                typer.echo(f"\nerror: {exc}", err=True)
                history.pop()
                continue
            history.append({"role": "assistant", "content": reply})
    finally:
        await backend.aclose()


async def _print_reply(backend: _LocalBackend | _RemoteBackend, request: Any,
                       max_tokens: int | None, temperature: float, close: bool = False) -> str:
    parts = []
    try:
        async for text in backend.stream(request, max_tokens, temperature):
            parts.append(text)
            sys.stdout.write(text)
            sys.stdout.flush()
        sys.stdout.write("\n")
    finally:
        if close:
            await backend.aclose()
    return "".join(parts)


class _LocalBackend:
    """The engine in this process; `request` is a message list or a raw prompt."""

    def __init__(self, config: FlintConfig):
        from flintlm.engine.async_engine import AsyncEngine

        self.engine = AsyncEngine.from_config(config, progress=True)
        self.engine.start()

    async def stream(self, request: str | list[dict[str, str]], max_tokens: int | None,
                     temperature: float) -> AsyncIterator[str]:
        from flintlm.api.prompts import render_chat
        from flintlm.api.protocol import ChatMessage
        from flintlm.engine.request import FinishReason, SamplingParams

        tokenizer = self.engine.tokenizer
        if isinstance(request, str):
            prompt_ids = tokenizer.encode(request)
        else:
            prompt_ids = render_chat(tokenizer, [ChatMessage(**m) for m in request])
        params = SamplingParams(max_tokens=max_tokens, temperature=temperature)
        async for output in self.engine.generate(uuid.uuid4().hex, prompt_ids, params):
            if output.finish_reason is FinishReason.ERROR:
                raise RuntimeError(f"generation failed: {output.error}")
            yield output.new_text

    async def aclose(self) -> None:
        await self.engine.shutdown(drain_timeout_s=0)


class _RemoteBackend:
    """A running server through the official openai client."""

    def __init__(self, base_url: str, api_key: str | None, model: str | None):
        import openai

        self.client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key or "none")
        self.model = model

    async def stream(self, request: str | list[dict[str, str]], max_tokens: int | None,
                     temperature: float) -> AsyncIterator[str]:
        if self.model is None:
            self.model = (await self.client.models.list()).data[0].id
        common: dict[str, Any] = {"model": self.model, "temperature": temperature, "stream": True}
        if isinstance(request, str):
            stream: Any = await self.client.completions.create(
                prompt=request, max_tokens=max_tokens, **common)
            async for chunk in stream:
                yield chunk.choices[0].text if chunk.choices else ""
            return
        stream = await self.client.chat.completions.create(
            messages=request, max_completion_tokens=max_tokens, **common)  # type: ignore[arg-type]
        async for chunk in stream:
            yield (chunk.choices[0].delta.content or "") if chunk.choices else ""

    async def aclose(self) -> None:
        await self.client.close()


def main() -> None:
    app()
