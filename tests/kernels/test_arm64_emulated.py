"""flintlm's CPU kernels built for ARM64 (gcc-aarch64-linux-gnu) and run under qemu-user, against
the torch references of the x86 tests (test_cpu_kernels.py), once per ARM build: the portable
code and each NEON variant. Correctness only: emulated time says nothing about ARM speed.

Skipped when the cross tools are missing, unless FLINTLM_REQUIRE_CROSS=1 (CI) makes that a
failure. Shapes are small: qemu runs the kernels 10-50x slower than a native CPU.
"""

import os

import pytest
import torch
from torch.nn import functional as F

from flintlm.kernels import abi
from flintlm.kernels.ops import KV_KINDS, CpuKernels, kv_cache_from_token_major
from flintlm.models.layers import RMSNorm, RotaryEmbedding
from tests.kernels.arm.emulation import (
    DEBIAN_PACKAGES,
    ArmBuild,
    Case,
    Emulator,
    build_driver,
    from_bytes,
    missing_tools,
)
from tests.kernels.test_cpu_kernels import close, reference_attention

ARM_BUILDS = [
    ArmBuild("generic", "generic", "armv8-a", has_int8_dot=False),
    ArmBuild("neon", "neon", "armv8-a", has_int8_dot=True),  # no SDOT: widening multiplies
    ArmBuild("neon-dotprod", "neon", "armv8.2-a+dotprod", has_int8_dot=True),
]
DTYPES = {torch.float32: 0, torch.bfloat16: 1}  # the driver's `dtype` argument
PAIRS = {dtype: CpuKernels.pair(dtype) for dtype in DTYPES}  # the cache layout's pair size


@pytest.fixture(scope="module", params=ARM_BUILDS, ids=lambda build: build.name)
def emulator(request, tmp_path_factory) -> Emulator:
    missing = missing_tools()
    if missing:
        reason = f"{' and '.join(missing)} not found (Debian: apt-get install {DEBIAN_PACKAGES})"
        if os.environ.get("FLINTLM_REQUIRE_CROSS") == "1":
            pytest.fail(f"FLINTLM_REQUIRE_CROSS=1 but {reason}")
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp(request.param.name)
    return Emulator(request.param, build_driver(request.param, folder), folder)


def test_the_build_reports_its_tier_abi_layout_and_int8_path(emulator):
    [outputs] = emulator.run([Case("features", {}, {})])
    available, has_dot = from_bytes(outputs["features"], torch.int32, (2,)).tolist()
    assert outputs["tier"].decode() == emulator.build.tier
    # version, limits and structure layouts as the ARM64 compiler laid them out == ctypes'
    layout = from_bytes(outputs["layout"], torch.int64, (-1,)).tolist()
    assert layout == abi.layout()
    assert available and bool(has_dot) == emulator.build.has_int8_dot


def quantized_x(x: torch.Tensor) -> torch.Tensor:
    """x as the int8 path sees it: per block of 32, round(x * 127 / max|x|) * max|x| / 127
    (round half to even, as the kernels' lrintf and vcvtn)."""
    blocks = x.float().reshape(x.shape[0], -1, 32)
    amax = blocks.abs().amax(-1, keepdim=True)
    inverse = torch.where(amax > 0, 127.0 / amax, torch.zeros_like(amax))
    return (torch.round(blocks * inverse) * (amax / 127.0)).reshape(x.shape)


@pytest.mark.parametrize("type_name", ["Q4_0", "Q4_1", "Q8_0"])
def test_quant_matmul_multiplies_the_stored_weights(emulator, type_name):
    """Exact path: dequantized weights times x; int8 path (row and interleaved layouts): the
    dequantized weights times the int8-quantized x, which it computes exactly up to float32
    rounding. Rows 1, 5 and 9 cover partial activation tiles and the row
    layout's passes of 8."""
    from gguf import GGMLQuantizationType, quants

    from flintlm.loading.checkpoint import QuantizedWeight
    from flintlm.loading.dequant import dequantize
    from flintlm.models.quant import interleave, repack

    torch.manual_seed(0)
    n, k, col0 = 48, 96, 3  # three blocks a row: an odd last block
    ggml_type = GGMLQuantizationType[type_name]
    blocks = torch.from_numpy(quants.quantize((torch.randn(n, k) * 0.1).numpy(), ggml_type))
    dense = dequantize(blocks.flatten(), ggml_type, (n, k), torch.float32).double()
    weight = repack(QuantizedWeight(type_name, blocks))
    layouts = [(weight, False), (weight, True), (interleave(weight), True)]
    cases, expected = [], []
    for dtype, code in DTYPES.items():
        for rows in (1, 5, 9):
            x = torch.randn(rows, k).to(dtype)
            for matrix, use_int8 in layouts:
                scalars = dict(dtype=code, rows=rows, k=k, n=n, y_width=n + col0, col0=col0,
                               weight_kind=int(matrix.kind),
                               is_interleaved=int(matrix.is_interleaved),
                               use_int8=int(use_int8))
                cases.append(Case("quant_matmul", scalars,
                                  dict(x=x, q=matrix.q, d=matrix.d, m=matrix.m)))
                x_seen = quantized_x(x) if use_int8 else x.float()
                expected.append((dtype, rows, x_seen.double() @ dense.t()))
    for outputs, (dtype, rows, reference) in zip(emulator.run(cases), expected, strict=True):
        y = from_bytes(outputs["y"], dtype, (rows, n + col0))
        assert not y[:, :col0].any()
        close(y[:, col0:], reference, dtype)


@pytest.mark.parametrize("kv_dtype", DTYPES, ids=["kv_f32", "kv_bf16"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "bf16"])
def test_paged_attention_matches_the_reference(emulator, dtype, kv_dtype):
    """Scattered blocks, partial last blocks, rows of one sequence seeing growing prefixes;
    groups of 3, 1, 4 and 16 query heads per KV head; either cache dtype."""
    torch.manual_seed(1)
    block_size, num_blocks = 16, 12
    lengths_and_contexts = [(1, [1]), (17, [17]), (40, [30, 40])]
    cases, references = [], []
    for num_heads, num_kv_heads, head_dim in [(9, 3, 64), (8, 8, 32), (4, 1, 128), (16, 1, 32)]:
        k_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_dim).to(kv_dtype)
        v_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_dim).to(kv_dtype)
        free = torch.randperm(num_blocks).tolist()
        tables = [[free.pop() for _ in range(-(-length // block_size))]
                  for length, _ in lengths_and_contexts]
        max_blocks = max(len(table) for table in tables)
        padded = torch.tensor([t + [0] * (max_blocks - len(t)) for t in tables], dtype=torch.int32)
        row_seq = [i for i, (_, contexts) in enumerate(lengths_and_contexts) for _ in contexts]
        row_ctx = [c for _, contexts in lengths_and_contexts for c in contexts]
        q = torch.randn(len(row_seq), num_heads, head_dim).to(dtype)
        scale = head_dim ** -0.5
        native_k, native_v = kv_cache_from_token_major(k_cache, v_cache, PAIRS[kv_dtype])
        scalars = dict(dtype=DTYPES[dtype], kv_kind=int(KV_KINDS[kv_dtype]),
                       num_rows=len(row_seq), num_heads=num_heads, num_kv_heads=num_kv_heads,
                       head_dim=head_dim, block_size=block_size, max_blocks=max_blocks,
                       scale=scale)
        inputs = dict(q=q, k_cache=native_k, v_cache=native_v, block_tables=padded,
                      row_seq=torch.tensor(row_seq, dtype=torch.int32),
                      row_ctx=torch.tensor(row_ctx, dtype=torch.int32))
        cases.append(Case("paged_attention", scalars, inputs))
        references.append(torch.stack([
            reference_attention(q[row], k_cache, v_cache, tables[row_seq[row]], row_ctx[row], scale)
            for row in range(len(row_seq))]))
    for outputs, reference in zip(emulator.run(cases), references, strict=True):
        close(from_bytes(outputs["out"], dtype, tuple(reference.shape)), reference, dtype)


@pytest.mark.parametrize("kv_dtype", DTYPES, ids=["kv_f32", "kv_bf16"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "bf16"])
def test_rope_write_kv_rotates_and_fills_the_slots(emulator, dtype, kv_dtype):
    torch.manual_seed(2)
    num_heads, num_kv_heads, head_dim, num_tokens, block_size = 9, 3, 64, 7, 16
    rotary = RotaryEmbedding(head_dim, 256, 10000.0, None)
    width = (num_heads + 2 * num_kv_heads) * head_dim
    qkv = torch.randn(num_tokens, width).to(dtype)
    positions = torch.tensor([0, 1, 5, 17, 100, 200, 255])
    slots = torch.tensor([3, 4, 9, 31, 0, 12, 20])
    scalars = dict(dtype=DTYPES[dtype], kv_kind=int(KV_KINDS[kv_dtype]), num_tokens=num_tokens,
                   row_stride=width,
                   num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
                   block_size=block_size, num_blocks=2)
    inputs = dict(qkv=qkv, positions=positions, slots=slots, cos=rotary.cos, sin=rotary.sin)
    [outputs] = emulator.run([Case("rope_write_kv", scalars, inputs)])

    q, k, v = qkv.split([num_heads * head_dim, num_kv_heads * head_dim,
                         num_kv_heads * head_dim], dim=-1)
    q_ref, k_ref = rotary(positions, q.reshape(num_tokens, num_heads, head_dim),
                          k.reshape(num_tokens, num_kv_heads, head_dim))
    close(from_bytes(outputs["q_out"], dtype, tuple(q_ref.shape)), q_ref, dtype)
    k_rot = from_bytes(outputs["k_out"], dtype, tuple(k_ref.shape))
    close(k_rot, k_ref, dtype)
    expected_k = torch.zeros(2, block_size, num_kv_heads, head_dim, dtype=kv_dtype)
    expected_v = torch.zeros_like(expected_k)
    expected_k.view(-1, num_kv_heads, head_dim)[slots] = k_rot.to(kv_dtype)
    expected_v.view(-1, num_kv_heads, head_dim)[slots] = v.reshape(
        num_tokens, num_kv_heads, head_dim).to(kv_dtype)
    for name, cache in zip(("k_cache", "v_cache"),
                           kv_cache_from_token_major(expected_k, expected_v, PAIRS[kv_dtype]),
                           strict=True):
        assert torch.equal(from_bytes(outputs[name], kv_dtype, tuple(cache.shape)), cache)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "bf16"])
def test_add_rms_norm_and_silu_and_mul(emulator, dtype):
    torch.manual_seed(3)
    size = 576
    norm = RMSNorm(size, 1e-5).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(size) + 0.5)
    x, residual = torch.randn(5, size).to(dtype), torch.randn(5, size).to(dtype)
    gate_up = (torch.randn(6, 2 * 1536) * 4).to(dtype)
    scalars = dict(dtype=DTYPES[dtype], num_tokens=5, size=size, eps=1e-5)
    weight = norm.weight.detach()
    cases = [Case("add_rms_norm", dict(scalars, has_x=1),
                  dict(x=x, residual=residual, weight=weight)),
             Case("add_rms_norm", dict(scalars, has_x=0), dict(residual=residual, weight=weight)),
             Case("silu_and_mul", dict(dtype=DTYPES[dtype], num_tokens=6, size=1536),
                  dict(gate_up=gate_up))]
    added, alone, silu = emulator.run(cases)

    expected_residual = residual + x
    assert torch.equal(from_bytes(added["residual"], dtype, (5, size)), expected_residual)
    with torch.no_grad():
        close(from_bytes(added["out"], dtype, (5, size)), norm(expected_residual), dtype)
        close(from_bytes(alone["out"], dtype, (5, size)), norm(residual), dtype)
    gate, up = gate_up.float().chunk(2, dim=-1)
    close(from_bytes(silu["out"], dtype, (6, 1536)), F.silu(gate) * up, dtype)


def test_argmax_matches_torch_including_ties(emulator):
    torch.manual_seed(4)
    cases, expected = [], []
    for vocab in (7, 33, 4099):
        logits = torch.randn(5, vocab)
        logits[1, 0] = logits[1, vocab - 1] = 50.0  # a tie: the first index wins
        logits[2, :] = 1.0  # all equal
        logits[3, vocab - 1] = 60.0  # the maximum in the tail
        cases.append(Case("argmax_rows", dict(num_rows=5, vocab=vocab), dict(logits=logits)))
        expected.append(logits.argmax(dim=-1))
    for outputs, reference in zip(emulator.run(cases), expected, strict=True):
        assert torch.equal(from_bytes(outputs["out"], torch.int64, (5,)), reference)
