"""The one typed configuration tree, built once (by the CLI or the Python API) and passed down.

Each component takes only its own frozen sub-config. Values decided at run time (the number of
KV blocks, a resolved "auto" dtype) are returned by the component that knows them and folded in
with `dataclasses.replace`; nothing here is ever mutated after construction.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from dataclasses import dataclass, field, fields
from typing import Any

_SIZE_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str | int) -> int:
    """Parse a byte size such as "512MiB", "2G" or "1073741824" into bytes."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?)(i?B)?\s*", text, flags=re.IGNORECASE)
    if not match:
        raise ValueError(f"cannot read size {text!r}; write it like 512MiB, 2GiB or 1073741824")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).upper()])


@dataclass(frozen=True)
class ModelConfig:
    model: str = "default"
    """Model to serve: "default" (the embedded SmolLM2-135M-Instruct), a .gguf file, or an HF
    folder."""
    served_model_name: str | None = None
    """Name clients use in the `model` field; defaults to "default" or the file/folder name."""
    dtype: str = "auto"
    """Compute dtype: auto, float32, bfloat16 or float16 (auto: bfloat16 on CUDA; on a CPU with
    flintlm's kernels the faster of float32 and bfloat16 as measured on this machine (see
    `flintlm info`); else float32)."""
    device: str = "auto"
    """Device: auto, cpu or cuda (auto picks cuda when available)."""
    max_model_len: int | None = None
    """Longest prompt + completion in tokens; defaults to the model's context length."""
    seed: int = 0
    """Seed for requests that give none, so unseeded sampling is still reproducible per run."""
    kernels: str = "auto"
    """CPU kernels: auto (flintlm's fused C kernels when a C compiler can build them, else
    torch), native (fail without them) or torch."""
    quantized_max_tokens: int | None = None
    """With the CPU kernels, steps of at most this many tokens multiply a GGUF's Q4_0/Q4_1/Q8_0
    weights as stored and run every layer in one native call; larger steps (prefill) use the
    dense weights (not made at all where no step the scheduler can issue is larger); 0 always
    does. Unset: the largest step size at which that was measured faster on this machine."""
    quantized_activations: str = "auto"
    """How quantized steps multiply: int8 (activations quantized per block of 32, as llama.cpp;
    fastest), exact (float activations: the dense path's product, for reference numerics) or
    auto (what was measured faster here)."""

    serving_single_thread_max_tokens: int = 4
    """While serving, steps of at most this many tokens run on one thread, leaving the other
    cores to the HTTP event loop and the clients (on 2 cores: 1.25-1.6x the output tokens/s at
    1-4 streams, slower from 8), if the dispatch table measured them short (under 10 ms: a 1B
    model's steps are not); 0 never does. Offline generation always uses every thread."""

    def __post_init__(self) -> None:
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"dtype={self.dtype!r} is not one of auto, float32, bfloat16, float16")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device={self.device!r} is not one of auto, cpu, cuda")
        if self.kernels not in ("auto", "native", "torch"):
            raise ValueError(f"kernels={self.kernels!r} is not one of auto, native, torch")
        if self.serving_single_thread_max_tokens < 0:
            raise ValueError(f"serving_single_thread_max_tokens="
                             f"{self.serving_single_thread_max_tokens} must be >= 0")
        if self.quantized_activations not in ("auto", "int8", "exact"):
            raise ValueError(f"quantized_activations={self.quantized_activations!r} is not one "
                             "of auto, int8, exact")
        if self.quantized_max_tokens is not None and not 0 <= self.quantized_max_tokens <= 8192:
            raise ValueError(f"quantized_max_tokens={self.quantized_max_tokens} must be in "
                             "0..8192")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ValueError(f"max_model_len={self.max_model_len} must be a positive token count")


@dataclass(frozen=True)
class CacheConfig:
    block_size: int = 16
    """Tokens per KV-cache block."""
    kv_cache_memory: int | None = None
    """KV-cache budget in bytes; None uses `kv_cache_fraction` of free memory."""
    kv_cache_fraction: float = 0.25
    """Fraction of free device memory given to the KV cache when no byte budget is set."""
    max_kv_cache_memory: int = 512 << 20
    """Upper bound on the automatic KV budget, so a big host does not reserve memory it never
    uses (512 MiB holds ~11k float32 tokens of the default model)."""
    enable_prefix_caching: bool = True
    """Reuse full KV blocks across requests that share a prompt prefix (and cache salt)."""
    kv_cache_dtype: str = "auto"
    """Element type of the KV cache: auto (the model's dtype), float32 or bfloat16. bfloat16
    under a float32 model halves the bytes attention reads each step and the cache's memory
    (llama.cpp keeps float16 by default), at bfloat16's precision for the cached keys/values."""

    def __post_init__(self) -> None:
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size={self.block_size} must be a power of two")
        if self.kv_cache_memory is not None and self.kv_cache_memory <= 0:
            raise ValueError(f"kv_cache_memory={self.kv_cache_memory} must be a positive byte "
                             "count")
        if self.kv_cache_dtype not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"kv_cache_dtype={self.kv_cache_dtype!r} is not one of auto, "
                             "float32, bfloat16")
        if not 0.0 < self.kv_cache_fraction <= 0.95:
            raise ValueError(f"kv_cache_fraction={self.kv_cache_fraction} must be in (0, 0.95]")


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int = 64
    """Most requests in the running batch at once."""
    max_num_batched_tokens: int = 512
    """Token budget of one step; longer prompts are prefilled in chunks of at most this size."""
    max_waiting: int = 1024
    """Most requests queued for the running batch (a request with `n` choices counts n); more
    are refused at once with 503 and Retry-After."""

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs={self.max_num_seqs} must be at least 1")
        if self.max_num_batched_tokens < 1:
            raise ValueError(f"max_num_batched_tokens={self.max_num_batched_tokens} must be >= 1")
        if self.max_waiting < 0:
            raise ValueError(f"max_waiting={self.max_waiting} must be >= 0")


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    """Address to listen on."""
    port: int = 8000
    """TCP port to listen on."""
    api_key: str | None = None
    """One shared key (key id "static", no limits), accepted besides the store's keys; setting it
    turns the no-key dev mode off."""
    drain_timeout_s: float = 30.0
    """On SIGTERM, how long in-flight requests may run before the server exits."""
    log_level: str = "info"
    """Log level of the server."""
    log_format: str = "text"
    """Log records as text lines or json (one object per line: time, level, logger, request_id,
    message)."""
    console: bool = True
    """Serve the web console at /console (sign in with an API key or the admin key); off with
    --no-console."""

    def __post_init__(self) -> None:
        if self.log_format not in ("text", "json"):
            raise ValueError(f"log_format={self.log_format!r} is not one of text, json")


@dataclass(frozen=True)
class LimitsConfig:
    """Bounds on one HTTP request, all checked before any model work or stream start."""

    max_body_bytes: int = 8 << 20
    """Largest request body in bytes (Content-Length or counted while reading); larger is 413."""
    max_prompts: int = 64
    """Most prompts in one /v1/completions request."""
    max_n: int = 16
    """Most choices (`n`) one request may ask for."""
    max_request_completion_tokens: int = 32768
    """Most completion tokens one request may ask for: max_tokens x n, summed over its prompts."""
    default_max_tokens: int = 4096
    """max_tokens of a request that sets none (capped by the context left and the key's ceiling)."""
    max_stop_strings: int = 16
    """Most stop strings in one request."""
    max_stop_string_chars: int = 256
    """Longest stop string, in characters."""
    max_messages: int = 1024
    """Most messages in one chat request."""
    max_tools: int = 128
    """Most tools in one chat request."""
    max_concurrent_per_key: int | None = None
    """Most requests one key may have in flight on this server (429 beyond); a key's own
    max_concurrent wins; no cap when unset."""

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if value is not None and value < 1:
                raise ValueError(f"{item.name}={value} must be at least 1")


@dataclass(frozen=True)
class PlatformConfig:
    data_dir: str | None = None
    """Folder for the SQLite database and other state; defaults to the user's data dir."""
    database_url: str | None = None
    """SQLAlchemy URL of the store (e.g. postgresql+psycopg://...); defaults to SQLite in
    data_dir."""
    redis_url: str | None = None
    """Redis URL for rate limits shared by several servers; in-process limits when unset."""
    admin_key: str | None = None
    """Key that guards /admin; the admin API is off when unset."""
    prices_file: str | None = None
    """TOML file of prices per model per 1M tokens; built-in defaults when unset."""
    ledger_flush_interval_s: float = 1.0
    """How often buffered usage rows are written to the database (a crash loses at most this)."""
    rate_window_s: float = 60.0
    """Window of the rpm and tpm limits in seconds: 60 makes them per minute (shorter for tests)."""
    response_ttl_s: float = 30 * 86_400.0
    """How long a response stored by /v1/responses (`store: true`) is kept, in seconds."""
    max_stored_responses_per_key: int = 1000
    """Most responses /v1/responses keeps per API key; storing one more drops the oldest."""
    capture: str = "request"
    """Which chat completions are stored for keys that set no capture mode of their own:
    request (those sent with `store: true`), all, or never."""
    capture_ttl_days: float = 30.0
    """How long stored chat completions are kept, in days; older ones are deleted."""

    def __post_init__(self) -> None:
        if self.capture not in ("request", "all", "never"):
            raise ValueError(f"capture={self.capture!r} is not one of request, all, never")
        if self.max_stored_responses_per_key < 1:
            raise ValueError(f"max_stored_responses_per_key={self.max_stored_responses_per_key} "
                             "must be at least 1")
        for name in ("ledger_flush_interval_s", "rate_window_s", "response_ttl_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)} must be a positive number "
                                 "of seconds")
        if self.capture_ttl_days <= 0:
            raise ValueError(f"capture_ttl_days={self.capture_ttl_days} must be a positive "
                             "number of days")


@dataclass(frozen=True)
class ModerationConfig:
    moderation_backend: str = "classifier"
    """Backend of /v1/moderations: classifier (the bundled offline profanity model; judges
    harassment only) or guard (a Llama Guard-format model given by --guard-model)."""
    guard_model: str | None = None
    """Guard model for the guard backend: a .gguf file or an HF folder, answering in Llama
    Guard's format ("safe" / "unsafe" + S-codes); runs on flintlm's engine beside the model."""
    guardrails_file: str | None = None
    """TOML file of guardrail policies (blocklists, regexes, PII, moderation, prompt size) run
    on requests' input and output; its `default` policy applies to keys that name none, a key's
    `guardrail` picks another (docs/safety.md). No guardrails when unset."""

    def __post_init__(self) -> None:
        if self.moderation_backend not in ("classifier", "guard"):
            raise ValueError(f"moderation_backend={self.moderation_backend!r} is not one of "
                             "classifier, guard")
        if self.moderation_backend == "guard" and not self.guard_model:
            raise ValueError("moderation_backend='guard' needs a guard model: pass "
                             "--guard-model PATH (a .gguf file or an HF folder)")


@dataclass(frozen=True)
class ScaleConfig:
    """Serving on Ray Serve (`flintlm serve --ray`); unused by the single-process server."""

    ray: bool = False
    """Serve on Ray Serve: one HTTP ingress in front of `replicas` engine replicas, each with its
    own KV cache (needs `pip install flintlm[ray]`, --database-url and --redis-url)."""
    replicas: int = 2
    """Engine replicas behind the endpoint (the starting count when autoscaling)."""
    min_replicas: int | None = None
    """With --max-replicas: autoscale on queue length, never below this many replicas."""
    max_replicas: int | None = None
    """Autoscale on queue length up to this many replicas; a fixed count when unset."""
    ray_address: str | None = None
    """Address of a running Ray cluster (e.g. 10.0.0.1:6379); a local one is started when
    unset."""
    ray_num_cpus: int | None = None
    """CPUs the local Ray cluster offers (not with --ray-address); all of them when unset."""
    replica_num_cpus: float = 1.0
    """CPUs Ray reserves for each engine replica (its torch threads follow it, at least 1)."""
    router: str = "prefix"
    """How requests pick a replica: prefix (flintlm's router: the replica holding the longest
    run of the request's tenant-salted prefix blocks unless it is overloaded), ray-prefix
    (Ray's PrefixCacheAffinityRouter on the same block hashes) or pow2 (power of two choices)."""
    imbalanced_threshold: int = 4
    """With the prefix routers: a replica more than this many requests busier than the least
    loaded one loses its prefix affinity (the request goes to the least loaded of two)."""

    def __post_init__(self) -> None:
        if self.router not in ("prefix", "ray-prefix", "pow2"):
            raise ValueError(f"router={self.router!r} is not one of prefix, ray-prefix, pow2")
        if self.replicas < 1:
            raise ValueError(f"replicas={self.replicas} must be at least 1")
        if (self.min_replicas is None) != (self.max_replicas is None):
            raise ValueError("autoscaling needs both --min-replicas and --max-replicas")
        if self.min_replicas is not None and self.max_replicas is not None and not (
                1 <= self.min_replicas <= self.replicas <= self.max_replicas):
            raise ValueError(f"need 1 <= min_replicas={self.min_replicas} <= replicas="
                             f"{self.replicas} <= max_replicas={self.max_replicas}")
        if self.replica_num_cpus <= 0:
            raise ValueError(f"replica_num_cpus={self.replica_num_cpus} must be positive")


@dataclass(frozen=True)
class FlintConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    platform: PlatformConfig = field(default_factory=PlatformConfig)
    moderation: ModerationConfig = field(default_factory=ModerationConfig)
    scale: ScaleConfig = field(default_factory=ScaleConfig)

    def __post_init__(self) -> None:
        # NOTE: several ingress replicas and servers must agree on keys, limits and the ledger,
        # which only a shared database and Redis give; SQLite and in-process limits would not.
        if self.scale.ray and not (self.platform.database_url and self.platform.redis_url):
            raise ValueError("--ray needs a shared platform store: pass --database-url "
                             "postgresql+psycopg://... and --redis-url redis://...")

    def replace(self, **sections: Any) -> FlintConfig:
        """Return a copy with whole sections replaced, e.g. `cfg.replace(cache=new_cache)`."""
        return dataclasses.replace(self, **sections)


@functools.cache  # the CLI asks once per option: parsing the class's source each time cost ~2 s
def field_docs(config_class: type) -> dict[str, str]:
    """Attribute docstrings of a config dataclass, used as `--help` text by the CLI (a docstring
    wrapped over several lines reads as one)."""
    import ast
    import inspect
    import textwrap
    from itertools import pairwise

    tree = ast.parse(textwrap.dedent(inspect.getsource(config_class)))
    docs: dict[str, str] = {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    for node, following in pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
        ):
            docs[node.target.id] = " ".join(str(following.value.value).split())
    known = {f.name for f in fields(config_class)}
    return {name: text for name, text in docs.items() if name in known}
