"""CuTe DSL implementation of ``attention_fwd_mma`` (imported only at build time: needs ``cutlass``).

See ``attention_fwd_mma.py`` for the contract (work list, parameters, masks). Layout of the work here:

* shared memory: sQ ``[tile_m, D]`` (reused for O in the epilogue), sK/sV ``[tile_n, D]``; swizzled rows of 64
  (or 32 for D = 96) elements, so that cp.async writes and ldmatrix reads are bank-conflict free;
* global -> shared: 16-byte cp.async, ``D/8`` vectors per row, ``num_threads / (kblk/8)`` rows per pass. Q rows are
  addressed one by one (row -> (token, query head) is not affine with pack-GQA); K/V chunks are affine
  ``(k_start + j) * stride_tok`` and rows ``>= k_len`` are zero-filled (P = 0 there, and 0 * garbage could be NaN);
* MMA: ``num_warps`` warps along M (each warp owns ``tile_m / num_warps`` query rows), mma.sync m16n8k16 with fp32
  accumulation; S = Q K^T from shared memory, O += P V with P kept in registers;
* softmax: per-row running max/sum in fp32, exp2 with ``softmax_scale * log2(e)`` folded in, rows whose running
  max is still -inf use 0 as max ("check_inf"), so fully masked chunks contribute exactly 0;
* epilogue: O / row_sum (rows with sum 0 give O = 0), LSE = ln(sum) + max * scale (-inf for sum 0); O goes through
  shared memory for 16-byte global stores, rows ``>= q_len * pack_gqa`` are not written.
* tile loop (``while tile >= 0``; ``-1`` ends it): with ``persistent == 0`` it runs once (tile ``blockIdx.x``).
  With ``persistent == 1`` thread 0 issues ``atomicAdd(&tile_counter[0], 1)`` right after reading the tile
  descriptor and stores ``gridDim.x + old`` to ``sSched[0]`` once the Q / K loads are issued (its latency hides
  behind them); every thread reads it after the epilogue barriers and compares it with the tile count (kept in
  ``sSched[1]``, so it is not in a register across the loop), then one more barrier: nobody overwrites sQ (= sO)
  or ``sSched[0]`` for the next tile before every thread has read them. Counter reset: at exit thread 0 does
  ``fence.acq_rel.gpu; atom.acq_rel.gpu.add(&tile_counter[1], 1)``; all of a CTA's fetches precede its fence, so
  the CTA that sees ``gridDim.x - 1`` is the last to fetch and stores ``{0, 0}`` (visible to the next launch).
* per-thread setup (copy / MMA partitions, coordinates, ``thread_setup``): a loop around the tile code lets LLVM
  hoist its address math out of the tile loop, where it stays live through the whole tile and ptxas spills more.
  ``setup_per_tile=True`` rebuilds it in every tile from an opaque thread index (a volatile ``mov %tid.x``, masked
  so that LLVM still knows its range), which keeps the code of a tile as in a one-tile kernel; ``False`` builds it
  once before the loop. Which one spills less depends on the variant (``attention_fwd_mma._SETUP_HOISTED``).
"""

# (no `from __future__ import annotations`: cute.struct reads the annotations as objects)
import math

import cutlass
import cutlass.cute as cute
from cutlass import BFloat16, Float16, Float32, Int32, Int64, Uint8, Uint32, Uint64
from cutlass._mlir.dialects import llvm
from cutlass.cute.nvgpu import cpasync, warp

LN2 = math.log(2.0)
MASK_DOC = 1
MASK_TOKEN = 2
_NEG_BIG = -(1 << 30)


def _mn_view(t):
    """View an mma C-fragment ``((2, 2), MMA_M, MMA_N)`` as ``(rows, cols)`` = ``((2, MMA_M), (2, MMA_N))``."""
    lay = cute.make_layout(t.layout.shape)
    mn = cute.make_layout(
        ((lay.shape[0][1], lay.shape[1]), (lay.shape[0][0], lay.shape[2])),
        stride=((lay.stride[0][1], lay.stride[1]), (lay.stride[0][0], lay.stride[2])),
    )
    return cute.make_tensor(t.iterator, cute.composition(t.layout, mn))


def _acc_to_frag_a(t):
    """Reinterpret the S accumulator ``((2, 2), MMA_M, MMA_N)`` as the A operand of the PV mma:
    ``((2, 2, 2), MMA_M, MMA_N / 2)`` (two n8 accumulator tiles make one k16 A tile)."""
    div = cute.logical_divide(t.layout, (None, None, 2))
    lay = cute.make_layout(
        ((div.shape[0], div.shape[2][0]), div.shape[1], div.shape[2][1]),
        stride=((div.stride[0], div.stride[2][0]), div.stride[1], div.stride[2][1]),
    )
    return cute.make_tensor(t.iterator, lay)


def _quad_max(x):
    x = cute.arch.fmax(x, cute.arch.shuffle_sync_bfly(x, offset=2, mask=-1, mask_and_clamp=31))
    return cute.arch.fmax(x, cute.arch.shuffle_sync_bfly(x, offset=1, mask=-1, mask_and_clamp=31))


def _quad_sum(x):
    x = x + cute.arch.shuffle_sync_bfly(x, offset=2, mask=-1, mask_and_clamp=31)
    return x + cute.arch.shuffle_sync_bfly(x, offset=1, mask=-1, mask_and_clamp=31)


@cutlass.dsl_user_op
def _thread_idx_opaque(*, loc=None, ip=None):
    """``threadIdx.x`` read by a volatile ``mov``, which LLVM cannot hoist out of a loop (nor merge with another
    read): values derived from it are recomputed in the loop body."""
    return Int32(llvm.inline_asm(Int32.mlir_type, [], "mov.u32 $0, %tid.x;", "=r", has_side_effects=True,
                                 loc=loc, ip=ip))


def make_host(name: str, dtype_name: str, D: int, tile_m: int, tile_n: int, num_warps: int,
              setup_per_tile: bool = True):
    """Build the ``@cute.jit`` host function (and its kernel) of one variant."""
    dtype = {"bfloat16": BFloat16, "float16": Float16}[dtype_name]
    nthr = 32 * num_warps
    assert nthr & (nthr - 1) == 0
    kblk = 64 if D % 64 == 0 else 32  # smem swizzle atom width (elements)
    sw_bits = 3 if kblk == 64 else 2
    tpr = kblk // 8  # threads per row in global<->shared copies
    rows_per_pass = nthr // tpr
    assert D % 32 == 0 and D % kblk == 0
    assert tile_m % rows_per_pass == 0 and tile_n % rows_per_pass == 0
    assert tile_m % (16 * num_warps) == 0 and tile_n % 16 == 0

    @cute.struct
    class SharedStorage:
        sQ: cute.struct.Align[cute.struct.MemRange[dtype, tile_m * D], 1024]
        sK: cute.struct.Align[cute.struct.MemRange[dtype, tile_n * D], 1024]
        sV: cute.struct.Align[cute.struct.MemRange[dtype, tile_n * D], 1024]
        # per tile row (filled once per tile; read by the partial-chunk masks, so that no per-row value has to
        # stay in registers across the chunk loop): query position + diag, doc id, token-mask row offset
        sRowPos: cute.struct.Align[cute.struct.MemRange[Int32, tile_m], 16]
        sRowDoc: cute.struct.Align[cute.struct.MemRange[Int32, tile_m], 16]
        sRowTm: cute.struct.Align[cute.struct.MemRange[Int64, tile_m], 16]
        # per partial chunk (built cooperatively, read by the masks): doc id of each key column, and the
        # token-mask keep bits of each (row, key column) as tile_n / 32 words per row
        sDocK: cute.struct.Align[cute.struct.MemRange[Int32, tile_n], 16]
        sTok: cute.struct.Align[cute.struct.MemRange[Uint32, tile_m * (tile_n // 32)], 16]
        # persistent schedule: the next tile index, fetched by thread 0 and broadcast to the CTA
        sSched: cute.struct.Align[cute.struct.MemRange[Int32, 4], 16]

    def smem_layout(rows):
        atom = cute.make_composed_layout(
            cute.make_swizzle(sw_bits, 3, 3), 0, cute.make_layout((8, kblk), stride=(kblk, 1))
        )
        return cute.tile_to_shape(atom, (rows, D), (0, 1))

    def thread_setup(tidx, sQ, sK, sV, sVt):
        """This thread's copy / MMA partitions, accumulators and coordinates (no control flow: plain tracing)."""
        sO = sQ
        g2s_atom = cute.make_copy_atom(
            cpasync.CopyG2SOp(cache_mode=cpasync.LoadCacheMode.GLOBAL), dtype, num_bits_per_copy=128
        )
        st_atom = cute.make_copy_atom(cute.nvgpu.CopyUniversalOp(), dtype, num_bits_per_copy=128)
        thr_layout = cute.make_layout((rows_per_pass, tpr), stride=(tpr, 1))
        val_layout = cute.make_layout((1, 8))
        g2s = cute.make_tiled_copy_tv(g2s_atom, thr_layout, val_layout)
        s2g = cute.make_tiled_copy_tv(st_atom, thr_layout, val_layout)
        g2s_thr = g2s.get_slice(tidx)
        s2g_thr = s2g.get_slice(tidx)

        tiled_mma = cute.make_tiled_mma(
            warp.MmaF16BF16Op(dtype, Float32, (16, 8, 16)),
            (num_warps, 1, 1),
            permutation_mnk=(num_warps * 16, 16, 16),
        )
        thr_mma = tiled_mma.get_slice(tidx)
        tSrQ = thr_mma.make_fragment_A(thr_mma.partition_A(sQ))
        tSrK = thr_mma.make_fragment_B(thr_mma.partition_B(sK))
        tOrVt = thr_mma.make_fragment_B(thr_mma.partition_B(sVt))
        acc_O = cute.make_rmem_tensor(thr_mma.partition_shape_C((tile_m, D)), Float32)
        acc_shape_S = thr_mma.partition_shape_C((tile_m, tile_n))

        s2r_Q = cute.make_tiled_copy_A(
            cute.make_copy_atom(warp.LdMatrix8x8x16bOp(transpose=False, num_matrices=4), dtype), tiled_mma
        ).get_slice(tidx)
        s2r_K = cute.make_tiled_copy_B(
            cute.make_copy_atom(warp.LdMatrix8x8x16bOp(transpose=False, num_matrices=4), dtype), tiled_mma
        ).get_slice(tidx)
        s2r_V = cute.make_tiled_copy_B(
            cute.make_copy_atom(warp.LdMatrix8x8x16bOp(transpose=True, num_matrices=4), dtype), tiled_mma
        ).get_slice(tidx)
        tSsQ = s2r_Q.partition_S(sQ)
        tSrQ_v = s2r_Q.retile(tSrQ)
        tSsK = s2r_K.partition_S(sK)
        tSrK_v = s2r_K.retile(tSrK)
        tOsVt = s2r_V.partition_S(sVt)
        tOrVt_v = s2r_V.retile(tOrVt)

        # global <-> shared partitions and their coordinates
        cQ = cute.make_identity_tensor((tile_m, D))
        tQsQ = g2s_thr.partition_D(sQ)
        tQcQ = g2s_thr.partition_S(cQ)
        cK = cute.make_identity_tensor((tile_n, D))
        tKsK = g2s_thr.partition_D(sK)
        tVsV = g2s_thr.partition_D(sV)
        tKcK = g2s_thr.partition_S(cK)
        t0KcK = g2s.get_slice(0).partition_S(cK)
        tOsO = s2g_thr.partition_S(sO)
        tOcO = s2g_thr.partition_S(cQ)
        # accumulator coordinates (row, col) of this thread / of thread 0 (compile-time)
        cS = cute.make_identity_tensor((tile_m, tile_n))
        tScS = _mn_view(thr_mma.partition_C(cS))
        t0ScS = _mn_view(tiled_mma.get_slice(0).partition_C(cS))
        taccOcO = _mn_view(thr_mma.partition_C(cQ))
        n_rows = cute.size(tScS, mode=[0])  # rows of the tile held by this thread
        n_cols = cute.size(tScS, mode=[1])  # columns of S held by this thread

        row_max = cute.make_rmem_tensor(n_rows, Float32)
        row_sum = cute.make_rmem_tensor(n_rows, Float32)
        lse_val = cute.make_rmem_tensor(n_rows, Float32)
        return (
            g2s, s2g, g2s_thr, s2g_thr, tiled_mma, tSrQ, tSrK, tOrVt, acc_O, acc_shape_S, s2r_Q, s2r_K, s2r_V,
            tSsQ, tSrQ_v, tSsK, tSrK_v, tOsVt, tOrVt_v, tQsQ, tQcQ, tKsK, tVsV, tKcK, t0KcK, tOsO, tOcO, tScS,
            t0ScS, taccOcO, n_rows, n_cols, row_max, row_sum, lse_val
        )

    def tile_setup(hoisted, tidx, sQ, sK, sV, sVt):
        return hoisted if hoisted is not None else thread_setup(tidx, sQ, sK, sV, sVt)

    @cute.kernel
    def kernel(
        q: cute.Pointer,
        k: cute.Pointer,
        v: cute.Pointer,
        o: cute.Pointer,
        lse: cute.Pointer,
        cu_seqlens_q: cute.Pointer,
        cu_seqlens_k: cute.Pointer,
        tiles: cute.Pointer,
        chunks: cute.Pointer,
        doc_q: cute.Pointer,
        doc_k: cute.Pointer,
        tok_mask: cute.Pointer,
        q_stride_tok: Int64,
        q_stride_head: Int64,
        k_stride_tok: Int64,
        k_stride_head: Int64,
        v_stride_tok: Int64,
        v_stride_head: Int64,
        o_stride_tok: Int64,
        o_stride_head: Int64,
        lse_stride_head: Int64,
        tm_stride_head: Int64,
        tm_stride_tok: Int64,
        tm_stride_blk: Int64,
        num_tiles: Int32,
        softmax_scale_log2: Float32,
        window_left: Int32,
        window_right: Int32,
        qhead_per_kvhead: Int32,
        pack_gqa: Int32,
        tok_block_k: Int32,
        tok_head_div: Int32,
        mask_flags: Int32,
        num_tiles_ptr: cute.Pointer,
        tile_counter: cute.Pointer,
        debug_counts: cute.Pointer,
        persistent: Int32,
        num_ctas: Int32,
    ):
        tidx, _, _ = cute.arch.thread_idx()
        tidx0 = tidx

        # ---------------------------------------------------------------- static setup
        smem = cutlass.utils.SmemAllocator()
        storage = smem.allocate(SharedStorage)
        sQ = storage.sQ.get_tensor(smem_layout(tile_m))
        sK = storage.sK.get_tensor(smem_layout(tile_n))
        sV = storage.sV.get_tensor(smem_layout(tile_n))
        sVt = cute.composition(sV, cute.make_layout((D, tile_n), stride=(tile_n, 1)))  # (D, tile_n) view
        sO = sQ
        sRowPos = storage.sRowPos.get_tensor(cute.make_layout(tile_m))
        sRowDoc = storage.sRowDoc.get_tensor(cute.make_layout(tile_m))
        sRowTm = storage.sRowTm.get_tensor(cute.make_layout(tile_m))
        sDocK = storage.sDocK.get_tensor(cute.make_layout(tile_n))
        n_words = tile_n // 32
        sTok = storage.sTok.get_tensor(cute.make_layout((tile_m, n_words), stride=(n_words, 1)))
        sSched = storage.sSched.get_tensor(cute.make_layout(4))


        q_st = cute.assume(q_stride_tok, divby=8)
        q_sh = cute.assume(q_stride_head, divby=8)
        k_st = cute.assume(k_stride_tok, divby=8)
        k_sh = cute.assume(k_stride_head, divby=8)
        v_st = cute.assume(v_stride_tok, divby=8)
        v_sh = cute.assume(v_stride_head, divby=8)
        o_st = cute.assume(o_stride_tok, divby=8)
        o_sh = cute.assume(o_stride_head, divby=8)
        G = pack_gqa
        # per-thread setup built once (None: rebuilt in every tile, see the tile loop)
        hoisted = thread_setup(tidx, sQ, sK, sV, sVt) if cutlass.const_expr(not setup_per_tile) else None

        # ---------------------------------------------------------------- schedule
        # persistent == 0: one tile per CTA (blockIdx.x). persistent == 1: first tile blockIdx.x, then
        # gridDim.x + atomicAdd(&tile_counter[0], 1) (fetched by thread 0 early in each tile, broadcast through
        # sSched); the last CTA to finish resets tile_counter = {0, 0} for the next launch.
        nt = num_tiles
        if num_tiles_ptr.toint() != Int64(0):
            nt = num_tiles_ptr[0]
        if tidx0 == 0:
            sSched[1] = nt  # read back after a barrier: nt need not stay in a register across the tile loop
        bidx, _, _ = cute.arch.block_idx()
        tile = Int32(bidx)
        if tile >= nt:
            tile = Int32(-1)
        while tile >= 0:
            if cutlass.const_expr(setup_per_tile):
                # rebuilt in every tile from an opaque thread index: LLVM cannot hoist the per-thread address math
                # of the chunk loop and the epilogue out of the tile loop (where it would stay live through the
                # whole tile); the mask tells LLVM the range of the index (nthr is a power of 2)
                tidx = _thread_idx_opaque() & (nthr - 1)
            (
                g2s, s2g, g2s_thr, s2g_thr, tiled_mma, tSrQ, tSrK, tOrVt, acc_O, acc_shape_S, s2r_Q, s2r_K,
                s2r_V, tSsQ, tSrQ_v, tSsK, tSrK_v, tOsVt, tOrVt_v, tQsQ, tQcQ, tKsK, tVsV, tKcK, t0KcK, tOsO,
                tOcO, tScS, t0ScS, taccOcO, n_rows, n_cols, row_max, row_sum, lse_val
            ) = tile_setup(hoisted, tidx, sQ, sK, sV, sVt)
            tb = tile * 8
            batch = tiles[tb]
            head = tiles[tb + 1]
            q_start = tiles[tb + 2]
            q_len = tiles[tb + 3]
            chunk_begin = tiles[tb + 4]
            n_full = tiles[tb + 5]
            n_left = tiles[tb + 7]  # chunk ci is partial iff ci < n_left or ci >= n_left + n_full
            n_chunks = n_full + tiles[tb + 6]
            fetched = Int32(0)
            if persistent != 0:
                if tidx == 0:
                    # prefetch the next tile index (stored to sSched after the Q / K loads are issued)
                    fetched = cute.arch.atomic_add(tile_counter, Int32(1))
            if debug_counts.toint() != Int64(0):
                if tidx == 0:
                    cute.arch.atomic_add(debug_counts + tile, Int32(1))
            seq_q = cu_seqlens_q[batch]
            len_q = cu_seqlens_q[batch + 1] - seq_q
            seq_k = cu_seqlens_k[batch]
            len_k = cu_seqlens_k[batch + 1] - seq_k
            diag = len_k - len_q  # bottom-right aligned: key j is "on the diagonal" of query i at j = i + diag
            rows_valid = q_len * G
            hq0 = head * G  # query head of tile row r: hq0 + r % G
            hkv = hq0 // qhead_per_kvhead
            tok0 = seq_q + q_start  # packed index of the tile's first query token

            # ---------------------------------------------------------------- Q: global -> shared
            for m in cutlass.range_constexpr(cute.size(tQsQ, mode=[1])):
                r = tQcQ[0, m, 0][0]
                if r < rows_valid:
                    tq = r // G
                    hq = hq0 + (r - tq * G)
                    off = Int64(tok0 + tq) * q_st + Int64(hq) * q_sh
                    gq = cute.tiled_divide(cute.make_tensor(q + off, cute.make_layout(D)), (8,))
                    for kk in cutlass.range_constexpr(cute.size(tQsQ, mode=[2])):
                        cute.copy(g2s, gq[None, tQcQ[0, m, kk][1] // 8], tQsQ[None, m, kk])
                else:
                    tQsQ[None, m, None].fill(0)

            # ---------------------------------------------------------------- per-row mask info -> smem
            for it in cutlass.range_constexpr((tile_m + nthr - 1) // nthr):
                r = tidx + it * nthr
                if r < tile_m:
                    tq = cutlass.max(cutlass.min(r // G, q_len - 1), 0)  # rows past q_len * G: clamp
                    sRowPos[r] = q_start + tq + diag
                    if (mask_flags & MASK_DOC) != 0:
                        sRowDoc[r] = doc_q[tok0 + tq]
                    if (mask_flags & MASK_TOKEN) != 0:
                        hm = (hq0 + (r - (r // G) * G)) // tok_head_div
                        sRowTm[r] = Int64(hm) * tm_stride_head + Int64(tok0 + tq) * tm_stride_tok

            # ---------------------------------------------------------------- K of the first chunk
            if n_chunks > 0:
                k_start0 = chunks[chunk_begin * 2]
                k_len0 = chunks[chunk_begin * 2 + 1]
                gK = cute.make_tensor(
                    k + (Int64(seq_k + k_start0) * k_st + Int64(hkv) * k_sh),
                    cute.make_layout((tile_n, D), stride=(k_st, 1)),
                )
                tKgK = g2s_thr.partition_S(gK)
                lim = k_len0 - tKcK[0][0]
                for n in cutlass.range_constexpr(cute.size(tKsK, mode=[1])):
                    if t0KcK[0, n, 0][0] < lim:
                        cute.copy(g2s, tKgK[None, n, None], tKsK[None, n, None])
                    else:
                        tKsK[None, n, None].fill(0)
            cute.arch.cp_async_commit_group()
            if persistent != 0:
                if tidx == 0:
                    # read by every thread after the epilogue barriers of this tile
                    sSched[0] = cute.arch.grid_dim()[0] + fetched

            acc_O.fill(0.0)
            row_max.fill(-Float32.inf)
            row_sum.fill(0.0)
            acc_O_mn = _mn_view(acc_O)
            col0 = tScS[0, 0][1]  # first S column of this thread

            # ---------------------------------------------------------------- main loop over chunks
            for ci in cutlass.range(n_chunks, unroll=1):
                c = chunk_begin + ci
                k_start = chunks[c * 2]
                k_len = chunks[c * 2 + 1]
                kv_row0 = Int64(seq_k + k_start)
                # ci < n_left (wraps to a large unsigned value) or ci >= n_left + n_full
                partial = Uint32(ci - n_left) >= Uint32(n_full)

                # K(c) (and Q) landed; every thread is done with V(c-1): load V(c)
                cute.arch.cp_async_wait_group(0)
                cute.arch.barrier()
                gV = cute.make_tensor(
                    v + (kv_row0 * v_st + Int64(hkv) * v_sh), cute.make_layout((tile_n, D), stride=(v_st, 1))
                )
                tVgV = g2s_thr.partition_S(gV)
                lim = k_len - tKcK[0][0]
                for n in cutlass.range_constexpr(cute.size(tVsV, mode=[1])):
                    if t0KcK[0, n, 0][0] < lim:
                        cute.copy(g2s, tVgV[None, n, None], tVsV[None, n, None])
                    else:
                        tVsV[None, n, None].fill(0)
                cute.arch.cp_async_commit_group()

                # S = Q K^T
                acc_S = cute.make_rmem_tensor(acc_shape_S, Float32)
                acc_S.fill(0.0)
                nk = cute.size(tSsQ, mode=[2])
                cute.copy(s2r_Q, tSsQ[None, None, 0], tSrQ_v[None, None, 0])
                cute.copy(s2r_K, tSsK[None, None, 0], tSrK_v[None, None, 0])
                for kk in cutlass.range_constexpr(nk):
                    if kk + 1 < nk:
                        cute.copy(s2r_Q, tSsQ[None, None, kk + 1], tSrQ_v[None, None, kk + 1])
                        cute.copy(s2r_K, tSsK[None, None, kk + 1], tSrK_v[None, None, kk + 1])
                    cute.gemm(tiled_mma, acc_S, tSrQ[None, None, kk], tSrK[None, None, kk], acc_S)

                # partial chunk: per-chunk mask inputs -> smem (read after the barrier below; the previous
                # chunk's readers are all past the barrier at the top of this iteration)
                if partial:
                    if (mask_flags & MASK_DOC) != 0:
                        for it in cutlass.range_constexpr((tile_n + nthr - 1) // nthr):
                            j = tidx + it * nthr
                            if j < tile_n:
                                sDocK[j] = doc_k[seq_k + k_start + cutlass.min(j, k_len - 1)]
                    if (mask_flags & MASK_TOKEN) != 0:
                        blk_first = k_start // tok_block_k
                        blk_last = (k_start + k_len - 1) // tok_block_k
                        for it in cutlass.range_constexpr((tile_m + nthr - 1) // nthr):
                            r = tidx + it * nthr
                            if r < tile_m:
                                row_off = sRowTm[r]
                                words = cute.make_rmem_tensor(n_words, Uint32)
                                words.fill(0)
                                for blk in cutlass.range(blk_first, blk_last + 1, unroll=1):
                                    if tok_mask[row_off + Int64(blk) * tm_stride_blk] != Uint8(0):
                                        c_lo = cutlass.max(blk * tok_block_k - k_start, 0)
                                        c_hi = cutlass.min(blk * tok_block_k + tok_block_k - k_start, k_len)
                                        for w in cutlass.range_constexpr(n_words):
                                            b_lo = cutlass.min(cutlass.max(c_lo - 32 * w, 0), 32)
                                            b_hi = cutlass.min(cutlass.max(c_hi - 32 * w, 0), 32)
                                            m_hi = (Uint64(1) << Uint64(b_hi)) - Uint64(1)
                                            m_lo = (Uint64(1) << Uint64(b_lo)) - Uint64(1)
                                            words[w] = words[w] | Uint32(m_hi ^ m_lo)
                                for w in cutlass.range_constexpr(n_words):
                                    sTok[r, w] = words[w]

                # V(c) landed; every thread is done reading sK: prefetch K(c+1)
                cute.arch.cp_async_wait_group(0)
                cute.arch.barrier()
                if ci + 1 < n_chunks:
                    k_start_n = chunks[c * 2 + 2]
                    k_len_n = chunks[c * 2 + 3]
                    gKn = cute.make_tensor(
                        k + (Int64(seq_k + k_start_n) * k_st + Int64(hkv) * k_sh),
                        cute.make_layout((tile_n, D), stride=(k_st, 1)),
                    )
                    tKgKn = g2s_thr.partition_S(gKn)
                    lim_n = k_len_n - tKcK[0][0]
                    for n in cutlass.range_constexpr(cute.size(tKsK, mode=[1])):
                        if t0KcK[0, n, 0][0] < lim_n:
                            cute.copy(g2s, tKgKn[None, n, None], tKsK[None, n, None])
                        else:
                            tKsK[None, n, None].fill(0)
                cute.arch.cp_async_commit_group()

                # ------------------------------------------------------------ masks
                acc_S_mn = _mn_view(acc_S)
                if partial:
                    # partial chunk: window / causal (+ k_len tail), then document ids, then token mask
                    for rr in cutlass.range_constexpr(n_rows):
                        a = sRowPos[tScS[rr, 0][0]]  # i + diag: key j is on the diagonal of query i at j = a
                        lo = a - window_left - k_start - col0
                        lo = lo if window_left >= 0 else Int32(_NEG_BIG)
                        hi = cutlass.min(a + window_right + 1 - k_start, k_len)
                        hi = hi if window_right >= 0 else k_len
                        hi = hi - col0
                        for cc in cutlass.range_constexpr(n_cols):
                            cl = t0ScS[0, cc][1]
                            s = acc_S_mn[rr, cc]
                            s = -Float32.inf if cl < lo else s
                            s = -Float32.inf if cl >= hi else s
                            acc_S_mn[rr, cc] = s
                    if (mask_flags & MASK_DOC) != 0:
                        for cc in cutlass.range_constexpr(n_cols):
                            dk = sDocK[col0 + t0ScS[0, cc][1]]
                            for rr in cutlass.range_constexpr(n_rows):
                                s = acc_S_mn[rr, cc]
                                acc_S_mn[rr, cc] = -Float32.inf if sRowDoc[tScS[rr, 0][0]] != dk else s
                    if (mask_flags & MASK_TOKEN) != 0:
                        # this thread's columns are col0 + c with col0 in {0, 2, 4, 6} and thread 0's columns
                        # c in {8n, 8n + 1}: col0 + c never crosses a 64-column boundary, so shifting a 64-bit
                        # word right by col0 puts column col0 + c at the static bit c % 64
                        for rr in cutlass.range_constexpr(n_rows):
                            r = tScS[rr, 0][0]
                            for h in cutlass.range_constexpr(tile_n // 64):
                                bits = ((Uint64(sTok[r, 2 * h + 1]) << Uint64(32)) | Uint64(sTok[r, 2 * h])) >> Uint64(
                                    col0
                                )
                                for cc in cutlass.range_constexpr(n_cols):
                                    cl = t0ScS[0, cc][1]
                                    if cutlass.const_expr(cl // 64 == h):
                                        keep = (bits >> Uint64(cl % 64)) & Uint64(1)
                                        s = acc_S_mn[rr, cc]
                                        acc_S_mn[rr, cc] = -Float32.inf if keep == Uint64(0) else s
                else:
                    if k_len < tile_n:
                        # full chunk with a k_len tail
                        hi = k_len - col0
                        for cc in cutlass.range_constexpr(n_cols):
                            if t0ScS[0, cc][1] >= hi:
                                for rr in cutlass.range_constexpr(n_rows):
                                    acc_S_mn[rr, cc] = -Float32.inf

                # ------------------------------------------------------------ online softmax
                for rr in cutlass.range_constexpr(n_rows):
                    srow = acc_S_mn[rr, None].load()
                    m_cur = _quad_max(srow.reduce(cute.ReductionOp.MAX, -Float32.inf, 0))
                    m_prev = row_max[rr]
                    m_new = cute.arch.fmax(m_prev, m_cur)
                    row_max[rr] = m_new
                    m_safe = 0.0 if m_new == -Float32.inf else m_new  # whole row masked so far
                    m_scaled = m_safe * softmax_scale_log2
                    p = cute.math.exp2(srow * softmax_scale_log2 - m_scaled, fastmath=True)
                    corr = cute.math.exp2(m_prev * softmax_scale_log2 - m_scaled, fastmath=True)
                    row_sum[rr] = row_sum[rr] * corr + p.reduce(cute.ReductionOp.ADD, Float32.zero, 0)
                    acc_S_mn[rr, None] = p
                    acc_O_mn[rr, None] = acc_O_mn[rr, None].load() * corr

                # ------------------------------------------------------------ O += P V
                rP = cute.make_fragment_like(acc_S, dtype)
                rP.store(acc_S.load().to(dtype))
                tOrP = _acc_to_frag_a(rP)
                nkv = cute.size(tOrP, mode=[2])
                cute.copy(s2r_V, tOsVt[None, None, 0], tOrVt_v[None, None, 0])
                for kk in cutlass.range_constexpr(nkv):
                    if kk + 1 < nkv:
                        cute.copy(s2r_V, tOsVt[None, None, kk + 1], tOrVt_v[None, None, kk + 1])
                    cute.gemm(tiled_mma, acc_O, tOrP[None, None, kk], tOrVt[None, None, kk], acc_O)

            # ---------------------------------------------------------------- epilogue
            for rr in cutlass.range_constexpr(n_rows):
                ssum = _quad_sum(row_sum[rr])
                empty = ssum == 0.0  # no allowed key in the row: O = 0, LSE = -inf
                inv = cute.arch.rcp_approx(1.0 if empty else ssum)
                lse_val[rr] = (
                    -Float32.inf
                    if empty
                    else (row_max[rr] * softmax_scale_log2 + cute.math.log2(ssum, fastmath=True)) * LN2
                )
                acc_O_mn[rr, None] = acc_O_mn[rr, None].load() * inv

            # LSE: the thread holding column 0 of a row writes it
            if taccOcO[0, 0][1] == 0:
                for rr in cutlass.range_constexpr(n_rows):
                    r = taccOcO[rr, 0][0]
                    if r < rows_valid:
                        tq = r // G
                        hq = hq0 + (r - tq * G)
                        lse[Int64(hq) * lse_stride_head + Int64(tok0 + tq)] = lse_val[rr]

            # O: registers -> shared (sQ) -> global, 16-byte vectors per row
            rO = cute.make_fragment_like(acc_O, dtype)
            rO.store(acc_O.load().to(dtype))
            cute.arch.cp_async_wait_group(0)  # a tile without chunks may still be loading Q
            cute.arch.barrier()
            r2s_atom = cute.make_copy_atom(cute.nvgpu.CopyUniversalOp(), dtype, num_bits_per_copy=32)
            r2s = cute.make_tiled_copy_C(r2s_atom, tiled_mma).get_slice(tidx)
            cute.copy(r2s_atom, r2s.retile(rO), r2s.partition_D(sO))
            cute.arch.barrier()
            tOrO = cute.make_fragment_like(tOsO, dtype)
            cute.autovec_copy(tOsO, tOrO)
            for m in cutlass.range_constexpr(cute.size(tOrO, mode=[1])):
                r = tOcO[0, m, 0][0]
                if r < rows_valid:
                    tq = r // G
                    hq = hq0 + (r - tq * G)
                    off = Int64(tok0 + tq) * o_st + Int64(hq) * o_sh
                    go = cute.tiled_divide(cute.make_tensor(o + off, cute.make_layout(D)), (8,))
                    for kk in cutlass.range_constexpr(cute.size(tOrO, mode=[2])):
                        cute.copy(s2g, tOrO[None, m, kk], go[None, tOcO[0, m, kk][1] // 8])

            # ---------------------------------------------------------------- next tile
            tile_next = Int32(-1)
            if persistent != 0:
                tile_next = sSched[0]
                if tile_next >= sSched[1]:
                    tile_next = Int32(-1)
                # every thread has read sO and sSched before the next tile's Q loads and index fetch
                cute.arch.barrier()
            tile = tile_next

        if persistent != 0:
            if tidx0 == 0:
                # all of this CTA's fetches precede its 'done' increment; the last CTA resets the counter
                cute.arch.fence_acq_rel_gpu()
                done = cute.arch.atomic_add(tile_counter + 1, Int32(1), sem="acq_rel", scope="gpu")
                if done == cute.arch.grid_dim()[0] - 1:
                    tile_counter[0] = Int32(0)
                    tile_counter[1] = Int32(0)


    kernel.set_name_prefix(f"vb_{name}", remove_cutlass_symbol=True, keep_mangled_name=False)

    @cute.jit
    def host(
        q: cute.Pointer,
        k: cute.Pointer,
        v: cute.Pointer,
        o: cute.Pointer,
        lse: cute.Pointer,
        cu_seqlens_q: cute.Pointer,
        cu_seqlens_k: cute.Pointer,
        tiles: cute.Pointer,
        chunks: cute.Pointer,
        doc_q: cute.Pointer,
        doc_k: cute.Pointer,
        tok_mask: cute.Pointer,
        q_stride_tok: Int64,
        q_stride_head: Int64,
        k_stride_tok: Int64,
        k_stride_head: Int64,
        v_stride_tok: Int64,
        v_stride_head: Int64,
        o_stride_tok: Int64,
        o_stride_head: Int64,
        lse_stride_head: Int64,
        tm_stride_head: Int64,
        tm_stride_tok: Int64,
        tm_stride_blk: Int64,
        num_tiles: Int32,
        softmax_scale_log2: Float32,
        window_left: Int32,
        window_right: Int32,
        qhead_per_kvhead: Int32,
        pack_gqa: Int32,
        tok_block_k: Int32,
        tok_head_div: Int32,
        mask_flags: Int32,
        num_tiles_ptr: cute.Pointer,
        tile_counter: cute.Pointer,
        debug_counts: cute.Pointer,
        persistent: Int32,
        num_ctas: Int32,
    ):
        kernel(
            q, k, v, o, lse, cu_seqlens_q, cu_seqlens_k, tiles, chunks, doc_q, doc_k, tok_mask,
            q_stride_tok, q_stride_head, k_stride_tok, k_stride_head, v_stride_tok, v_stride_head,
            o_stride_tok, o_stride_head, lse_stride_head, tm_stride_head, tm_stride_tok, tm_stride_blk,
            num_tiles, softmax_scale_log2, window_left, window_right, qhead_per_kvhead, pack_gqa,
            tok_block_k, tok_head_div, mask_flags, num_tiles_ptr, tile_counter, debug_counts, persistent, num_ctas,
        ).launch(grid=[num_ctas, 1, 1], block=[nthr, 1, 1], smem=SharedStorage.size_in_bytes())

    return host
