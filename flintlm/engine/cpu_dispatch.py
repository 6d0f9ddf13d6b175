"""Before a CPU model is read: the measured dispatch table folded into its `ModelConfig`.

What the configuration leaves to "auto" (the compute dtype, how many tokens a step may have to
take the quantized path, int8 or exact activations) is decided by `kernels/calibrate.py`'s
table for this machine and model shapes; explicit settings are kept and constrain the
measurement. The dtype must be known before the weights are read, hence this runs first; so
must whether the weights need dense copies at all (`needs_dense_matrices`).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from flintlm.config import ModelConfig
    from flintlm.kernels.calibrate import DispatchTable

logger = logging.getLogger(__name__)


def is_left_to_measure(config: ModelConfig) -> bool:
    return (config.dtype == "auto" or config.quantized_max_tokens is None
            or config.quantized_activations == "auto")


def measured_dispatch(config: ModelConfig, device: torch.device,
                      refresh: bool = False) -> DispatchTable | None:
    """The table for this machine and `config.model`, or None where none applies (not a CPU,
    torch kernels asked for, nothing left to measure, no C compiler)."""
    if device.type != "cpu" or config.kernels == "torch" or not is_left_to_measure(config):
        return None
    from flintlm.kernels.calibrate import ModelShapes, load_or_calibrate
    from flintlm.kernels.ops import CpuKernels
    from flintlm.loading.loader import read_arch

    if CpuKernels.create(device, torch.float32, config.kernels) is None:
        return None
    arch, weight_type = read_arch(config.model)
    shapes = ModelShapes(arch.hidden_size, arch.q_size, arch.kv_size, arch.intermediate_size,
                         arch.vocab_size, arch.num_layers, weight_type)
    dtype = None if config.dtype == "auto" else config.dtype
    if dtype not in (None, "float32", "bfloat16"):
        return None  # float16 on a CPU: nothing of ours to choose between
    activations = (None if config.quantized_activations == "auto"
                   else config.quantized_activations)
    return load_or_calibrate(shapes, dtype, activations, refresh)


def fold_dispatch(config: ModelConfig, table: DispatchTable | None,
                  max_step_tokens: int) -> ModelConfig:
    """`config` with its "auto" choices replaced by the table's (unchanged without one).

    Where the largest step size measured chose a quantized path, larger steps do too (both
    paths are compute-bound there and scale alike), up to the scheduler's step budget
    `max_step_tokens`."""
    if table is None:
        return config
    max_tokens = table.quantized_max_tokens
    if table.is_quantized(table.choices[-1].step_size):
        max_tokens = max(max_tokens, max_step_tokens)
    return dataclasses.replace(
        config,
        dtype=table.dtype if config.dtype == "auto" else config.dtype,
        quantized_max_tokens=(max_tokens if config.quantized_max_tokens is None
                              else config.quantized_max_tokens),
        quantized_activations=(table.activations if config.quantized_activations == "auto"
                               else config.quantized_activations))


def needs_dense_matrices(config: ModelConfig, table: DispatchTable | None,
                         max_num_batched_tokens: int) -> bool:
    """Whether the layer matrices must be read dense besides their GGUF blocks: yes unless
    every step the scheduler can issue (1 to `max_num_batched_tokens` tokens) takes a quantized
    path, by the rule the runner follows (`QuantizedSteps` on the folded `config`), on kernels
    this machine has. Without them a 1B model's weights take about half the memory."""
    from flintlm.engine.model_runner import (
        DEFAULT_QUANTIZED_MAX_TOKENS,
        resolve_device,
        resolve_dtype,
    )
    from flintlm.kernels.ops import CpuKernels
    from flintlm.models.quant import QuantizedSteps

    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    if CpuKernels.create(device, dtype, config.kernels) is None:
        return True
    max_tokens = config.quantized_max_tokens
    steps = QuantizedSteps(DEFAULT_QUANTIZED_MAX_TOKENS if max_tokens is None else max_tokens,
                           table)
    return not all(steps(n) for n in range(1, max_num_batched_tokens + 1))
