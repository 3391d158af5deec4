"""CuTe DSL source of the device layout builder's ``scan`` kernel (see layout_device.py). Build time only.

One CTA of ``SCAN_THREADS`` threads. The cells kernel left one sum per GROUP of padded rows (columns), SoA
(``row_part [5, RG]``, ``col_part [2, CG]``), so the scan reads them coalesced, ``SCAN_THREADS`` groups of rows and
of columns per step: a warp-level inclusive scan, one warp scans the 32 warp totals, a running carry. It also
validates ``cu_seqlens`` / the mask shape, reduces the first bad cell / top-k slot, checks the capacities, writes
the status word, and copies ``cu_seqlens`` into the plan (the attention kernels read the copies).

Exactness: mirrors ``varblock.device_layout.model.scan``; change both together.
"""

# (no `from __future__ import annotations`: the DSL reads annotations as objects)
from types import SimpleNamespace

import cutlass
import cutlass.cute as cute
from cutlass import Int32

from varblock.abi import ERR_CAPACITY, ERR_CU_SEQLENS, ERR_OK
from varblock.device_layout.codes import (
    COL_PART_WIDTH,
    ERR_INDEX,
    ERR_MASK_SHAPE,
    ERR_MASK_VALUE,
    ROW_PART_WIDTH,
    STATUS_DETAIL,
    STATUS_ERROR,
    STATUS_NUM_CHUNKS,
    STATUS_NUM_COLS,
    STATUS_NUM_ENTRIES,
    STATUS_NUM_ROWS,
    STATUS_NUM_TILES,
    STATUS_WIDTH,
)
from varblock.kernels._layout_device_impl import I32_MAX
from varblock.kernels.common.signature import fake_args, jit_host
from varblock.kernels.common.warp_reduce import cdiv_nonneg, warp_incl_scan, warp_min
from varblock.kernels.layout_device import SCAN_THREADS, WARPS
from varblock.kernels.registry import Variant

SCAN_WARPS = SCAN_THREADS // 32
if SCAN_WARPS != 32:
    raise AssertionError("the scan's second level is one warp: SCAN_THREADS must be 1024")
_NSUM = 6  #: scanned quantities: rows, entries, chunks, tiles (row groups); cols, entries (column groups)
_NMIN = 4  #: reduced minima: bad cu_seqlens, first too-short sequence, first bad cell, first bad top-k slot
#: warp offsets + the step's totals (row SCAN_WARPS), then the minima
_SMEM_BYTES = ((SCAN_WARPS + 1) * _NSUM + SCAN_WARPS * _NMIN) * 4 + 32


@cute.jit
def _second_level(s: cute.Tensor, lane: Int32, col: cutlass.Constexpr):
    """Warp 0: ``s[w, col]`` (warp ``w``'s total) -> the sum over the warps below ``w``; ``s[SCAN_WARPS, col]``
    -> the step's total."""
    x = s[lane, col]
    y = warp_incl_scan(x, lane)
    s[lane, col] = y - x
    if lane == SCAN_WARPS - 1:
        s[SCAN_WARPS, col] = y


@cute.jit
def _validate(p: SimpleNamespace, tid: Int32, g_cq, g_ck, g_oq, g_ok):
    """Per thread: (bad cu_seqlens, first sequence longer than the mask) minima over its sequences; copies the
    plan's ``cu_seqlens``."""
    bad_cu = Int32(I32_MAX)
    short = Int32(I32_MAX)
    for b in cutlass.range(tid, p.batch + 1, SCAN_THREADS):
        g_oq[b] = g_cq[b]
        g_ok[b] = g_ck[b]
    for b in cutlass.range(tid, p.batch, SCAN_THREADS):
        cq0 = g_cq[b]
        cq1 = g_cq[b + 1]
        ck0 = g_ck[b]
        ck1 = g_ck[b + 1]
        if cq0 < 0 or ck0 < 0 or cq1 < cq0 or ck1 < ck0:
            bad_cu = Int32(0)
        elif cdiv_nonneg(cq1 - cq0, p.block_q) > p.mb or cdiv_nonneg(ck1 - ck0, p.block_k) > p.nb or \
                cq1 - cq0 > p.max_q_tokens:
            short = cutlass.min(short, b)
    return bad_cu, short


@cute.jit
def _write_status(p: SimpleNamespace, sm: cute.Tensor, g_st: cute.Tensor, t_rows: Int32, t_ent: Int32, t_ch: Int32,
                  t_t: Int32, t_cols: Int32):
    """Thread 0: the error (precedence: cu_seqlens, mask shape, index, value, capacity) and the status word."""
    g_cu = Int32(I32_MAX)
    g_short = Int32(I32_MAX)
    g_cell = Int32(I32_MAX)
    g_slot = Int32(I32_MAX)
    for w in cutlass.range_constexpr(SCAN_WARPS):
        g_cu = cutlass.min(g_cu, sm[w, 0])
        g_short = cutlass.min(g_short, sm[w, 1])
        g_cell = cutlass.min(g_cell, sm[w, 2])
        g_slot = cutlass.min(g_slot, sm[w, 3])
    code = Int32(ERR_OK)
    detail = Int32(-1)
    if g_cu != I32_MAX:
        code = Int32(ERR_CU_SEQLENS)
    elif g_short != I32_MAX:
        code = Int32(ERR_MASK_SHAPE)
        detail = g_short
    elif g_slot != I32_MAX:
        code = Int32(ERR_INDEX)
        detail = g_slot
    elif g_cell != I32_MAX:
        code = Int32(ERR_MASK_VALUE)
        detail = g_cell
    elif t_ent > p.max_entries or t_ch > p.max_chunks or t_t > p.max_tiles:
        code = Int32(ERR_CAPACITY)
        detail = t_ent
    if code != ERR_OK:
        t_rows = Int32(0)
        t_ent = Int32(0)
        t_ch = Int32(0)
        t_t = Int32(0)
        t_cols = Int32(0)
    g_st[STATUS_NUM_TILES] = t_t
    g_st[STATUS_ERROR] = code
    g_st[STATUS_NUM_ROWS] = t_rows
    g_st[STATUS_NUM_ENTRIES] = t_ent
    g_st[STATUS_NUM_CHUNKS] = t_ch
    g_st[STATUS_NUM_COLS] = t_cols
    g_st[STATUS_DETAIL] = detail
    g_st[STATUS_WIDTH - 1] = Int32(0)


@cute.kernel
def _scan_kernel(p: SimpleNamespace):
    tidx, _, _ = cute.arch.thread_idx()
    tid = Int32(tidx)
    lane = tid % 32
    warp = tid // 32
    smem = cutlass.utils.SmemAllocator()
    s = smem.allocate_tensor(Int32, cute.make_layout((SCAN_WARPS + 1, _NSUM), stride=(_NSUM, 1)), 16)
    sm = smem.allocate_tensor(Int32, cute.make_layout((SCAN_WARPS, _NMIN), stride=(_NMIN, 1)), 16)
    B = p.batch
    n_rows = p.num_layout_heads * B * p.mb
    n_cols = p.num_layout_heads * B * p.nb
    rg = (n_rows + (WARPS - 1)) // WARPS
    cg = (n_cols + (WARPS - 1)) // WARPS
    rgs = cutlass.max(rg, Int32(1))
    cgs = cutlass.max(cg, Int32(1))
    g_cq = cute.make_tensor(p.cu_seqlens_q, cute.make_layout(B + 1))
    g_ck = cute.make_tensor(p.cu_seqlens_k, cute.make_layout(B + 1))
    g_oq = cute.make_tensor(p.cu_copy_q, cute.make_layout(B + 1))
    g_ok = cute.make_tensor(p.cu_copy_k, cute.make_layout(B + 1))
    g_rpart = cute.make_tensor(p.row_part, cute.make_layout((ROW_PART_WIDTH, rgs), stride=(rgs, 1)))
    g_cpart = cute.make_tensor(p.col_part, cute.make_layout((COL_PART_WIDTH, cgs), stride=(cgs, 1)))
    g_rgp = cute.make_tensor(p.row_gp, cute.make_layout((4, rgs), stride=(rgs, 1)))
    g_cgp = cute.make_tensor(p.col_gp, cute.make_layout((COL_PART_WIDTH, cgs), stride=(cgs, 1)))
    g_te = cute.make_tensor(p.topk_err, cute.make_layout(cutlass.max(p.topk_rows, Int32(1))))
    g_st = cute.make_tensor(p.status, cute.make_layout(STATUS_WIDTH))

    bad_cu, short = _validate(p, tid, g_cq, g_ck, g_oq, g_ok)
    bad_slot = Int32(I32_MAX)
    for r in cutlass.range(tid, p.topk_rows, SCAN_THREADS, unroll=4):
        e = g_te[r]
        if e >= 0:
            bad_slot = cutlass.min(bad_slot, e)
    bad_cell = Int32(I32_MAX)

    # ---- exclusive prefixes over the groups, SCAN_THREADS row groups and column groups per step
    c0 = Int32(0)
    c1 = Int32(0)
    c2 = Int32(0)
    c3 = Int32(0)
    c4 = Int32(0)
    c5 = Int32(0)
    steps = (cutlass.max(rg, cg) + (SCAN_THREADS - 1)) // SCAN_THREADS
    for it in cutlass.range(steps):
        gi = it * SCAN_THREADS + tid
        v0 = Int32(0)
        v1 = Int32(0)
        v2 = Int32(0)
        v3 = Int32(0)
        v4 = Int32(0)
        v5 = Int32(0)
        if gi < rg:
            v0 = g_rpart[0, gi]
            v1 = g_rpart[1, gi]
            v2 = g_rpart[2, gi]
            v3 = g_rpart[3, gi]
            e = g_rpart[4, gi]
            if e >= 0:
                bad_cell = cutlass.min(bad_cell, e)
        if gi < cg:
            v4 = g_cpart[0, gi]
            v5 = g_cpart[1, gi]
        i0 = warp_incl_scan(v0, lane)
        i1 = warp_incl_scan(v1, lane)
        i2 = warp_incl_scan(v2, lane)
        i3 = warp_incl_scan(v3, lane)
        i4 = warp_incl_scan(v4, lane)
        i5 = warp_incl_scan(v5, lane)
        if lane == 31:
            s[warp, 0] = i0
            s[warp, 1] = i1
            s[warp, 2] = i2
            s[warp, 3] = i3
            s[warp, 4] = i4
            s[warp, 5] = i5
        cute.arch.barrier()
        if warp == 0:
            for k in cutlass.range_constexpr(_NSUM):
                _second_level(s, lane, k)
        cute.arch.barrier()
        if gi < rg:
            g_rgp[0, gi] = c0 + s[warp, 0] + i0 - v0
            g_rgp[1, gi] = c1 + s[warp, 1] + i1 - v1
            g_rgp[2, gi] = c2 + s[warp, 2] + i2 - v2
            g_rgp[3, gi] = c3 + s[warp, 3] + i3 - v3
        if gi < cg:
            g_cgp[0, gi] = c4 + s[warp, 4] + i4 - v4
            g_cgp[1, gi] = c5 + s[warp, 5] + i5 - v5
        c0 = c0 + s[SCAN_WARPS, 0]
        c1 = c1 + s[SCAN_WARPS, 1]
        c2 = c2 + s[SCAN_WARPS, 2]
        c3 = c3 + s[SCAN_WARPS, 3]
        c4 = c4 + s[SCAN_WARPS, 4]
        c5 = c5 + s[SCAN_WARPS, 5]
        cute.arch.barrier()  # the next step overwrites s

    m_cu = warp_min(bad_cu)
    m_short = warp_min(short)
    m_cell = warp_min(bad_cell)
    m_slot = warp_min(bad_slot)
    if lane == 0:
        sm[warp, 0] = m_cu
        sm[warp, 1] = m_short
        sm[warp, 2] = m_cell
        sm[warp, 3] = m_slot
    cute.arch.barrier()
    if tid == 0:
        _write_status(p, sm, g_st, c0, c1, c2, c3, c4)


def make_host(variant: Variant):
    """Trace-ready host function for the ``scan`` variant, and its compile arguments."""
    kernel = _scan_kernel
    kernel.set_name_prefix(f"vb_{variant.name}", remove_cutlass_symbol=True, keep_mangled_name=False)

    def launch(p: SimpleNamespace):
        kernel(p).launch(grid=[1, 1, 1], block=[SCAN_THREADS, 1, 1], smem=_SMEM_BYTES)

    return jit_host(variant.params, launch, name=f"host_{variant.name}"), fake_args(variant.params)
