"""The `flintlm` command: serve | chat | generate | keys | usage | data | bench.

Each command parses its flags into a `FlintConfig` and calls one function. A flag left out falls
back to FLINTLM_<FLAG> (read through `flintlm.env`), then to the config default; `--help` text is
the config field's docstring. `keys` and `usage` work on the platform store directly (the one
`serve` uses with the same --data-dir / --database-url), so they need no running server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Annotated, Any

import typer

from flintlm import env
from flintlm.config import (
    CacheConfig,
    FlintConfig,
    LimitsConfig,
    ModelConfig,
    ModerationConfig,
    PlatformConfig,
    ScaleConfig,
    SchedulerConfig,
    ServerConfig,
    field_docs,
    parse_size,
)
from flintlm.data_cli import data_app

if TYPE_CHECKING:
    from flintlm.platform.db import Database

app = typer.Typer(
    name="flintlm", help="An OpenAI-compatible LLM server with its own PyTorch engine.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)


def _bench_app() -> typer.Typer | None:
    """The benchmark app, which is optional: a missing or broken module must not break the CLI."""
    try:
        from flintlm.bench.cli import bench_app
    except ImportError:
        return None
    return bench_app


bench_app = _bench_app()
if bench_app is not None:
    app.add_typer(bench_app, name="bench")
app.add_typer(data_app, name="data")
keys_app = typer.Typer(help="Issue, list and revoke API keys in the platform store.",
                       no_args_is_help=True)
app.add_typer(keys_app, name="keys")

_SECTIONS = {"model": ModelConfig, "cache": CacheConfig, "scheduler": SchedulerConfig,
             "server": ServerConfig, "limits": LimitsConfig, "platform": PlatformConfig,
             "moderation": ModerationConfig, "scale": ScaleConfig}
_FIELD_SECTION = {f.name: (section, f) for section, cls in _SECTIONS.items()
                  for f in dataclasses.fields(cls)}
_SIZE_FIELDS = {"kv_cache_memory", "max_kv_cache_memory", "max_body_bytes"}


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
    quantized_activations: Annotated[str | None, _opt("quantized_activations")] = None,
    serving_single_thread_max_tokens: Annotated[
        int | None, _opt("serving_single_thread_max_tokens")] = None,
    block_size: Annotated[int | None, _opt("block_size")] = None,
    kv_cache_memory: Annotated[str | None, _opt("kv_cache_memory")] = None,
    kv_cache_fraction: Annotated[float | None, _opt("kv_cache_fraction")] = None,
    max_kv_cache_memory: Annotated[str | None, _opt("max_kv_cache_memory")] = None,
    enable_prefix_caching: Annotated[bool | None, _opt("enable_prefix_caching")] = None,
    kv_cache_dtype: Annotated[str | None, _opt("kv_cache_dtype")] = None,
    max_num_seqs: Annotated[int | None, _opt("max_num_seqs")] = None,
    max_num_batched_tokens: Annotated[int | None, _opt("max_num_batched_tokens")] = None,
    max_waiting: Annotated[int | None, _opt("max_waiting")] = None,
    host: Annotated[str | None, _opt("host")] = None,
    port: Annotated[int | None, _opt("port")] = None,
    api_key: Annotated[str | None, _opt("api_key")] = None,
    drain_timeout_s: Annotated[float | None, _opt("drain_timeout_s")] = None,
    log_level: Annotated[str | None, _opt("log_level")] = None,
    console: Annotated[bool | None, _opt("console")] = None,
    max_body_bytes: Annotated[str | None, _opt("max_body_bytes")] = None,
    max_prompts: Annotated[int | None, _opt("max_prompts")] = None,
    max_n: Annotated[int | None, _opt("max_n")] = None,
    max_request_completion_tokens: Annotated[
        int | None, _opt("max_request_completion_tokens")] = None,
    default_max_tokens: Annotated[int | None, _opt("default_max_tokens")] = None,
    max_stop_strings: Annotated[int | None, _opt("max_stop_strings")] = None,
    max_stop_string_chars: Annotated[int | None, _opt("max_stop_string_chars")] = None,
    max_messages: Annotated[int | None, _opt("max_messages")] = None,
    max_tools: Annotated[int | None, _opt("max_tools")] = None,
    max_concurrent_per_key: Annotated[int | None, _opt("max_concurrent_per_key")] = None,
    log_format: Annotated[str | None, _opt("log_format")] = None,
    data_dir: Annotated[str | None, _opt("data_dir")] = None,
    database_url: Annotated[str | None, _opt("database_url")] = None,
    redis_url: Annotated[str | None, _opt("redis_url")] = None,
    admin_key: Annotated[str | None, _opt("admin_key")] = None,
    prices_file: Annotated[str | None, _opt("prices_file")] = None,
    ledger_flush_interval_s: Annotated[float | None, _opt("ledger_flush_interval_s")] = None,
    rate_window_s: Annotated[float | None, _opt("rate_window_s")] = None,
    response_ttl_s: Annotated[float | None, _opt("response_ttl_s")] = None,
    max_stored_responses_per_key: Annotated[
        int | None, _opt("max_stored_responses_per_key")] = None,
    moderation_backend: Annotated[str | None, _opt("moderation_backend")] = None,
    guard_model: Annotated[str | None, _opt("guard_model")] = None,
    capture: Annotated[str | None, _opt("capture")] = None,
    capture_ttl_days: Annotated[float | None, _opt("capture_ttl_days")] = None,
    guardrails_file: Annotated[str | None, _opt("guardrails_file")] = None,
    ray: Annotated[bool | None, _opt("ray")] = None,
    replicas: Annotated[int | None, _opt("replicas")] = None,
    min_replicas: Annotated[int | None, _opt("min_replicas")] = None,
    max_replicas: Annotated[int | None, _opt("max_replicas")] = None,
    ray_address: Annotated[str | None, _opt("ray_address")] = None,
    ray_num_cpus: Annotated[int | None, _opt("ray_num_cpus")] = None,
    replica_num_cpus: Annotated[float | None, _opt("replica_num_cpus")] = None,
    router: Annotated[str | None, _opt("router")] = None,
    imbalanced_threshold: Annotated[int | None, _opt("imbalanced_threshold")] = None,
) -> None:
    """Serve the OpenAI-compatible API (/v1/chat/completions, /v1/completions, ...)."""
    config = build_config(locals())
    if config.scale.ray:  # NOTE: the only place that imports Ray, and only with --ray
        from flintlm.scale.app import serve_on_ray

        serve_on_ray(config)
        return
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
            prompt_ids = render_chat(tokenizer, [ChatMessage.model_validate(m) for m in request])
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


# -- keys and usage: the platform store, no server needed ---------------------------------------

DataDirOpt = Annotated[str | None, _opt("data_dir")]
DatabaseUrlOpt = Annotated[str | None, _opt("database_url")]


@contextmanager
def _store(data_dir: str | None, database_url: str | None) -> Iterator[Database]:
    """The migrated store that `serve` with the same flags (or FLINTLM_* variables) uses."""
    from flintlm.platform.db import Database

    config = build_config({"data_dir": data_dir, "database_url": database_url}).platform
    db = Database.from_config(config)
    try:
        db.migrate()
        yield db
    finally:
        db.close()


def _print_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [list(header)] + [["-" if cell is None else str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        cells_padded = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        typer.echo("  ".join(cells_padded).rstrip())


def _when(text: str | None, flag: str) -> Any:
    from flintlm.platform.tables import parse_db_time

    try:
        return None if text is None else parse_db_time(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=flag) from None


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="A name for people to tell keys apart.")],
    rpm: Annotated[int | None, typer.Option(help="Requests per minute.")] = None,
    tpm: Annotated[int | None, typer.Option(
        help="Tokens per minute (prompt + max_tokens reserved, settled to real use).")] = None,
    token_quota: Annotated[int | None, typer.Option(
        help="Tokens (prompt + completion) per quota period.")] = None,
    quota_period: Annotated[str, typer.Option(
        help="Period of the token quota and budget: day or month (UTC).")] = "month",
    budget_usd: Annotated[str | None, typer.Option(help="USD per quota period.")] = None,
    max_tokens: Annotated[int | None, typer.Option(
        help="Ceiling on one request's max_tokens (and on the default it gets).")] = None,
    max_concurrent: Annotated[int | None, typer.Option(
        help="Requests in flight at once, per server (429 beyond).")] = None,
    models: Annotated[str | None, typer.Option(
        help="Comma-separated models (or globs) the key may use; all when unset.")] = None,
    expires: Annotated[str | None, typer.Option(
        help="When the key stops working: ISO date or date-time, UTC unless an offset is given.")
    ] = None,
    tenant: Annotated[str | None, typer.Option(
        help="Tenant id: keys of one tenant share the prefix cache; default: the key's own.")
    ] = None,
    capture: Annotated[str | None, typer.Option(
        help="Which of the key's chat completions are stored: request (store: true), all or "
             "never; default: the server's --capture.")] = None,
    guardrail: Annotated[str | None, typer.Option(
        help="Guardrail policy of the key's requests, by name; default: the file's default.")
    ] = None,
    guardrails_file: Annotated[str | None, typer.Option(
        help="The servers' guardrails file, to check --guardrail against. "
             "[env: FLINTLM_GUARDRAILS_FILE]")] = None,
    data_dir: DataDirOpt = None,
    database_url: DatabaseUrlOpt = None,
) -> None:
    """Issue a key and print its secret (to stdout, this once: only its hash is stored)."""
    from flintlm.platform.capture import CaptureMode
    from flintlm.platform.keys import KeyLimits, KeyStore

    _check_guardrail(guardrail, guardrails_file or env.lookup("guardrails_file"))

    try:
        capture_mode = None if capture is None else CaptureMode(capture)
    except ValueError:
        raise typer.BadParameter(f"{capture!r} is not one of request, all, never",
                                 param_hint="--capture") from None

    try:
        budget = None if budget_usd is None else Decimal(budget_usd)
        limits = KeyLimits(rpm=rpm, tpm=tpm, token_quota=token_quota, budget_usd=budget,
                           quota_period=quota_period,  # type: ignore[arg-type]
                           max_tokens=max_tokens, max_concurrent=max_concurrent)
    except (ValueError, InvalidOperation) as exc:
        raise typer.BadParameter(str(exc) or f"cannot read budget {budget_usd!r}") from None
    allowed = [m.strip() for m in models.split(",") if m.strip()] if models else None
    with _store(data_dir, database_url) as db:
        try:
            new_key = KeyStore(db).create(name, tenant_id=tenant, limits=limits,
                                          allowed_models=allowed,
                                          expires_at=_when(expires, "--expires"),
                                          capture=capture_mode, guardrail=guardrail)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--tenant") from None
    typer.echo(new_key.secret)
    typer.echo(f"created {new_key.record.id} ({name}); the secret above is shown this once",
               err=True)


def _check_guardrail(name: str | None, guardrails_file: str | None) -> None:
    """A policy name must be one the guardrails file defines (when the file is known)."""
    from flintlm.safety.policy import load_policies

    if name is None:
        return
    if guardrails_file is None:
        typer.echo(f"note: --guardrail {name!r} is not checked (no --guardrails-file); a server "
                   "without that policy refuses the key's requests with 403", err=True)
        return
    try:
        load_policies(guardrails_file).check_name(name)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--guardrail") from None


@keys_app.command("list")
def keys_list(data_dir: DataDirOpt = None, database_url: DatabaseUrlOpt = None) -> None:
    """List every key (never a secret: the prefix only tells them apart)."""
    from flintlm.api.platform_protocol import KeyInfo
    from flintlm.platform.keys import KeyStore

    with _store(data_dir, database_url) as db:
        store = KeyStore(db)
        keys = [KeyInfo.of(record, store.now()) for record in store.list()]
    _print_table(
        ["ID", "NAME", "PREFIX", "STATUS", "RPM", "TPM", "QUOTA", "BUDGET_USD", "MODELS",
         "EXPIRES", "CREATED"],
        [[k.id, k.name, k.prefix + "...", k.status, k.rpm, k.tpm,
          k.token_quota and f"{k.token_quota}/{k.quota_period}",
          k.budget_usd and f"{k.budget_usd}/{k.quota_period}",
          k.models and ",".join(k.models), k.expires_at, k.created_at] for k in keys])


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key's id (from `keys list`).")],
                data_dir: DataDirOpt = None, database_url: DatabaseUrlOpt = None) -> None:
    """Revoke a key for good: its requests get 401 from now on, on every server of the store."""
    from flintlm.platform.keys import KeyStore

    with _store(data_dir, database_url) as db:
        store = KeyStore(db)
        if not store.revoke(key_id):
            record = store.get(key_id)
            why = "no such key" if record is None else "it was already revoked"
            typer.echo(f"cannot revoke {key_id}: {why}", err=True)
            raise typer.Exit(1)
    typer.echo(f"revoked {key_id}")


@app.command()
def usage(
    start: Annotated[str | None, typer.Option(
        help="From (ISO date/date-time or epoch seconds, UTC); default: this month's first.")
    ] = None,
    end: Annotated[str | None, typer.Option(help="Until, exclusive; default: now.")] = None,
    group_by: Annotated[str, typer.Option(help="Any of key, model, day, comma-separated.")
                        ] = "key,model,day",
    key: Annotated[str | None, typer.Option(help="Only this key id.")] = None,
    data_dir: DataDirOpt = None,
    database_url: DatabaseUrlOpt = None,
) -> None:
    """Print the usage ledger's sums: requests, tokens and cost."""
    from flintlm.api.errors import InvalidParam
    from flintlm.api.platform_protocol import parse_group_by, usage_window
    from flintlm.platform.ledger import Ledger

    try:
        window = usage_window(start, end)
        dimensions = parse_group_by(group_by, ("key", "model", "day"))
    except InvalidParam as exc:
        raise typer.BadParameter(exc.message, param_hint=f"--{exc.param}") from None
    with _store(data_dir, database_url) as db:
        ledger = Ledger(db)
        try:
            rows = ledger.usage(*window, key_id=key, group_by=dimensions)
        finally:
            ledger.close()
    typer.echo(f"usage from {window[0]:%Y-%m-%d %H:%M:%S} to {window[1]:%Y-%m-%d %H:%M:%S} UTC",
               err=True)
    columns = {"key": "KEY", "model": "MODEL", "day": "DAY"}
    _print_table(
        [columns[d] for d in dimensions]
        + ["REQUESTS", "PROMPT", "CACHED", "COMPLETION", "TOTAL", "COST_USD"],
        [[{"key": r.key_id, "model": r.model, "day": r.day}[d] for d in dimensions]
         + [r.num_requests, r.prompt_tokens, r.cached_tokens, r.completion_tokens,
            r.total_tokens, f"{r.cost_usd:f}"] for r in rows])


@app.command()
def info(
    model: Annotated[str, typer.Option(help="Model whose dispatch table to show (measured now "
                                            "if not cached).")] = "default",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    timings: Annotated[bool, typer.Option(help="Also every timing behind the table.")] = False,
    table: Annotated[bool, typer.Option(help="Measure or read the dispatch table.")] = True,
    recalibrate: Annotated[bool, typer.Option(
        help="Measure again and replace the cached table (after a busy first start).")] = False,
) -> None:
    """What this CPU offers (features, kernel tier) and the measured dispatch table."""
    from flintlm.info import run

    typer.echo(run(model, as_json, timings, table, recalibrate))


def main() -> None:
    app()
