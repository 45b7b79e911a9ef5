"""`genir.reduce`: the kernels' sums run in the order its docstring states, bit for bit,
and refuse arrays they cannot read flat."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from genir import reduce

# (intrinsics: callable from compiled code only)
dot = numba.njit(lambda a, i, b, j, n: reduce.dot(a, i, b, j, n))
total = numba.njit(lambda a, i, n: reduce.total(a, i, n))
squares = numba.njit(lambda a, i, n, shift: reduce.squares(a, i, n, shift))
fma = numba.njit(lambda a, b, c: reduce.fma(a, b, c))

F32 = np.float32


def spelled_out(terms: list[np.float32]) -> np.float32:
    """Term k into lane k % 8 (the tail past the last full 8 into lane 0), then
    ((l0 + l4) + (l1 + l5)) + ((l2 + l6) + (l3 + l7)), float32 at every step."""
    lanes = [F32(0.0)] * 8
    n8 = len(terms) - len(terms) % 8
    for k, term in enumerate(terms):
        lane = k % 8 if k < n8 else 0
        lanes[lane] = F32(lanes[lane] + term)
    s = lanes
    return F32(F32(F32(s[0] + s[4]) + F32(s[1] + s[5])) + F32(F32(s[2] + s[6]) + F32(s[3] + s[7])))


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 16, 21, 32, 129])
def test_sums_follow_the_stated_order(n):
    rng = np.random.default_rng(n)
    a = (rng.normal(size=n + 5) * 10 ** rng.uniform(-3, 3, size=n + 5)).astype(F32)
    b = rng.normal(size=n + 3).astype(F32)
    want = spelled_out([F32(a[2 + k] * b[3 + k]) for k in range(n)])
    assert F32(dot(a, 2, b, 3, n)).tobytes() == want.tobytes()
    x = a[:n].reshape(1, n) if n else np.zeros((1, 0), F32)
    x = np.concatenate([np.ones_like(x), x])         # row 1
    shift = F32(0.25)
    assert F32(total(a, 2, n)).tobytes() == spelled_out(list(a[2:2 + n])).tobytes()
    assert F32(squares(x, n, n, shift)).tobytes() == spelled_out(
        [F32(F32(v - shift) * F32(v - shift)) for v in x[1]]).tobytes()


def test_arrays_that_cannot_be_read_flat_are_refused():
    with pytest.raises(TypeError, match="C-contiguous float32"):
        total(np.zeros(8), 0, 8)                                  # float64
    with pytest.raises(TypeError, match="C-contiguous float32"):
        dot(np.zeros((4, 4), F32)[:, 0], 0, np.zeros(4, F32), 0, 4)  # strided


def test_fma_rounds_once():
    """a * b + c with one rounding: 1 + 2^-23 squared minus 1 keeps the 2^-46 that a
    rounded product loses; random operands match float64's exact product, rounded."""
    a = F32(1 + 2 ** -23)
    assert fma(a, a, F32(-1.0)) == F32(2 ** -22 + 2 ** -46)
    assert F32(a * a) - F32(1.0) == F32(2 ** -22)
    rng = np.random.default_rng(0)
    x, y, z = (rng.normal(size=1000).astype(F32) for _ in range(3))
    want = (x.astype(np.float64) * y + z).astype(F32)
    assert all(fma(*v) == w for v, w in zip(zip(x, y, z, strict=True), want, strict=True))
