"""The contract between flintlm's Python and its C kernels, declared once, here.

The ABI version, the size limits, every exported kernel's prototype and the structures
decode_step.c reads are written below. `header()` renders them as C (`abi.h`, generated into
the build folder by native.py and never edited by hand), the ctypes bindings and structures come
from the same declarations, and at load the library's own report of its limits and of each
structure's size and field offsets (as its compiler laid them out) must equal ctypes' layout.
"""

from __future__ import annotations

import ctypes
import enum
from dataclasses import dataclass

ABI_VERSION = 9

LIMITS = {  # name: (value, what it bounds)
    "MAX_GROUP": (16, "query heads per KV head"),
    "MAX_HEAD_DIM": (256, "elements per attention head"),
    "MAX_BLOCK": (128, "tokens per KV-cache block"),
    "QBLOCK": (32, "weights per quantization block (GGML's block size)"),
    "MAX_QBLOCKS": (1024, "quantization blocks per weight row: K <= 32768"),
}


def limit(name: str) -> int:
    return LIMITS[name][0]


class WeightKind(enum.IntEnum):
    """How a quantized matrix's blocks decode, w = d q + m per block (quant_matmul.c), passed
    to the kernels as `weight_kind` (C: WEIGHT_<name>). Where m is a fixed multiple of d, a
    tile may fold it into its integer sums, d (q - c) . x, and never read m."""

    Q8_0 = 0  # one byte a value, q + 128; m = -128 d
    Q4_1 = 1  # two 4-bit values a byte; m as stored
    Q4_0 = 2  # two 4-bit values a byte; m = -8 d


class KVKind(enum.IntEnum):
    """The KV cache's element type, passed to the attention kernels as `kv_kind` (C:
    KV_<name>); independent of the compute type (a float32 model may keep a bfloat16 cache)."""

    F32 = 0
    BF16 = 1


_SCALARS = {"int": ctypes.c_int, "int64_t": ctypes.c_int64, "float": ctypes.c_float}


def _ctype(c_type: str, structs: dict[str, type[ctypes.Structure]]) -> object:
    if c_type.endswith("*"):
        return ctypes.c_void_p
    return structs.get(c_type) or _SCALARS[c_type]


# -- structures (decode_step.c) ----------------------------------------------------------------

_STRUCT_FIELDS: dict[str, list[tuple[str, str]]] = {  # C name: [(C type, field)]
    "decode_matrix": [("const uint8_t *", "q"), ("const uint16_t *", "d"),
                      ("const uint16_t *", "m"), ("int64_t", "out_features"),
                      ("int", "weight_kind"), ("int", "is_interleaved")],
    "decode_layer": [("const void *", "input_norm"), ("const void *", "post_attention_norm"),
                     ("decode_matrix", "qkv"), ("decode_matrix", "o"),
                     ("decode_matrix", "gate_up"), ("decode_matrix", "down"),
                     ("void *", "k_cache"), ("void *", "v_cache")],
    "decode_batch": [("int64_t", "num_rows"), ("int", "hidden"), ("int", "num_heads"),
                     ("int", "num_kv_heads"), ("int", "head_dim"), ("int", "intermediate"),
                     ("int", "block_size"), ("int", "max_blocks"), ("float", "eps"),
                     ("float", "scale"), ("int", "use_int8"), ("int", "kv_kind"),
                     ("const int64_t *", "positions"), ("const int64_t *", "slots"),
                     ("const float *", "cos_table"), ("const float *", "sin_table"),
                     ("const int32_t *", "block_tables"), ("const int32_t *", "row_seq"),
                     ("const int32_t *", "row_ctx")],
}


def _make_structs() -> dict[str, type[ctypes.Structure]]:
    made: dict[str, type[ctypes.Structure]] = {}
    for name, fields in _STRUCT_FIELDS.items():  # in order: a struct only holds earlier ones
        made[name] = type(name, (ctypes.Structure,), {
            "_fields_": [(field, _ctype(c_type, made)) for c_type, field in fields]})
    return made


STRUCTS = _make_structs()
DecodeMatrix = STRUCTS["decode_matrix"]
DecodeLayer = STRUCTS["decode_layer"]
DecodeBatch = STRUCTS["decode_batch"]


# -- kernels -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Kernel:
    """An exported kernel, defined once per dtype (suffix _f32 / _bf16; T is the element type).
    A kernel that allocates returns an int status: 0, or nonzero where it could not allocate
    (its outputs are then unwritten)."""

    name: str
    params: tuple[tuple[str, str], ...]  # (C type, name)
    returns_status: bool = False

    def argtypes(self) -> list[object]:
        return [_ctype(c_type.replace("T *", "void *"), STRUCTS) for c_type, _ in self.params]


KERNELS = (
    Kernel("paged_attention", (
        ("const T *", "q"), ("const void *", "k_cache"), ("const void *", "v_cache"),
        ("int", "kv_kind"), ("const int32_t *", "block_tables"), ("const int32_t *", "row_seq"),
        ("const int32_t *", "row_ctx"), ("T *", "out"), ("int64_t", "num_rows"),
        ("int", "num_heads"), ("int", "num_kv_heads"), ("int", "head_dim"),
        ("int", "block_size"), ("int", "max_blocks"), ("float", "scale"))),
    Kernel("rope_write_kv", (
        ("const T *", "q"), ("const T *", "k"), ("const T *", "v"), ("int64_t", "row_stride"),
        ("const int64_t *", "positions"), ("const float *", "cos_table"),
        ("const float *", "sin_table"), ("const int64_t *", "slots"), ("T *", "q_out"),
        ("T *", "k_out"), ("void *", "k_cache"), ("void *", "v_cache"), ("int", "kv_kind"),
        ("int64_t", "num_tokens"),
        ("int", "num_heads"), ("int", "num_kv_heads"), ("int", "head_dim"),
        ("int", "block_size"))),
    Kernel("add_rms_norm", (
        ("const T *", "x"), ("T *", "residual"), ("const T *", "weight"), ("T *", "out"),
        ("int64_t", "num_tokens"), ("int", "size"), ("float", "eps"))),
    Kernel("silu_and_mul", (
        ("const T *", "gate_up"), ("T *", "out"), ("int64_t", "num_tokens"), ("int", "size"))),
    Kernel("quant_matmul", (
        ("const T *", "x"), ("int64_t", "rows"), ("int64_t", "k"), ("const uint8_t *", "q"),
        ("const uint16_t *", "d"), ("const uint16_t *", "m"), ("int", "weight_kind"),
        ("int", "is_interleaved"), ("int64_t", "n"), ("T *", "y"), ("int64_t", "y_stride"),
        ("int64_t", "col0"), ("int", "use_int8")), returns_status=True),
    Kernel("decode_step", (
        ("const decode_layer *", "layers"), ("int", "num_layers"),
        ("const decode_batch *", "b"), ("T *", "residual"), ("T *", "hidden"),
        ("T *", "scratch")), returns_status=True),
)


# -- the C rendering and the load-time check -----------------------------------------------------

def layout() -> list[int]:
    """What the library must report: the ABI version, each limit, each weight kind's value,
    then per structure its size and each field's offset, in declaration order."""
    values = [ABI_VERSION, *(value for value, _ in LIMITS.values()), *map(int, WeightKind),
              *map(int, KVKind)]
    for name, fields in _STRUCT_FIELDS.items():
        struct = STRUCTS[name]
        values += [ctypes.sizeof(struct), *(getattr(struct, f).offset for _, f in fields)]
    return values


def header() -> str:
    """abi.h: the declarations above in C."""
    lines = ["/* Generated from flintlm/kernels/abi.py by kernels/native.py: do not edit. */",
             "#ifndef FLINTLM_ABI_H", "#define FLINTLM_ABI_H", "#include <stddef.h>",
             "#include <stdint.h>", "", f"#define FLINTLM_ABI_VERSION {ABI_VERSION}"]
    lines += [f"#define {name} {value}  /* {why} */" for name, (value, why) in LIMITS.items()]
    lines += [f"#define WEIGHT_{kind.name} {int(kind)}" for kind in WeightKind]
    lines += [f"#define KV_{kind.name} {int(kind)}" for kind in KVKind]
    for name, fields in _STRUCT_FIELDS.items():
        lines += ["", "typedef struct {"]
        lines += [f"    {c_type}{'' if c_type.endswith('*') else ' '}{field};"
                  for c_type, field in fields]
        lines.append(f"}} {name};")
    lines += ["", "/* Every file defining a kernel is checked against these prototypes. */",
              "#define DECLARE_KERNELS(SUFFIX, T) \\"]
    for kernel in KERNELS:
        params = ", ".join(f"{c_type}{'' if c_type.endswith('*') else ' '}{param}"
                           for c_type, param in kernel.params)
        result = "int" if kernel.returns_status else "void"
        lines.append(f"    {result} {kernel.name}_##SUFFIX({params}); \\")
    lines.append("")
    entries = ["FLINTLM_ABI_VERSION", *LIMITS, *(f"WEIGHT_{kind.name}" for kind in WeightKind),
               *(f"KV_{kind.name}" for kind in KVKind)]
    for name, fields in _STRUCT_FIELDS.items():
        entries += [f"sizeof({name})", *(f"offsetof({name}, {f})" for _, f in fields)]
    lines += ["/* The library reports this at load (abi.py `layout()`), as compiled */",
              f"#define FLINTLM_ABI_LAYOUT {{{', '.join(entries)}}}", "", "#endif", ""]
    return "\n".join(lines)


class AbiMismatch(RuntimeError):
    pass


def check(reported: list[int]) -> None:
    """Raise AbiMismatch unless the library's report equals `layout()`."""
    expected = layout()
    if reported != expected:
        raise AbiMismatch(f"the kernel library's ABI report {reported} differs from abi.py's "
                          f"{expected}: rebuild it (delete the cached .so)")
