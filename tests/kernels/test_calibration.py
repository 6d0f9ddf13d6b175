"""The dispatch that measures (kernels/calibrate.py, engine/cpu_dispatch.py, `flintlm info`):
the table picks, per step size, the fastest of what it measured; it is cached; the engine
honours it; FLINTLM_CPU_ISA forces a tier and caps torch with it."""

import json
import os
import subprocess
import sys

import pytest
import torch

from flintlm.config import ModelConfig
from flintlm.engine.cpu_dispatch import fold_dispatch, needs_dense_matrices
from flintlm.kernels import calibrate, isa
from flintlm.kernels.calibrate import DispatchTable, ModelShapes, StepChoice

TINY = ModelShapes(hidden=64, q_size=64, kv_size=32, intermediate=128, vocab=256, num_layers=2,
                   weight_type="Q4_1")


@pytest.fixture(scope="module")
def table() -> DispatchTable:
    return calibrate.calibrate(TINY)


def test_each_step_size_takes_the_fastest_measured_path(table):
    assert [c.step_size for c in table.choices] == list(calibrate.STEP_SIZES)
    assert table.dtype in calibrate.DENSE_DTYPES
    kept = {"dense", table.activations}
    for choice in table.choices:
        rivals = [t for t in table.timings if t.step_size == choice.step_size
                  and t.dtype == table.dtype and t.path in kept]
        assert choice.path in kept and rivals
        assert choice.ms == min(t.ms for t in rivals)
    # the dtype is the faster dense one where dense does the work (the largest step)
    largest = [t for t in table.timings if t.step_size == calibrate.STEP_SIZES[-1]
               and t.path == "dense"]
    assert table.dtype == min(largest, key=lambda t: t.ms).dtype


def test_a_fixed_dtype_or_activation_constrains_the_measurement():
    fixed = calibrate.calibrate(TINY, dtype="float32", activations="exact")
    assert fixed.dtype == "float32"
    assert {t.dtype for t in fixed.timings} == {"float32"}
    assert {t.path for t in fixed.timings} <= {"dense", "exact"}


def test_the_table_is_cached_per_machine_and_shapes(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    # NOTE: a quiet machine, as far as the cache can tell, however busy this one is: a table
    # measured on a busy one is never cached, which test_a_table_measured_on_a_busy_machine_...
    # checks, not this test.
    monkeypatch.setattr(DispatchTable, "was_contended", False)
    first = calibrate.load_or_calibrate(TINY, dtype="float32")
    files = list(tmp_path.rglob("*.json"))
    assert len(files) == 1

    def must_not_measure(*args, **kwargs):
        raise AssertionError("a cached table was measured again")

    monkeypatch.setattr(calibrate, "calibrate", must_not_measure)
    assert calibrate.load_or_calibrate(TINY, dtype="float32") == first
    other = ModelShapes(**{**TINY.__dict__, "num_layers": 3})
    with pytest.raises(AssertionError):  # other shapes: another entry, measured anew
        calibrate.load_or_calibrate(other, dtype="float32")


def test_auto_settings_are_folded_in_and_explicit_ones_kept():
    table = DispatchTable("avx2", "float32", (StepChoice(4, "int8", 1, 1.0),
                                              StepChoice(16, "dense", 2, 2.0),
                                              StepChoice(64, "int8", 2, 3.0)))
    folded = fold_dispatch(ModelConfig(), table, max_step_tokens=512)
    # the largest measured size chose int8: larger steps up to the step budget do too
    assert (folded.dtype, folded.quantized_max_tokens, folded.quantized_activations) == \
        ("float32", 512, "int8")
    dense_last = DispatchTable("avx2", "float32", table.choices[:2])
    assert fold_dispatch(ModelConfig(), dense_last, 512).quantized_max_tokens == 4
    assert table.is_quantized(3) and not table.is_quantized(10) and table.is_quantized(40)
    assert table.choice_for(1000).step_size == 64  # the last entry covers larger steps
    kept = fold_dispatch(ModelConfig(dtype="bfloat16", quantized_max_tokens=8,
                                     quantized_activations="exact"), table, 512)
    assert (kept.dtype, kept.quantized_max_tokens, kept.quantized_activations) == \
        ("bfloat16", 8, "exact")


def test_short_steps_end_at_the_first_step_size_measured_too_long():
    table = DispatchTable("avx2", "float32", (StepChoice(1, "int8", 2, 5.0),
                                              StepChoice(2, "int8", 2, 9.9),
                                              StepChoice(4, "int8", 2, 21.0),
                                              StepChoice(8, "int8", 2, 9.0)))
    assert table.short_steps_max_tokens(10.0) == 2  # 8's 9 ms does not count past 4's 21
    assert table.short_steps_max_tokens(30.0) == 8
    assert table.short_steps_max_tokens(5.0) == 0


def test_dense_matrices_are_read_only_where_a_step_can_use_them():
    """The loader skips the dense copies only where every step up to the scheduler's budget
    takes a quantized path (by the measured table, or explicit settings without one)."""
    if calibrate.CpuKernels.create(torch.device("cpu"), torch.float32) is None:
        pytest.skip("no C compiler: every step is dense")
    all_int8 = DispatchTable("avx2", "float32", (StepChoice(4, "int8", 1, 1.0),
                                                 StepChoice(64, "int8", 2, 2.0)))
    assert not needs_dense_matrices(fold_dispatch(ModelConfig(), all_int8, 512), all_int8, 512)
    dense_between = DispatchTable("avx2", "float32", (StepChoice(4, "int8", 1, 1.0),
                                                      StepChoice(16, "dense", 2, 2.0),
                                                      StepChoice(64, "int8", 2, 3.0)))
    assert needs_dense_matrices(fold_dispatch(ModelConfig(), dense_between, 512),
                                dense_between, 512)
    capped = ModelConfig(quantized_max_tokens=256)  # an explicit cap below the step budget
    assert needs_dense_matrices(fold_dispatch(capped, all_int8, 512), all_int8, 512)
    assert not needs_dense_matrices(fold_dispatch(capped, all_int8, 256), all_int8, 256)
    explicit = ModelConfig(dtype="float32", quantized_max_tokens=64, quantized_activations="exact")
    assert not needs_dense_matrices(explicit, None, 64)
    assert needs_dense_matrices(explicit, None, 65)
    assert needs_dense_matrices(ModelConfig(quantized_max_tokens=512, kernels="torch"), None, 8)


def test_the_engine_follows_the_table():
    """A hand-made table (dense at 1 token, int8 at 2-4 on one thread): the runner takes the
    one-call quantized path exactly where the table says, with its thread count."""
    from flintlm import SamplingParams
    from flintlm.config import CacheConfig, FlintConfig
    from flintlm.engine.engine import Engine
    from flintlm.loading import load_checkpoint

    kernels_available = calibrate.CpuKernels.create(torch.device("cpu"), torch.float32)
    if kernels_available is None:
        pytest.skip("no C compiler: no native kernels to dispatch to")
    table = DispatchTable(isa.selected_tier(), "float32", (StepChoice(1, "dense", 2, 1.0),
                                                           StepChoice(4, "int8", 1, 1.0),
                                                           StepChoice(8, "dense", 2, 1.0)))
    config = FlintConfig(model=fold_dispatch(ModelConfig(), table, 8),
                         cache=CacheConfig(kv_cache_memory=16 << 20))
    engine = Engine(config, load_checkpoint("default", torch.float32), table)
    runner = engine.runner
    assert runner.fast_decode is not None
    assert [runner.fast_decode.can_run(n) for n in (1, 2, 4, 5, 8)] == \
        [False, True, True, False, False]
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert runner.threads_for(3) == 1 and runner.threads_for(6) is None
    finally:
        torch.set_num_threads(previous)
    engine.add_request("r", [1, 2, 3], SamplingParams(max_tokens=3, ignore_eos=True))
    outputs = []
    while engine.has_unfinished:
        outputs += engine.step()
    assert outputs[-1].finished and sum(len(o.new_token_ids) for o in outputs) == 3


def run_info(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flintlm", "info", *args],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=300)


def test_info_reports_the_cpu_tier_and_table():
    result = run_info("--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["tiers"]["selected"] == isa.selected_tier()  # the best, unless forced
    assert report["tiers"]["forced"] == isa.forced_tier()
    assert isa.forced_tier() or report["tiers"]["selected"] == isa.supported_tiers()[0]
    table = report["dispatch"]
    assert table is None or [c["step_size"] for c in table["choices"]] == \
        list(calibrate.STEP_SIZES)


@pytest.mark.skipif("avx2" not in isa.supported_tiers() or isa.supported_tiers()[0] == "avx2",
                    reason="needs a CPU above the AVX2 tier to force it down")
def test_a_forced_tier_caps_the_kernels_and_torch():
    result = run_info("--json", "--no-table", FLINTLM_CPU_ISA="avx2")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["tiers"] == {**report["tiers"], "selected": "avx2", "forced": "avx2"}
    assert report["torch_cpu_capability"] == "AVX2"
    assert report["torch_caps"] == {"ATEN_CPU_CAPABILITY": {"value": "avx2", "set_by": "flintlm"},
                                    "ONEDNN_MAX_CPU_ISA": {"value": "AVX2_VNNI",
                                                           "set_by": "flintlm"}}
    assert report["kernels"] is None or report["kernels"]["tier"] == "avx2"


def _isolate_caps(monkeypatch, **values: str) -> None:
    """This test's values for the cap variables and FLINTLM_TORCH_CAPS_APPLIED (the others
    unset); monkeypatch restores all of them afterwards."""
    for name in (*isa.CAP_NAMES, "FLINTLM_TORCH_CAPS_APPLIED", "FLINTLM_CPU_ISA"):
        if name in values:
            monkeypatch.setenv(name, values[name])
        else:
            monkeypatch.delenv(name, raising=False)


GENERIC_CAPS = {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41",
                "FLINTLM_TORCH_CAPS_APPLIED": "ATEN_CPU_CAPABILITY=default,"
                                              "ONEDNN_MAX_CPU_ISA=SSE41"}


@pytest.mark.skipif("avx2" not in isa.supported_tiers(), reason="needs an AVX2 CPU")
def test_caps_a_flintlm_parent_set_are_replaced_and_the_users_kept(monkeypatch):
    # what a child of a FLINTLM_CPU_ISA=generic process inherits, now forced to avx2
    _isolate_caps(monkeypatch, **GENERIC_CAPS, FLINTLM_CPU_ISA="avx2")
    isa.cap_torch_to_forced_tier()
    assert isa.torch_caps() == {"ATEN_CPU_CAPABILITY": ("avx2", "flintlm"),
                                "ONEDNN_MAX_CPU_ISA": ("AVX2_VNNI", "flintlm")}
    # the same child with no tier forced: flintlm's caps are gone, not the parent's kept
    _isolate_caps(monkeypatch, **GENERIC_CAPS)
    isa.cap_torch_to_forced_tier()
    assert isa.torch_caps() == {} and "FLINTLM_TORCH_CAPS_APPLIED" not in os.environ
    # a cap the user set (or changed after flintlm set it) is the user's and stays
    _isolate_caps(monkeypatch, **{**GENERIC_CAPS, "ONEDNN_MAX_CPU_ISA": "AVX2"},
                  FLINTLM_CPU_ISA="avx2")
    isa.cap_torch_to_forced_tier()
    assert isa.torch_caps() == {"ATEN_CPU_CAPABILITY": ("avx2", "flintlm"),
                                "ONEDNN_MAX_CPU_ISA": ("AVX2", "user")}
    _isolate_caps(monkeypatch, ATEN_CPU_CAPABILITY="default")
    isa.cap_torch_to_forced_tier()
    assert isa.torch_caps() == {"ATEN_CPU_CAPABILITY": ("default", "user")}


@pytest.mark.skipif("avx2" not in isa.supported_tiers(), reason="needs an AVX2 CPU")
def test_a_child_forced_to_another_tier_is_capped_to_its_own():
    """A process forced to generic (as the suite under FLINTLM_CPU_ISA=generic) starts
    `flintlm info` forced to avx2: torch in the child runs AVX2, not the parent's default."""
    parent = ("import subprocess, sys, os, flintlm; sys.exit(subprocess.run([sys.executable, "
              "'-m', 'flintlm', 'info', '--json', '--no-table'], "
              "env={**os.environ, 'FLINTLM_CPU_ISA': 'avx2'}).returncode)")
    environ = {k: v for k, v in os.environ.items()
               if k not in (*isa.CAP_NAMES, "FLINTLM_TORCH_CAPS_APPLIED")}
    result = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True,
                            env={**environ, "FLINTLM_CPU_ISA": "generic"}, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["torch_cpu_capability"] == "AVX2"
    assert report["torch_caps"]["ATEN_CPU_CAPABILITY"] == {"value": "avx2", "set_by": "flintlm"}
    assert report["tiers"]["forced"] == "avx2"


def test_an_unknown_or_impossible_tier_is_refused():
    result = run_info("--no-table", FLINTLM_CPU_ISA="sse9")
    assert result.returncode != 0
    assert "FLINTLM_CPU_ISA" in result.stderr + result.stdout


def _table_with_threads(one_ms: float, all_ms: float) -> DispatchTable:
    timings = tuple(calibrate.Timing(step, path, "float32", count, one_ms if count == 1 else all_ms)
                    for step in (1, 2, 4) for path in ("dense", "int8") for count in (1, 2))
    return DispatchTable("avx2", "float32", (StepChoice(1, "int8", 1, one_ms),), timings)


def test_a_table_measured_on_a_busy_machine_is_used_but_never_cached(tmp_path, monkeypatch,
                                                                     caplog):
    """Measured on 2026-12-03: a calibration that ran while tests held the other core timed
    every 2-thread step ~10x slower than 1 thread, chose 1 thread, and that cached table held
    1B decode at 17 tok/s (28 with 2 threads) on every later start."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    busy, quiet = _table_with_threads(50.0, 520.0), _table_with_threads(50.0, 30.0)
    assert busy.was_contended and not quiet.was_contended
    assert not _table_with_threads(50.0, 90.0).was_contended  # slower, not collapsed
    monkeypatch.setattr(calibrate, "calibrate", lambda *args, **kwargs: busy)
    assert calibrate.load_or_calibrate(TINY, dtype="float32") == busy
    assert "busy" in caplog.text
    assert list(tmp_path.rglob("*.json")) == []
    monkeypatch.setattr(calibrate, "calibrate", lambda *args, **kwargs: quiet)
    assert calibrate.load_or_calibrate(TINY, dtype="float32") == quiet
    assert len(list(tmp_path.rglob("*.json"))) == 1
