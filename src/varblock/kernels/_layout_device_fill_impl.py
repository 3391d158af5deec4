"""CuTe DSL source of the device layout builder's ``scan`` and ``fill`` kernels (see layout_device.py). Build time
only.

Exactness: every formula mirrors ``varblock.device_layout.model`` (``scan``, ``fill``); change both together.
"""

# (no `from __future__ import annotations`: the DSL reads annotations as objects)
from types import SimpleNamespace

import cutlass
import cutlass.cute as cute
from cutlass import Int32

from varblock.abi import CHUNK_WIDTH, ERR_CAPACITY, ERR_CU_SEQLENS, ERR_OK, TILE_WIDTH
from varblock.device_layout.codes import (
    CELL_FULL,
    CELL_PARTIAL,
    CELL_POS_SHIFT,
    COL_ENTRY_WIDTH,
    COL_WIDTH,
    ENTRY_WIDTH,
    ERR_INDEX,
    ERR_MASK_SHAPE,
    ERR_MASK_VALUE,
    ROW_WIDTH,
    STATUS_DETAIL,
    STATUS_ERROR,
    STATUS_NUM_CHUNKS,
    STATUS_NUM_COLS,
    STATUS_NUM_ENTRIES,
    STATUS_NUM_ROWS,
    STATUS_NUM_TILES,
    STATUS_WIDTH,
)
from varblock.kernels._layout_device_impl import I32_MAX, rank_below, seq_len
from varblock.kernels.common.signature import fake_args, jit_host
from varblock.kernels.common.warp_reduce import cdiv_nonneg, warp_incl_scan, warp_min
from varblock.kernels.layout_device import SCAN_THREADS, WARPS
from varblock.kernels.registry import Variant

SCAN_WARPS = SCAN_THREADS // 32
_NSUM = 6  #: scanned quantities: rows, entries, chunks, tiles (per padded row); cols, entries (per padded column)
_NMIN = 4  #: reduced minima: bad cu_seqlens, first too-short sequence, first bad cell, first bad top-k slot
_SMEM_BYTES = SCAN_WARPS * (_NSUM + _NMIN) * 4


@cute.jit
def _before(s: cute.Tensor, col: cutlass.Constexpr, warp: Int32) -> Int32:
    """Sum of column ``col`` over the warps below ``warp``."""
    acc = Int32(0)
    for w in cutlass.range_constexpr(SCAN_WARPS):
        if w < warp:
            acc = acc + s[w, col]
    return acc


@cute.jit
def _total(s: cute.Tensor, col: cutlass.Constexpr) -> Int32:
    acc = Int32(0)
    for w in cutlass.range_constexpr(SCAN_WARPS):
        acc = acc + s[w, col]
    return acc


@cute.jit
def _min_all(s: cute.Tensor, col: cutlass.Constexpr) -> Int32:
    acc = Int32(I32_MAX)
    for w in cutlass.range_constexpr(SCAN_WARPS):
        acc = cutlass.min(acc, s[w, col])
    return acc


@cute.jit
def _row_values(r: Int32, g_cq: cute.Tensor, g_rc: cute.Tensor, B: Int32, MB: Int32, bq: Int32, tpt: Int32,
                nth: Int32, what: cutlass.Constexpr) -> Int32:
    """One scanned quantity of padded row ``r``: 0 exists, 1 entries, 2 chunks, 3 tiles."""
    out = Int32(0)
    if cutlass.const_expr(what == 0 or what == 3):
        m = r % MB
        lq = seq_len(g_cq, (r // MB) % B)
        if m * bq < lq:
            out = Int32(1)
            if cutlass.const_expr(what == 3):
                out = cdiv_nonneg(cutlass.min(bq, lq - m * bq), tpt) * nth
    elif cutlass.const_expr(what == 1):
        out = g_rc[r, 0] + g_rc[r, 1]
    else:
        out = g_rc[r, 2] + g_rc[r, 3]
    return out


@cute.jit
def _col_exists(c: Int32, g_ck: cute.Tensor, B: Int32, NB: Int32, bk: Int32) -> Int32:
    """1 when padded column ``c`` is a key block of its sequence."""
    out = Int32(0)
    if (c % NB) * bk < seq_len(g_ck, (c // NB) % B):
        out = Int32(1)
    return out


@cute.kernel
def _scan_kernel(p: SimpleNamespace):
    tidx, _, _ = cute.arch.thread_idx()
    tid = Int32(tidx)
    lane = tid % 32
    warp = tid // 32
    smem = cutlass.utils.SmemAllocator()
    s = smem.allocate_tensor(Int32, cute.make_layout((SCAN_WARPS, _NSUM + _NMIN), stride=(_NSUM + _NMIN, 1)), 16)
    H = p.num_layout_heads
    B = p.batch
    MB = p.mb
    NB = p.nb
    n_rows = H * B * MB
    n_cols = H * B * NB
    g_cq = cute.make_tensor(p.cu_seqlens_q, cute.make_layout(B + 1))
    g_ck = cute.make_tensor(p.cu_seqlens_k, cute.make_layout(B + 1))
    g_rc = cute.make_tensor(p.row_counts, cute.make_layout((cutlass.max(n_rows, Int32(1)), 4), stride=(4, 1)))
    g_re = cute.make_tensor(p.row_err, cute.make_layout(cutlass.max(n_rows, Int32(1))))
    g_cc = cute.make_tensor(p.col_counts, cute.make_layout((cutlass.max(n_cols, Int32(1)), 2), stride=(2, 1)))
    g_te = cute.make_tensor(p.topk_err, cute.make_layout(cutlass.max(p.topk_rows, Int32(1))))
    g_rp = cute.make_tensor(p.row_prefix, cute.make_layout((n_rows + 1, 4), stride=(4, 1)))
    g_cp = cute.make_tensor(p.col_prefix, cute.make_layout((n_cols + 1, 2), stride=(2, 1)))
    g_st = cute.make_tensor(p.status, cute.make_layout(STATUS_WIDTH))

    # ---- minima: invalid cu_seqlens, first sequence with more blocks than the mask, first bad cell / slot
    bad_cu = Int32(I32_MAX)
    short = Int32(I32_MAX)
    for b in cutlass.range(tid, B, SCAN_THREADS):
        cq0 = g_cq[b]
        cq1 = g_cq[b + 1]
        ck0 = g_ck[b]
        ck1 = g_ck[b + 1]
        if cq0 < 0 or ck0 < 0 or cq1 < cq0 or ck1 < ck0:
            bad_cu = Int32(0)
        elif cdiv_nonneg(cq1 - cq0, p.block_q) > MB or cdiv_nonneg(ck1 - ck0, p.block_k) > NB or \
                cq1 - cq0 > p.max_q_tokens:
            short = cutlass.min(short, b)
    bad_cell = Int32(I32_MAX)
    for r in cutlass.range(tid, n_rows, SCAN_THREADS):
        e = g_re[r]
        if e >= 0:
            bad_cell = cutlass.min(bad_cell, e)
    bad_slot = Int32(I32_MAX)
    for r in cutlass.range(tid, p.topk_rows, SCAN_THREADS):
        e = g_te[r]
        if e >= 0:
            bad_slot = cutlass.min(bad_slot, e)
    m_cu = warp_min(bad_cu)
    m_short = warp_min(short)
    m_cell = warp_min(bad_cell)
    m_slot = warp_min(bad_slot)

    # ---- per-thread contiguous ranges of padded rows / columns: their sums
    per_r = (n_rows + SCAN_THREADS - 1) // SCAN_THREADS
    r0 = cutlass.min(tid * per_r, n_rows)
    r1 = cutlass.min(r0 + per_r, n_rows)
    per_c = (n_cols + SCAN_THREADS - 1) // SCAN_THREADS
    c0 = cutlass.min(tid * per_c, n_cols)
    c1 = cutlass.min(c0 + per_c, n_cols)
    bq = p.block_q
    tpt = p.tokens_per_tile
    nth = p.tile_heads
    s_rows = Int32(0)
    s_ent = Int32(0)
    s_ch = Int32(0)
    s_t = Int32(0)
    for r in cutlass.range(r0, r1):
        s_rows = s_rows + _row_values(r, g_cq, g_rc, B, MB, bq, tpt, nth, 0)
        s_ent = s_ent + _row_values(r, g_cq, g_rc, B, MB, bq, tpt, nth, 1)
        s_ch = s_ch + _row_values(r, g_cq, g_rc, B, MB, bq, tpt, nth, 2)
        s_t = s_t + _row_values(r, g_cq, g_rc, B, MB, bq, tpt, nth, 3)
    s_cols = Int32(0)
    s_cent = Int32(0)
    for c in cutlass.range(c0, c1):
        s_cols = s_cols + _col_exists(c, g_ck, B, NB, p.block_k)
        s_cent = s_cent + g_cc[c, 0] + g_cc[c, 1]
    i_rows = warp_incl_scan(s_rows, lane)
    i_ent = warp_incl_scan(s_ent, lane)
    i_ch = warp_incl_scan(s_ch, lane)
    i_t = warp_incl_scan(s_t, lane)
    i_cols = warp_incl_scan(s_cols, lane)
    i_cent = warp_incl_scan(s_cent, lane)
    if lane == 31:
        s[warp, 0] = i_rows
        s[warp, 1] = i_ent
        s[warp, 2] = i_ch
        s[warp, 3] = i_t
        s[warp, 4] = i_cols
        s[warp, 5] = i_cent
    if lane == 0:
        s[warp, _NSUM + 0] = m_cu
        s[warp, _NSUM + 1] = m_short
        s[warp, _NSUM + 2] = m_cell
        s[warp, _NSUM + 3] = m_slot
    cute.arch.barrier()
    run_rows = _before(s, 0, warp) + i_rows - s_rows
    run_ent = _before(s, 1, warp) + i_ent - s_ent
    run_ch = _before(s, 2, warp) + i_ch - s_ch
    run_t = _before(s, 3, warp) + i_t - s_t
    run_cols = _before(s, 4, warp) + i_cols - s_cols
    run_cent = _before(s, 5, warp) + i_cent - s_cent

    # ---- exclusive prefixes (totals in the last row)
    for r in cutlass.range(r0, r1):
        g_rp[r, 0] = run_rows
        g_rp[r, 1] = run_ent
        g_rp[r, 2] = run_ch
        g_rp[r, 3] = run_t
        run_rows = run_rows + _row_values(r, g_cq, g_rc, B, MB, bq, tpt, nth, 0)
        run_ent = run_ent + _row_values(r, g_cq, g_rc, B, MB, bq, tpt, nth, 1)
        run_ch = run_ch + _row_values(r, g_cq, g_rc, B, MB, bq, tpt, nth, 2)
        run_t = run_t + _row_values(r, g_cq, g_rc, B, MB, bq, tpt, nth, 3)
    for c in cutlass.range(c0, c1):
        g_cp[c, 0] = run_cols
        g_cp[c, 1] = run_cent
        run_cols = run_cols + _col_exists(c, g_ck, B, NB, p.block_k)
        run_cent = run_cent + g_cc[c, 0] + g_cc[c, 1]
    if tid == 0:
        t_rows = _total(s, 0)
        t_ent = _total(s, 1)
        t_ch = _total(s, 2)
        t_t = _total(s, 3)
        t_cols = _total(s, 4)
        g_rp[n_rows, 0] = t_rows
        g_rp[n_rows, 1] = t_ent
        g_rp[n_rows, 2] = t_ch
        g_rp[n_rows, 3] = t_t
        g_cp[n_cols, 0] = t_cols
        g_cp[n_cols, 1] = _total(s, 5)
        g_cu = _min_all(s, _NSUM + 0)
        g_short = _min_all(s, _NSUM + 1)
        g_cell = _min_all(s, _NSUM + 2)
        g_slot = _min_all(s, _NSUM + 3)
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


@cute.jit
def _fill_row(p: SimpleNamespace, w: Int32, lane: Int32, g_cq, g_ck, g_info, g_rc, g_rp, H: Int32, B: Int32,
              MB: Int32, NB: Int32):
    """One padded layout row: its rows entry, its tiles, its entries and their chunks."""
    m = w % MB
    b = (w // MB) % B
    hl = w // (MB * B)
    lq = seq_len(g_cq, b)
    lk = seq_len(g_ck, b)
    bq = p.block_q
    bk = p.block_k
    tn = p.tile_n
    if m * bq < lq:
        g_rows = cute.make_tensor(p.rows, cute.make_layout((H * B * MB, ROW_WIDTH), stride=(ROW_WIDTH, 1)))
        g_ent = cute.make_tensor(p.entries, cute.make_layout((cutlass.max(p.max_entries, Int32(1)), ENTRY_WIDTH),
                                                             stride=(ENTRY_WIDTH, 1)))
        g_t = cute.make_tensor(p.tiles, cute.make_layout((cutlass.max(p.max_tiles, Int32(1)), TILE_WIDTH),
                                                         stride=(TILE_WIDTH, 1)))
        g_c = cute.make_tensor(p.chunks, cute.make_layout((cutlass.max(p.max_chunks, Int32(1)), CHUNK_WIDTH),
                                                          stride=(CHUNK_WIDTH, 1)))
        row = g_rp[w, 0]
        ent0 = g_rp[w, 1]
        ch0 = g_rp[w, 2]
        t0 = g_rp[w, 3]
        nf = g_rc[w, 0]
        chf = g_rc[w, 2]
        qs = m * bq
        ql = cutlass.min(bq, lq - qs)
        if lane == 0:
            g_rows[row, 0] = hl
            g_rows[row, 1] = b
            g_rows[row, 2] = qs
            g_rows[row, 3] = ql
            g_rows[row, 4] = ent0
            g_rows[row, 5] = nf
            g_rows[row, 6] = g_rc[w, 1]
        nth = p.tile_heads
        tpt = p.tokens_per_tile
        for t in cutlass.range(lane, g_rp[w + 1, 3] - t0, 32):
            seg = t // nth
            th = t - seg * nth
            g_t[t0 + t, 0] = b
            g_t[t0 + t, 1] = hl * p.head_mul + th
            g_t[t0 + t, 2] = qs + seg * tpt
            g_t[t0 + t, 3] = cutlass.min(tpt, ql - seg * tpt)
            g_t[t0 + t, 4] = ch0
            g_t[t0 + t, 5] = chf
            g_t[t0 + t, 6] = g_rc[w, 3]
            g_t[t0 + t, 7] = Int32(0)
        per_block = cdiv_nonneg(bk, tn)  # chunks of every key block but a sequence's last (which sorts last)
        for n in cutlass.range(lane, NB, 32):
            info = g_info[w * NB + n]
            cls = info & 3
            if cls != 0:
                pos = info >> CELL_POS_SHIFT
                e = ent0 + nf + pos
                c = ch0 + chf + pos * per_block
                if cls == CELL_FULL:
                    e = ent0 + pos
                    c = ch0 + pos * per_block
                ks = n * bk
                kl = cutlass.min(bk, lk - ks)
                g_ent[e, 0] = ks
                g_ent[e, 1] = kl
                for j in cutlass.range(cdiv_nonneg(kl, tn)):
                    g_c[c + j, 0] = ks + j * tn
                    g_c[c + j, 1] = cutlass.min(tn, kl - j * tn)


@cute.jit
def _fill_col(p: SimpleNamespace, q: Int32, lane: Int32, g_cq, g_ck, g_info, g_rc, g_rp, H: Int32, B: Int32,
              MB: Int32, NB: Int32):
    """One padded key-major column: its cols entry and its entries (full ones first, ascending rows)."""
    n = q % NB
    b = (q // NB) % B
    hl = q // (NB * B)
    lq = seq_len(g_cq, b)
    lk = seq_len(g_ck, b)
    bq = p.block_q
    if n * p.block_k < lk:
        n_cols = H * B * NB
        g_cols = cute.make_tensor(p.cols, cute.make_layout((n_cols, COL_WIDTH), stride=(COL_WIDTH, 1)))
        g_ce = cute.make_tensor(p.col_entries, cute.make_layout((cutlass.max(p.max_entries, Int32(1)),
                                                                 COL_ENTRY_WIDTH), stride=(COL_ENTRY_WIDTH, 1)))
        g_cc = cute.make_tensor(p.col_counts, cute.make_layout((n_cols, 2), stride=(2, 1)))
        g_cp = cute.make_tensor(p.col_prefix, cute.make_layout((n_cols + 1, 2), stride=(2, 1)))
        col = g_cp[q, 0]
        ce0 = g_cp[q, 1]
        cnf = g_cc[q, 0]
        if lane == 0:
            ks = n * p.block_k
            g_cols[col, 0] = hl
            g_cols[col, 1] = b
            g_cols[col, 2] = ks
            g_cols[col, 3] = cutlass.min(p.block_k, lk - ks)
            g_cols[col, 4] = ce0
            g_cols[col, 5] = cnf
            g_cols[col, 6] = g_cc[q, 1]
        run_f = Int32(0)
        run_p = Int32(0)
        for m0 in cutlass.range(0, MB, 32):
            m = m0 + lane
            info = Int32(0)
            r = (hl * B + b) * MB + m
            if m < MB:
                info = g_info[r * NB + n]
            cls = info & 3
            bf = cute.arch.vote_ballot_sync(cls == CELL_FULL)
            bp = cute.arch.vote_ballot_sync(cls == CELL_PARTIAL)
            if cls != 0:
                pos = info >> CELL_POS_SHIFT
                e = g_rp[r, 1] + g_rc[r, 0] + pos
                i = ce0 + cnf + run_p + rank_below(bp)
                if cls == CELL_FULL:
                    e = g_rp[r, 1] + pos
                    i = ce0 + run_f + rank_below(bf)
                qs = m * bq
                g_ce[i, 0] = qs
                g_ce[i, 1] = cutlass.min(bq, lq - qs)
                g_ce[i, 2] = g_rp[r, 0]
                g_ce[i, 3] = e
            run_f = run_f + Int32(cute.arch.popc(bf))
            run_p = run_p + Int32(cute.arch.popc(bp))


@cute.kernel
def _fill_kernel(p: SimpleNamespace):
    tidx, _, _ = cute.arch.thread_idx()
    bidx, _, _ = cute.arch.block_idx()
    lane = Int32(tidx) % 32
    w = Int32(bidx) * WARPS + Int32(tidx) // 32
    H = p.num_layout_heads
    B = p.batch
    MB = p.mb
    NB = p.nb
    n_rows = H * B * MB
    g_st = cute.make_tensor(p.status, cute.make_layout(STATUS_WIDTH))
    if g_st[STATUS_ERROR] == ERR_OK and w < p.num_items:
        g_cq = cute.make_tensor(p.cu_seqlens_q, cute.make_layout(B + 1))
        g_ck = cute.make_tensor(p.cu_seqlens_k, cute.make_layout(B + 1))
        g_info = cute.make_tensor(p.info, cute.make_layout(cutlass.max(n_rows * NB, Int32(1))))
        g_rc = cute.make_tensor(p.row_counts, cute.make_layout((cutlass.max(n_rows, Int32(1)), 4), stride=(4, 1)))
        g_rp = cute.make_tensor(p.row_prefix, cute.make_layout((n_rows + 1, 4), stride=(4, 1)))
        if w < n_rows:
            _fill_row(p, w, lane, g_cq, g_ck, g_info, g_rc, g_rp, H, B, MB, NB)
        else:
            _fill_col(p, w - n_rows, lane, g_cq, g_ck, g_info, g_rc, g_rp, H, B, MB, NB)


def make_host(variant: Variant):
    """Trace-ready host function for the ``scan`` or ``fill`` variant, and its compile arguments."""
    stage = variant.key["stage"]
    kernel = _scan_kernel if stage == "scan" else _fill_kernel
    kernel.set_name_prefix(f"vb_{variant.name}", remove_cutlass_symbol=True, keep_mangled_name=False)

    def launch(p: SimpleNamespace):
        if stage == "scan":
            kernel(p).launch(grid=[1, 1, 1], block=[SCAN_THREADS, 1, 1], smem=_SMEM_BYTES)
        else:
            kernel(p).launch(grid=[(p.num_items + (WARPS - 1)) // WARPS, 1, 1], block=[32 * WARPS, 1, 1])

    return jit_host(variant.params, launch, name=f"host_{variant.name}"), fake_args(variant.params)
