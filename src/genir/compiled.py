"""numba compilation shared by the compiled kernels (the fused decoder's, the beam search's
step): one source, compiled serial and parallel."""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any, cast

import numba


def compile_variant(func: Callable[..., Any], parallel: bool, **options: Any) -> Callable[..., Any]:
    """`func` compiled by numba (cached, nogil, `options`), `prange` over threads when
    `parallel`: one source for the serial and parallel variants (also the beam search's
    step, `genir.search.beam`). A copy named apart per variant: numba's on-disk cache keys
    a function by name and bytecode, not by flags."""
    f = cast(types.FunctionType, func)
    clone = types.FunctionType(f.__code__, f.__globals__, f.__name__)
    clone.__qualname__ = f"{f.__qualname__}_{'parallel' if parallel else 'serial'}"
    return cast(Callable[..., Any], numba.njit(cache=True, nogil=True, parallel=parallel,
                                               **options)(clone))
