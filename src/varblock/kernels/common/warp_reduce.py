"""Warp-wide reductions and scans over 32 lanes (butterfly / up shuffles), and the integer ceil-division of the
work-list builders."""

import cutlass
import cutlass.cute as cute
from cutlass import Int32


@cute.jit
def cdiv_nonneg(a: Int32, d: Int32) -> Int32:
    """``ceil(a / d)`` for ``a >= 0``, ``d >= 1``, without the overflow of ``(a + d - 1) // d``."""
    q = a // d
    if a - q * d > 0:
        q = q + 1
    return q


@cute.jit
def warp_sum(v):
    """Sum over the warp's 32 lanes (every lane gets it); Int32 or Float32."""
    for i in cutlass.range_constexpr(5):
        v = v + cute.arch.shuffle_sync_bfly(v, offset=1 << i)
    return v


@cute.jit
def warp_min(v: Int32) -> Int32:
    """Integer min over the warp's 32 lanes (every lane gets it)."""
    for i in cutlass.range_constexpr(5):
        v = cutlass.min(v, cute.arch.shuffle_sync_bfly(v, offset=1 << i))
    return v


@cute.jit
def warp_max(v: Int32) -> Int32:
    """Integer max over the warp's 32 lanes (every lane gets it)."""
    for i in cutlass.range_constexpr(5):
        v = cutlass.max(v, cute.arch.shuffle_sync_bfly(v, offset=1 << i))
    return v


@cute.jit
def warp_fmax(v):
    """Float max over the warp's 32 lanes (every lane gets it)."""
    for i in cutlass.range_constexpr(5):
        v = cute.arch.fmax(v, cute.arch.shuffle_sync_bfly(v, offset=1 << i))
    return v


@cute.jit
def warp_incl_scan(v: Int32, lane: Int32) -> Int32:
    """Inclusive prefix sum over the warp's lanes: lane ``l`` gets ``v[0] + ... + v[l]``."""
    for i in cutlass.range_constexpr(5):
        y = cute.arch.shuffle_sync_up(v, offset=1 << i, mask=-1, mask_and_clamp=0)
        if lane >= (1 << i):
            v = v + y
    return v
