"""CuTe DSL implementation of the ``attention_bwd_mma`` main kernel (imported only at build time: needs ``cutlass``).

See ``attention_bwd_mma.py`` for the contract (work list, parameters, masks). Layout of the work here:

* shared memory: sK, sV ``[tile_n, D]`` (loaded once per tile), sQ, sdO ``[stages, tile_m, D]`` (one query chunk
  of one head per step, one or two stages), sP, sdS ``[tile_m, tile_n]`` (the step's P and dS in the input dtype),
  per-row fp32 LSE (log2), dPsum and document ids per stage, per-column document ids, fp32 dQ tiles for the bulk
  reduce. Rows of 64 (32 for D = 96) elements, XOR-swizzled, so cp.async writes and ldmatrix reads (plain and
  transposed) are bank-conflict free.
* two MMA tilings (mma.sync m16n8k16, fp32 accumulation): ``sdp`` (warps ``wm x wn``) for ``S = Q K^T``,
  ``dP = dO V^T`` and ``dQ = dS K``; ``dkv`` for ``dV += P^T dO`` and ``dK += dS^T Q``, whose A operands are read
  transposed from sP / sdS and B operands transposed from sdO / sQ / sK with ``ldmatrix.trans``.
* one stage, a step: barrier; Q/dO loads (cp.async; LSE/dPsum into registers); dQ of the previous step; wait,
  barrier; S, dP; mask; P, dS -> shared memory; barrier; dV, dK. Two stages: dQ of the previous step (its tile to
  shared memory), wait, barrier, bulk reduce, loads of the next step into the other stage, S, dP, mask, P, dS,
  barrier, dV, dK: the loads overlap a whole step and a step has two barriers.
* rows ``>= q_len`` of a chunk are zero-filled in sQ/sdO and get LSE ``+inf`` (so P = dS = 0 there); columns
  ``>= k_len`` get S = -inf (P = 0) and zero-filled K/V rows.
"""

# (no `from __future__ import annotations`: cute.struct reads the annotations as objects)
from collections.abc import Sequence
from types import SimpleNamespace

import cutlass
import cutlass.cute as cute
from cutlass import Float32, Int32, Int64, Uint8, Uint32
from cutlass._mlir.dialects import llvm
from cutlass.cute.nvgpu import cpasync, warp

from varblock.abi import MASK_DOC, MASK_TOKEN

from ._dsl import dsl_dtype
from .common.mask import NEG_BIG
from .common.signature import jit_host
from .common.warp_mma import gemm_smem_smem, mn_view, swizzled_rows_atom


def _transposed(t, rows: int, cols: int):
    """The ``(cols, rows)`` transposed view of a ``(rows, cols)`` shared-memory tensor."""
    return cute.composition(t, cute.make_layout((cols, rows), stride=(rows, 1)))


@cutlass.dsl_user_op
def _bulk_reduce_add_f32(gmem_ptr, smem_ptr, num_bytes, *, loc=None, ip=None):
    """``cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32``: add ``num_bytes`` (multiple of 16) of fp32
    from shared memory to global memory (sm90+), asynchronously; complete with a bulk commit / wait group."""
    llvm.inline_asm(None, [gmem_ptr.llvm_ptr, smem_ptr.toint(loc=loc, ip=ip).ir_value(),
                           Int32(num_bytes).ir_value(loc=loc, ip=ip)],
                    "cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [$0], [$1], $2;", "l,r,r",
                    has_side_effects=True, loc=loc, ip=ip)


@cute.jit
def _load_rows(g2s, g2s_thr, gQ, gdO, sQ, sdO, tQcQ, t0QcQ, n_rows):
    """cp.async rows ``< n_rows`` of the ``[tile_m, D]`` global tiles gQ / gdO into sQ / sdO; zero the others."""
    tQgQ = g2s_thr.partition_S(gQ)
    tQgdO = g2s_thr.partition_S(gdO)
    tQsQ = g2s_thr.partition_D(sQ)
    tQsdO = g2s_thr.partition_D(sdO)
    lim = n_rows - tQcQ[0][0]
    for m in cutlass.range_constexpr(cute.size(tQsQ, mode=[1])):
        if t0QcQ[0, m, 0][0] < lim:
            cute.copy(g2s, tQgQ[None, m, None], tQsQ[None, m, None])
            cute.copy(g2s, tQgdO[None, m, None], tQsdO[None, m, None])
        else:
            tQsQ[None, m, None].fill(0)
            tQsdO[None, m, None].fill(0)


@cute.jit
def _spin_until(sem_ptr, value):
    """Wait until the int32 semaphore at ``sem_ptr`` equals ``value`` (acquire, gpu scope)."""
    while cute.arch.atomic_add(sem_ptr, Int32(0), sem="acquire", scope="gpu") != value:
        pass


@cute.jit
def _acquire_turn(sem_ptr, seen, turn):
    """Own the dQ semaphore's turn: if ``seen`` (a relaxed read of it issued earlier) is already ``turn``, a fence
    completes the acquire pattern; otherwise spin with acquire reads until it is."""
    if seen == turn:
        cute.arch.fence_acq_rel_gpu()
    else:
        _spin_until(sem_ptr, turn)


@cute.jit
def _release_turn(sem_ptr, value, bulk: cutlass.Constexpr):
    """Hand the dQ semaphore to the next contributor: wait for this tile's bulk reduce-adds to complete (``bulk``;
    the atomics path fenced before the barrier), then a release store of ``value``."""
    if cutlass.const_expr(bulk):
        cute.arch.cp_async_bulk_wait_group(0)
        cute.arch.fence_proxy("async.global")
    cute.arch.fence_acq_rel_gpu()
    cute.arch.atomic_exch(sem_ptr, value, sem="release", scope="gpu")


def make_host(name: str, params: Sequence, dtype_name: str, D: int, tile_m: int, tile_n: int, num_warps: int,
              sdp: tuple, dkv: tuple, dq_bufs: int, stages: int = 1):
    """Build the ``@cute.jit`` host function (and its kernel) of one main-kernel variant; ``params`` is the
    family's ``MAIN_PARAMS`` (the kernel's parameter list)."""
    dtype = dsl_dtype(dtype_name)
    nthr = 32 * num_warps
    kblk = 64 if D % 64 == 0 else 32  # smem swizzle atom width for [rows, D] tensors (elements)
    pblk = 64 if tile_n % 64 == 0 else 32  # ... and for [tile_m, tile_n] (P, dS)
    tpr = kblk // 8  # threads per row in global -> shared copies
    rows_per_pass = nthr // tpr
    wm, wn = sdp
    km, kn = dkv
    assert wm * wn == num_warps and km * kn == num_warps
    assert tile_m % (16 * wm) == 0 and tile_n % (16 * wn) == 0 and D % (16 * wn) == 0
    assert tile_n % (16 * km) == 0 and D % (16 * kn) == 0 and tile_m % 16 == 0
    assert tile_m % rows_per_pass == 0 and tile_n % rows_per_pass == 0 and tile_m <= nthr and tile_n <= nthr
    # two Q / dO stages need the barrier of the bulk dQ phase (it orders the next loads after every dV/dK read)
    assert stages == 1 or (stages == 2 and dq_bufs > 0)

    @cute.struct
    class SharedStorage:
        sQ: cute.struct.Align[cute.struct.MemRange[dtype, stages * tile_m * D], 1024]
        sdO: cute.struct.Align[cute.struct.MemRange[dtype, stages * tile_m * D], 1024]
        sK: cute.struct.Align[cute.struct.MemRange[dtype, tile_n * D], 1024]
        sV: cute.struct.Align[cute.struct.MemRange[dtype, tile_n * D], 1024]
        sP: cute.struct.Align[cute.struct.MemRange[dtype, tile_m * tile_n], 1024]
        sdS: cute.struct.Align[cute.struct.MemRange[dtype, tile_m * tile_n], 1024]
        sLse: cute.struct.Align[cute.struct.MemRange[Float32, stages * tile_m], 16]
        sDps: cute.struct.Align[cute.struct.MemRange[Float32, stages * tile_m], 16]
        sDocQ: cute.struct.Align[cute.struct.MemRange[Int32, stages * tile_m], 16]
        sDocK: cute.struct.Align[cute.struct.MemRange[Int32, tile_n], 16]
        # dQ tiles (fp32) for the bulk reduce-add, dq_bufs of them (at least one element: the struct needs it)
        sdQ: cute.struct.Align[cute.struct.MemRange[Float32, max(dq_bufs * tile_m * D, 4)], 1024]

    def smem_layout(rows, cols, blk, n_stages=None):
        atom = swizzled_rows_atom(blk)
        if n_stages is None:
            return cute.tile_to_shape(atom, (rows, cols), (0, 1))
        return cute.tile_to_shape(atom, (rows, cols, n_stages), (0, 1, 2))

    @cute.kernel
    def kernel(p: SimpleNamespace):
        tidx, _, _ = cute.arch.thread_idx()
        bidx, _, _ = cute.arch.block_idx()
        tile = Int32(bidx)
        deterministic = p.dq_sem.toint() != Int64(0)

        smem = cutlass.utils.SmemAllocator()
        storage = smem.allocate(SharedStorage)
        sQ = storage.sQ.get_tensor(smem_layout(tile_m, D, kblk, stages))  # (tile_m, D, stage)
        sdO = storage.sdO.get_tensor(smem_layout(tile_m, D, kblk, stages))
        sK = storage.sK.get_tensor(smem_layout(tile_n, D, kblk))
        sV = storage.sV.get_tensor(smem_layout(tile_n, D, kblk))
        sP = storage.sP.get_tensor(smem_layout(tile_m, tile_n, pblk))
        sdS = storage.sdS.get_tensor(smem_layout(tile_m, tile_n, pblk))
        sLse = storage.sLse.get_tensor(cute.make_layout((tile_m, stages)))
        sDps = storage.sDps.get_tensor(cute.make_layout((tile_m, stages)))
        sDocQ = storage.sDocQ.get_tensor(cute.make_layout((tile_m, stages)))
        sDocK = storage.sDocK.get_tensor(cute.make_layout(tile_n))
        sdQ = storage.sdQ.get_tensor(cute.make_layout((tile_m, D, max(dq_bufs, 1)), stride=(D, 1, tile_m * D)))
        # (D, tile_m, stage) transposed views of the staged sQ / sdO
        sQt = cute.composition(sQ, cute.make_layout((D, tile_m, stages), stride=(tile_m, 1, tile_m * D)))
        sdOt = cute.composition(sdO, cute.make_layout((D, tile_m, stages), stride=(tile_m, 1, tile_m * D)))
        sKt = _transposed(sK, tile_n, D)
        sPt = _transposed(sP, tile_m, tile_n)
        sdSt = _transposed(sdS, tile_m, tile_n)

        q_st = cute.assume(p.q_stride_tok, divby=8)
        q_sh = cute.assume(p.q_stride_head, divby=8)
        k_st = cute.assume(p.k_stride_tok, divby=8)
        k_sh = cute.assume(p.k_stride_head, divby=8)
        v_st = cute.assume(p.v_stride_tok, divby=8)
        v_sh = cute.assume(p.v_stride_head, divby=8)
        do_st = cute.assume(p.do_stride_tok, divby=8)
        do_sh = cute.assume(p.do_stride_head, divby=8)

        # ---------------------------------------------------------------- per-thread setup
        g2s_atom = cute.make_copy_atom(
            cpasync.CopyG2SOp(cache_mode=cpasync.LoadCacheMode.GLOBAL), dtype, num_bits_per_copy=128
        )
        g2s = cute.make_tiled_copy_tv(g2s_atom, cute.make_layout((rows_per_pass, tpr), stride=(tpr, 1)),
                                      cute.make_layout((1, 8)))
        g2s_thr = g2s.get_slice(tidx)
        mma_op = warp.MmaF16BF16Op(dtype, Float32, (16, 8, 16))
        mma_sdp = cute.make_tiled_mma(mma_op, (wm, wn, 1), permutation_mnk=(wm * 16, wn * 16, 16))
        mma_dkv = cute.make_tiled_mma(mma_op, (km, kn, 1), permutation_mnk=(km * 16, kn * 16, 16))
        thr_sdp = mma_sdp.get_slice(tidx)
        thr_dkv = mma_dkv.get_slice(tidx)

        ldm = cute.make_copy_atom(warp.LdMatrix8x8x16bOp(transpose=False, num_matrices=4), dtype)
        ldm_t = cute.make_copy_atom(warp.LdMatrix8x8x16bOp(transpose=True, num_matrices=4), dtype)
        cp_sdp_A = cute.make_tiled_copy_A(ldm, mma_sdp).get_slice(tidx)
        cp_sdp_B = cute.make_tiled_copy_B(ldm, mma_sdp).get_slice(tidx)
        cp_sdp_Bt = cute.make_tiled_copy_B(ldm_t, mma_sdp).get_slice(tidx)
        cp_dkv_At = cute.make_tiled_copy_A(ldm_t, mma_dkv).get_slice(tidx)
        cp_dkv_Bt = cute.make_tiled_copy_B(ldm_t, mma_dkv).get_slice(tidx)

        # S = Q K^T, dP = dO V^T
        tSrQ = thr_sdp.make_fragment_A(thr_sdp.partition_A(sQ[None, None, 0]))
        tSrK = thr_sdp.make_fragment_B(thr_sdp.partition_B(sK))
        tSsQ = cp_sdp_A.partition_S(sQ)  # (..., stage)
        tSvQ = cp_sdp_A.retile(tSrQ)
        tSsK = cp_sdp_B.partition_S(sK)
        tSvK = cp_sdp_B.retile(tSrK)
        tPrdO = thr_sdp.make_fragment_A(thr_sdp.partition_A(sdO[None, None, 0]))
        tPrV = thr_sdp.make_fragment_B(thr_sdp.partition_B(sV))
        tPsdO = cp_sdp_A.partition_S(sdO)
        tPvdO = cp_sdp_A.retile(tPrdO)
        tPsV = cp_sdp_B.partition_S(sV)
        tPvV = cp_sdp_B.retile(tPrV)
        # dQ = dS K
        tQrdS = thr_sdp.make_fragment_A(thr_sdp.partition_A(sdS))
        tQrKt = thr_sdp.make_fragment_B(thr_sdp.partition_B(sKt))
        tQsdS = cp_sdp_A.partition_S(sdS)
        tQvdS = cp_sdp_A.retile(tQrdS)
        tQsKt = cp_sdp_Bt.partition_S(sKt)
        tQvKt = cp_sdp_Bt.retile(tQrKt)
        # dV += P^T dO, dK += dS^T Q
        tVrPt = thr_dkv.make_fragment_A(thr_dkv.partition_A(sPt))
        tVrdOt = thr_dkv.make_fragment_B(thr_dkv.partition_B(sdOt[None, None, 0]))
        tVsPt = cp_dkv_At.partition_S(sPt)
        tVvPt = cp_dkv_At.retile(tVrPt)
        tVsdOt = cp_dkv_Bt.partition_S(sdOt)
        tVvdOt = cp_dkv_Bt.retile(tVrdOt)
        tKrdSt = thr_dkv.make_fragment_A(thr_dkv.partition_A(sdSt))
        tKrQt = thr_dkv.make_fragment_B(thr_dkv.partition_B(sQt[None, None, 0]))
        tKsdSt = cp_dkv_At.partition_S(sdSt)
        tKvdSt = cp_dkv_At.retile(tKrdSt)
        tKsQt = cp_dkv_Bt.partition_S(sQt)
        tKvQt = cp_dkv_Bt.retile(tKrQt)

        r2s_atom = cute.make_copy_atom(cute.nvgpu.CopyUniversalOp(), dtype, num_bits_per_copy=32)
        r2s = cute.make_tiled_copy_C(r2s_atom, mma_sdp).get_slice(tidx)
        tPsP = r2s.partition_D(sP)
        tSsdS = r2s.partition_D(sdS)

        acc_shape_S = thr_sdp.partition_shape_C((tile_m, tile_n))
        acc_shape_dQ = thr_sdp.partition_shape_C((tile_m, D))
        acc_dK = cute.make_rmem_tensor(thr_dkv.partition_shape_C((tile_n, D)), Float32)
        acc_dV = cute.make_rmem_tensor(thr_dkv.partition_shape_C((tile_n, D)), Float32)
        acc_dK.fill(0.0)
        acc_dV.fill(0.0)

        # coordinates
        cS = cute.make_identity_tensor((tile_m, tile_n))
        tScS = mn_view(thr_sdp.partition_C(cS))
        t0ScS = mn_view(mma_sdp.get_slice(0).partition_C(cS))
        n_rows = cute.size(tScS, mode=[0])
        n_cols = cute.size(tScS, mode=[1])
        row0 = tScS[0, 0][0]
        col0 = tScS[0, 0][1]
        tdQcdQ = mn_view(thr_sdp.partition_C(cute.make_identity_tensor((tile_m, D))))
        tdKcdK = mn_view(thr_dkv.partition_C(cute.make_identity_tensor((tile_n, D))))
        cQ = cute.make_identity_tensor((tile_m, D))
        tQcQ = g2s_thr.partition_S(cQ)
        t0QcQ = g2s.get_slice(0).partition_S(cQ)
        cK = cute.make_identity_tensor((tile_n, D))
        tKsK = g2s_thr.partition_D(sK)
        tKsV = g2s_thr.partition_D(sV)
        tKcK = g2s_thr.partition_S(cK)
        t0KcK = g2s.get_slice(0).partition_S(cK)

        if tile < p.num_tiles:
            tb = tile * 8
            batch = p.tiles[tb]
            head = p.tiles[tb + 1]
            k_start = p.tiles[tb + 2]
            k_len = p.tiles[tb + 3]
            chunk_begin = p.tiles[tb + 4]
            n_full = p.tiles[tb + 5]
            n_left = p.tiles[tb + 7]
            n_steps = (n_full + p.tiles[tb + 6]) * p.heads_per_tile
            seq_q = p.cu_seqlens_q[batch]
            len_q = p.cu_seqlens_q[batch + 1] - seq_q
            seq_k = p.cu_seqlens_k[batch]
            len_k = p.cu_seqlens_k[batch + 1] - seq_k
            diag = len_k - len_q
            hq0 = head * p.heads_per_tile
            hkv = hq0 // p.qhead_per_kvhead

            # ------------------------------------------------------------ K, V: global -> shared (rows >= k_len: 0)
            kv0 = Int64(seq_k + k_start)
            gK = cute.make_tensor(p.k + (kv0 * k_st + Int64(hkv) * k_sh),
                                  cute.make_layout((tile_n, D), stride=(k_st, 1)))
            gV = cute.make_tensor(p.v + (kv0 * v_st + Int64(hkv) * v_sh),
                                  cute.make_layout((tile_n, D), stride=(v_st, 1)))
            tKgK = g2s_thr.partition_S(gK)
            tKgV = g2s_thr.partition_S(gV)
            lim_k = k_len - tKcK[0][0]
            for n in cutlass.range_constexpr(cute.size(tKsK, mode=[1])):
                if t0KcK[0, n, 0][0] < lim_k:
                    cute.copy(g2s, tKgK[None, n, None], tKsK[None, n, None])
                    cute.copy(g2s, tKgV[None, n, None], tKsV[None, n, None])
                else:
                    tKsK[None, n, None].fill(0)
                    tKsV[None, n, None].fill(0)
            if (p.mask_flags & MASK_DOC) != 0:
                if tidx < tile_n:
                    sDocK[tidx] = p.doc_k[seq_k + k_start + cutlass.min(tidx, k_len - 1)]

            # ------------------------------------------------------------ main loop
            # Iteration ``it`` finishes step ``it - 1`` (dQ += dS K into the accumulator) and runs the first part of
            # step ``it`` (S, dP, P, dS, dV, dK). Steps walk (chunk, head in tile), head innermost. One Q/dO stage:
            # the loads of step ``it`` are issued at the top of iteration ``it`` (they overlap the dQ phase); two
            # stages: the loads of step ``it + 1`` are issued before step ``it`` runs (they overlap all of it), and
            # the dQ phase's barrier doubles as step ``it``'s (two barriers per step instead of four).
            if cutlass.const_expr(stages == 2):
                if n_steps > 0:
                    tok0_0 = Int64(seq_q + p.chunks[chunk_begin * 2])
                    ql0 = p.chunks[chunk_begin * 2 + 1]
                    _load_rows(g2s, g2s_thr,
                               cute.make_tensor(p.q + (tok0_0 * q_st + Int64(hq0) * q_sh),
                                                cute.make_layout((tile_m, D), stride=(q_st, 1))),
                               cute.make_tensor(p.dout + (tok0_0 * do_st + Int64(hq0) * do_sh),
                                                cute.make_layout((tile_m, D), stride=(do_st, 1))),
                               sQ[None, None, 0], sdO[None, None, 0], tQcQ, t0QcQ, ql0)
                    if tidx < tile_m:
                        lse0 = Float32.inf
                        dps0 = Float32(0.0)
                        doc0 = Int32(0)
                        if tidx < ql0:
                            st0 = Int64(hq0) * p.stat_stride_head + tok0_0 + Int64(tidx)
                            lse0 = p.lse_log2[st0]
                            dps0 = p.dpsum[st0]
                            if (p.mask_flags & MASK_DOC) != 0:
                                doc0 = p.doc_q[tok0_0 + Int64(tidx)]
                        sLse[tidx, 0] = lse0
                        sDps[tidx, 0] = dps0
                        sDocQ[tidx, 0] = doc0
            cute.arch.cp_async_commit_group()  # K, V (and with two stages step 0)
            # deterministic mode: 1 while this tile holds the dQ semaphore at dq_sem + pend_off (released with
            # pend_val); same value in every thread
            pend = Int32(0)
            pend_off = Int64(0)
            pend_val = Int32(0)
            for it in cutlass.range(n_steps + 1, unroll=1):
                # the loaded step's per-row LSE / dPsum / doc id, loaded into registers with its Q / dO and stored
                # to shared memory later (their latency hides behind other work); rows >= q_len: P = 0
                lse_n = Float32.inf
                dps_n = Float32(0.0)
                docq_n = Int32(0)
                ld = it if cutlass.const_expr(stages == 1) else it + 1  # the step whose loads this iteration issues
                if cutlass.const_expr(stages == 1):
                    if it > 0:
                        cute.arch.barrier()  # everyone is done with sQ, sdO, sLse, sDps, sDocQ of step it - 1
                    if it < n_steps:
                        # ---- loads of step it: Q, dO (cp.async, rows >= q_len zero), LSE, dPsum, doc ids
                        ci = it // p.heads_per_tile
                        hq = hq0 + (it - ci * p.heads_per_tile)
                        c = chunk_begin + ci
                        tok0 = Int64(seq_q + p.chunks[c * 2])
                        ql = p.chunks[c * 2 + 1]
                        _load_rows(g2s, g2s_thr,
                                   cute.make_tensor(p.q + (tok0 * q_st + Int64(hq) * q_sh),
                                                    cute.make_layout((tile_m, D), stride=(q_st, 1))),
                                   cute.make_tensor(p.dout + (tok0 * do_st + Int64(hq) * do_sh),
                                                    cute.make_layout((tile_m, D), stride=(do_st, 1))),
                                   sQ[None, None, 0], sdO[None, None, 0], tQcQ, t0QcQ, ql)
                        if tidx < ql:
                            st = Int64(hq) * p.stat_stride_head + tok0 + Int64(tidx)
                            lse_n = p.lse_log2[st]
                            dps_n = p.dpsum[st]
                            if (p.mask_flags & MASK_DOC) != 0:
                                docq_n = p.doc_q[tok0 + Int64(tidx)]
                    cute.arch.cp_async_commit_group()

                if it > 0:
                    # ---- dQ += dS K of step it - 1 (sdS and sK are not overwritten before the next barrier)
                    pi = it - 1
                    pci = pi // p.heads_per_tile
                    phq = hq0 + (pi - pci * p.heads_per_tile)
                    pc = chunk_begin + pci
                    ptok0 = seq_q + p.chunks[pc * 2]
                    pq_len = p.chunks[pc * 2 + 1]
                    sem_ptr = p.dq_sem
                    sem_off = Int64(0)
                    turn = Int32(0)
                    next_turn = Int32(0)
                    seen = Int32(-1)
                    if deterministic:
                        sem_off = Int64(phq) * Int64(p.num_sems) + Int64(p.dq_order[pc * 3])
                        sem_ptr = p.dq_sem + sem_off
                        turn = p.dq_order[pc * 3 + 1]
                        next_turn = turn + 1
                        if next_turn == p.dq_order[pc * 3 + 2]:
                            next_turn = Int32(0)  # the last contributor leaves the semaphore at 0
                        if tidx == 0:
                            # poll the turn now (relaxed, not waited for): its latency hides behind the dQ GEMM
                            seen = cute.arch.atomic_add(sem_ptr, Int32(0), sem="relaxed", scope="gpu")
                    acc_dQ = cute.make_rmem_tensor(acc_shape_dQ, Float32)
                    acc_dQ.fill(0.0)
                    gemm_smem_smem(mma_sdp, acc_dQ, cp_sdp_A, tQsdS, tQvdS, tQrdS, cp_sdp_Bt, tQsKt, tQvKt, tQrKt)
                    if cutlass.const_expr(dq_bufs == 0):
                        # fp32 atomics (deterministic: all of them after acquiring the semaphore; released after
                        # the P / dS barrier of this iteration, or in the epilogue)
                        if deterministic:
                            if tidx == 0:
                                _acquire_turn(sem_ptr, seen, turn)
                            cute.arch.barrier()
                        acc_dQ_mn = mn_view(acc_dQ)
                        for rr in cutlass.range_constexpr(cute.size(acc_dQ_mn, mode=[0])):
                            r = tdQcdQ[rr, 0][0]
                            if r < pq_len:
                                base = (Int64(phq) * Int64(p.total_q) + Int64(ptok0 + r)) * D
                                for cc in cutlass.range_constexpr(cute.size(acc_dQ_mn, mode=[1])):
                                    cute.arch.atomic_add(p.dq_accum + (base + Int64(tdQcdQ[rr, cc][1])),
                                                         acc_dQ_mn[rr, cc])
                    else:
                        # dQ tile -> shared memory -> one bulk fp32 reduce-add into the accumulator's q_len rows
                        # (dq_accum [Hq, total_q, D]: the chunk's rows are contiguous)
                        sdQ_b = sdQ[None, None, pi % dq_bufs]
                        cute.autovec_copy(acc_dQ, thr_sdp.partition_C(sdQ_b))
                        cute.arch.fence_proxy("async.shared", space="cta")
                        if cutlass.const_expr(stages == 2):
                            # this barrier is also step it's: its Q / dO (issued last iteration, the only pending
                            # group) have landed, every dV / dK read of step it - 1's stage is done
                            cute.arch.cp_async_wait_group(0)
                        cute.arch.barrier()
                        if tidx == 0:
                            if deterministic:
                                _acquire_turn(sem_ptr, seen, turn)
                                cute.arch.fence_proxy("async.global")
                            dst = p.dq_accum + (Int64(phq) * Int64(p.total_q) + Int64(ptok0)) * D
                            _bulk_reduce_add_f32(dst, sdQ_b.iterator, pq_len * (D * 4))
                            cute.arch.cp_async_bulk_commit_group()
                            # the reduce issued dq_bufs steps ago has read its buffer (rewritten next step)
                            cute.arch.cp_async_bulk_wait_group(dq_bufs - 1, read=True)
                    if deterministic:
                        # the semaphore is held until this add is complete: released after the P / dS barrier
                        pend = Int32(1)
                        pend_off = sem_off
                        pend_val = next_turn

                if cutlass.const_expr(stages == 1):
                    if tidx < tile_m:
                        sLse[tidx, 0] = lse_n
                        sDps[tidx, 0] = dps_n
                        sDocQ[tidx, 0] = docq_n

                if it < n_steps:
                    stage = it % stages
                    if cutlass.const_expr(stages == 2):
                        # ---- loads of step it + 1 into the other stage (its last readers, step it - 1's dV / dK,
                        # are past the barrier of the dQ phase above)
                        if ld < n_steps:
                            lci = ld // p.heads_per_tile
                            lhq = hq0 + (ld - lci * p.heads_per_tile)
                            lc = chunk_begin + lci
                            ltok0 = Int64(seq_q + p.chunks[lc * 2])
                            lql = p.chunks[lc * 2 + 1]
                            _load_rows(g2s, g2s_thr,
                                       cute.make_tensor(p.q + (ltok0 * q_st + Int64(lhq) * q_sh),
                                                        cute.make_layout((tile_m, D), stride=(q_st, 1))),
                                       cute.make_tensor(p.dout + (ltok0 * do_st + Int64(lhq) * do_sh),
                                                        cute.make_layout((tile_m, D), stride=(do_st, 1))),
                                       sQ[None, None, 1 - stage], sdO[None, None, 1 - stage], tQcQ, t0QcQ, lql)
                            if tidx < lql:
                                lst = Int64(lhq) * p.stat_stride_head + ltok0 + Int64(tidx)
                                lse_n = p.lse_log2[lst]
                                dps_n = p.dpsum[lst]
                                if (p.mask_flags & MASK_DOC) != 0:
                                    docq_n = p.doc_q[ltok0 + Int64(tidx)]
                        cute.arch.cp_async_commit_group()
                    ci = it // p.heads_per_tile
                    hq = hq0 + (it - ci * p.heads_per_tile)
                    c = chunk_begin + ci
                    q_start = p.chunks[c * 2]
                    q_len = p.chunks[c * 2 + 1]
                    tok0 = seq_q + q_start
                    partial = Uint32(ci - n_left) >= Uint32(n_full)

                    if cutlass.const_expr(stages == 1):
                        cute.arch.cp_async_wait_group(0)
                        cute.arch.barrier()
                    else:
                        if it == 0:  # later steps: the dQ phase's barrier above
                            cute.arch.cp_async_wait_group(1)
                            cute.arch.barrier()

                    acc_S = cute.make_rmem_tensor(acc_shape_S, Float32)
                    acc_S.fill(0.0)
                    gemm_smem_smem(mma_sdp, acc_S, cp_sdp_A, tSsQ[None, None, None, stage], tSvQ, tSrQ,
                                   cp_sdp_B, tSsK, tSvK, tSrK)
                    acc_dP = cute.make_rmem_tensor(acc_shape_S, Float32)
                    acc_dP.fill(0.0)
                    gemm_smem_smem(mma_sdp, acc_dP, cp_sdp_A, tPsdO[None, None, None, stage], tPvdO, tPrdO,
                                   cp_sdp_B, tPsV, tPvV, tPrV)
                    # -------------------------------------------------------- masks
                    acc_S_mn = mn_view(acc_S)
                    if partial:
                        sink_hi = p.num_sink_tokens - k_start - col0  # columns below this are sink keys
                        for rr in cutlass.range_constexpr(n_rows):
                            a = q_start + row0 + t0ScS[rr, 0][0] + diag  # key j is on the diagonal of the row at j = a
                            lo = a - p.window_left - k_start - col0
                            lo = lo if p.window_left >= 0 else Int32(NEG_BIG)
                            hi = cutlass.min(a + p.window_right + 1 - k_start, k_len)
                            hi = hi if p.window_right >= 0 else k_len
                            hi = hi - col0
                            for cc in cutlass.range_constexpr(n_cols):
                                cl = t0ScS[0, cc][1]
                                s = acc_S_mn[rr, cc]
                                s = -Float32.inf if ((cl < lo) & (cl >= sink_hi)) else s
                                s = -Float32.inf if cl >= hi else s
                                acc_S_mn[rr, cc] = s
                        if (p.mask_flags & MASK_DOC) != 0:
                            for rr in cutlass.range_constexpr(n_rows):
                                dq_id = sDocQ[row0 + t0ScS[rr, 0][0], stage]
                                for cc in cutlass.range_constexpr(n_cols):
                                    s = acc_S_mn[rr, cc]
                                    acc_S_mn[rr, cc] = -Float32.inf if sDocK[col0 + t0ScS[0, cc][1]] != dq_id else s
                        if (p.mask_flags & MASK_TOKEN) != 0:
                            hm = hq // p.tok_head_div
                            for rr in cutlass.range_constexpr(n_rows):
                                r = cutlass.min(row0 + t0ScS[rr, 0][0], q_len - 1)
                                row_off = Int64(hm) * p.tm_stride_head + Int64(tok0 + r) * p.tm_stride_tok
                                for cc in cutlass.range_constexpr(n_cols):
                                    j = k_start + cutlass.min(col0 + t0ScS[0, cc][1], k_len - 1)
                                    keep = p.tok_mask[row_off + Int64(j // p.tok_block_k) * p.tm_stride_blk]
                                    s = acc_S_mn[rr, cc]
                                    acc_S_mn[rr, cc] = -Float32.inf if keep == Uint8(0) else s
                    else:
                        if k_len < tile_n:
                            hi = k_len - col0
                            for cc in cutlass.range_constexpr(n_cols):
                                if t0ScS[0, cc][1] >= hi:
                                    for rr in cutlass.range_constexpr(n_rows):
                                        acc_S_mn[rr, cc] = -Float32.inf

                    # -------------------------------------------------------- P, dS
                    acc_dP_mn = mn_view(acc_dP)
                    for rr in cutlass.range_constexpr(n_rows):
                        r = row0 + t0ScS[rr, 0][0]
                        lse_r = sLse[r, stage]
                        dps_r = sDps[r, stage]
                        prob = cute.math.exp2(acc_S_mn[rr, None].load() * p.softmax_scale_log2 - lse_r, fastmath=True)
                        acc_S_mn[rr, None] = prob
                        acc_dP_mn[rr, None] = prob * (acc_dP_mn[rr, None].load() - dps_r)
                    rP = cute.make_fragment_like(acc_S, dtype)
                    rP.store(acc_S.load().to(dtype))
                    rdS = cute.make_fragment_like(acc_dP, dtype)
                    rdS.store(acc_dP.load().to(dtype))
                    cute.copy(r2s_atom, r2s.retile(rP), tPsP)
                    cute.copy(r2s_atom, r2s.retile(rdS), tSsdS)
                    if cutlass.const_expr(dq_bufs == 0):
                        if pend != 0:
                            cute.arch.fence_acq_rel_gpu()  # this thread's dQ atomics, before the barrier
                    cute.arch.barrier()
                    if pend != 0:
                        # release the dQ semaphore taken in this iteration's dQ phase (its add is complete)
                        if tidx == 0:
                            _release_turn(p.dq_sem + pend_off, pend_val, dq_bufs > 0)
                        pend = Int32(0)

                    # -------------------------------------------------------- dV += P^T dO, dK += dS^T Q
                    gemm_smem_smem(mma_dkv, acc_dV, cp_dkv_At, tVsPt, tVvPt, tVrPt,
                                   cp_dkv_Bt, tVsdOt[None, None, None, stage], tVvdOt, tVrdOt)
                    gemm_smem_smem(mma_dkv, acc_dK, cp_dkv_At, tKsdSt, tKvdSt, tKrdSt,
                                   cp_dkv_Bt, tKsQt[None, None, None, stage], tKvQt, tKrQt)
                    if cutlass.const_expr(stages == 2):
                        # per-row values of step it + 1 -> the other stage (read after the next iteration's barrier;
                        # that stage's previous values were read by step it - 1, before this step's barriers)
                        if tidx < tile_m:
                            sLse[tidx, 1 - stage] = lse_n
                            sDps[tidx, 1 - stage] = dps_n
                            sDocQ[tidx, 1 - stage] = docq_n

            # ------------------------------------------------------------ epilogue: fp32 dK, dV of this tile
            cute.arch.cp_async_wait_group(0)
            if pend != 0:  # the last step's dQ semaphore (the loop's last iteration has no P / dS barrier)
                if cutlass.const_expr(dq_bufs == 0):
                    cute.arch.fence_acq_rel_gpu()
                    cute.arch.barrier()
                if tidx == 0:
                    _release_turn(p.dq_sem + pend_off, pend_val, dq_bufs > 0)
            if cutlass.const_expr(dq_bufs > 0):
                if tidx == 0:
                    cute.arch.cp_async_bulk_wait_group(0)
            acc_dK_mn = mn_view(acc_dK)
            acc_dV_mn = mn_view(acc_dV)
            for rr in cutlass.range_constexpr(cute.size(acc_dK_mn, mode=[0])):
                r = tdKcdK[rr, 0][0]
                if r < k_len:
                    base = (Int64(seq_k + k_start + r) * Int64(p.num_tile_heads) + Int64(head)) * D
                    for cc in cutlass.range_constexpr(cute.size(acc_dK_mn, mode=[1])):
                        off = base + Int64(tdKcdK[rr, cc][1])
                        p.dk_accum[off] = acc_dK_mn[rr, cc]
                        p.dv_accum[off] = acc_dV_mn[rr, cc]

    kernel.set_name_prefix(f"vb_{name}", remove_cutlass_symbol=True, keep_mangled_name=False)

    def launch(p: SimpleNamespace):
        kernel(p).launch(grid=[p.num_tiles, 1, 1], block=[nthr, 1, 1], smem=SharedStorage.size_in_bytes())

    return jit_host(params, launch, name=f"host_{name}")
