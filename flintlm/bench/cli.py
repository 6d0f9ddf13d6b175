"""`flintlm bench offline|serve|structured|make-model`: parse options, build the systems, run
them, write the report.

Mounted by `flintlm/cli.py` as `app.add_typer(bench_app, name="bench")`. Each command only
wires the pieces in `offline.py`, `serve.py`, `structured.py`, `peers.py`, `report.py` and
`model_cache.py` together.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import tempfile
from collections.abc import Callable
from dataclasses import replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from flintlm.bench import report
from flintlm.bench.workload import Prompt, Workload, gguf_vocab_size, resolve_gguf

if TYPE_CHECKING:
    from flintlm.bench.offline import OfflineSystem

bench_app = typer.Typer(help="Benchmark flintlm and its peers (llama.cpp, HF transformers).")


class Peer(StrEnum):
    NONE = "none"
    LLAMA_CPP = "llama-cpp"
    HF = "hf"


class PromptFormat(StrEnum):
    IDS = "ids"
    TEXT = "text"


# Options shared by both commands, as Annotated aliases so each signature stays readable.
ModelOpt = Annotated[str, typer.Option(
    help="'default', a .gguf, an HF folder (flintlm only), or a synthetic model generated once"
         " into the cache: <shape>-<type>, e.g. llama-3.2-1b-q4_0 (see make-model)")]
NumPromptsOpt = Annotated[int | None, typer.Option(help="prompts per run")]
InputLenOpt = Annotated[int, typer.Option(help="tokens per synthetic prompt")]
OutputLenOpt = Annotated[int, typer.Option(help="tokens generated per prompt (EOS ignored)")]
PeerOpt = Annotated[list[Peer] | None, typer.Option(help="peers to run as well (repeatable)")]
RunsOpt = Annotated[int, typer.Option(help="timed runs per system; tables show the median")]
ThreadsOpt = Annotated[
    int | None, typer.Option(help="threads for flintlm and the peers (default: all cores)")
]
DatasetOpt = Annotated[Path | None, typer.Option(help="JSONL with prompt or prompt_token_ids")]
OutOpt = Annotated[Path, typer.Option(help="directory for the JSON and PNG results")]
TagOpt = Annotated[str | None, typer.Option(help="results file name (default <command>-<date>)")]


def _ints(values: list[str]) -> list[int]:
    """Accept both `--x 1 --x 8` and `--x 1,8`."""
    return [int(v) for value in values for v in value.split(",") if v.strip()]


def _strs(values: list[str]) -> list[str]:
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def _resolve_model(model: str) -> str:
    """A synthetic model name -> its generated GGUF (made on first use); others unchanged."""
    from flintlm.bench.model_cache import resolve_bench_model  # numpy and gguf: only when asked

    return resolve_bench_model(model, typer.echo)


def _workload(
    model: str,
    prompt_format: PromptFormat,
    input_len: int,
    output_len: int,
    dataset: Path | None,
    vocab_size: int | None,
) -> Workload:
    if dataset is not None or prompt_format is PromptFormat.TEXT:
        return Workload(input_len, output_len, None, dataset)
    if vocab_size is None:
        try:
            vocab_size = gguf_vocab_size(resolve_gguf(model))
        except ValueError as exc:
            raise typer.BadParameter(
                "token-id prompts need the vocabulary size: pass --vocab-size, a .gguf --model,"
                " or --prompt-format text"
            ) from exc
    return Workload(input_len, output_len, vocab_size)


def _run_offline_system(
    make: Callable[[], OfflineSystem],
    label: str,
    make_prompts: Callable[[int], list[Prompt]],
    runs: int,
    params: dict[str, object],
) -> report.BenchRecord:
    """Build one system, warm it up untimed, run it `runs` times on fresh prompts.

    A system that cannot be built or run (a peer not installed, an engine error) becomes a
    record with `error` set, so one missing peer does not lose the others' figures.
    """
    record = report.BenchRecord(system=label, kind="offline", params=params)
    try:
        system = make()
        record.system = system.name
        system.run([replace(p, num_output_tokens=8) for p in make_prompts(0)[:1]])
        for run in range(runs):
            result = system.run(make_prompts(run + 1))
            record.runs.append(result.to_flat_dict())
            typer.echo(f"  {record.system} run {run + 1}/{runs}: "
                       f"{result.output_throughput:.1f} output tok/s")  # fmt: skip
        close = getattr(system, "close", None)
        if close is not None:
            close()
    except (ImportError, OSError, RuntimeError, ValueError) as exc:
        record.error = f"{type(exc).__name__}: {exc}"
        typer.echo(f"  {label}: skipped ({record.error})", err=True)
    return record


def _finish(
    records: list[report.BenchRecord], meta: dict[str, object], out: Path, tag: str
) -> None:
    path = out / f"{tag}.json"
    report.write_json(path, records, meta)
    typer.echo("\n" + report.format_table(records))
    try:
        for png in report.plot(records, out, prefix=tag):
            typer.echo(f"plot: {png}")
    except ImportError as exc:  # the figures are in the JSON; only the pictures need the extra
        typer.echo(f"plots skipped ({exc}; pip install -e '.[bench]')", err=True)
    typer.echo(f"results: {path}")


@bench_app.command()
def offline(
    model: ModelOpt = "default",
    num_prompts: Annotated[int, typer.Option(help="prompts per run")] = 64,
    input_len: InputLenOpt = 128,
    output_len: OutputLenOpt = 128,
    dtype: Annotated[list[str] | None, typer.Option(
        help="auto (flintlm: the measured choice), bfloat16 and/or float32; HF takes bfloat16 "
             "for auto")] = None,
    peer: PeerOpt = None,
    engine: Annotated[bool, typer.Option(help="run flintlm itself")] = True,
    runs: RunsOpt = 3,
    max_num_seqs: Annotated[int | None, typer.Option(help="flintlm: sequences per step")] = None,
    max_num_batched_tokens: Annotated[
        int | None, typer.Option(help="flintlm: tokens per step")
    ] = None,
    kv_cache_memory: Annotated[str | None, typer.Option(
        help="flintlm: KV-cache budget, e.g. 2GiB (default: the engine's, at most 512 MiB; "
             "a batch that does not fit is preempted and recomputed)")] = None,
    kv_cache_dtype: Annotated[str | None, typer.Option(
        help="flintlm: KV-cache element type, auto | float32 | bfloat16 (llama.cpp keeps "
             "float16)")] = None,
    hf_batch_size: Annotated[
        list[str] | None, typer.Option(help="HF batch sizes [1,16,32]")
    ] = None,
    hf_num_batches: Annotated[int, typer.Option(help="HF: batches per run per batch size")] = 1,
    single_stream_prompts: Annotated[
        int, typer.Option(help="single-stream runs (flintlm and llama-cpp): prompts; 0: none")
    ] = 4,
    threads: ThreadsOpt = None,
    dataset: DatasetOpt = None,
    out: OutOpt = Path("bench/results"),
    tag: TagOpt = None,
) -> None:
    """Offline throughput of flintlm's LLM API and of the peers on the same prompts."""
    from flintlm.bench.offline import FlintlmOffline, FlintlmSingleStream
    from flintlm.bench.peers import HfGenerate, LlamaCppBatched, LlamaCppSingleStream, num_cores

    peer = peer or []
    model = _resolve_model(model)
    meta = report.environment()
    workload = _workload(model, PromptFormat.IDS, input_len, output_len, dataset, None)
    n_threads = threads or num_cores()
    params: dict[str, object] = {"num_prompts": num_prompts, "input_len": input_len,
                                 "output_len": output_len}
    records: list[report.BenchRecord] = []
    dtypes = _strs(dtype or ["auto"])
    hf_dtypes = list(dict.fromkeys("bfloat16" if name == "auto" else name for name in dtypes))

    def prompts(count: int) -> Callable[[int], list[Prompt]]:
        return lambda seed: workload.make(count, seed)

    if engine:
        for name in dtypes:
            records.append(_run_offline_system(
                functools.partial(FlintlmOffline, model, name, max_num_seqs,
                                  max_num_batched_tokens, n_threads, kv_cache_memory,
                                  kv_cache_dtype),
                f"flintlm/{name}", prompts(num_prompts), runs, params,
            ))  # fmt: skip
            if single_stream_prompts:
                records.append(_run_offline_system(
                    functools.partial(FlintlmSingleStream, model, name, n_threads,
                                      kv_cache_dtype),
                    f"flintlm/{name}/single-stream", prompts(single_stream_prompts), runs,
                    {**params, "num_prompts": single_stream_prompts},
                ))  # fmt: skip
    if Peer.LLAMA_CPP in peer:
        gguf = resolve_gguf(model)
        records.append(_run_offline_system(
            lambda: LlamaCppSingleStream(gguf, n_threads), "llama-cpp-python/single-stream",
            prompts(single_stream_prompts), runs, {**params, "num_prompts": single_stream_prompts},
        ))  # fmt: skip
        max_seq_len = -(-(input_len + output_len) // 256) * 256  # llama.cpp pads to 256
        records.append(_run_offline_system(
            lambda: LlamaCppBatched(gguf, n_threads, num_prompts, max_seq_len),
            "llama-cpp-python/batched", prompts(num_prompts), runs, params,
        ))  # fmt: skip
    if Peer.HF in peer:
        gguf = resolve_gguf(model)
        for name in hf_dtypes:
            for batch_size in _ints(hf_batch_size or ["1", "16", "32"]):
                count = batch_size * hf_num_batches
                records.append(_run_offline_system(
                    functools.partial(HfGenerate, gguf, name, batch_size, n_threads),
                    f"hf-transformers/{name}/bs{batch_size}", prompts(count), runs,
                    {**params, "num_prompts": count, "batch_size": batch_size},
                ))  # fmt: skip
    meta["threads"] = n_threads
    _finish(records, meta, out, tag or f"offline-{dt.date.today().isoformat()}")


@bench_app.command()
def serve(
    base_url: Annotated[str | None, typer.Option(help="server to drive: http://host:port")] = None,
    model: ModelOpt = "default",
    name: Annotated[str, typer.Option(help="label for --base-url's results")] = "flintlm",
    peer: PeerOpt = None,
    endpoint: Annotated[str, typer.Option(help="completions or chat")] = "completions",
    prompt_format: Annotated[PromptFormat, typer.Option(help="ids or words")] = PromptFormat.IDS,
    num_prompts: NumPromptsOpt = None,
    input_len: InputLenOpt = 128,
    output_len: OutputLenOpt = 128,
    concurrency: Annotated[list[str] | None, typer.Option(help="levels to sweep [1,8,32]")] = None,
    request_rate: Annotated[
        float, typer.Option(help="Poisson requests/s; inf: no pacing")
    ] = math.inf,
    runs: RunsOpt = 3,
    vocab_size: Annotated[
        int | None, typer.Option(help="for id prompts if --model is no GGUF")
    ] = None,
    dataset: DatasetOpt = None,
    api_key: Annotated[str | None, typer.Option(help="bearer key for --base-url")] = None,
    llama_server: Annotated[Path | None, typer.Option(help="llama-server binary")] = None,
    launch: Annotated[bool, typer.Option(
        help="start this checkout's `flintlm serve` and drive it (instead of --base-url)")] = False,
    serve_args: Annotated[str, typer.Option(
        help="extra `flintlm serve` flags for --launch, e.g. '--dtype bfloat16'")] = "",
    threads: ThreadsOpt = None,
    out: OutOpt = Path("bench/results"),
    tag: TagOpt = None,
) -> None:
    """Latency and throughput of OpenAI-compatible servers under a concurrency sweep.

    Requests per run default to max(16, 2 x concurrency).
    """
    from flintlm.bench.peers import FlintlmServer, LlamaServer, num_cores
    from flintlm.bench.serve import ServeConfig, run_sweep

    peer = peer or []
    if endpoint not in ("completions", "chat"):
        raise typer.BadParameter(f"--endpoint {endpoint!r}: use 'completions' or 'chat'")
    if base_url is None and not launch and Peer.LLAMA_CPP not in peer:
        raise typer.BadParameter("nothing to drive: pass --base-url, --launch and/or "
                                 "--peer llama-cpp")
    levels = _ints(concurrency or ["1", "8", "32"])
    model_file = _resolve_model(model)  # --model itself is what --base-url's server is sent
    workload = _workload(model_file, prompt_format, input_len, output_len, dataset, vocab_size)
    meta = report.environment()
    records: list[report.BenchRecord] = []

    def count(level: int) -> int:
        return num_prompts or max(16, 2 * level)

    def make(level: int, seed: int) -> list[Prompt]:
        return workload.make(count(level), seed)

    def sweep(system: str, url: str, sent_model: str, key: str | None) -> None:
        config = ServeConfig(
            base_url=url, model=sent_model, endpoint=endpoint,  # type: ignore[arg-type]
            request_rate=request_rate, api_key=key,
        )  # fmt: skip
        by_level: dict[int, report.BenchRecord] = {}
        for run in run_sweep(config, make, levels, runs):
            level = run.config.concurrency
            record = by_level.setdefault(level, report.BenchRecord(system, "serve", {
                "num_prompts": count(level), "input_len": input_len, "output_len": output_len,
                "concurrency": level, "request_rate": str(request_rate), "endpoint": endpoint,
            }))  # fmt: skip
            record.runs.append(run.summary.to_flat_dict())
            failed = [t.error for t in run.timings if not t.is_success]
            typer.echo(f"  {system} c={level}: {run.summary.output_throughput:.1f} output tok/s"
                       + (f", {len(failed)} failed: {failed[0]}" if failed else ""))  # fmt: skip
        records.extend(by_level.values())

    if base_url is not None:
        sweep(name, base_url, model, api_key)
    if launch:
        log = Path(tempfile.gettempdir()) / "flintlm-bench-flintlm-server.log"
        # The name both sides use is set here: a served file is otherwise named by its path.
        served = Path(model).name.removesuffix(".gguf")
        args = ["--served-model-name", served, *serve_args.split()]
        with tempfile.TemporaryDirectory() as data_dir, FlintlmServer(
                model_file, args, Path(data_dir), log) as server:
            typer.echo(f"flintlm on {server.base_url} (log {log}): {' '.join(server.command)}")
            meta["flintlm_server_command"] = server.command
            sweep("flintlm", server.base_url, served, None)
    if Peer.LLAMA_CPP in peer:
        gguf = resolve_gguf(model_file)
        parallel = max(levels)
        log = Path(tempfile.gettempdir()) / "flintlm-bench-llama-server.log"
        n_threads = threads or num_cores()
        ctx_len = parallel * (input_len + output_len + 64)
        with LlamaServer(gguf, parallel, ctx_len, n_threads, llama_server, log) as llama:
            typer.echo(f"llama-server on {llama.base_url} (log {log}): {' '.join(llama.command)}")
            meta["llama_server_command"] = llama.command
            meta["llama_server_version"] = llama.version()
            sweep("llama-server", llama.base_url, "default", None)
    _finish(records, meta, out, tag or f"serve-{dt.date.today().isoformat()}")


@bench_app.command()
def structured(
    model: ModelOpt = "default",
    num_prompts: Annotated[int, typer.Option(help="prompts per batch")] = 32,
    constrained: Annotated[
        int | None, typer.Option(help="of those, under a JSON schema (default: half)")
    ] = None,
    input_len: InputLenOpt = 64,
    output_len: OutputLenOpt = 64,
    dtype: Annotated[str, typer.Option(help="bfloat16 or float32")] = "bfloat16",
    runs: RunsOpt = 3,
    out: OutOpt = Path("bench/results"),
    tag: TagOpt = None,
) -> None:
    """Structured output's cost: a batch with some requests under a JSON schema versus none,
    the grammar work per decode step on its own, and a schema's first and second compile."""
    from flintlm import LLM, SamplingParams
    from flintlm.bench.structured import endless_schema, run_batch, time_compiles, time_steps

    num_constrained = num_prompts // 2 if constrained is None else constrained
    model = _resolve_model(model)
    meta = report.environment()
    params = {"num_prompts": num_prompts, "input_len": input_len, "output_len": output_len}
    system = f"flintlm/{dtype}"
    llm = LLM(model, dtype=dtype)
    batches = {0: report.BenchRecord(f"{system} 0 constrained", "offline",
                                     {**params, "num_constrained": 0}),
               num_constrained: report.BenchRecord(
                   f"{system} {num_constrained} constrained", "offline",
                   {**params, "num_constrained": num_constrained})}
    # Untimed: compile the batch's schema (the compile has its own timing below) and warm up.
    llm.engine.grammars.compile(SamplingParams(json_schema=endless_schema(output_len)))
    run_batch(llm, 2, 1, 8, 8, seed=0)
    outputs: list[list[int]] = []
    for run in range(runs):
        order = list(batches) if run % 2 == 0 else list(batches)[::-1]  # alternate: drift
        for count in order:
            # NOTE: fresh prompts for every batch: a repeated one would hit the prefix cache.
            seed = 1 + 2 * run + (count > 0)
            result, constrained_outputs = run_batch(llm, num_prompts, count, input_len,
                                                    output_len, seed=seed)
            outputs = constrained_outputs or outputs
            batches[count].runs.append(result.to_flat_dict())
            typer.echo(f"  run {run + 1}/{runs}, {count} constrained: "
                       f"{result.output_throughput:.1f} output tok/s, "
                       f"{result.extra['output_tokens_per_cpu_s']:.1f} per CPU-s")  # fmt: skip
    timings = report.BenchRecord(f"{system} structured-output work", "compile",
                                 {**params, "num_constrained": num_constrained})
    for _ in range(runs):
        # Fresh compiler each run (a true first compile); the replay uses the last batch's tokens.
        timings.runs.append({**time_compiles(llm), **time_steps(llm, num_prompts, outputs)})
    records = [*batches.values(), timings]
    path = out / f"{tag or f'structured-{dt.date.today().isoformat()}'}.json"
    report.write_json(path, records, meta)
    typer.echo("\n" + report.format_table(records))
    for key, value in timings.median().items():
        low, high = timings.spread(key)
        typer.echo(f"  {key}: {value:.2f} ms (min-max {low:.2f}-{high:.2f})")
    typer.echo(f"results: {path}")


@bench_app.command("make-model")
def make_model(
    shape: Annotated[str, typer.Option(help="model shape: llama-3.2-1b")] = "llama-3.2-1b",
    type_name: Annotated[str, typer.Option("--type", help="Q4_0, Q4_1 or Q8_0 matrices")] = "Q4_0",
    out: Annotated[Path | None, typer.Option(
        help="GGUF to write (default: the cache file `--model <shape>-<type>` uses)")] = None,
    seed: Annotated[int, typer.Option(help="random seed of the weights")] = 0,
) -> None:
    """Write a GGUF of a real model's shape with random weights (normal, std 0.02) and the
    embedded model's tokenizer, for benchmarks of flintlm and llama.cpp at that size."""
    import time

    from flintlm.bench.model_cache import cache_dir, synthetic_model_path
    from flintlm.bench.synthetic import SHAPES, WEIGHT_TYPES, write_synthetic_gguf

    if shape not in SHAPES:
        raise typer.BadParameter(f"--shape {shape!r}: use one of {', '.join(SHAPES)}")
    if type_name.upper() not in WEIGHT_TYPES:
        raise typer.BadParameter(f"--type {type_name!r}: use one of {', '.join(WEIGHT_TYPES)}")
    path = out or synthetic_model_path(f"{shape}-{type_name}", cache_dir())
    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    write_synthetic_gguf(SHAPES[shape], WEIGHT_TYPES[type_name.upper()], path, seed)
    typer.echo(f"{path}: {path.stat().st_size / 1e9:.2f} GB in "
               f"{time.perf_counter() - start:.1f} s")  # fmt: skip


@bench_app.command("report")
def report_command(
    files: Annotated[list[Path], typer.Argument(help="results JSON files to combine")],
    out: Annotated[Path | None, typer.Option(help="write the combined JSON here")] = None,
) -> None:
    """Print the table (and plot) of one or more results files; optionally combine them."""
    metas: list[dict[str, object]] = []
    records: list[report.BenchRecord] = []
    for path in files:
        meta, file_records = report.read_json(path)
        metas.append({"file": path.name, **meta})
        records += file_records
    typer.echo(report.format_table(records))
    if out is not None:
        report.write_json(out, records, {"parts": metas})
        for png in report.plot(records, out.parent, prefix=out.stem):
            typer.echo(f"plot: {png}")
        typer.echo(f"results: {out}")
