"""CuTe DSL source of the device-side attention work-list PREPARE kernel (see attention_prepare.py). Build time only.

Exactness: every formula here mirrors ``varblock.dense_worklist`` (the NumPy model); change both together.
"""

# (no `from __future__ import annotations`: the DSL reads annotations as objects)
from types import SimpleNamespace

import cutlass
import cutlass.cute as cute
from cutlass import Int32, Int64

from varblock.abi import (
    CHUNK_K_LEN,
    CHUNK_K_START,
    CHUNK_WIDTH,
    ERR_CAPACITY,
    ERR_CU_SEQLENS,
    ERR_OK,
    ERR_PARAMS,
    STATUS_ERROR,
    STATUS_NUM_TILES,
    STATUS_WIDTH,
    TILE_BATCH,
    TILE_CHUNK_BEGIN,
    TILE_HEAD,
    TILE_N_FULL,
    TILE_N_LEFT,
    TILE_N_PARTIAL,
    TILE_Q_LEN,
    TILE_Q_START,
    TILE_WIDTH,
)
from varblock.kernels.attention_prepare import THREADS, WARPS
from varblock.kernels.common.signature import fake_args, jit_host
from varblock.kernels.common.warp_reduce import cdiv_nonneg, warp_incl_scan
from varblock.kernels.registry import Variant

_SMEM_BYTES = 3 * WARPS * 4


@cute.kernel
def _prepare_kernel(p: SimpleNamespace):
    tidx, _, _ = cute.arch.thread_idx()
    tid = Int32(tidx)
    lane = tid % 32
    warp = tid // 32

    smem = cutlass.utils.SmemAllocator()
    s_tot = smem.allocate_tensor(Int32, cute.make_layout((WARPS, 3), stride=(3, 1)), 16)

    # ---- scalar parameters (safe values when they are bad: nothing but the status is written then)
    bad = Int32(0)
    if p.batch < 0 or p.num_tile_heads < 1 or p.pack_gqa < 1 or p.tile_n < 1:
        bad = Int32(1)
    g = cutlass.max(p.pack_gqa, Int32(1))
    tpt = p.tile_m // g
    if tpt < 1:
        bad = Int32(1)
    nb = p.batch
    if bad != 0:
        nb = Int32(0)
    tpt = cutlass.max(tpt, Int32(1))
    tn = cutlass.max(p.tile_n, Int32(1))
    nh = cutlass.max(p.num_tile_heads, Int32(1))

    g_cq = cute.make_tensor(p.cu_seqlens_q, cute.make_layout(nb + 1))
    g_ck = cute.make_tensor(p.cu_seqlens_k, cute.make_layout(nb + 1))
    g_sc = cute.make_tensor(p.scratch, cute.make_layout(2 * nb + 2))
    g_st = cute.make_tensor(p.status, cute.make_layout(STATUS_WIDTH))

    # ---- (1) per-thread range of sequences: validate, count m-blocks and chunks
    per = (nb + (THREADS - 1)) // THREADS
    b0 = cutlass.min(tid * per, nb)
    b1 = cutlass.min(b0 + per, nb)
    sum_m = Int32(0)
    sum_n = Int32(0)
    err = Int32(0)
    if b0 < b1:
        pq = g_cq[b0]
        pk = g_ck[b0]
        if pq < 0 or pk < 0:
            err = Int32(1)
        for b in cutlass.range(b0, b1):
            cq = g_cq[b + 1]
            ck = g_ck[b + 1]
            if cq < pq or ck < pk:
                err = Int32(1)
            if err == 0:
                sum_m = sum_m + cdiv_nonneg(cq - pq, tpt)
                sum_n = sum_n + cdiv_nonneg(ck - pk, tn)
            pq = cq
            pk = ck

    inc_m = warp_incl_scan(sum_m, lane)
    inc_n = warp_incl_scan(sum_n, lane)
    inc_e = warp_incl_scan(err, lane)
    if lane == 31:
        s_tot[warp, 0] = inc_m
        s_tot[warp, 1] = inc_n
        s_tot[warp, 2] = inc_e
    cute.arch.barrier()
    pre_m = Int32(0)
    pre_n = Int32(0)
    tot_m = Int32(0)
    tot_n = Int32(0)
    tot_e = Int32(0)
    for w in cutlass.range_constexpr(WARPS):
        vm = s_tot[w, 0]
        vn = s_tot[w, 1]
        if w < warp:
            pre_m = pre_m + vm
            pre_n = pre_n + vn
        tot_m = tot_m + vm
        tot_n = tot_n + vn
        tot_e = tot_e + s_tot[w, 2]
    run_m = pre_m + inc_m - sum_m  # exclusive prefix of this thread's first sequence
    run_n = pre_n + inc_n - sum_n

    # ---- decision (every thread derives the same one)
    code = Int32(ERR_OK)
    if bad != 0:
        code = Int32(ERR_PARAMS)
    elif tot_e != 0:
        code = Int32(ERR_CU_SEQLENS)
    elif Int64(tot_m) * Int64(nh) > Int64(p.max_tiles) or tot_n > p.max_chunks:
        code = Int32(ERR_CAPACITY)
    num_tiles = Int32(0)
    if code == ERR_OK:
        num_tiles = tot_m * nh

    # ---- (2) prefixes -> scratch, status
    if code == ERR_OK:
        if b0 < b1:
            pq = g_cq[b0]
            pk = g_ck[b0]
            for b in cutlass.range(b0, b1):
                cq = g_cq[b + 1]
                ck = g_ck[b + 1]
                g_sc[b] = run_m
                g_sc[nb + 1 + b] = run_n
                run_m = run_m + cdiv_nonneg(cq - pq, tpt)
                run_n = run_n + cdiv_nonneg(ck - pk, tn)
                pq = cq
                pk = ck
        if tid == 0:
            g_sc[nb] = tot_m
            g_sc[2 * nb + 1] = tot_n
    if tid == 0:
        g_st[STATUS_NUM_TILES] = num_tiles
        g_st[STATUS_ERROR] = code
    cute.arch.barrier()

    # ---- (3) fill tiles and chunks
    if code == ERR_OK:
        t_lay = cute.make_layout((cutlass.max(p.max_tiles, Int32(1)), TILE_WIDTH), stride=(TILE_WIDTH, 1))
        c_lay = cute.make_layout((cutlass.max(p.max_chunks, Int32(1)), CHUNK_WIDTH), stride=(CHUNK_WIDTH, 1))
        g_t = cute.make_tensor(p.tiles, t_lay)
        g_c = cute.make_tensor(p.chunks, c_lay)
        wl = Int64(p.window_left)
        wr = Int64(p.window_right)
        tn64 = Int64(tn)
        lo = Int32(0)
        for t in cutlass.range(tid, num_tiles, THREADS):
            mbg = t // nh
            head = t - mbg * nh
            hi = nb  # invariant: scratch[lo] <= mbg < scratch[hi]
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if g_sc[mid] <= mbg:
                    lo = mid
                else:
                    hi = mid
            b = lo
            pm = g_sc[b]
            n_mb = g_sc[b + 1] - pm
            m = n_mb - 1 - (mbg - pm)
            cq0 = g_cq[b]
            lq = g_cq[b + 1] - cq0
            lk = g_ck[b + 1] - g_ck[b]
            qs = m * tpt
            ql = cutlass.min(tpt, lq - qs)
            cofs = g_sc[nb + 1 + b]
            # band (int64): row i allowed keys [i + off - wl, i + off + wr] (unbounded side when < 0)
            off = Int64(lk) - Int64(lq)
            qs64 = Int64(qs)
            qe64 = Int64(qs + ql - 1)
            lk64 = Int64(lk)
            jlo = Int64(0)
            if wl >= 0:
                jlo = cutlass.max(qs64 + off - wl, Int64(0))
            jhi = lk64 - 1
            if wr >= 0:
                jhi = cutlass.min(qe64 + off + wr, lk64 - 1)
            cb = cofs
            nf = Int32(0)
            npart = Int32(0)
            nl = Int32(0)
            if jhi >= jlo:
                klo = jlo // tn64
                khi = jhi // tn64
                flo = klo
                if wl >= 0:
                    a = cutlass.max(qe64 + off - wl, Int64(0))
                    flo = cutlass.max((a + tn64 - 1) // tn64, klo)
                fhi = khi
                if wr >= 0:
                    bv = qs64 + off + wr
                    if bv < lk64 - 1:
                        fhi = cutlass.min(cutlass.max(bv + 1, Int64(0)) // tn64 - 1, khi)
                nf64 = cutlass.max(fhi - flo + 1, Int64(0))
                n64 = khi - klo + 1
                nf = Int32(nf64)
                npart = Int32(n64 - nf64)
                nl = npart
                if nf64 > 0:
                    nl = Int32(flo - klo)
                cb = cofs + Int32(klo)
            g_t[t, TILE_BATCH] = b
            g_t[t, TILE_HEAD] = head
            g_t[t, TILE_Q_START] = qs
            g_t[t, TILE_Q_LEN] = ql
            g_t[t, TILE_CHUNK_BEGIN] = cb
            g_t[t, TILE_N_FULL] = nf
            g_t[t, TILE_N_PARTIAL] = npart
            g_t[t, TILE_N_LEFT] = nl

        lo = Int32(0)
        for c in cutlass.range(tid, tot_n, THREADS):
            hi = nb  # invariant: scratch[nb + 1 + lo] <= c < scratch[nb + 1 + hi]
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if g_sc[nb + 1 + mid] <= c:
                    lo = mid
                else:
                    hi = mid
            b = lo
            ks = (c - g_sc[nb + 1 + b]) * tn
            lk = g_ck[b + 1] - g_ck[b]
            g_c[c, CHUNK_K_START] = ks
            g_c[c, CHUNK_K_LEN] = cutlass.min(tn, lk - ks)


def make_host(variant: Variant):
    """Trace-ready host function for the attention_prepare variant, and its compile arguments."""
    _prepare_kernel.set_name_prefix(f"vb_{variant.name}", remove_cutlass_symbol=True, keep_mangled_name=False)

    def launch(p: SimpleNamespace):
        _prepare_kernel(p).launch(grid=[1, 1, 1], block=[THREADS, 1, 1], smem=_SMEM_BYTES)

    return jit_host(variant.params, launch, name=f"host_{variant.name}"), fake_args(variant.params)
