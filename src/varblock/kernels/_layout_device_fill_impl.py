"""CuTe DSL source of the device layout builder's ``fill`` kernel (see layout_device.py). Build time only.

The grid is the cells kernel's: one CTA per group of ``WARPS`` padded rows, then one per group of padded columns,
a warp each. A warp's offsets (row index, entries, chunks, tiles; column index, column entries) are its group's
exclusive prefix from the scan plus the quantities of the rows (columns) before it in its group, summed across
the warp's lanes. A column warp walks its column's rows 32 at a time and scans their entry counts to find each
kept cell's entry.

Exactness: mirrors ``varblock.device_layout.model.fill``; change both together.
"""

# (no `from __future__ import annotations`: the DSL reads annotations as objects)
from types import SimpleNamespace

import cutlass
import cutlass.cute as cute
from cutlass import Int32

from varblock.abi import CHUNK_WIDTH, ERR_OK, TILE_WIDTH
from varblock.device_layout.codes import (
    CELL_FULL,
    CELL_PARTIAL,
    CELL_POS_SHIFT,
    COL_ENTRY_WIDTH,
    COL_PART_WIDTH,
    COL_WIDTH,
    ENTRY_WIDTH,
    ROW_WIDTH,
    STATUS_ERROR,
    STATUS_WIDTH,
)
from varblock.kernels._layout_device_impl import col_value, rank_below, row_value, seq_len
from varblock.kernels.common.signature import fake_args, jit_host
from varblock.kernels.common.warp_reduce import cdiv_nonneg, warp_incl_scan, warp_sum
from varblock.kernels.layout_device import WARPS
from varblock.kernels.registry import Variant


@cute.jit
def _row_prefix(r: Int32, lane: Int32, g_rgp: cute.Tensor, g_cq, g_rc, B: Int32, MB: Int32, bq: Int32, tpt: Int32,
                nth: Int32, what: cutlass.Constexpr) -> Int32:
    """Exclusive prefix of quantity ``what`` (0 rows, 1 entries, 2 chunks, 3 tiles) at padded row ``r`` (every
    lane of the warp calls it with the same ``r``): the group's prefix + the rows before ``r`` in the group."""
    g0 = r - r % WARPS
    x = Int32(0)
    if g0 + lane < r:
        x = row_value(g0 + lane, g_cq, g_rc, B, MB, bq, tpt, nth, what)
    return g_rgp[what, r // WARPS] + warp_sum(x)


@cute.jit
def _fill_row(p: SimpleNamespace, w: Int32, lane: Int32, g_cq, g_ck, g_info, g_rc, g_rgp, H: Int32, B: Int32,
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
    tpt = p.tokens_per_tile
    nth = p.tile_heads
    if m * bq < lq:
        g_rows = cute.make_tensor(p.rows, cute.make_layout((H * B * MB, ROW_WIDTH), stride=(ROW_WIDTH, 1)))
        g_ent = cute.make_tensor(p.entries, cute.make_layout((cutlass.max(p.max_entries, Int32(1)), ENTRY_WIDTH),
                                                             stride=(ENTRY_WIDTH, 1)))
        g_t = cute.make_tensor(p.tiles, cute.make_layout((cutlass.max(p.max_tiles, Int32(1)), TILE_WIDTH),
                                                         stride=(TILE_WIDTH, 1)))
        g_c = cute.make_tensor(p.chunks, cute.make_layout((cutlass.max(p.max_chunks, Int32(1)), CHUNK_WIDTH),
                                                          stride=(CHUNK_WIDTH, 1)))
        row = _row_prefix(w, lane, g_rgp, g_cq, g_rc, B, MB, bq, tpt, nth, 0)
        ent0 = _row_prefix(w, lane, g_rgp, g_cq, g_rc, B, MB, bq, tpt, nth, 1)
        ch0 = _row_prefix(w, lane, g_rgp, g_cq, g_rc, B, MB, bq, tpt, nth, 2)
        t0 = _row_prefix(w, lane, g_rgp, g_cq, g_rc, B, MB, bq, tpt, nth, 3)
        nf = g_rc[w, 0]
        npart = g_rc[w, 1]
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
            g_rows[row, 6] = npart
        for t in cutlass.range(lane, cdiv_nonneg(ql, tpt) * nth, 32):
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
        n_hi = Int32(0)
        if nf + npart > 0:
            n_hi = cutlass.min(NB, cdiv_nonneg(lk, bk))  # kept cells lie inside the sequence
        for n in cutlass.range(lane, n_hi, 32):
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
def _col_prefix(q: Int32, lane: Int32, g_cgp: cute.Tensor, g_ck, g_cc, B: Int32, NB: Int32, bk: Int32,
                what: cutlass.Constexpr) -> Int32:
    """Exclusive prefix of quantity ``what`` (0 columns, 1 entries) at padded column ``q`` (warp-uniform)."""
    g0 = q - q % WARPS
    x = Int32(0)
    if g0 + lane < q:
        x = col_value(g0 + lane, g_ck, g_cc, B, NB, bk, what)
    return g_cgp[what, q // WARPS] + warp_sum(x)


@cute.jit
def _fill_col(p: SimpleNamespace, q: Int32, lane: Int32, g_cq, g_ck, g_info, g_rc, g_rgp, g_cgp, g_cc, H: Int32,
              B: Int32, MB: Int32, NB: Int32):
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
        col = _col_prefix(q, lane, g_cgp, g_ck, g_cc, B, NB, p.block_k, 0)
        ce0 = _col_prefix(q, lane, g_cgp, g_ck, g_cc, B, NB, p.block_k, 1)
        cnf = g_cc[q, 0]
        cnp = g_cc[q, 1]
        if lane == 0:
            ks = n * p.block_k
            g_cols[col, 0] = hl
            g_cols[col, 1] = b
            g_cols[col, 2] = ks
            g_cols[col, 3] = cutlass.min(p.block_k, lk - ks)
            g_cols[col, 4] = ce0
            g_cols[col, 5] = cnf
            g_cols[col, 6] = cnp
        if cnf + cnp > 0:
            base = (hl * B + b) * MB  # padded row (hl, b, 0); the sequence's rows m < M_b exist, in order
            tpt = p.tokens_per_tile
            nth = p.tile_heads
            row_base = _row_prefix(base, lane, g_rgp, g_cq, g_rc, B, MB, bq, tpt, nth, 0)
            ent_base = _row_prefix(base, lane, g_rgp, g_cq, g_rc, B, MB, bq, tpt, nth, 1)
            run_f = Int32(0)
            run_p = Int32(0)
            for m0 in cutlass.range(0, cutlass.min(MB, cdiv_nonneg(lq, bq)), 32):
                m = m0 + lane
                r = base + m
                info = Int32(0)
                nf_r = Int32(0)
                ne = Int32(0)
                if m < MB and m * bq < lq:
                    info = g_info[r * NB + n]
                    nf_r = g_rc[r, 0]
                    ne = nf_r + g_rc[r, 1]
                incl = warp_incl_scan(ne, lane)
                e_row = ent_base + incl - ne  # row r's first entry
                cls = info & 3
                bf = cute.arch.vote_ballot_sync(cls == CELL_FULL)
                bp = cute.arch.vote_ballot_sync(cls == CELL_PARTIAL)
                if cls != 0:
                    pos = info >> CELL_POS_SHIFT
                    e = e_row + nf_r + pos
                    i = ce0 + cnf + run_p + rank_below(bp)
                    if cls == CELL_FULL:
                        e = e_row + pos
                        i = ce0 + run_f + rank_below(bf)
                    qs = m * bq
                    g_ce[i, 0] = qs
                    g_ce[i, 1] = cutlass.min(bq, lq - qs)
                    g_ce[i, 2] = row_base + m
                    g_ce[i, 3] = e
                run_f = run_f + Int32(cute.arch.popc(bf))
                run_p = run_p + Int32(cute.arch.popc(bp))
                ent_base = ent_base + warp_sum(ne)


@cute.kernel
def _fill_kernel(p: SimpleNamespace):
    tidx, _, _ = cute.arch.thread_idx()
    bidx, _, _ = cute.arch.block_idx()
    lane = Int32(tidx) % 32
    warp = Int32(tidx) // 32
    H = p.num_layout_heads
    B = p.batch
    MB = p.mb
    NB = p.nb
    n_rows = H * B * MB
    n_cols = H * B * NB
    rg = (n_rows + (WARPS - 1)) // WARPS
    cg = (n_cols + (WARPS - 1)) // WARPS
    rgs = cutlass.max(rg, Int32(1))
    grp = Int32(bidx)
    g_st = cute.make_tensor(p.status, cute.make_layout(STATUS_WIDTH))
    if g_st[STATUS_ERROR] == ERR_OK:
        g_cq = cute.make_tensor(p.cu_seqlens_q, cute.make_layout(B + 1))
        g_ck = cute.make_tensor(p.cu_seqlens_k, cute.make_layout(B + 1))
        g_info = cute.make_tensor(p.info, cute.make_layout(cutlass.max(n_rows * NB, Int32(1))))
        g_rc = cute.make_tensor(p.row_counts, cute.make_layout((cutlass.max(n_rows, Int32(1)), 4), stride=(4, 1)))
        g_rgp = cute.make_tensor(p.row_gp, cute.make_layout((4, rgs), stride=(rgs, 1)))
        if grp < rg:
            w = grp * WARPS + warp
            if w < n_rows:
                _fill_row(p, w, lane, g_cq, g_ck, g_info, g_rc, g_rgp, H, B, MB, NB)
        else:
            q = (grp - rg) * WARPS + warp
            if q < n_cols:
                cgs = cutlass.max(cg, Int32(1))
                g_cgp = cute.make_tensor(p.col_gp, cute.make_layout((COL_PART_WIDTH, cgs), stride=(cgs, 1)))
                g_cc = cute.make_tensor(p.col_counts, cute.make_layout((n_cols, 2), stride=(2, 1)))
                _fill_col(p, q, lane, g_cq, g_ck, g_info, g_rc, g_rgp, g_cgp, g_cc, H, B, MB, NB)


def make_host(variant: Variant):
    """Trace-ready host function for the ``fill`` variant, and its compile arguments."""
    kernel = _fill_kernel
    kernel.set_name_prefix(f"vb_{variant.name}", remove_cutlass_symbol=True, keep_mangled_name=False)

    def launch(p: SimpleNamespace):
        kernel(p).launch(grid=[p.num_groups, 1, 1], block=[32 * WARPS, 1, 1])

    return jit_host(variant.params, launch, name=f"host_{variant.name}"), fake_args(variant.params)
