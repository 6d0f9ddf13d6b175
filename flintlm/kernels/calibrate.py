"""The dispatch that measures: which way of multiplying a step's weights is fastest here.

On first load on a machine, a short calibration times one decoder layer's matmuls (and the
output projection) at the model's shapes, for each step size in `STEP_SIZES`, each available
path and thread count:
  int8   the GGUF blocks as stored, activations quantized to int8 per block (llama.cpp's way)
  exact  the GGUF blocks as stored, activations in float (the dense path's exact product)
  dense  the dequantized weights in float32 or bfloat16 (torch: oneDNN / MKL)
and keeps, per step size, the fastest. The compute dtype is the faster dense one at the largest
step (prefill), where dense weights do the work. The table is cached per CPU, instruction-set
tier, kernel build, model shapes and flintlm version, so later starts read it in milliseconds.

Random weights of the right shapes and types are timed, never the model's own: the table can be
made before the model is read (the dtype decides how it is read). Several copies of a layer are
cycled so the weights come from memory, as in a real step, not from the last-level cache.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.nn import functional as F

from flintlm.kernels import isa
from flintlm.kernels.abi import WeightKind
from flintlm.kernels.ops import CpuKernels, QuantMatrix

logger = logging.getLogger(__name__)

STEP_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
QUANTIZED_PATHS = ("int8", "exact")
DENSE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# bump when what is measured changes: cached tables are then measured again (2: tables measured
# on a busy machine are no longer kept, so those kept by 1 may be such tables)
CACHE_FORMAT = 2
_COPY_BYTES = 64 << 20  # per path: well beyond a last-level cache, so weights stream from DRAM
_MEMORY_BOUND_ROWS = 16  # up to here a step streams its weights; above, one copy is compute-bound
_SINGLE_THREAD_ROWS = 8  # one thread is tried up to here only (it never won above, measured)
_LOGIT_ROWS = 64  # sampled rows: one per sequence, so large steps (prefill) sample few
_REPEATS = 2
# All threads >2x slower than one on the same small step: a bandwidth-bound step never does that
# on a quiet machine; OpenMP's threads collapse when another program holds a core (measured: 10x).
_COLLAPSE_RATIO = 2.0
_LONG_S = 0.2


@dataclass(frozen=True)
class ModelShapes:
    """What the calibration needs of a model: its matmul shapes and how its weights are stored."""

    hidden: int
    q_size: int
    kv_size: int
    intermediate: int
    vocab: int
    num_layers: int
    weight_type: str | None  # GGUF block type the kernels read (Q4_0, Q4_1, Q8_0), or None

    def layer_matrices(self) -> list[tuple[int, int]]:
        """(out_features, in_features) of one layer's fused matmuls: qkv, o, gate_up, down."""
        return [(self.q_size + 2 * self.kv_size, self.hidden), (self.hidden, self.q_size),
                (2 * self.intermediate, self.hidden), (self.hidden, self.intermediate)]


@dataclass(frozen=True)
class Timing:
    step_size: int
    path: str  # int8, exact or dense
    dtype: str
    num_threads: int
    ms: float  # one step's matmuls: num_layers x one layer + the output projection


@dataclass(frozen=True)
class StepChoice:
    step_size: int  # steps of up to this many tokens (and above the previous entry's)
    path: str
    num_threads: int
    ms: float


@dataclass(frozen=True)
class DispatchTable:
    """The measured choice per step size. Invariants: `choices` are sorted by step_size and the
    last one also covers larger steps; they use one quantized path at most (int8 or exact: one
    weight layout is kept) besides dense."""

    tier: str
    dtype: str
    choices: tuple[StepChoice, ...]
    timings: tuple[Timing, ...] = field(default=(), compare=False)
    seconds: float = 0.0  # how long the calibration took

    def choice_for(self, num_tokens: int) -> StepChoice:
        for choice in self.choices:
            if num_tokens <= choice.step_size:
                return choice
        return self.choices[-1]

    def is_quantized(self, num_tokens: int) -> bool:
        return self.choice_for(num_tokens).path in QUANTIZED_PATHS

    def short_steps_max_tokens(self, max_ms: float) -> int:
        """The largest step size up to which every choice was measured under `max_ms` (0:
        none was)."""
        largest = 0
        for choice in self.choices:
            if choice.ms >= max_ms:
                break
            largest = choice.step_size
        return largest

    @property
    def quantized_max_tokens(self) -> int:
        """The largest step size that chose a quantized path (0: none did)."""
        return max((c.step_size for c in self.choices if c.path in QUANTIZED_PATHS), default=0)

    @property
    def activations(self) -> str:
        """int8 or exact: the one quantized path the table chose from (exact when none)."""
        return "int8" if any(c.path == "int8" for c in self.choices) else "exact"

    @property
    def was_contended(self) -> bool:
        """Whether another program held the cores while this was measured: in most pairs of
        one-thread and all-thread timings of a step, all threads were >2x slower than one."""
        single = {(t.step_size, t.path, t.dtype): t.ms for t in self.timings if t.num_threads == 1}
        pairs = [(single[key], t.ms) for t in self.timings if t.num_threads > 1
                 and (key := (t.step_size, t.path, t.dtype)) in single]
        collapsed = sum(many > _COLLAPSE_RATIO * one for one, many in pairs)
        return bool(pairs) and 2 * collapsed >= len(pairs)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> DispatchTable:
        return cls(tier=data["tier"], dtype=data["dtype"],
                   choices=tuple(StepChoice(**c) for c in data["choices"]),
                   timings=tuple(Timing(**t) for t in data["timings"]),
                   seconds=float(data.get("seconds", 0.0)))


# -- random weights of the model's shapes ----------------------------------------------------------

def _random_quant(out_features: int, in_features: int, weight_type: str,
                  interleaved: bool) -> QuantMatrix:
    from flintlm.models.quant import interleave

    kind = WeightKind[weight_type]
    width = in_features // 2 if kind != WeightKind.Q8_0 else in_features
    q = torch.full((out_features, width), 0x5A, dtype=torch.uint8)  # values do not change speed
    d = torch.full((out_features, in_features // 32), 0.01, dtype=torch.float16)
    m = d * (-128.0 if kind == WeightKind.Q8_0 else -8.0)
    matrix = QuantMatrix(q, d, m, kind)
    return interleave(matrix) if interleaved else matrix


def _filled(out_features: int, in_features: int, dtype: torch.dtype) -> torch.Tensor:
    # NOTE: a constant (normal, never subnormal) times as fast as random values, at memset cost
    return torch.full((out_features, in_features), 0.02, dtype=dtype)


def _copies(layer_bytes: int, num_layers: int) -> int:
    return max(1, min(num_layers, -(-_COPY_BYTES // max(layer_bytes, 1))))


def _best_ms(run: Callable[[], object], repeats: int = _REPEATS) -> float:
    start = time.perf_counter()
    run()  # warm-up: page faults, oneDNN primitive creation
    if time.perf_counter() - start > _LONG_S:
        repeats = 1  # a call this long is its own average; more would cost seconds (1B shapes)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


class _DenseLayers:
    """Copies of one layer's dense weights (and the output projection) in one dtype."""

    def __init__(self, shapes: ModelShapes, dtype: torch.dtype):
        from flintlm.models.packing import can_pack

        self.dtype = dtype
        packed = can_pack(torch.device("cpu"), dtype)
        layer_bytes = sum(o * i for o, i in shapes.layer_matrices()) * dtype.itemsize
        self.num_copies = _copies(layer_bytes, shapes.num_layers)
        make = self._packed if packed else self._plain
        self.layers = [[make(o, i) for o, i in shapes.layer_matrices()]
                       for _ in range(self.num_copies)]
        self.logits = make(shapes.vocab, shapes.hidden)

    def _plain(self, out_features: int, in_features: int) -> Callable[[torch.Tensor], object]:
        weight = _filled(out_features, in_features, self.dtype)
        return lambda x: F.linear(x, weight)

    def _packed(self, out_features: int, in_features: int) -> Callable[[torch.Tensor], object]:
        weight = _filled(out_features, in_features, self.dtype)
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, None)
        return lambda x: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")

    def layer_ms(self, inputs: list[torch.Tensor]) -> float:
        layers = self.layers if inputs[0].shape[0] <= _MEMORY_BOUND_ROWS else self.layers[:1]

        def run() -> None:
            for layer in layers:
                for matmul, x in zip(layer, inputs, strict=True):
                    matmul(x)
        return _best_ms(run) / len(layers)

    def logits_ms(self, x: torch.Tensor) -> float:
        return _best_ms(lambda: self.logits(x[:_LOGIT_ROWS]))


class _QuantLayers:
    """Copies of one layer's quantized weights in the kernels' layout for one path."""

    def __init__(self, shapes: ModelShapes, kernels: CpuKernels, path: str):
        if shapes.weight_type is None:
            raise ValueError("quantized paths need a model stored in GGUF blocks")
        interleaved = path == "int8"
        self.kernels, self.use_int8 = kernels, path == "int8"
        matrices = shapes.layer_matrices()
        bits = 4.5 if shapes.weight_type != "Q8_0" else 8.5
        layer_bytes = int(sum(o * i for o, i in matrices) * bits / 8)
        self.num_copies = _copies(layer_bytes, shapes.num_layers)
        self.layers = [[_random_quant(o, i, shapes.weight_type, interleaved) for o, i in matrices]
                       for _ in range(self.num_copies)]
        self.logits = _random_quant(shapes.vocab, shapes.hidden, shapes.weight_type, interleaved)

    def _matmul(self, matrix: QuantMatrix, x: torch.Tensor) -> None:
        out = x.new_empty(x.shape[0], matrix.out_features)
        self.kernels.quant_matmul(x, matrix, out, 0, self.use_int8)

    def layer_ms(self, inputs: list[torch.Tensor]) -> float:
        layers = self.layers if inputs[0].shape[0] <= _MEMORY_BOUND_ROWS else self.layers[:1]

        def run() -> None:
            for layer in layers:
                for matrix, x in zip(layer, inputs, strict=True):
                    self._matmul(matrix, x)
        return _best_ms(run) / len(layers)

    def logits_ms(self, x: torch.Tensor) -> float:
        return _best_ms(lambda: self._matmul(self.logits, x[:_LOGIT_ROWS].contiguous()))


def _inputs(shapes: ModelShapes, rows: int, dtype: torch.dtype) -> list[torch.Tensor]:
    widths = [i for _o, i in shapes.layer_matrices()]
    return [torch.randn(rows, width).to(dtype) for width in widths]


def _step_ms(layers: _DenseLayers | _QuantLayers, shapes: ModelShapes, rows: int,
             dtype: torch.dtype) -> float:
    inputs = _inputs(shapes, rows, dtype)
    return shapes.num_layers * layers.layer_ms(inputs) + layers.logits_ms(inputs[0])


# -- the calibration ---------------------------------------------------------------------------

def _thread_counts(rows: int) -> tuple[int, ...]:
    most = torch.get_num_threads()
    return (1, most) if most > 1 and rows <= _SINGLE_THREAD_ROWS else (most,)


def _with_threads(count: int, measure: Callable[[], float]) -> float:
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        return measure()
    finally:
        torch.set_num_threads(previous)


def calibrate(shapes: ModelShapes, dtype: str | None = None,
              activations: str | None = None) -> DispatchTable:
    """Time every available path at every step size; `dtype` / `activations` restrict the
    choice where the configuration fixes them (float32/bfloat16, int8/exact)."""
    started = time.perf_counter()
    torch.manual_seed(0)
    timings: list[Timing] = []

    def record(step: int, path: str, dtype_name: str, count: int, ms: float) -> None:
        timings.append(Timing(step, path, dtype_name, count, round(ms, 4)))

    # 1. The compute dtype: the faster dense one at the largest step.
    dtypes = [dtype] if dtype else list(DENSE_DTYPES)
    dense: dict[str, _DenseLayers] = {}
    largest = STEP_SIZES[-1]
    for name in dtypes:
        dense[name] = _DenseLayers(shapes, DENSE_DTYPES[name])
        for count in _thread_counts(largest):
            record(largest, "dense", name, count, _with_threads(count, functools.partial(
                _step_ms, dense[name], shapes, largest, DENSE_DTYPES[name])))
    chosen_dtype = min(dtypes, key=lambda n: min(t.ms for t in timings if t.dtype == n))
    for name in dtypes:
        if name != chosen_dtype:
            del dense[name]  # free its weights before the quantized copies are made
    torch_dtype = DENSE_DTYPES[chosen_dtype]

    # 2. Per step size: dense in that dtype against the quantized paths the kernels offer.
    candidates: dict[str, _DenseLayers | _QuantLayers] = {"dense": dense[chosen_dtype]}
    kernels = CpuKernels.create(torch.device("cpu"), torch_dtype)
    if kernels is not None and shapes.weight_type is not None:
        paths = [activations] if activations else list(QUANTIZED_PATHS)
        for path in paths:  # every tier has both; which is faster is what we measure
            candidates[path] = _QuantLayers(shapes, kernels, path)
    losing_streak = {path: 0 for path in candidates}
    for step in STEP_SIZES:
        for path, layers in candidates.items():
            if path == "dense" and step == largest:
                continue  # measured in 1.
            if losing_streak[path] >= 2:
                continue  # >2x slower than dense twice in a row: it will not come back
            for count in _thread_counts(step):
                record(step, path, chosen_dtype, count, _with_threads(
                    count, functools.partial(_step_ms, layers, shapes, step, torch_dtype)))
        best_dense = min(t.ms for t in timings if t.step_size == step and t.path == "dense"
                         and t.dtype == chosen_dtype)
        for path in candidates:
            ms = [t.ms for t in timings if t.step_size == step and t.path == path]
            if path != "dense" and ms:
                losing_streak[path] = losing_streak[path] + 1 if min(ms) > 2 * best_dense else 0
    # 3. One quantized layout is kept (int8 reads an interleaved copy, exact the row layout):
    # the path faster in total; then per step size the faster of it and dense.
    quantized = [p for p in candidates if p != "dense"]
    activations = min(quantized, key=lambda p: _total_ms(timings, p)) if quantized else None
    choices = []
    for step in STEP_SIZES:
        here = [t for t in timings if t.step_size == step and t.path in ("dense", activations)
                and t.dtype == chosen_dtype]
        best = min(here, key=lambda t: t.ms)
        choices.append(StepChoice(step, best.path, best.num_threads, best.ms))
    return DispatchTable(isa.selected_tier(), chosen_dtype, tuple(choices), tuple(timings),
                         round(time.perf_counter() - started, 3))


def _total_ms(timings: list[Timing], path: str) -> float:
    """A quantized path's time over every step size, its best thread count each; a step size
    it was not measured at (pruned as slow) counts as 2x the slowest timing there."""
    total = 0.0
    for step in STEP_SIZES:
        ms = [t.ms for t in timings if t.step_size == step and t.path == path]
        slowest = max(t.ms for t in timings if t.step_size == step)
        total += min(ms) if ms else 2 * slowest
    return total


# -- the cache -----------------------------------------------------------------------------------

def _cache_path(shapes: ModelShapes, dtype: str | None, activations: str | None) -> Path:
    from platformdirs import user_cache_dir

    import flintlm
    from flintlm.kernels import native

    library = native.load()
    features = isa.cpu_features()
    key = json.dumps([CACHE_FORMAT, flintlm.__version__, torch.__version__, features.model_name,
                      sorted(features.flags), isa.selected_tier(),
                      library.path.name if library else None, asdict(shapes), dtype, activations,
                      torch.get_num_threads()])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return Path(user_cache_dir("flintlm")) / "dispatch" / f"{digest}.json"


def load_or_calibrate(shapes: ModelShapes, dtype: str | None = None,
                      activations: str | None = None, refresh: bool = False) -> DispatchTable:
    """The cached table for this machine and model shapes, measured on first use (or again
    with `refresh`, e.g. after a first measurement on a busy machine)."""
    path = _cache_path(shapes, dtype, activations)
    try:
        if not refresh:
            return DispatchTable.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    logger.info("measuring the fastest kernels for this CPU and model (once per machine)")
    table = calibrate(shapes, dtype, activations)
    logger.info("calibration took %.1f s: %s", table.seconds, describe_choices(table))
    if table.was_contended:  # kept, it would slow every later start (single-threaded decode)
        logger.warning("the CPU was busy during the kernel calibration (threads collapsed): its "
                       "table serves this run only and is measured again at the next start")
        return table
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_suffix(f".{os.getpid()}.tmp")
    scratch.write_text(json.dumps(table.to_json(), indent=1))
    os.replace(scratch, path)  # atomic: a concurrent process reads the old file or the new
    return table


def describe_choices(table: DispatchTable) -> str:
    return ", ".join(f"<={c.step_size}: {c.path} x{c.num_threads}" for c in table.choices)
