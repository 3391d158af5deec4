"""CuTe DSL source of the device layout builder's ``topk``, ``pack``, ``cells`` and ``cols`` kernels, and the
helpers the ``scan`` / ``fill`` kernels share (see layout_device.py; warp reductions: ``common/warp_reduce``). Build
time only.

Exactness: every formula mirrors ``varblock.device_layout.model`` (``topk_cells``, ``mask_cells``,
``cells_from_classes``, ``row_values`` / ``col_values``, ``count_columns``); change both together.
"""

# (no `from __future__ import annotations`: the DSL reads annotations as objects)
from types import SimpleNamespace

import cutlass
import cutlass.cute as cute
from cutlass import Int32, Int64, Uint8

from varblock.device_layout.codes import CELL_FULL, CELL_PARTIAL, CELL_POS_SHIFT, COL_PART_WIDTH, ROW_PART_WIDTH
from varblock.kernels.common.signature import fake_args, jit_host
from varblock.kernels.common.warp_reduce import cdiv_nonneg, warp_max, warp_min, warp_sum
from varblock.kernels.layout_device import WARPS
from varblock.kernels.registry import Variant

I32_MAX = 2**31 - 1
#: token-mask cell value: some (not all) query tokens of the block select the key block (all: 1, none: 0)
TOKEN_SOME = 3
#: the cells / cols kernels' shared memory: one row of group quantities per warp (+ allocator alignment)
GROUP_SMEM_BYTES = WARPS * ROW_PART_WIDTH * 4 + 16


@cute.jit
def rank_below(ballot: Int32) -> Int32:
    """Set bits of ``ballot`` held by lanes below this one."""
    return Int32(cute.arch.popc(ballot & Int32(cute.arch.lanemask_lt())))


@cute.jit
def seq_len(cu: cute.Tensor, b: Int32) -> Int32:
    """Length of sequence ``b`` (clamped to >= 0: invalid cu_seqlens are reported by the scan kernel)."""
    return cutlass.max(cu[b + 1] - cu[b], Int32(0))


@cute.jit
def classify(v: Int32, codes: Int32, m: Int32, n: Int32, lq: Int32, lk: Int32, bq: Int32, bk: Int32, wl: Int32,
             wr: Int32) -> Int32:
    """Cell class (0 skip, 1 partial, 2 full) of mask value ``v`` at query block ``m`` x key block ``n``."""
    cls = Int32(0)
    if m * bq < lq and n * bk < lk:
        if codes != 0:
            if v >= 0 and v <= 2:
                cls = v
        elif v != 0:
            qs = Int64(m * bq)
            ql = Int64(cutlass.min(bq, lq - m * bq))
            ks = Int64(n * bk)
            kl = Int64(cutlass.min(bk, lk - n * bk))
            off = Int64(lk) - Int64(lq)
            dmin = ks - (qs + ql - 1) - off
            dmax = ks + kl - 1 - qs - off
            all_ = Int32(1)
            if v == TOKEN_SOME:  # a token-mask cell some but not all of whose query tokens select the key block
                all_ = Int32(0)
            none = Int32(0)
            if wr >= 0:
                if dmax > Int64(wr):
                    all_ = Int32(0)
                if dmin > Int64(wr):
                    none = Int32(1)
            if wl >= 0:
                if dmin < -Int64(wl):
                    all_ = Int32(0)
                if dmax < -Int64(wl):
                    none = Int32(1)
            if none == 0:
                cls = Int32(CELL_PARTIAL)
                if all_ != 0:
                    cls = Int32(CELL_FULL)
    return cls


@cute.kernel
def _topk_kernel(p: SimpleNamespace):
    tidx, _, _ = cute.arch.thread_idx()
    bidx, _, _ = cute.arch.block_idx()
    lane = Int32(tidx) % 32
    w = Int32(bidx) * WARPS + Int32(tidx) // 32
    H = p.num_layout_heads
    MB = p.mb
    NB = p.nb
    K = p.k
    B = p.batch
    if w < p.num_items:
        m = w % MB
        bm = w // (MB * H)
        g_cq = cute.make_tensor(p.cu_seqlens_q, cute.make_layout(B + 1))
        g_ck = cute.make_tensor(p.cu_seqlens_k, cute.make_layout(B + 1))
        g_idx = cute.make_tensor(p.indices, cute.make_layout(cutlass.max(p.num_items * K, Int32(1))))
        g_cnt = cute.make_tensor(p.counts, cute.make_layout(cutlass.max(p.num_items, Int32(1))))
        g_kept = cute.make_tensor(p.kept, cute.make_layout(cutlass.max(p.num_items * NB, Int32(1))))
        g_err = cute.make_tensor(p.topk_err, cute.make_layout(p.num_items))
        # row limits: this sequence's blocks, or (one mask for the batch) the largest of the batch
        m_lim = Int32(0)
        n_lim = Int32(0)
        if p.mask_batch == B:
            m_lim = cdiv_nonneg(seq_len(g_cq, bm), p.block_q)
            n_lim = cdiv_nonneg(seq_len(g_ck, bm), p.block_k)
        else:
            for b in cutlass.range(lane, B, 32):
                m_lim = cutlass.max(m_lim, cdiv_nonneg(seq_len(g_cq, b), p.block_q))
                n_lim = cutlass.max(n_lim, cdiv_nonneg(seq_len(g_ck, b), p.block_k))
            m_lim = warp_max(m_lim)
            n_lim = warp_max(n_lim)
        n_lim = cutlass.min(n_lim, NB)
        if p.pad_ok != 0:
            n_lim = NB
        if p.clear != 0:
            for n in cutlass.range(lane, NB, 32):
                g_kept[w * NB + n] = Uint8(0)
        cute.arch.sync_warp()
        first = Int32(I32_MAX)
        if m < m_lim:
            cnt = K
            if p.has_counts != 0:
                cnt = g_cnt[w]
            if cnt < 0 or cnt > K:
                first = w * K
            else:
                for k in cutlass.range(lane, cnt, 32):
                    j = g_idx[w * K + k]
                    bad = Int32(0)
                    if j < 0 or j >= n_lim:
                        bad = Int32(1)
                    elif p.strict != 0 and k > 0:
                        if j <= g_idx[w * K + k - 1]:
                            bad = Int32(1)
                    if bad == 0 and p.value == 2:
                        if Int32(g_kept[w * NB + j]) == 1:  # written by the previous (partial) list's launch
                            bad = Int32(1)
                    if bad != 0:
                        first = cutlass.min(first, w * K + k)
                    else:
                        g_kept[w * NB + j] = Uint8(p.value)
        first = warp_min(first)
        if lane == 0:
            if first == I32_MAX:
                first = Int32(-1)
            else:
                first = first + p.slot_offset
            g_err[w] = first


@cute.jit
def row_value(r: Int32, g_cq: cute.Tensor, g_rc: cute.Tensor, B: Int32, MB: Int32, bq: Int32, tpt: Int32,
              nth: Int32, what: cutlass.Constexpr) -> Int32:
    """One scanned quantity of padded row ``r`` (0 exists, 1 entries, 2 chunks, 3 tiles), from ``row_counts``."""
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
def col_value(c: Int32, g_ck: cute.Tensor, g_cc: cute.Tensor, B: Int32, NB: Int32, bk: Int32,
              what: cutlass.Constexpr) -> Int32:
    """One scanned quantity of padded column ``c`` (0 exists, 1 entries), from ``col_counts``."""
    out = Int32(0)
    if cutlass.const_expr(what == 0):
        if (c % NB) * bk < seq_len(g_ck, (c // NB) % B):
            out = Int32(1)
    else:
        out = g_cc[c, 0] + g_cc[c, 1]
    return out


@cute.jit
def group_store(s: cute.Tensor, part: cute.Tensor, grp: Int32, tid: Int32, nq: cutlass.Constexpr,
                first_min: cutlass.Constexpr):
    """After a barrier: ``part[k, grp]`` = the sum over the CTA's warps of ``s[warp, k]`` (``k < nq``); with
    ``first_min`` the last quantity is the minimum instead (``I32_MAX`` = none, stored as -1). Threads ``< nq``."""
    if tid < nq:
        is_min = Int32(0)
        if cutlass.const_expr(first_min):
            if tid == nq - 1:
                is_min = Int32(1)
        acc = Int32(0)
        if is_min != 0:
            acc = Int32(I32_MAX)
        for w in cutlass.range_constexpr(WARPS):
            x = s[w, tid]
            if is_min != 0:
                acc = cutlass.min(acc, x)
            else:
                acc = acc + x
        if is_min != 0 and acc == I32_MAX:
            acc = Int32(-1)
        part[tid, grp] = acc


@cute.jit
def _cell_value(g_mask: cute.Tensor, p, token: cutlass.Constexpr, bm: Int32, hl: Int32, m: Int32, n: Int32,
                lq: Int32) -> Int32:
    """A block mask's value at cell (m, n); a token mask's any / all over the block's query tokens (0 none, 1 all,
    TOKEN_SOME otherwise)."""
    v = Int32(0)
    if cutlass.const_expr(token):
        T = p.q_tokens
        NB = p.nb
        t_hi = cutlass.min(cutlass.min((m + 1) * p.block_q, lq), T)
        row0 = (bm * p.num_layout_heads + hl) * T * NB + n
        any_ = Int32(0)
        all_ = Int32(1)
        for t in cutlass.range(m * p.block_q, t_hi):
            if Int32(g_mask[row0 + t * NB]) != 0:
                any_ = Int32(1)
            else:
                all_ = Int32(0)
        if any_ != 0:
            v = Int32(1)
            if all_ == 0:
                v = Int32(TOKEN_SOME)
    else:
        v = Int32(g_mask[((bm * p.num_layout_heads + hl) * p.mb + m) * p.nb + n])
    return v


def _make_cells_kernel(token: bool):
    """The cells kernel for a block mask (``token=False``) or a SeerAttention 1D token mask."""

    @cute.kernel
    def kernel(p: SimpleNamespace):
        _cells_body(p, token)

    return kernel


@cute.jit
def _cells_row(p: SimpleNamespace, token: cutlass.Constexpr, w: Int32, lane: Int32, g_mask, g_cq, g_ck, g_info,
               g_rc):
    """One padded row ``w``: classify its cells (inside the sequence; every cell for codes, which are checked),
    write ``info`` and ``row_counts``; return (exists, entries, chunks, tiles, first bad cell or I32_MAX)."""
    H = p.num_layout_heads
    B = p.batch
    MB = p.mb
    NB = p.nb
    m = w % MB
    b = (w // MB) % B
    hl = w // (MB * B)
    bm = cutlass.min(b, p.mask_batch - 1)
    lq = seq_len(g_cq, b)
    lk = seq_len(g_ck, b)
    exists = Int32(0)
    tiles = Int32(0)
    n_hi = Int32(0)
    if m * p.block_q < lq:
        exists = Int32(1)
        tiles = cdiv_nonneg(cutlass.min(p.block_q, lq - m * p.block_q), p.tokens_per_tile) * p.tile_heads
        n_hi = cutlass.min(NB, cdiv_nonneg(lk, p.block_k))
    if p.codes != 0:
        n_hi = NB  # every code is validated (a bad one in padding is an error too)
    base = ((bm * H + hl) * MB + m) * NB
    n_full = Int32(0)
    n_part = Int32(0)
    ch_full = Int32(0)
    ch_part = Int32(0)
    first = Int32(I32_MAX)
    for n0 in cutlass.range(0, n_hi, 32):
        n = n0 + lane
        cls = Int32(0)
        if n < n_hi:
            v = _cell_value(g_mask, p, token, bm, hl, m, n, lq)
            if p.codes != 0 and (v < 0 or v > 2):
                first = cutlass.min(first, base + n)
            cls = classify(v, p.codes, m, n, lq, lk, p.block_q, p.block_k, p.window_left, p.window_right)
        bf = cute.arch.vote_ballot_sync(cls == CELL_FULL)
        bp = cute.arch.vote_ballot_sync(cls == CELL_PARTIAL)
        pos = Int32(0)
        if cls == CELL_FULL:
            pos = n_full + rank_below(bf)
            ch_full = ch_full + cdiv_nonneg(cutlass.min(p.block_k, lk - n * p.block_k), p.tile_n)
        elif cls == CELL_PARTIAL:
            pos = n_part + rank_below(bp)
            ch_part = ch_part + cdiv_nonneg(cutlass.min(p.block_k, lk - n * p.block_k), p.tile_n)
        if n < n_hi:
            g_info[w * NB + n] = cls | (pos << CELL_POS_SHIFT)
        n_full = n_full + Int32(cute.arch.popc(bf))
        n_part = n_part + Int32(cute.arch.popc(bp))
    ch_full = warp_sum(ch_full)
    ch_part = warp_sum(ch_part)
    first = warp_min(first)
    if lane == 0:
        g_rc[w, 0] = n_full
        g_rc[w, 1] = n_part
        g_rc[w, 2] = ch_full
        g_rc[w, 3] = ch_part
    return exists, n_full + n_part, ch_full + ch_part, tiles, first


@cute.jit
def _cells_body(p: SimpleNamespace, token: cutlass.Constexpr):
    tidx, _, _ = cute.arch.thread_idx()
    bidx, _, _ = cute.arch.block_idx()
    tid = Int32(tidx)
    lane = tid % 32
    warp = tid // 32
    smem = cutlass.utils.SmemAllocator()
    s = smem.allocate_tensor(Int32, cute.make_layout((WARPS, ROW_PART_WIDTH), stride=(ROW_PART_WIDTH, 1)), 16)
    H = p.num_layout_heads
    B = p.batch
    MB = p.mb
    NB = p.nb
    n_rows = H * B * MB
    n_cols = H * B * NB
    row_groups = (n_rows + (WARPS - 1)) // WARPS
    g_cq = cute.make_tensor(p.cu_seqlens_q, cute.make_layout(B + 1))
    g_ck = cute.make_tensor(p.cu_seqlens_k, cute.make_layout(B + 1))
    rows_in = p.q_tokens if cutlass.const_expr(token) else MB
    g_mask = cute.make_tensor(p.mask, cute.make_layout(cutlass.max(p.mask_batch * H * rows_in * NB, Int32(1))))
    v0 = Int32(0)
    v1 = Int32(0)
    v2 = Int32(0)
    v3 = Int32(0)
    v4 = Int32(I32_MAX)
    grp = Int32(bidx)
    if grp < row_groups:
        w = grp * WARPS + warp
        if w < n_rows:
            g_info = cute.make_tensor(p.info, cute.make_layout(cutlass.max(n_rows * NB, Int32(1))))
            g_rc = cute.make_tensor(p.row_counts, cute.make_layout((n_rows, 4), stride=(4, 1)))
            v0, v1, v2, v3, v4 = _cells_row(p, token, w, lane, g_mask, g_cq, g_ck, g_info, g_rc)
    else:
        if cutlass.const_expr(not token):
            q = (grp - row_groups) * WARPS + warp
            if q < n_cols:
                v0, v1 = _count_col(p, q, lane, g_mask, g_cq, g_ck)
    if lane == 0:
        s[warp, 0] = v0
        s[warp, 1] = v1
        s[warp, 2] = v2
        s[warp, 3] = v3
        s[warp, 4] = v4
    cute.arch.barrier()
    if grp < row_groups:
        g_rpart = cute.make_tensor(p.row_part, cute.make_layout((ROW_PART_WIDTH, row_groups),
                                                                stride=(row_groups, 1)))
        group_store(s, g_rpart, grp, tid, ROW_PART_WIDTH, True)
    else:
        if cutlass.const_expr(not token):
            col_groups = cutlass.max((n_cols + (WARPS - 1)) // WARPS, Int32(1))
            g_cpart = cute.make_tensor(p.col_part, cute.make_layout((COL_PART_WIDTH, col_groups),
                                                                    stride=(col_groups, 1)))
            group_store(s, g_cpart, grp - row_groups, tid, COL_PART_WIDTH, False)


@cute.jit
def _count_col(p: SimpleNamespace, q: Int32, lane: Int32, g_mask, g_cq, g_ck):
    """One padded column ``q = (hl, b, n)`` of a block mask: its full / partial cells (rows inside the sequence)
    -> ``col_counts``; returns (exists, entries)."""
    H = p.num_layout_heads
    B = p.batch
    MB = p.mb
    NB = p.nb
    n = q % NB
    b = (q // NB) % B
    hl = q // (NB * B)
    bm = cutlass.min(b, p.mask_batch - 1)
    lq = seq_len(g_cq, b)
    lk = seq_len(g_ck, b)
    g_cc = cute.make_tensor(p.col_counts, cute.make_layout((H * B * NB, 2), stride=(2, 1)))
    exists = Int32(0)
    c_full = Int32(0)
    c_part = Int32(0)
    if n * p.block_k < lk:
        exists = Int32(1)
        for m in cutlass.range(lane, cutlass.min(MB, cdiv_nonneg(lq, p.block_q)), 32):
            v = _cell_value(g_mask, p, False, bm, hl, m, n, lq)
            cls = classify(v, p.codes, m, n, lq, lk, p.block_q, p.block_k, p.window_left, p.window_right)
            if cls == CELL_FULL:
                c_full = c_full + 1
            elif cls == CELL_PARTIAL:
                c_part = c_part + 1
        c_full = warp_sum(c_full)
        c_part = warp_sum(c_part)
    if lane == 0:
        g_cc[q, 0] = c_full
        g_cc[q, 1] = c_part
    return exists, c_full + c_part


@cute.kernel
def _pack_kernel(p: SimpleNamespace):
    """One warp per (head, sequence, token) row of a token mask ``[Bm, H, T, NB]``: the row -> the packed
    ``[H, B * T, NB]`` at the token's packed index (key blocks beyond the sequence's zeroed)."""
    tidx, _, _ = cute.arch.thread_idx()
    bidx, _, _ = cute.arch.block_idx()
    lane = Int32(tidx) % 32
    w = Int32(bidx) * WARPS + Int32(tidx) // 32
    if w < p.num_items:
        T = p.q_tokens
        B = p.batch
        H = p.num_layout_heads
        NB = p.nb
        t = w % T
        b = (w // T) % B
        h = w // (T * B)
        g_cq = cute.make_tensor(p.cu_seqlens_q, cute.make_layout(B + 1))
        g_ck = cute.make_tensor(p.cu_seqlens_k, cute.make_layout(B + 1))
        g_in = cute.make_tensor(p.mask, cute.make_layout(cutlass.max(p.mask_batch * H * T * NB, Int32(1))))
        g_out = cute.make_tensor(p.packed, cute.make_layout(cutlass.max(H * B * T * NB, Int32(1))))
        cap = B * T
        tok = g_cq[b] + t
        n_b = cdiv_nonneg(seq_len(g_ck, b), p.block_k)
        if t < seq_len(g_cq, b) and tok >= 0 and tok < cap:
            src = ((cutlass.min(b, p.mask_batch - 1) * H + h) * T + t) * NB
            dst = (h * cap + tok) * NB
            for n in cutlass.range(lane, NB, 32):
                x = Uint8(0)
                if n < n_b:
                    x = Uint8(g_in[src + n])
                g_out[dst + n] = x


@cute.kernel
def _cols_kernel(p: SimpleNamespace):
    """One CTA per group of padded columns ``(hl, b, n)``, a warp each: its full / partial cells (rows inside the
    sequence) counted from ``info`` -> ``col_counts``, the group's sums -> ``col_part``."""
    tidx, _, _ = cute.arch.thread_idx()
    bidx, _, _ = cute.arch.block_idx()
    tid = Int32(tidx)
    lane = tid % 32
    warp = tid // 32
    smem = cutlass.utils.SmemAllocator()
    s = smem.allocate_tensor(Int32, cute.make_layout((WARPS, COL_PART_WIDTH), stride=(COL_PART_WIDTH, 1)), 16)
    B = p.batch
    MB = p.mb
    NB = p.nb
    n_cols = p.num_layout_heads * B * NB
    grp = Int32(bidx)
    q = grp * WARPS + warp
    exists = Int32(0)
    c_full = Int32(0)
    c_part = Int32(0)
    if q < n_cols:
        n = q % NB
        b = (q // NB) % B
        row0 = (q // NB) * MB  # padded row (hl, b, 0)
        g_cq = cute.make_tensor(p.cu_seqlens_q, cute.make_layout(B + 1))
        g_ck = cute.make_tensor(p.cu_seqlens_k, cute.make_layout(B + 1))
        g_info = cute.make_tensor(p.info, cute.make_layout(cutlass.max(p.num_layout_heads * B * MB * NB, Int32(1))))
        g_cc = cute.make_tensor(p.col_counts, cute.make_layout((n_cols, 2), stride=(2, 1)))
        if n * p.block_k < seq_len(g_ck, b):
            exists = Int32(1)
            for m in cutlass.range(lane, cutlass.min(MB, cdiv_nonneg(seq_len(g_cq, b), p.block_q)), 32):
                cls = g_info[(row0 + m) * NB + n] & 3
                if cls == CELL_FULL:
                    c_full = c_full + 1
                elif cls == CELL_PARTIAL:
                    c_part = c_part + 1
            c_full = warp_sum(c_full)
            c_part = warp_sum(c_part)
        if lane == 0:
            g_cc[q, 0] = c_full
            g_cc[q, 1] = c_part
    if lane == 0:
        s[warp, 0] = exists
        s[warp, 1] = c_full + c_part
    cute.arch.barrier()
    col_groups = cutlass.max(p.num_groups, Int32(1))
    g_cpart = cute.make_tensor(p.col_part, cute.make_layout((COL_PART_WIDTH, col_groups), stride=(col_groups, 1)))
    group_store(s, g_cpart, grp, tid, COL_PART_WIDTH, False)


def make_host(variant: Variant):
    """Trace-ready host function for a ``topk``, ``pack``, ``cells`` or ``cols`` variant, and its compile
    arguments."""
    stage = variant.key["stage"]
    if stage == "topk":
        kernel = _topk_kernel
    elif stage == "pack":
        kernel = _pack_kernel
    elif stage == "cols":
        kernel = _cols_kernel
    else:
        kernel = _make_cells_kernel(variant.key["mask_dtype"] == "token")
    kernel.set_name_prefix(f"vb_{variant.name}", remove_cutlass_symbol=True, keep_mangled_name=False)

    def launch(p: SimpleNamespace):
        if stage in ("topk", "pack"):
            kernel(p).launch(grid=[(p.num_items + (WARPS - 1)) // WARPS, 1, 1], block=[32 * WARPS, 1, 1])
        else:  # one CTA per group of rows / columns, with the group sums' shared memory
            kernel(p).launch(grid=[p.num_groups, 1, 1], block=[32 * WARPS, 1, 1], smem=GROUP_SMEM_BYTES)

    pointee = {"kept": Uint8, "packed": Uint8, "mask": Uint8}
    if stage == "cells" and variant.key["mask_dtype"] == "int32":
        pointee["mask"] = Int32
    return jit_host(variant.params, launch, name=f"host_{variant.name}"), fake_args(variant.params, pointee)
