"""Float32 sums in one fixed order, for the numba kernels (`genir.decoder.fused`,
`genir.search.results`).

Why not fastmath: with LLVM's reassociation flag a sum's order is the compiler's choice,
and it chooses by context. The same kernel compiled in a process gave other bits than its
copy loaded from numba's on-disk cache in the next (and a kernel compiled after another
that inlines the same helper, others again), so a search's scores depended on whether
the kernels had been compiled before. Without the flag LLVM keeps a sum's order, and so
does not vectorise it. Here each sum is written as vector code (an LLVM intrinsic, like
those of `genir.decoder.fused`): term k goes into lane k % 8 of an 8-float vector (the
tail past the last full 8 into lane 0, one by one), then the lanes are added in a fixed
tree, ((l0 + l4) + (l1 + l5)) + ((l2 + l6) + (l3 + l7)). IEEE operations in a stated
order: the same bits on every run, in every process, on any x86-64 CPU (AVX2 or AVX-512
alike), and no fused multiply-add unless asked for by name (`fma`: contraction is the
compiler's choice too). A 32-term dot product took
~4 ns here, against ~6 ns for the loop LLVM vectorised with reassociation and ~20-35 ns
for 8 scalar lanes, which LLVM does not vectorise.

The arrays are C-contiguous float32 of any number of dimensions, read at flat offsets
(`x[r]` of a 2-D array is offset r * x.shape[1]: no views, whose reference counting costs
in hot loops); nothing is bounds-checked. Not a more accurate sum (pairwise or Kahan).
numba's cache keys a kernel by its own source file, not by the files of what it inlines:
after editing this one, delete the cached kernels (`find src -name '*.nbi' -delete`).
"""

from __future__ import annotations

from collections.abc import Callable

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.extending import intrinsic

LANES = 8
_VEC = ir.VectorType(ir.FloatType(), LANES)
_I32 = ir.IntType(32)


def _lanes_sum(builder: ir.IRBuilder, n: ir.Value,
               term: Callable[[ir.Value, bool], ir.Value]) -> ir.Value:
    """IR for the sum over k < n of term(k): term(k, True) is the 8 terms k .. k + 7 as a
    vector, term(k, False) the one term k; in the module docstring's order."""
    acc = cgutils.alloca_once_value(builder, ir.Constant(_VEC, [0.0] * LANES))
    lanes = ir.Constant(n.type, LANES)
    full = builder.sub(n, builder.srem(n, lanes))
    with cgutils.for_range_slice(builder, ir.Constant(n.type, 0), full, lanes) as (k, _):
        builder.store(builder.fadd(builder.load(acc), term(k, True)), acc)
    lane0 = ir.Constant(_I32, 0)
    with cgutils.for_range_slice(builder, full, n, ir.Constant(n.type, 1)) as (k, _):
        v = builder.load(acc)
        s = builder.fadd(builder.extract_element(v, lane0), term(k, False))
        builder.store(builder.insert_element(v, s, lane0), acc)
    v = builder.load(acc)
    x = [builder.extract_element(v, ir.Constant(_I32, m)) for m in range(LANES)]
    return builder.fadd(builder.fadd(builder.fadd(x[0], x[4]), builder.fadd(x[1], x[5])),
                        builder.fadd(builder.fadd(x[2], x[6]), builder.fadd(x[3], x[7])))


def _check(*arrays: types.Type) -> None:
    for a in arrays:
        if not (isinstance(a, types.Array) and a.dtype == types.float32 and a.layout == "C"):
            raise TypeError(f"genir.reduce takes C-contiguous float32 arrays, got {a}")


def _loader(context, builder, ty, value, offset):  # type: ignore[no-untyped-def]
    """(k, vector) -> the element(s) of array `value` at flat offset + k."""
    base = builder.gep(context.make_array(ty)(context, builder, value).data, [offset])

    def load(k: ir.Value, vector: bool) -> ir.Value:
        ptr = builder.gep(base, [k])
        if vector:
            return builder.load(builder.bitcast(ptr, _VEC.as_pointer()), align=4)
        return builder.load(ptr)
    return load


def _ints(context, builder, sig_args, args):  # type: ignore[no-untyped-def]
    return [context.cast(builder, v, t, types.intp) for v, t in zip(args, sig_args, strict=True)]


@intrinsic
def dot(typingctx, a, i, b, j, n):  # type: ignore[no-untyped-def]
    """sum over k < n of a.flat[i + k] * b.flat[j + k], in the fixed order."""
    _check(a, b)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        ta, ti, tb, tj, tn = signature.args
        i_, j_, n_ = _ints(context, builder, (ti, tj, tn), (args[1], args[3], args[4]))
        load_a = _loader(context, builder, ta, args[0], i_)
        load_b = _loader(context, builder, tb, args[2], j_)
        return _lanes_sum(builder, n_, lambda k, vec: builder.fmul(load_a(k, vec),
                                                                   load_b(k, vec)))
    return types.float32(a, i, b, j, n), codegen


@intrinsic
def total(typingctx, a, i, n):  # type: ignore[no-untyped-def]
    """sum over k < n of a.flat[i + k], in the fixed order."""
    _check(a)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        ta, ti, tn = signature.args
        i_, n_ = _ints(context, builder, (ti, tn), (args[1], args[2]))
        return _lanes_sum(builder, n_, _loader(context, builder, ta, args[0], i_))
    return types.float32(a, i, n), codegen


@intrinsic
def squares(typingctx, a, i, n, shift):  # type: ignore[no-untyped-def]
    """sum over k < n of (a.flat[i + k] - shift)^2, in the fixed order (shift float32)."""
    _check(a)
    if shift != types.float32:
        raise TypeError(f"squares' shift must be float32, got {shift}")

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        ta, ti, tn, _ = signature.args
        i_, n_ = _ints(context, builder, (ti, tn), (args[1], args[2]))
        load = _loader(context, builder, ta, args[0], i_)
        splat = builder.insert_element(ir.Constant(_VEC, ir.Undefined), args[3],
                                       ir.Constant(_I32, 0))
        shifts = builder.shuffle_vector(splat, ir.Constant(_VEC, ir.Undefined),
                                        ir.Constant(ir.VectorType(_I32, LANES), [0] * LANES))

        def term(k: ir.Value, vec: bool) -> ir.Value:
            c = builder.fsub(load(k, vec), shifts if vec else args[3])
            return builder.fmul(c, c)
        return _lanes_sum(builder, n_, term)
    return types.float32(a, i, n, shift), codegen


@intrinsic
def fma(typingctx, a, b, c):  # type: ignore[no-untyped-def]
    """a * b + c rounded once (float32): the FMA instruction, asked for by name. What
    fastmath's contraction would leave to the compiler, case by case; written out it is
    the same on every compile, and vectorises like any other operation."""
    if not (a == b == c == types.float32):
        raise TypeError(f"fma takes float32 arguments, got {a}, {b}, {c}")

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.fma(*args)
    return types.float32(a, b, c), codegen
