"""CuTe DSL implementation of ``decode_fwd`` (build time only: imports ``cutlass``). Contract: ``decode_fwd.py``.

Shared memory: sQ ``(16, D, warps_m)`` (one 16-row slice per row warp), the K and V rings ``(kw, D, stages *
warps_n)`` (``kw = tile_n / warps_n`` keys per warp; stage ``s`` is slices ``s * warps_n ..``), rows of 64 elements
swizzled (cp.async writes and ldmatrix reads without bank conflicts). Every K/V row is fetched by its own 16-byte
cp.async vectors from the address its page gives; rows past ``k_len`` are zero-filled.

Pipeline: chunk ``c`` goes to stage ``c % stages``; ``stages - 1`` chunks are in flight while one is computed
(``cp.async.wait_group(stages - 2)`` + one barrier per chunk; the barrier also frees the stage refilled next).
Each warp computes S = Q K^T for its 16 rows and its ``kw`` keys (mma.sync m16n8k16, fp32), the online softmax
(exp2, ``-inf`` rows use 0 as max), and O += P V with P in registers. The epilogue merges the ``warps_n`` softmax
states through shared memory (fp32, the K/V ring is reused), then writes ``o``/``lse`` or the split partial and,
in the last split of a row tile, the merged result.
"""

# (no `from __future__ import annotations`: cute.struct reads the annotations as objects)
from collections.abc import Sequence
from types import SimpleNamespace

import cutlass
import cutlass.cute as cute
from cutlass import Float32, Int32, Int64
from cutlass.cute.nvgpu import cpasync, warp

from varblock.decode_plan import abi

from ._dsl import dsl_dtype
from .common.signature import jit_host
from .common.softmax import LN2, OnlineSoftmax
from .common.warp_mma import acc_to_frag_a, mn_view, quad_sum, swizzled_rows_atom

W = abi.ITEM_WIDTH
CW = abi.CHUNK_WIDTH


@cute.jit
def load_chunk(ci: Int32, stage: Int32, chunks: cute.Pointer, chunk_begin: Int32, tKsK: cute.Tensor,
               tVsV: cute.Tensor, tKcK: cute.Tensor, g2s: cute.TiledCopy, kv_row_base: Int64, k_st: Int64,
               v_st: Int64, k_sp: Int64, v_sp: Int64, k_head_off: Int64, v_head_off: Int64, paged: Int32,
               page_table: cute.Pointer, pt_row: Int64, page_size: Int32, k_cache: cute.Pointer,
               v_cache: cute.Pointer, D: cutlass.Constexpr, kw: cutlass.Constexpr, warps_n: cutlass.Constexpr):
    """K and V rows of chunk ``ci`` of the item -> ring stage ``stage`` (cp.async, no commit). Each row is
    addressed through its page (``paged``) or from the sequence's first row; rows past ``k_len`` are zeroed."""
    c = (chunk_begin + ci) * CW
    k_start = chunks[c + abi.CHUNK_K_START]
    k_len = chunks[c + abi.CHUNK_K_LEN]
    for i in cutlass.range_constexpr(warps_n):
        sl = stage * warps_n + i
        for n in cutlass.range_constexpr(cute.size(tKsK, mode=[1])):
            r = i * kw + tKcK[0, n, 0][0]
            if r < k_len:
                j = k_start + r
                k_off = kv_row_base * k_st + Int64(j) * k_st + k_head_off
                v_off = kv_row_base * v_st + Int64(j) * v_st + v_head_off
                if paged != 0:
                    pg_idx = j // page_size
                    page = Int64(page_table[pt_row + Int64(pg_idx)])
                    in_page = Int64(j - pg_idx * page_size)
                    k_off = page * k_sp + in_page * k_st + k_head_off
                    v_off = page * v_sp + in_page * v_st + v_head_off
                k_off = cute.assume(k_off, divby=8)
                v_off = cute.assume(v_off, divby=8)
                gk = cute.tiled_divide(cute.make_tensor(k_cache + k_off, cute.make_layout(D)), (8,))
                gv = cute.tiled_divide(cute.make_tensor(v_cache + v_off, cute.make_layout(D)), (8,))
                for kk in cutlass.range_constexpr(cute.size(tKsK, mode=[2])):
                    col = tKcK[0, n, kk][1] // 8
                    cute.copy(g2s, gk[None, col], tKsK[None, n, kk, sl])
                    cute.copy(g2s, gv[None, col], tVsV[None, n, kk, sl])
            else:
                tKsK[None, n, None, sl].fill(0)
                tVsV[None, n, None, sl].fill(0)


@cute.jit
def loader_issue(p: SimpleNamespace, k_sh: Int64, v_sh: Int64, tKsK: cute.Tensor, tVsV: cute.Tensor,
                 tKcK: cute.Tensor, g2s: cute.TiledCopy, k_st: Int64, v_st: Int64, k_sp: Int64, v_sp: Int64,
                 D: cutlass.Constexpr, kw: cutlass.Constexpr, warps_n: cutlass.Constexpr, stages: cutlass.Constexpr,
                 ld_item: Int32, ld_c: Int32, ld_nc: Int32, ld_cb: Int32, ld_kvb: Int64, ld_ptr: Int64,
                 ld_kho: Int64, ld_vho: Int64, f_ld: Int32, f_cons: Int32, lim_item: Int32, n_items: Int32,
                 grid: Int32, max_ahead: cutlass.Constexpr):
    """One step of the CTA's K/V loader: when its item's chunks are all issued, move to the CTA's next item
    (``ld_item + grid``) if that is at most ``lim_item``; then issue its next chunk into stage ``f_ld % stages``
    as one cp.async group, if fewer than ``max_ahead + 1`` chunks are issued and not yet consumed. Returns the
    updated loader state."""
    nx = ld_item + grid
    if ld_c >= ld_nc:
        if nx <= lim_item:
            if nx < n_items:
                it = nx * W
                b = p.items[it + abi.ITEM_BATCH]
                h = p.items[it + abi.ITEM_KV_HEAD]
                ld_cb = p.items[it + abi.ITEM_CHUNK_BEGIN]
                ld_nc = p.items[it + abi.ITEM_N_CHUNKS]
                ld_c = Int32(0)
                ld_item = nx
                ld_kvb = Int64(0)
                if p.paged == 0:
                    ld_kvb = Int64(p.cu_seqlens_k[b])
                ld_ptr = Int64(b) * p.pt_stride
                ld_kho = Int64(h) * k_sh
                ld_vho = Int64(h) * v_sh
    if ld_c < ld_nc:
        if f_ld - f_cons <= max_ahead:
            load_chunk(ld_c, f_ld % stages, p.chunks, ld_cb, tKsK, tVsV, tKcK, g2s, ld_kvb, k_st, v_st, k_sp, v_sp,
                       ld_kho, ld_vho, p.paged, p.page_table, ld_ptr, p.page_size, p.k_cache, p.v_cache, D, kw,
                       warps_n)
            cute.arch.cp_async_commit_group()
            ld_c = ld_c + 1
            f_ld = f_ld + 1
    return ld_item, ld_c, ld_nc, ld_cb, ld_kvb, ld_ptr, ld_kho, ld_vho, f_ld


@cute.jit
def wait_chunk(pending: Int32, stages: cutlass.Constexpr):
    """Wait until at most ``pending`` (0 .. stages - 2) of this thread's cp.async groups are in flight."""
    for k in cutlass.range_constexpr(stages - 1):
        if pending == k:
            cute.arch.cp_async_wait_group(k)


@cute.jit
def e_store(sE: cute.Tensor, sEk: cute.Tensor, sEv: cute.Tensor, e_stage: Int32, w: Int32, r: Int32, d: Int32, v,
            cross: cutlass.Constexpr, tile_m: cutlass.Constexpr, D: cutlass.Constexpr, e_half: cutlass.Constexpr):
    """Epilogue buffer element (warp w, row r, column d) <- v: the whole ring, or stage ``e_stage`` with
    cross-item prefetch."""
    if cutlass.const_expr(cross):
        i = (w * tile_m + r) * D + d
        if i < e_half:
            sEk[e_stage * e_half + i] = v
        else:
            sEv[e_stage * e_half + i - e_half] = v
    else:
        sE[w, r, d] = v


@cute.jit
def e_load(sE: cute.Tensor, sEk: cute.Tensor, sEv: cute.Tensor, e_stage: Int32, w, r: Int32, d,
           cross: cutlass.Constexpr, tile_m: cutlass.Constexpr, D: cutlass.Constexpr, e_half: cutlass.Constexpr
           ) -> Float32:
    """Epilogue buffer element (warp w, row r, column d); see :func:`e_store`."""
    v = Float32(0.0)
    if cutlass.const_expr(cross):
        i = (w * tile_m + r) * D + d
        if i < e_half:
            v = sEk[e_stage * e_half + i]
        else:
            v = sEv[e_stage * e_half + i - e_half]
    else:
        v = sE[w, r, d]
    return v


@cute.jit
def merge_splits(p: SimpleNamespace, sRow: cute.Tensor, tidx: Int32, warp_id: Int32, lane: Int32, slot_base: Int32,
                 num_splits: Int32, rows_valid: Int32, row_start: Int32, seq_q: Int32, hq0: Int32, G: Int32,
                 tile_m: cutlass.Constexpr, D: cutlass.Constexpr, nthr: cutlass.Constexpr):
    """The last split of a row tile: ``o``/``lse`` from the ``num_splits`` partials at slots ``slot_base ..``.

    Pass 1: ``nthr / tile_m`` adjacent lanes per row fold the split LSEs into (max, sum) online, 4 loads in flight
    each, combined by butterfly shuffles; row max and 1/sum go to ``sRow[tile_m:]``, the LSE to ``lse``.
    Pass 2: each warp merges ``RW`` rows at once, ``UB`` splits per step (padded, clamped, branch-free: every load
    of a step is independent), so about 64 fp32 loads per lane are in flight (the merge is L2-latency bound)."""
    dtype = p.o.dtype
    tpr = nthr // tile_m
    n_dcol = D // 32
    num_warps = nthr // 32
    UA = 4
    RW = 2 if n_dcol <= 4 else 1
    UB = 64 // (RW * n_dcol)
    ra = tidx // tpr
    sub = tidx - ra * tpr
    m_run = -Float32.inf
    l_run = Float32(0.0)
    if ra < rows_valid:
        for s0 in cutlass.range(0, num_splits, tpr * UA, unroll=1):
            xs = []
            for j in cutlass.range_constexpr(UA):
                s = s0 + sub + j * tpr
                x = p.part_lse[Int64(slot_base + cutlass.min(s, num_splits - 1)) * tile_m + ra]
                xs.append(-Float32.inf if s >= num_splits else x)
            m_new = m_run
            for j in cutlass.range_constexpr(UA):
                m_new = cute.arch.fmax(m_new, xs[j])
            m_ns = 0.0 if m_new == -Float32.inf else m_new
            acc = l_run * cute.math.exp(m_run - m_ns)
            for j in cutlass.range_constexpr(UA):
                acc = acc + cute.math.exp(xs[j] - m_ns)
            l_run = acc
            m_run = m_new
    for k in cutlass.range_constexpr(tpr.bit_length() - 1):
        off = tpr >> (k + 1)
        m2 = cute.arch.shuffle_sync_bfly(m_run, offset=off)
        l2 = cute.arch.shuffle_sync_bfly(l_run, offset=off)
        m_new = cute.arch.fmax(m_run, m2)
        m_ns = 0.0 if m_new == -Float32.inf else m_new
        l_run = l_run * cute.math.exp(m_run - m_ns) + l2 * cute.math.exp(m2 - m_ns)
        m_run = m_new
    if ra < rows_valid:
        if sub == 0:
            m_safe = 0.0 if m_run == -Float32.inf else m_run
            sRow[tile_m + ra] = m_safe
            sRow[2 * tile_m + ra] = Float32(0.0) if l_run == 0.0 else Float32(1.0) / l_run
            packed = row_start + ra
            tq = packed // G
            hq = hq0 + (packed - tq * G)
            p.lse[Int64(hq) * p.lse_stride_head + Int64(seq_q + tq)] = (
                -Float32.inf if l_run == 0.0 else m_safe + cute.math.log(l_run))
    cute.arch.barrier()
    accs = cute.make_rmem_tensor(RW * n_dcol, Float32)
    for r0 in cutlass.range(warp_id, rows_valid, num_warps * RW, unroll=1):
        rcs = []
        ms = []
        invs = []
        for k in cutlass.range_constexpr(RW):
            r = r0 + k * num_warps
            rc = r0 if r >= rows_valid else r
            rcs.append(rc)
            ms.append(sRow[tile_m + rc])
            invs.append(sRow[2 * tile_m + rc])
        accs.fill(0.0)
        for s0 in cutlass.range(0, num_splits, UB, unroll=1):
            for j in cutlass.range_constexpr(UB):
                s = s0 + j
                base = Int64(slot_base + cutlass.min(s, num_splits - 1)) * tile_m
                for k in cutlass.range_constexpr(RW):
                    wgt = cute.math.exp(p.part_lse[base + rcs[k]] - ms[k]) * invs[k]
                    wgt = Float32(0.0) if s >= num_splits else wgt
                    prow = p.part_o + (base + rcs[k]) * D
                    for i in cutlass.range_constexpr(n_dcol):
                        accs[k * n_dcol + i] = accs[k * n_dcol + i] + wgt * prow[lane + 32 * i]
        for k in cutlass.range_constexpr(RW):
            r = r0 + k * num_warps
            if r < rows_valid:
                packed = row_start + r
                tq = packed // G
                hq = hq0 + (packed - tq * G)
                orow = p.o + (Int64(seq_q + tq) * p.o_stride_tok + Int64(hq) * p.o_stride_head)
                for i in cutlass.range_constexpr(n_dcol):
                    orow[lane + 32 * i] = accs[k * n_dcol + i].to(dtype)


def make_host(name: str, params: Sequence, dtype_name: str, D: int, tile_m: int, tile_n: int, stages: int, warps_m: int,
              warps_n: int):
    """Build the ``@cute.jit`` host function (and its kernel) of one variant; ``params``: the family's ``PARAMS``."""
    dtype = dsl_dtype(dtype_name)
    num_warps = warps_m * warps_n
    nthr = 32 * num_warps
    kw = tile_n // warps_n  # keys per warp per chunk
    nsl = stages * warps_n  # ring slices
    assert D % 64 == 0 and kw % 16 == 0 and tile_m == 16 * warps_m and stages >= 2
    tpr = 8  # threads per 64-element row segment (16-byte vectors)
    rows_per_pass = nthr // tpr
    assert 16 % rows_per_pass == 0 or rows_per_pass % 16 == 0
    assert kw % rows_per_pass == 0 and 16 % rows_per_pass == 0
    n_dcol = D // 32  # head-dim elements per lane in the epilogue
    # cross-item prefetch (the loader runs into the CTA's next item) needs the epilogue buffer, fp32 (warps_n,
    # tile_m, D), to fit in one ring stage (K and V halves of tile_n rows each)
    cross = warps_n * tile_m <= tile_n
    e_half = tile_n * D // 2  # fp32 elements in a stage's K (or V) half

    @cute.struct
    class SharedStorage:
        sQ: cute.struct.Align[cute.struct.MemRange[dtype, tile_m * D], 1024]
        sK: cute.struct.Align[cute.struct.MemRange[dtype, stages * tile_n * D], 1024]
        sV: cute.struct.Align[cute.struct.MemRange[dtype, stages * tile_n * D], 1024]
        sStat: cute.struct.Align[cute.struct.MemRange[Float32, 2 * warps_n * tile_m], 16]  # (max | scale, sum)
        sRow: cute.struct.Align[cute.struct.MemRange[Float32, 3 * tile_m], 16]  # lse per row
        sFlag: cute.struct.Align[cute.struct.MemRange[Int32, 4], 16]

    def swizzled(rows, slices):
        return cute.tile_to_shape(swizzled_rows_atom(64), (rows, D, slices), (0, 1, 2))

    @cute.kernel
    def kernel(p: SimpleNamespace):
        tidx, _, _ = cute.arch.thread_idx()
        bidx, _, _ = cute.arch.block_idx()
        warp_id = tidx // 32
        lane = tidx % 32
        wm = warp_id // warps_n
        wn = warp_id % warps_n

        smem = cutlass.utils.SmemAllocator()
        storage = smem.allocate(SharedStorage)
        sQ = storage.sQ.get_tensor(swizzled(16, warps_m))
        sK = storage.sK.get_tensor(swizzled(kw, nsl))
        sV = storage.sV.get_tensor(swizzled(kw, nsl))
        sVt = cute.composition(sV, cute.make_layout((D, kw, nsl), stride=(kw, 1, kw * D)))
        sStat = storage.sStat.get_tensor(cute.make_layout((2, warps_n, tile_m), stride=(warps_n * tile_m, tile_m, 1)))
        sRow = storage.sRow.get_tensor(cute.make_layout(tile_m))
        sFlag = storage.sFlag.get_tensor(cute.make_layout(4))
        # epilogue buffer: fp32 (warps_n, tile_m, D) over the K/V ring (sV follows sK: both 1024-aligned,
        # sizes multiples of 1024)
        sE = cute.make_tensor(cute.recast_ptr(storage.sK.data_ptr(), dtype=Float32),
                              cute.make_layout((warps_n, tile_m, D), stride=(tile_m * D, D, 1)))
        # with cross-item prefetch: the epilogue buffer of an item is the stage of its last chunk (K half, then
        # V half), so the next item's first chunks stay in flight in the other stages
        sEk = cute.make_tensor(cute.recast_ptr(storage.sK.data_ptr(), dtype=Float32), cute.make_layout(stages * e_half))
        sEv = cute.make_tensor(cute.recast_ptr(storage.sV.data_ptr(), dtype=Float32), cute.make_layout(stages * e_half))

        q_st = cute.assume(p.q_stride_tok, divby=8)
        q_sh = cute.assume(p.q_stride_head, divby=8)
        k_sp = cute.assume(p.k_stride_page, divby=8)
        k_st = cute.assume(p.k_stride_tok, divby=8)
        k_sh = cute.assume(p.k_stride_head, divby=8)
        v_sp = cute.assume(p.v_stride_page, divby=8)
        v_st = cute.assume(p.v_stride_tok, divby=8)
        v_sh = cute.assume(p.v_stride_head, divby=8)
        G = p.group_size

        # ------------------------------------------------------------------ per-thread setup
        g2s_atom = cute.make_copy_atom(cpasync.CopyG2SOp(cache_mode=cpasync.LoadCacheMode.GLOBAL), dtype,
                                       num_bits_per_copy=128)
        g2s = cute.make_tiled_copy_tv(g2s_atom, cute.make_layout((rows_per_pass, tpr), stride=(tpr, 1)),
                                      cute.make_layout((1, 8)))
        g2s_thr = g2s.get_slice(tidx)
        g2r_q = cute.make_tiled_copy_tv(cute.make_copy_atom(cute.nvgpu.CopyUniversalOp(), dtype, num_bits_per_copy=128),
                                        cute.make_layout((rows_per_pass, tpr), stride=(tpr, 1)),
                                        cute.make_layout((1, 8)))
        tQsQ = g2s_thr.partition_D(sQ)  # (CPY, rows, D/64, warps_m)
        tKsK = g2s_thr.partition_D(sK)  # (CPY, rows, D/64, nsl)
        tVsV = g2s_thr.partition_D(sV)
        tQcQ = g2s_thr.partition_S(cute.make_identity_tensor((16, D)))
        tKcK = g2s_thr.partition_S(cute.make_identity_tensor((kw, D)))

        tiled_mma = cute.make_tiled_mma(warp.MmaF16BF16Op(dtype, Float32, (16, 8, 16)), (1, 1, 1),
                                        permutation_mnk=(16, 16, 16))
        thr_mma = tiled_mma.get_slice(lane)
        sQw = sQ[None, None, wm]
        tSrQ = thr_mma.make_fragment_A(thr_mma.partition_A(sQw))
        tSrK = thr_mma.make_fragment_B(thr_mma.partition_B(sK[None, None, 0]))
        tOrVt = thr_mma.make_fragment_B(thr_mma.partition_B(sVt[None, None, 0]))
        acc_O = cute.make_rmem_tensor(thr_mma.partition_shape_C((16, D)), Float32)
        acc_shape_S = thr_mma.partition_shape_C((16, kw))
        s2r_Q = cute.make_tiled_copy_A(
            cute.make_copy_atom(warp.LdMatrix8x8x16bOp(transpose=False, num_matrices=4), dtype), tiled_mma
        ).get_slice(lane)
        s2r_K = cute.make_tiled_copy_B(
            cute.make_copy_atom(warp.LdMatrix8x8x16bOp(transpose=False, num_matrices=4), dtype), tiled_mma
        ).get_slice(lane)
        s2r_V = cute.make_tiled_copy_B(
            cute.make_copy_atom(warp.LdMatrix8x8x16bOp(transpose=True, num_matrices=4), dtype), tiled_mma
        ).get_slice(lane)
        tSsQ = s2r_Q.partition_S(sQw)
        tSrQ_v = s2r_Q.retile(tSrQ)
        tSsK = s2r_K.partition_S(sK)  # (CPY, N, K, nsl)
        tSrK_v = s2r_K.retile(tSrK)
        tOsVt = s2r_V.partition_S(sVt)  # (CPY, D, kw, nsl)
        tOrVt_v = s2r_V.retile(tOrVt)
        cS = cute.make_identity_tensor((16, kw))
        tScS = mn_view(thr_mma.partition_C(cS))
        t0ScS = mn_view(tiled_mma.get_slice(0).partition_C(cS))
        taccOcO = mn_view(thr_mma.partition_C(cute.make_identity_tensor((16, D))))
        n_rows = cute.size(tScS, mode=[0])
        n_cols = cute.size(tScS, mode=[1])
        row_max = cute.make_rmem_tensor(n_rows, Float32)
        row_sum = cute.make_rmem_tensor(n_rows, Float32)
        softmax = OnlineSoftmax(n_rows, p.softmax_scale_log2, row_max, row_sum, None)  # (no LSE tensor: see merge)
        row_lim = cute.make_rmem_tensor(n_rows, Int32)  # causal: last allowed key (sequence position)
        row_g = cute.make_rmem_tensor(n_rows, Int32)  # head in group

        n_items = p.num_items
        if p.num_items_ptr.toint() != Int64(0):
            n_items = p.num_items_ptr[0]
        grid = p.num_ctas
        ahead = grid if cross else 0  # the loader may run this far past the consumer's item
        kv_ctx = (p, k_sh, v_sh, tKsK, tVsV, tKcK, g2s, k_st, v_st, k_sp, v_sp, D, kw, warps_n, stages)
        # the loader (every thread holds the same copy): its item, next chunk, chunk count and first row, and
        # the K/V addressing of its sequence and head; f_ld / f_cons: chunks this CTA issued / consumed so far
        ld_item = bidx - grid
        ld_c = Int32(0)
        ld_nc = Int32(0)
        ld_cb = Int32(0)
        ld_kvb = Int64(0)
        ld_ptr = Int64(0)
        ld_kho = Int64(0)
        ld_vho = Int64(0)
        f_ld = Int32(0)
        f_cons = Int32(0)
        for item in cutlass.range(bidx, n_items, grid, unroll=1):
            it = item * W
            batch = p.items[it + abi.ITEM_BATCH]
            kv_head = p.items[it + abi.ITEM_KV_HEAD]
            row_start = p.items[it + abi.ITEM_ROW_START]
            chunk_begin = p.items[it + abi.ITEM_CHUNK_BEGIN]
            n_chunks = p.items[it + abi.ITEM_N_CHUNKS]
            slot = p.items[it + abi.ITEM_SLOT]
            slot_base = p.items[it + abi.ITEM_SLOT_BASE]
            num_splits = p.items[it + abi.ITEM_NUM_SPLITS]
            kv_len = p.items[it + abi.ITEM_KV_LEN]
            seq_q = p.cu_seqlens_q[batch]
            n_q = p.cu_seqlens_q[batch + 1] - seq_q
            rows_valid = cutlass.min(n_q * G - row_start, tile_m)
            hq0 = kv_head * G
            if cutlass.const_expr(not cross):
                cute.arch.barrier()  # the previous item's epilogue used the whole ring

            # -------------------------------------------------------------- top up the loader
            # (at most stages - 2 ahead: the stage of the last consumed chunk may still be the previous epilogue's).
            # Before the Q load: the first K/V chunks' dependent loads (chunk row, page entry) and the chunks
            # themselves are then in flight while the threads wait for Q (the plain loads below stall each thread
            # until its Q vectors arrive; the first barrier of the main loop publishes sQ).
            for _s in cutlass.range_constexpr(stages - 1):
                ld_item, ld_c, ld_nc, ld_cb, ld_kvb, ld_ptr, ld_kho, ld_vho, f_ld = loader_issue(
                    *kv_ctx, ld_item, ld_c, ld_nc, ld_cb, ld_kvb, ld_ptr, ld_kho, ld_vho, f_ld, f_cons,
                    item + ahead, n_items, grid, stages - 2)

            # -------------------------------------------------------------- Q rows: global -> shared
            # (plain loads: the ring may hold this item's first chunks in flight, so no cp.async group here;
            # every warp finished the previous item's MMAs before its epilogue's barriers)
            for sl in cutlass.range_constexpr(warps_m):
                for m in cutlass.range_constexpr(cute.size(tQsQ, mode=[1])):
                    r = sl * 16 + tQcQ[0, m, 0][0]
                    if r < rows_valid:
                        packed = row_start + r
                        tq = packed // G
                        hq = hq0 + (packed - tq * G)
                        off = Int64(seq_q + tq) * q_st + Int64(hq) * q_sh
                        gq = cute.tiled_divide(cute.make_tensor(p.q + off, cute.make_layout(D)), (8,))
                        for kk in cutlass.range_constexpr(cute.size(tQsQ, mode=[2])):
                            cute.copy(g2r_q, gq[None, tQcQ[0, m, kk][1] // 8], tQsQ[None, m, kk, sl])
                    else:
                        tQsQ[None, m, None, sl].fill(0)

            # per-row mask inputs of this thread's accumulator rows
            for rr in cutlass.range_constexpr(n_rows):
                packed = row_start + wm * 16 + tScS[rr, 0][0]
                tq = packed // G
                row_g[rr] = cutlass.min(packed - tq * G, 31)
                row_lim[rr] = kv_len - n_q + tq

            acc_O.fill(0.0)
            row_max.fill(-Float32.inf)
            row_sum.fill(0.0)
            acc_O_mn = mn_view(acc_O)
            col0 = tScS[0, 0][1]
            warp_key0 = wn * kw
            lim_tok0 = kv_len - n_q  # causal: keys past this need the mask for some token

            # -------------------------------------------------------------- main loop
            for ci in cutlass.range(n_chunks, unroll=1):
                wait_chunk(f_ld - f_cons - 1, stages)  # one cp.async group per chunk
                cute.arch.barrier()
                ld_item, ld_c, ld_nc, ld_cb, ld_kvb, ld_ptr, ld_kho, ld_vho, f_ld = loader_issue(
                    *kv_ctx, ld_item, ld_c, ld_nc, ld_cb, ld_kvb, ld_ptr, ld_kho, ld_vho, f_ld, f_cons,
                    item + ahead, n_items, grid, stages - 1)

                stage = f_cons % stages
                sl = stage * warps_n + wn
                c = (chunk_begin + ci) * CW
                k_start = p.chunks[c + abi.CHUNK_K_START]
                k_len = p.chunks[c + abi.CHUNK_K_LEN]
                head_mask = p.chunks[c + abi.CHUNK_HEAD_MASK]

                # S = Q K^T
                acc_S = cute.make_rmem_tensor(acc_shape_S, Float32)
                acc_S.fill(0.0)
                nk = cute.size(tSsQ, mode=[2])
                cute.copy(s2r_Q, tSsQ[None, None, 0], tSrQ_v[None, None, 0])
                cute.copy(s2r_K, tSsK[None, None, 0, sl], tSrK_v[None, None, 0])
                for kk in cutlass.range_constexpr(nk):
                    if kk + 1 < nk:
                        cute.copy(s2r_Q, tSsQ[None, None, kk + 1], tSrQ_v[None, None, kk + 1])
                        cute.copy(s2r_K, tSsK[None, None, kk + 1, sl], tSrK_v[None, None, kk + 1])
                    cute.gemm(tiled_mma, acc_S, tSrQ[None, None, kk], tSrK[None, None, kk], acc_S)

                # masks: k_len tail, causal, per-head chunk mask
                acc_S_mn = mn_view(acc_S)
                need = (k_len < tile_n) | (head_mask != abi.HEAD_MASK_ALL)
                if p.causal != 0:
                    need = need | (k_start + k_len - 1 > lim_tok0)
                if need:
                    for rr in cutlass.range_constexpr(n_rows):
                        hi = k_len
                        if p.causal != 0:
                            hi = cutlass.min(hi, row_lim[rr] - k_start + 1)
                        if head_mask != abi.HEAD_MASK_ALL:
                            if ((head_mask >> row_g[rr]) & 1) == 0:
                                hi = Int32(0)
                        hi = hi - warp_key0 - col0
                        for cc in cutlass.range_constexpr(n_cols):
                            s = acc_S_mn[rr, cc]
                            acc_S_mn[rr, cc] = -Float32.inf if t0ScS[0, cc][1] >= hi else s

                softmax.update(acc_S_mn, acc_O_mn)

                # O += P V
                rP = cute.make_fragment_like(acc_S, dtype)
                rP.store(acc_S.load().to(dtype))
                tOrP = acc_to_frag_a(rP)
                nkv = cute.size(tOrP, mode=[2])
                cute.copy(s2r_V, tOsVt[None, None, 0, sl], tOrVt_v[None, None, 0])
                for kk in cutlass.range_constexpr(nkv):
                    if kk + 1 < nkv:
                        cute.copy(s2r_V, tOsVt[None, None, kk + 1, sl], tOrVt_v[None, None, kk + 1])
                    cute.gemm(tiled_mma, acc_O, tOrP[None, None, kk], tOrVt[None, None, kk], acc_O)
                f_cons = f_cons + 1

            # -------------------------------------------------------------- merge the warps' states
            cute.arch.barrier()  # every warp is done with the last chunk: its stage (or the ring) becomes sE
            e_stage = (f_cons + stages - 1) % stages
            for rr in cutlass.range_constexpr(n_rows):
                ssum = quad_sum(row_sum[rr])
                if col0 == 0:
                    r = wm * 16 + tScS[rr, 0][0]
                    sStat[0, wn, r] = row_max[rr]
                    sStat[1, wn, r] = ssum
            for rr in cutlass.range_constexpr(n_rows):
                for cc in cutlass.range_constexpr(cute.size(taccOcO, mode=[1])):
                    rc = taccOcO[rr, cc]
                    e_store(sE, sEk, sEv, e_stage, wn, wm * 16 + rc[0], rc[1], acc_O_mn[rr, cc], cross, tile_m, D,
                            e_half)
            cute.arch.barrier()
            if tidx < tile_m:
                m_all = -Float32.inf
                for w in cutlass.range_constexpr(warps_n):
                    m_all = cute.arch.fmax(m_all, sStat[0, w, tidx])
                m_safe = 0.0 if m_all == -Float32.inf else m_all
                total = Float32(0.0)
                for w in cutlass.range_constexpr(warps_n):
                    f = cute.math.exp2((sStat[0, w, tidx] - m_safe) * p.softmax_scale_log2, fastmath=True)
                    total += sStat[1, w, tidx] * f
                    sStat[0, w, tidx] = f
                inv = Float32(0.0) if total == 0.0 else Float32(1.0) / total
                for w in cutlass.range_constexpr(warps_n):
                    sStat[0, w, tidx] = sStat[0, w, tidx] * inv
                sRow[tidx] = -Float32.inf if total == 0.0 else (
                    m_safe * p.softmax_scale_log2 + cute.math.log2(total, fastmath=True)) * LN2
            cute.arch.barrier()

            # -------------------------------------------------------------- outputs
            if num_splits == 1:
                for r in cutlass.range(warp_id, rows_valid, num_warps, unroll=1):
                    packed = row_start + r
                    tq = packed // G
                    hq = hq0 + (packed - tq * G)
                    orow = p.o + (Int64(seq_q + tq) * p.o_stride_tok + Int64(hq) * p.o_stride_head)
                    for i in cutlass.range_constexpr(n_dcol):
                        d = lane + 32 * i
                        acc = Float32(0.0)
                        for w in cutlass.range_constexpr(warps_n):
                            acc += e_load(sE, sEk, sEv, e_stage, w, r, d, cross, tile_m, D, e_half) * sStat[0, w, r]
                        orow[d] = acc.to(dtype)
                    if lane == 0:
                        p.lse[Int64(hq) * p.lse_stride_head + Int64(seq_q + tq)] = sRow[r]
            else:
                for r in cutlass.range(warp_id, rows_valid, num_warps, unroll=1):
                    prow = p.part_o + (Int64(slot) * tile_m + r) * D
                    for i in cutlass.range_constexpr(n_dcol):
                        d = lane + 32 * i
                        acc = Float32(0.0)
                        for w in cutlass.range_constexpr(warps_n):
                            acc += e_load(sE, sEk, sEv, e_stage, w, r, d, cross, tile_m, D, e_half) * sStat[0, w, r]
                        prow[d] = acc
                    if lane == 0:
                        p.part_lse[Int64(slot) * tile_m + r] = sRow[r]
                # publish the partial; the last split of the row tile merges them all
                cute.arch.fence_acq_rel_gpu()
                cute.arch.barrier()
                if tidx == 0:
                    done = cute.arch.atomic_add(p.counters + slot_base, Int32(1), sem="acq_rel", scope="gpu")
                    sFlag[0] = Int32(1) if done == num_splits - 1 else Int32(0)
                cute.arch.barrier()
                if sFlag[0] != 0:
                    cute.arch.fence_acq_rel_gpu()
                    merge_splits(p, sRow, tidx, warp_id, lane, slot_base, num_splits, rows_valid, row_start, seq_q,
                                 hq0, G, tile_m, D, nthr)
                    if tidx == 0:
                        p.counters[slot_base] = Int32(0)

    kernel.set_name_prefix(f"vb_{name}", remove_cutlass_symbol=True, keep_mangled_name=False)

    def launch(p: SimpleNamespace):
        kernel(p).launch(grid=[p.num_ctas, 1, 1], block=[nthr, 1, 1], smem=SharedStorage.size_in_bytes())

    return jit_host(params, launch, name=f"host_{name}")
