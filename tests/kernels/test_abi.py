"""The Python <-> C contract is declared once (kernels/abi.py) and checked at load: each tier's
library reports the ABI version, limits and structure layouts its compiler produced from the
generated abi.h, and a library whose report differs is refused."""

import ctypes

import pytest

from flintlm.kernels import abi, native


@pytest.mark.parametrize("tier", native.available_tiers())
def test_every_tier_reports_the_declared_layout(tier):
    library = native.load(tier)
    if library is None:
        pytest.skip("no C compiler")
    assert library.reported_layout() == abi.layout()


def test_a_library_laid_out_differently_is_refused():
    expected = abi.layout()
    abi.check(expected)
    for tampered in ([expected[0] + 1, *expected[1:]],   # another ABI version
                     [*expected[:-1], expected[-1] + 8],  # a field moved
                     expected[:-1]):                      # a field missing
        with pytest.raises(abi.AbiMismatch):
            abi.check(tampered)


def test_ctypes_structures_are_the_declared_ones():
    batch = abi.DecodeBatch(num_rows=3, use_int8=1)
    assert (batch.num_rows, batch.use_int8) == (3, 1)
    layer = abi.DecodeLayer()
    assert isinstance(layer.qkv, abi.DecodeMatrix)
    assert ctypes.sizeof(abi.DecodeLayer) == 4 * ctypes.sizeof(abi.DecodeMatrix) + 4 * 8
    header = abi.header()
    for kernel in abi.KERNELS:
        assert f" {kernel.name}_##SUFFIX(" in header
    for name in abi.LIMITS:
        assert f"#define {name} " in header
