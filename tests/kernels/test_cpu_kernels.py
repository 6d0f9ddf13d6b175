"""flintlm's CPU kernels against the torch reference they replace, on random inputs: paged
attention over scattered blocks (GQA, partial last blocks, rows of one sequence seeing different
prefixes), rotary + KV write, residual RMSNorm and SiLU-and-mul, quantized matmuls, argmax, in
float32 and bfloat16, for every instruction-set tier this CPU executes (each built in this
process: avx512, avx2 and generic on an AVX-512 machine; neon and generic on ARM64)."""

import random

import pytest
import torch
from torch.nn import functional as F

from flintlm.kernels import isa, native
from flintlm.kernels.abi import WeightKind
from flintlm.kernels.ops import CpuKernels
from flintlm.models.layers import RMSNorm, RotaryEmbedding

torch.set_num_threads(1)  # the suite shares two cores

TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16}


def load_tier(tier: str, extra_flags: tuple[str, ...] = ()) -> native.NativeLibrary:
    if tier not in native.available_tiers():
        pytest.skip(f"no kernels/{native.TIER_HEADERS[tier]} yet")
    library = native.load(tier, extra_flags)
    assert library is not None and library.tier == tier
    return library


# Every tier this CPU executes, and the AVX2 tier without AVX-VNNI where the CPU has it: the
# vpmaddubsw code that Zen 3 and Zen 4 run, which a build for this CPU would never compile.
BUILDS = {tier: (tier, ()) for tier in isa.supported_tiers()}
if "avx2" in BUILDS and "avx_vnni" in isa.cpu_features().flags:
    BUILDS["avx2-novnni"] = ("avx2", ("-mno-avxvnni",))


@pytest.fixture(scope="module", params=[(build, name) for build in BUILDS for name in DTYPES],
                ids=lambda param: "-".join(param))
def kernels(request):
    build, dtype_name = request.param
    return CpuKernels(load_tier(*BUILDS[build]), DTYPES[dtype_name])


@pytest.mark.parametrize("tier", isa.supported_tiers())
def test_each_tier_reports_the_tier_it_was_built_for(tier):
    library = load_tier(tier)
    assert library.has_int8_dot == (tier != "generic")
    flags = native.tier_flags(tier)
    if tier == "avx2" and "avx512f" in isa.cpu_features().flags:
        assert "-mno-avx512f" in flags  # -march=native alone would let AVX-512 in
    if tier == "generic":
        assert "-march=native" not in flags and "-DFLINTLM_TIER_GENERIC" in flags


def close(ours: torch.Tensor, reference: torch.Tensor, dtype: torch.dtype) -> None:
    torch.testing.assert_close(ours.float(), reference.float(), rtol=TOLERANCE[dtype],
                               atol=TOLERANCE[dtype])


def reference_attention(q, k_cache, v_cache, block_ids, context, scale):
    """One query row [H, D] over the first `context` tokens of a sequence's blocks."""
    num_kv_heads, head_dim = k_cache.shape[2:]
    keys = k_cache[block_ids].reshape(-1, num_kv_heads, head_dim)[:context].float()
    values = v_cache[block_ids].reshape(-1, num_kv_heads, head_dim)[:context].float()
    group = q.shape[0] // num_kv_heads
    keys = keys.repeat_interleave(group, dim=1)  # [L, H, D]
    values = values.repeat_interleave(group, dim=1)
    scores = torch.einsum("hd,lhd->hl", q.float(), keys) * scale
    return torch.einsum("hl,lhd->hd", scores.softmax(-1), values)


@pytest.mark.parametrize("kv_dtype", DTYPES.values(), ids=[f"kv_{n}" for n in DTYPES])
@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim",
                         [(9, 3, 64), (8, 8, 32), (4, 1, 128), (16, 1, 64), (12, 2, 96)])
def test_paged_attention_matches_the_reference(kernels, num_heads, num_kv_heads, head_dim,
                                               kv_dtype):
    """Either cache dtype under either compute dtype: a bfloat16 cache under float32 compute
    matches the reference over the same (rounded) cache to float32's tolerance."""
    dtype = kernels.dtype
    rng = random.Random(0)
    block_size, num_blocks = 16, 40
    k_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_dim).to(kv_dtype)
    v_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_dim).to(kv_dtype)
    free = list(range(num_blocks))
    rng.shuffle(free)
    sequences = []  # (blocks scattered over the cache, context lengths of its query rows)
    for length in (1, 16, 17, 70):
        blocks = [free.pop() for _ in range(-(-length // block_size))]
        contexts = [length] if length < 70 else [60, 65, 70]  # a chunk: rows see growing prefixes
        sequences.append((blocks, contexts))
    max_blocks = max(len(b) for b, _ in sequences)
    tables = torch.tensor([b + [0] * (max_blocks - len(b)) for b, _ in sequences],
                          dtype=torch.int32)
    row_seq = torch.tensor([i for i, (_, c) in enumerate(sequences) for _ in c], dtype=torch.int32)
    row_ctx = torch.tensor([n for _, c in sequences for n in c], dtype=torch.int32)
    q = torch.randn(len(row_seq), num_heads, head_dim).to(dtype)
    scale = head_dim ** -0.5

    native_k, native_v = kernels.from_token_major(k_cache, v_cache)
    out = kernels.paged_attention(q, native_k, native_v, tables, row_seq, row_ctx, scale)

    for row in range(len(row_seq)):
        blocks = sequences[row_seq[row]][0]
        expected = reference_attention(q[row], k_cache, v_cache, blocks, int(row_ctx[row]), scale)
        close(out[row], expected, dtype)


@pytest.mark.parametrize("kv_dtype", DTYPES.values(), ids=[f"kv_{n}" for n in DTYPES])
def test_rope_write_kv_rotates_and_fills_the_slots(kernels, kv_dtype):
    """The cache holds k and v rounded to its own dtype (to nearest even, as torch's .to)."""
    dtype = kernels.dtype
    num_heads, num_kv_heads, head_dim, num_tokens = 9, 3, 64, 7
    rotary = RotaryEmbedding(head_dim, 256, 10000.0, None)
    width = (num_heads + 2 * num_kv_heads) * head_dim
    qkv = torch.randn(num_tokens, width).to(dtype)
    q, k, v = qkv.split([num_heads * head_dim, num_kv_heads * head_dim,
                         num_kv_heads * head_dim], dim=-1)
    positions = torch.tensor([0, 1, 5, 17, 100, 200, 255])
    slots = torch.tensor([3, 4, 9, 31, 0, 12, 20])
    k_cache, v_cache = kernels.allocate_kv_cache(2, 16, num_kv_heads, head_dim, kv_dtype)

    q_rot, k_rot = kernels.rope_write_kv(q, k, v, positions, rotary.cos, rotary.sin, slots,
                                         k_cache, v_cache, num_heads, num_kv_heads)

    q_ref, k_ref = rotary(positions, q.reshape(num_tokens, num_heads, head_dim),
                          k.reshape(num_tokens, num_kv_heads, head_dim))
    close(q_rot, q_ref, dtype)
    close(k_rot, k_ref, dtype)
    # The same writes into a token-major cache, converted, must give the kernel's cache.
    expected_k = torch.zeros(2, 16, num_kv_heads, head_dim, dtype=kv_dtype)
    expected_v = torch.zeros_like(expected_k)
    expected_k.view(-1, num_kv_heads, head_dim)[slots] = k_rot.to(kv_dtype)
    expected_v.view(-1, num_kv_heads, head_dim)[slots] = v.reshape(
        num_tokens, num_kv_heads, head_dim).to(kv_dtype)
    native_k, native_v = kernels.from_token_major(expected_k, expected_v)
    assert torch.equal(k_cache, native_k)
    assert torch.equal(v_cache, native_v)


def test_add_rms_norm_updates_the_residual_and_normalises(kernels):
    dtype = kernels.dtype
    norm = RMSNorm(576, 1e-5).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(576) + 0.5)
    x = torch.randn(5, 576).to(dtype)
    residual = torch.randn(5, 576).to(dtype)
    expected_residual = residual + x
    with torch.no_grad():
        expected = norm(expected_residual)

    out = kernels.add_rms_norm(x, residual, norm.weight.detach(), 1e-5)

    assert torch.equal(residual, expected_residual)  # the same rounding as torch's add
    close(out, expected, dtype)
    alone = kernels.add_rms_norm(None, residual, norm.weight.detach(), 1e-5)  # no add
    close(alone, expected, dtype)
    assert torch.equal(residual, expected_residual)


def test_silu_and_mul(kernels):
    dtype = kernels.dtype
    gate_up = (torch.randn(6, 2 * 1536) * 4).to(dtype)
    gate, up = gate_up.float().chunk(2, dim=-1)
    close(kernels.silu_and_mul(gate_up), F.silu(gate) * up, dtype)


def test_non_contiguous_input_is_refused(kernels):
    gate_up = torch.randn(8, 6).to(kernels.dtype)
    with pytest.raises(ValueError, match="not contiguous"):
        kernels.silu_and_mul(gate_up[:, :4])


def test_torch_mode_and_other_devices_get_no_kernels():
    assert CpuKernels.create(torch.device("cpu"), torch.float32, "torch") is None
    assert CpuKernels.create(torch.device("cpu"), torch.float16, "auto") is None
    with pytest.raises(ValueError, match="native"):
        CpuKernels.create(torch.device("cpu"), torch.float16, "native")


def quantize_activations(x: torch.Tensor) -> torch.Tensor:
    """x [rows, K] -> x as the int8 path sees it: per block of 32, round(x * 127 / max|x|)
    (to nearest even, as the kernels) times max|x| / 127."""
    blocks = x.float().view(x.shape[0], -1, 32)
    amax = blocks.abs().amax(-1, keepdim=True)
    inv = torch.where(amax > 0, 127.0 / amax, torch.zeros_like(amax))
    return ((blocks * inv).round() * (amax / 127.0)).view_as(x)


@pytest.mark.parametrize("type_name", ["Q4_0", "Q4_1", "Q8_0"])
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 7, 13, 70])
def test_quant_matmul_multiplies_the_stored_weights(kernels, type_name, rows):
    """GGML blocks made by gguf's own quantizer, repacked. The exact path equals the
    dequantized weights times x; the int8 path, in the row layout and the interleaved one,
    equals the dequantized weights times the int8-quantized x (both up to float32 summation
    order and the output's rounding). Output columns land at col0; more rows than a pass takes
    come in passes (interleaved: tiles of 4 rows, then 1-3: 5, 7 and 13 rows run both the
    3-4-row tiles and the decode ones); odd block counts and K up to 2080 are covered."""
    from gguf import GGMLQuantizationType, quants

    from flintlm.loading.checkpoint import QuantizedWeight
    from flintlm.loading.dequant import dequantize
    from flintlm.models.quant import interleave, repack

    dtype = kernels.dtype
    torch.manual_seed(rows)
    for n, k in ((48, 96), (32, 2080)):
        ggml_type = GGMLQuantizationType[type_name]
        blocks = torch.from_numpy(quants.quantize((torch.randn(n, k) * 0.1).numpy(), ggml_type))
        dense = dequantize(blocks.flatten(), ggml_type, (n, k), torch.float64)
        weight = repack(QuantizedWeight(type_name, blocks))
        x = torch.randn(rows, k).to(dtype)
        expected = (x.double() @ dense.t()).float()
        expected_int8 = (quantize_activations(x).double() @ dense.t()).float()

        out = torch.zeros(rows, n + 5, dtype=dtype)
        kernels.quant_matmul(x, weight, out, 5, use_int8=False)
        assert not out[:, :5].any()
        close(out[:, 5:], expected, dtype)

        out_int8 = torch.zeros(rows, n, dtype=dtype)
        kernels.quant_matmul(x, weight, out_int8, 0, use_int8=True)
        close(out_int8, expected_int8, dtype)
        interleaved = interleave(weight)
        assert interleaved.is_interleaved and interleaved.out_features == n
        out_il = torch.zeros(rows, n + 3, dtype=dtype)
        kernels.quant_matmul(x, interleaved, out_il, 3, use_int8=True)
        assert not out_il[:, :3].any()
        close(out_il[:, 3:], expected_int8, dtype)
        with pytest.raises(ValueError, match="int8 path only"):
            kernels.quant_matmul(x, interleaved, out_il, 0, use_int8=False)


@pytest.mark.parametrize("kind", list(WeightKind), ids=lambda kind: kind.name)
def test_int8_path_holds_the_largest_block_sums(kernels, kind):
    """Every weight at its largest stored value (Q4 nibble 15, Q8 byte 255) against activations
    that quantize to +-127: the tiles' integer sums at their bounds (the AVX2 tier's int16 pair
    sums, the AVX-512 tier's high-nibble sums kept at 16x), for 1 to 7 rows (the 3-4-row tiles
    and the decode ones) and an odd number of blocks, in the row layout and the interleaved
    one; Q4_0's offsets folded into the sums, Q4_1's (the same values) read."""
    from flintlm.kernels.ops import QuantMatrix
    from flintlm.models.quant import interleave

    n, k = 32, 160
    is_4bit = kind != WeightKind.Q8_0
    q = torch.full((n, k // 2 if is_4bit else k), 0xFF, dtype=torch.uint8)
    d = torch.full((n, k // 32), 2.0**-7, dtype=torch.float16)
    m = d * (-8.0 if is_4bit else -128.0)  # Q4_0's and Q8_0's offsets, exact in float16
    weight = QuantMatrix(q, d, m, kind)
    dense = ((15.0 if is_4bit else 255.0) * d.double() + m.double()).repeat_interleave(32, 1)
    for rows in range(1, 8):
        x = torch.ones(rows, k) * torch.tensor([(-1.0) ** r for r in range(rows)])[:, None]
        x = x.to(kernels.dtype)
        expected = (x.double() @ dense.t()).float()
        for matrix in (weight, interleave(weight)):
            out = torch.zeros(rows, n, dtype=kernels.dtype)
            kernels.quant_matmul(x, matrix, out, 0, use_int8=True)
            close(out, expected, kernels.dtype)


def test_interleave_keeps_matrices_not_in_groups_of_16():
    from flintlm.kernels.ops import QuantMatrix
    from flintlm.models.quant import interleave

    weight = QuantMatrix(torch.zeros(24, 16, dtype=torch.uint8),
                         torch.ones(24, 1, dtype=torch.float16),
                         torch.zeros(24, 1, dtype=torch.float16), WeightKind.Q4_1)
    assert interleave(weight) is weight


@pytest.mark.parametrize("kind", [WeightKind.Q4_0, WeightKind.Q8_0], ids=lambda kind: kind.name)
def test_a_fixed_offset_kind_refuses_other_offsets(kind):
    """Tiles fold Q4_0's and Q8_0's offsets (-8 d, -128 d) and never read m: a matrix of those
    kinds whose m says otherwise would give another result per tier, so it is refused."""
    from flintlm.kernels.ops import QuantMatrix

    width = 16 if kind == WeightKind.Q4_0 else 32
    d = torch.full((16, 1), 0.5, dtype=torch.float16)
    q = torch.zeros(16, width, dtype=torch.uint8)
    fixed = -8.0 if kind == WeightKind.Q4_0 else -128.0
    QuantMatrix(q, d, d * fixed, kind)  # accepted
    with pytest.raises(ValueError, match="Q4_1"):
        QuantMatrix(q, d, d * fixed + 1.0, kind)


@pytest.mark.parametrize("vocab", [7, 33, 49152, 49155])
def test_argmax_matches_torch_including_ties(kernels, vocab):
    logits = torch.randn(9, vocab)
    logits[1, 0] = logits[1, vocab - 1] = 50.0  # a tie: the first index wins
    logits[2, :] = 1.0  # all equal
    logits[3, vocab - 1] = 60.0  # the maximum in the scalar tail
    assert torch.equal(kernels.argmax(logits), logits.argmax(dim=-1))


def test_a_kernel_that_cannot_allocate_raises_memory_error():
    """Under an address-space limit too small for quant_matmul's activation buffer, the
    kernel returns its status and the wrapper raises, instead of leaving `out` unwritten.
    (In a child process: the limit must not touch the test run.)"""
    import subprocess
    import sys

    script = """
import resource, torch
from flintlm.kernels import native
from flintlm.kernels.abi import WeightKind
from flintlm.kernels.ops import CpuKernels, QuantMatrix
from flintlm.models.quant import interleave
kernels = CpuKernels(native.load(), torch.bfloat16)
k = 32768
weight = interleave(QuantMatrix(torch.zeros(16, k // 2, dtype=torch.uint8),
                                torch.ones(16, k // 32, dtype=torch.float16),
                                torch.zeros(16, k // 32, dtype=torch.float16), WeightKind.Q4_1))
x = torch.zeros(2048, k, dtype=torch.bfloat16)  # the buffer needs 2048 * k * 5 bytes = 320 MiB
out = torch.empty(2048, 16, dtype=torch.bfloat16)
size = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (size + (64 << 20), resource.RLIM_INFINITY))
try:
    kernels.quant_matmul(x, weight, out, 0, use_int8=True)
except MemoryError:
    print("MemoryError")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)
    assert result.stdout.strip() == "MemoryError", result.stderr[-2000:]
