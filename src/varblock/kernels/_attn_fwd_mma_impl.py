"""CuTe DSL implementation of ``attention_fwd_mma`` (imported only at build time: needs ``cutlass``).

See ``attention_fwd_mma.py`` for the contract (work list, parameters, masks); the shared pieces live in
``kernels/common`` (work tile, schedule, element mask, online softmax, global-memory I/O, mma helpers). Here:

* shared memory (:class:`SmemTensors`): sQ ``[tile_m, D]`` (reused for O in the epilogue), sK/sV ``[tile_n, D]``;
  swizzled rows of 64 (or 32 for D = 96) elements, so that cp.async writes and ldmatrix reads are bank-conflict
  free; the mask inputs and the scheduler slot;
* per thread (:class:`ThreadSetup`): 16-byte cp.async copies, ``D/8`` vectors per row, ``num_threads / (kblk/8)``
  rows per pass; ``num_warps`` warps along M (each warp owns ``tile_m / num_warps`` query rows), mma.sync m16n8k16
  with fp32 accumulation; S = Q K^T from shared memory, O += P V with P kept in registers;
* pipeline of a chunk (:func:`_chunk`): K(c) landed -> load V(c) | S = Q K^T | mask inputs | V(c) landed -> prefetch
  K(c+1) | mask | softmax | O += P V (single stage: the K(c+1) load overlaps softmax + PV(c), V(c) overlaps QK(c));
* epilogue (:func:`_epilogue`): O / row_sum, LSE; O goes through shared memory for 16-byte global stores, rows
  ``>= q_len * pack_gqa`` are not written;
* tile loop (``while tile >= 0``; ``-1`` ends it), see ``common/scheduler.py``; the persistent schedule fetches the
  next index while the Q / K loads of this tile are in flight, and a barrier after the epilogue keeps sQ (= sO) and
  the scheduler slot intact until every thread has read them.
* per-thread setup: a loop around the tile code lets LLVM hoist the setup's address math out of the tile loop, where
  it stays live through the whole tile and ptxas spills more. ``setup_per_tile=True`` rebuilds it in every tile from
  an opaque thread index (a volatile ``mov %tid.x``, masked so that LLVM still knows its range), which keeps the
  code of a tile as in a one-tile kernel; ``False`` builds it once before the loop. Which one spills less depends on
  the variant (``attention_fwd_mma._SETUP_HOISTED``).
"""

# (no `from __future__ import annotations`: cute.struct reads the annotations as objects)
from types import SimpleNamespace

import cutlass
import cutlass.cute as cute
from cutlass import Float32, Int32, Int64, Uint32
from cutlass.cute.nvgpu import cpasync, warp

from ._dsl import dsl_dtype
from .common import gmem_io
from .common.mask import ElementMask, MaskSmem
from .common.scheduler import SCHED_SMEM_WORDS, TileScheduler, count_tile, tile_count
from .common.signature import jit_host
from .common.softmax import OnlineSoftmax
from .common.warp_mma import (
    acc_to_frag_a,
    gemm_reg_smem,
    gemm_smem_smem,
    mn_view,
    swizzled_rows_atom,
    thread_idx_opaque,
)
from .common.work_tile import Sequence, TileRows, WorkTile, chunk_drop, read_chunk


class FwdConfig:
    """Static configuration of one variant."""

    def __init__(self, dtype_name: str, head_dim: int, tile_m: int, tile_n: int, num_warps: int):
        self.dtype = dsl_dtype(dtype_name)
        self.D = head_dim
        self.tile_m = tile_m
        self.tile_n = tile_n
        self.num_warps = num_warps
        self.nthr = 32 * num_warps
        self.kblk = 64 if head_dim % 64 == 0 else 32  # smem swizzle atom width (elements)
        self.tpr = self.kblk // 8  # threads per row in global<->shared copies
        self.rows_per_pass = self.nthr // self.tpr
        if self.nthr & (self.nthr - 1) or head_dim % 32 or head_dim % self.kblk:
            raise ValueError(f"unsupported configuration: {num_warps} warps, head_dim {head_dim}")
        if tile_m % self.rows_per_pass or tile_n % self.rows_per_pass or tile_m % (16 * num_warps) or tile_n % 16:
            raise ValueError(f"unsupported tile {tile_m}x{tile_n} for {num_warps} warps, head_dim {head_dim}")

    def smem_layout(self, rows: int):
        """Swizzled ``(rows, D)`` layout of a Q / K / V tile."""
        return cute.tile_to_shape(swizzled_rows_atom(self.kblk), (rows, self.D), (0, 1))

    def shared_storage(self):
        """The kernel's shared-memory struct (``attention_fwd_mma.smem_bytes`` mirrors it)."""
        dtype, tile_m, tile_n, D = self.dtype, self.tile_m, self.tile_n, self.D

        @cute.struct
        class SharedStorage:
            sQ: cute.struct.Align[cute.struct.MemRange[dtype, tile_m * D], 1024]
            sK: cute.struct.Align[cute.struct.MemRange[dtype, tile_n * D], 1024]
            sV: cute.struct.Align[cute.struct.MemRange[dtype, tile_n * D], 1024]
            # per tile row, per partial chunk: inputs of the element mask (common/mask.py)
            sRowPos: cute.struct.Align[cute.struct.MemRange[Int32, tile_m], 16]
            sRowDoc: cute.struct.Align[cute.struct.MemRange[Int32, tile_m], 16]
            sRowTm: cute.struct.Align[cute.struct.MemRange[Int64, tile_m], 16]
            sDocK: cute.struct.Align[cute.struct.MemRange[Int32, tile_n], 16]
            sTok: cute.struct.Align[cute.struct.MemRange[Uint32, tile_m * (tile_n // 32)], 16]
            # persistent schedule: the next tile index and the tile count (common/scheduler.py)
            sSched: cute.struct.Align[cute.struct.MemRange[Int32, SCHED_SMEM_WORDS], 16]

        return SharedStorage


class SmemTensors:
    """Views of the shared-memory struct."""

    def __init__(self, cfg: FwdConfig, storage_cls):
        storage = cutlass.utils.SmemAllocator().allocate(storage_cls)
        self.sQ = storage.sQ.get_tensor(cfg.smem_layout(cfg.tile_m))
        self.sK = storage.sK.get_tensor(cfg.smem_layout(cfg.tile_n))
        self.sV = storage.sV.get_tensor(cfg.smem_layout(cfg.tile_n))
        self.sVt = cute.composition(self.sV, cute.make_layout((cfg.D, cfg.tile_n), stride=(cfg.tile_n, 1)))
        self.sO = self.sQ
        self.mask = MaskSmem.of(storage, cfg.tile_m, cfg.tile_n)
        self.sched = storage.sSched.get_tensor(cute.make_layout(SCHED_SMEM_WORDS))


class ThreadSetup:
    """This thread's copy / MMA partitions, accumulators, coordinates and softmax state (no control flow: plain
    tracing, so it can be built before the tile loop or inside it)."""

    def __init__(self, cfg: FwdConfig, tidx, sm: SmemTensors, scale_log2):
        dtype, D, tile_m, tile_n = cfg.dtype, cfg.D, cfg.tile_m, cfg.tile_n
        sQ, sK, sV, sVt = sm.sQ, sm.sK, sm.sV, sm.sVt
        g2s_atom = cute.make_copy_atom(
            cpasync.CopyG2SOp(cache_mode=cpasync.LoadCacheMode.GLOBAL), dtype, num_bits_per_copy=128
        )
        st_atom = cute.make_copy_atom(cute.nvgpu.CopyUniversalOp(), dtype, num_bits_per_copy=128)
        thr_layout = cute.make_layout((cfg.rows_per_pass, cfg.tpr), stride=(cfg.tpr, 1))
        val_layout = cute.make_layout((1, 8))
        self.g2s = cute.make_tiled_copy_tv(g2s_atom, thr_layout, val_layout)
        self.s2g = cute.make_tiled_copy_tv(st_atom, thr_layout, val_layout)
        self.g2s_thr = self.g2s.get_slice(tidx)
        s2g_thr = self.s2g.get_slice(tidx)

        self.tiled_mma = cute.make_tiled_mma(
            warp.MmaF16BF16Op(dtype, Float32, (16, 8, 16)),
            (cfg.num_warps, 1, 1),
            permutation_mnk=(cfg.num_warps * 16, 16, 16),
        )
        thr_mma = self.tiled_mma.get_slice(tidx)
        self.tSrQ = thr_mma.make_fragment_A(thr_mma.partition_A(sQ))
        self.tSrK = thr_mma.make_fragment_B(thr_mma.partition_B(sK))
        self.tOrVt = thr_mma.make_fragment_B(thr_mma.partition_B(sVt))
        self.acc_O = cute.make_rmem_tensor(thr_mma.partition_shape_C((tile_m, D)), Float32)
        self.acc_shape_S = thr_mma.partition_shape_C((tile_m, tile_n))

        self.s2r_Q = cute.make_tiled_copy_A(
            cute.make_copy_atom(warp.LdMatrix8x8x16bOp(transpose=False, num_matrices=4), dtype), self.tiled_mma
        ).get_slice(tidx)
        self.s2r_K = cute.make_tiled_copy_B(
            cute.make_copy_atom(warp.LdMatrix8x8x16bOp(transpose=False, num_matrices=4), dtype), self.tiled_mma
        ).get_slice(tidx)
        self.s2r_V = cute.make_tiled_copy_B(
            cute.make_copy_atom(warp.LdMatrix8x8x16bOp(transpose=True, num_matrices=4), dtype), self.tiled_mma
        ).get_slice(tidx)
        self.tSsQ = self.s2r_Q.partition_S(sQ)
        self.tSrQ_v = self.s2r_Q.retile(self.tSrQ)
        self.tSsK = self.s2r_K.partition_S(sK)
        self.tSrK_v = self.s2r_K.retile(self.tSrK)
        self.tOsVt = self.s2r_V.partition_S(sVt)
        self.tOrVt_v = self.s2r_V.retile(self.tOrVt)

        # global <-> shared partitions and their coordinates
        cQ = cute.make_identity_tensor((tile_m, D))
        self.tQsQ = self.g2s_thr.partition_D(sQ)
        self.tQcQ = self.g2s_thr.partition_S(cQ)
        cK = cute.make_identity_tensor((tile_n, D))
        self.tKsK = self.g2s_thr.partition_D(sK)
        self.tVsV = self.g2s_thr.partition_D(sV)
        self.tKcK = self.g2s_thr.partition_S(cK)
        self.t0KcK = self.g2s.get_slice(0).partition_S(cK)
        self.tOsO = s2g_thr.partition_S(sm.sO)
        self.tOcO = s2g_thr.partition_S(cQ)
        # accumulator coordinates (row, col) of this thread / of thread 0 (compile-time)
        cS = cute.make_identity_tensor((tile_m, tile_n))
        self.tScS = mn_view(thr_mma.partition_C(cS))
        self.t0ScS = mn_view(self.tiled_mma.get_slice(0).partition_C(cS))
        self.taccOcO = mn_view(thr_mma.partition_C(cQ))
        self.softmax = OnlineSoftmax.create(cute.size(self.tScS, mode=[0]), scale_log2)


def _thread_setup(hoisted, cfg: FwdConfig, tidx, sm: SmemTensors, p) -> ThreadSetup:
    """The setup built before the tile loop, or a new one (plain Python: no IR for the choice)."""
    return hoisted if hoisted is not None else ThreadSetup(cfg, tidx, sm, p.softmax_scale_log2)


def _load_kv(cfg: FwdConfig, ts: ThreadSetup, t_s, base, row0, stride_tok, stride_head, hkv, k_len):
    gmem_io.load_kv_chunk(ts.g2s, ts.g2s_thr, t_s, ts.tKcK, ts.t0KcK, base, row0, stride_tok, stride_head, hkv,
                          k_len, cfg.tile_n, cfg.D)


def scores(ts: ThreadSetup):
    """``S = Q K^T`` of the chunk in shared memory: a new fp32 accumulator."""
    acc_S = cute.make_rmem_tensor(ts.acc_shape_S, Float32)
    acc_S.fill(0.0)
    gemm_smem_smem(ts.tiled_mma, acc_S, ts.s2r_Q, ts.tSsQ, ts.tSrQ_v, ts.tSrQ, ts.s2r_K, ts.tSsK, ts.tSrK_v,
                   ts.tSrK)
    return acc_S


@cute.jit
def prefetch_next_k(cfg: FwdConfig, p, st, ts: ThreadSetup, tile: WorkTile, seq: Sequence, rows: TileRows, c, ci):
    """Issue the loads of K for chunk ``ci + 1`` of the tile (``c``: row of chunk ``ci`` in ``chunks``), if any, and
    commit a group (every thread must be done reading sK)."""
    if ci + 1 < tile.n_chunks:
        k_start_n, k_len_n = read_chunk(p.chunks, c, ahead=1)
        _load_kv(cfg, ts, ts.tKsK, p.k, rows.kv_row(seq, k_start_n), st.k_st, st.k_sh, rows.hkv, k_len_n)
    cute.arch.cp_async_commit_group()


@cute.jit
def mask_scores(mask: ElementMask, ts: ThreadSetup, acc_S, partial, col0, k_start, k_len, drop=None):
    """The element mask (partial chunk, with its row-half ``drop`` bits when given) or the ``k_len`` tail mask
    applied to ``acc_S``; its ``(rows, cols)`` view."""
    acc_S_mn = mn_view(acc_S)
    if partial:
        mask.apply_partial(acc_S_mn, ts.tScS, ts.t0ScS, col0, k_start, k_len, drop)
    else:
        mask.apply_tail(acc_S_mn, ts.t0ScS, col0, k_len)
    return acc_S_mn


@cute.jit
def _chunk(cfg: FwdConfig, p, st, ts: ThreadSetup, mask: ElementMask, tile: WorkTile, seq: Sequence,
           rows: TileRows, ci, tidx, acc_O_mn, col0):
    """One chunk of the tile: loads (V of this chunk, K of the next), S = Q K^T, mask, softmax, O += P V."""
    c = tile.chunk_begin + ci
    k_start, k_len = read_chunk(p.chunks, c)
    kv_row0 = rows.kv_row(seq, k_start)
    partial = tile.is_partial(ci)

    # K(c) (and Q) landed; every thread is done with V(c-1): load V(c)
    cute.arch.cp_async_wait_group(0)
    cute.arch.barrier()
    _load_kv(cfg, ts, ts.tVsV, p.v, kv_row0, st.v_st, st.v_sh, rows.hkv, k_len)
    cute.arch.cp_async_commit_group()

    acc_S = scores(ts)

    # partial chunk: per-chunk mask inputs -> smem (read after the barrier below; the previous chunk's readers
    # are all past the barrier at the top of this iteration)
    if partial:
        mask.load_chunk(tidx, seq, k_start, k_len)

    # V(c) landed; every thread is done reading sK: prefetch K(c+1)
    cute.arch.cp_async_wait_group(0)
    cute.arch.barrier()
    prefetch_next_k(cfg, p, st, ts, tile, seq, rows, c, ci)
    # the drop bits are read again here, not kept in a register across the S GEMM (that added spills)
    acc_S_mn = mask_scores(mask, ts, acc_S, partial, col0, k_start, k_len, chunk_drop(p.chunks, c))
    ts.softmax.update(acc_S_mn, acc_O_mn)

    # O += P V
    rP = cute.make_fragment_like(acc_S, cfg.dtype)
    rP.store(acc_S.load().to(cfg.dtype))
    gemm_reg_smem(ts.tiled_mma, ts.acc_O, acc_to_frag_a(rP), ts.s2r_V, ts.tOsVt, ts.tOrVt_v, ts.tOrVt)


def _epilogue(cfg: FwdConfig, p, st, sm: SmemTensors, ts: ThreadSetup, rows: TileRows, tidx, acc_O_mn):
    """Normalise O, write LSE, and O through shared memory (sQ) to global memory."""
    ts.softmax.finalize(acc_O_mn)
    gmem_io.store_lse(p.lse, ts.taccOcO, ts.softmax.lse, rows, p.lse_stride_head)

    rO = cute.make_fragment_like(ts.acc_O, cfg.dtype)
    rO.store(ts.acc_O.load().to(cfg.dtype))
    cute.arch.cp_async_wait_group(0)  # a tile without chunks may still be loading Q
    cute.arch.barrier()
    r2s_atom = cute.make_copy_atom(cute.nvgpu.CopyUniversalOp(), cfg.dtype, num_bits_per_copy=32)
    r2s = cute.make_tiled_copy_C(r2s_atom, ts.tiled_mma).get_slice(tidx)
    cute.copy(r2s_atom, r2s.retile(rO), r2s.partition_D(sm.sO))
    cute.arch.barrier()
    tOrO = cute.make_fragment_like(ts.tOsO, cfg.dtype)
    cute.autovec_copy(ts.tOsO, tOrO)
    gmem_io.store_rows(ts.s2g, tOrO, ts.tOcO, p.o, rows, st.o_st, st.o_sh, cfg.D)


@cute.jit
def tile_prologue(cfg: FwdConfig, p, st, ts: ThreadSetup, mask: ElementMask, sched: TileScheduler, tile_idx, tidx):
    """Start of tile ``tile_idx``: its ``(tile, seq, rows)``; Q and the first chunk's K loads issued (one commit
    group), the mask's per-row inputs stored, the scheduler's prefetched next tile published. Shared with the
    ``attention_pool`` qk kernel."""
    tile = WorkTile.load(p.tiles, tile_idx)
    fetched = sched.prefetch(tidx)
    count_tile(p.debug_counts, tile_idx, tidx)
    seq = Sequence.load(p.cu_seqlens_q, p.cu_seqlens_k, tile.batch)
    rows = TileRows.of(tile, seq, p.pack_gqa, p.qhead_per_kvhead)
    gmem_io.load_q_rows(ts.g2s, ts.tQsQ, ts.tQcQ, p.q, rows, st.q_st, st.q_sh, cfg.D)
    mask.load_rows(tidx, tile, seq, rows)
    if tile.n_chunks > 0:
        k_start0, k_len0 = read_chunk(p.chunks, tile.chunk_begin)
        _load_kv(cfg, ts, ts.tKsK, p.k, rows.kv_row(seq, k_start0), st.k_st, st.k_sh, rows.hkv, k_len0)
    cute.arch.cp_async_commit_group()
    sched.publish(fetched, tidx)
    return tile, seq, rows


def _strides(p) -> SimpleNamespace:
    """Q/K/V/O element strides, known multiples of 8 (16-byte vectors)."""
    return SimpleNamespace(
        q_st=cute.assume(p.q_stride_tok, divby=8), q_sh=cute.assume(p.q_stride_head, divby=8),
        k_st=cute.assume(p.k_stride_tok, divby=8), k_sh=cute.assume(p.k_stride_head, divby=8),
        v_st=cute.assume(p.v_stride_tok, divby=8), v_sh=cute.assume(p.v_stride_head, divby=8),
        o_st=cute.assume(p.o_stride_tok, divby=8), o_sh=cute.assume(p.o_stride_head, divby=8),
    )


def make_host(name: str, params, dtype_name: str, D: int, tile_m: int, tile_n: int, num_warps: int,
              setup_per_tile: bool = True, sink_compare: str = "unsigned", drop_fold: bool = False):
    """Build the ``@cute.jit`` host function (and its kernel) of one variant; ``params``: the family's PARAMS."""
    cfg = FwdConfig(dtype_name, D, tile_m, tile_n, num_warps)
    storage_cls = cfg.shared_storage()
    nthr = cfg.nthr

    @cute.kernel
    def kernel(p: SimpleNamespace):
        tidx, _, _ = cute.arch.thread_idx()
        tidx0 = tidx
        sm = SmemTensors(cfg, storage_cls)
        st = _strides(p)
        mask = ElementMask(p, sm.mask, tile_m, tile_n, nthr, sink_compare, drop_fold)
        # per-thread setup built once (None: rebuilt in every tile, see the tile loop)
        hoisted = _thread_setup(None, cfg, tidx, sm, p) if cutlass.const_expr(not setup_per_tile) else None
        sched = TileScheduler(p.persistent, p.tile_counter, sm.sched)
        tile_idx = sched.first_tile(tile_count(p.num_tiles, p.num_tiles_ptr), tidx0)
        while tile_idx >= 0:
            if cutlass.const_expr(setup_per_tile):
                # rebuilt in every tile from an opaque thread index: LLVM cannot hoist the per-thread address math
                # of the chunk loop and the epilogue out of the tile loop (where it would stay live through the
                # whole tile); the mask tells LLVM the range of the index (nthr is a power of 2)
                tidx = thread_idx_opaque() & (nthr - 1)
            ts = _thread_setup(hoisted, cfg, tidx, sm, p)
            tile, seq, rows = tile_prologue(cfg, p, st, ts, mask, sched, tile_idx, tidx)

            ts.acc_O.fill(0.0)
            ts.softmax.reset()
            acc_O_mn = mn_view(ts.acc_O)
            col0 = ts.tScS[0, 0][1]  # first S column of this thread
            for ci in cutlass.range(tile.n_chunks, unroll=1):
                _chunk(cfg, p, st, ts, mask, tile, seq, rows, ci, tidx, acc_O_mn, col0)
            _epilogue(cfg, p, st, sm, ts, rows, tidx, acc_O_mn)
            tile_idx = sched.next_tile()
        sched.finish(tidx0)

    kernel.set_name_prefix(f"vb_{name}", remove_cutlass_symbol=True, keep_mangled_name=False)

    def launch(p: SimpleNamespace):
        kernel(p).launch(grid=[p.num_ctas, 1, 1], block=[nthr, 1, 1], smem=storage_cls.size_in_bytes())

    return jit_host(params, launch, name=f"host_{name}")
