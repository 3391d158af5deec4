"""CuTe DSL implementation of ``attention_pool`` (imported only at build time: needs ``cutlass``); see
``attention_pool.py`` for the contract. The qk kernel reuses the portable forward's tile code
(``_attn_fwd_mma_impl``: shared memory, per-thread MMA / copy partitions, the K pipeline) and ``kernels/common``
(work tile, scheduler, element mask, global-memory I/O); V is never loaded.
"""

# (no `from __future__ import annotations`: the DSL reads annotations as objects)
from types import SimpleNamespace

import cutlass
import cutlass.cute as cute
from cutlass import Float32, Int32, Int64

from varblock.abi import LOG2E
from varblock.kernels._attn_fwd_mma_impl import (
    FwdConfig,
    SmemTensors,
    ThreadSetup,
    mask_scores,
    prefetch_next_k,
    scores,
    tile_prologue,
)
from varblock.kernels.attention_pool import REDUCE_WARPS
from varblock.kernels.common.mask import ElementMask
from varblock.kernels.common.scheduler import TileScheduler, tile_count
from varblock.kernels.common.signature import jit_host
from varblock.kernels.common.warp_mma import quad_max
from varblock.kernels.common.warp_reduce import warp_sum
from varblock.kernels.common.work_tile import Sequence, TileRows, WorkTile, read_chunk
from varblock.kernels.registry import Variant


def _strides(p) -> SimpleNamespace:
    return SimpleNamespace(q_st=cute.assume(p.q_stride_tok, divby=8), q_sh=cute.assume(p.q_stride_head, divby=8),
                           k_st=cute.assume(p.k_stride_tok, divby=8), k_sh=cute.assume(p.k_stride_head, divby=8))


@cute.jit
def _row_lse2(p, ts: ThreadSetup, rows: TileRows, lse2: cute.Tensor):
    """This thread's rows: LSE in base 2 (``+inf`` for rows without a token or with LSE = -inf: P = 0 there)."""
    for rr in cutlass.range_constexpr(cute.size(lse2)):
        r = ts.tScS[rr, 0][0]
        v = Float32.inf
        if r < rows.rows_valid:
            tq, hq = rows.token_and_head(r)
            x = p.lse[Int64(hq) * p.lse_stride_head + Int64(rows.tok0 + tq)]
            if x != -Float32.inf:
                v = x * LOG2E
        lse2[rr] = v


@cute.jit
def _pool_chunk(cfg: FwdConfig, p, st, ts: ThreadSetup, mask: ElementMask, tile: WorkTile, seq: Sequence,
                rows: TileRows, ci, tidx, col0, lse2: cute.Tensor):
    """One chunk: S = Q K^T, the element mask, row maxima -> max-pooled probabilities into ``pool``."""
    c = tile.chunk_begin + ci
    k_start, k_len = read_chunk(p.chunks, c)
    partial = tile.is_partial(ci)
    cute.arch.cp_async_wait_group(0)  # K(c) (and Q) landed
    cute.arch.barrier()
    acc_S = scores(ts)
    if partial:
        mask.load_chunk(tidx, seq, k_start, k_len)
    cute.arch.barrier()  # every thread is done reading sK; the chunk's mask inputs are in shared memory
    prefetch_next_k(cfg, p, st, ts, tile, seq, rows, c, ci)
    acc_S_mn = mask_scores(mask, ts, acc_S, partial, col0, k_start, k_len)
    kb = Int64(k_start // p.pool_block_k)
    for rr in cutlass.range_constexpr(cute.size(lse2)):
        m = quad_max(acc_S_mn[rr, None].load().reduce(cute.ReductionOp.MAX, -Float32.inf, 0))
        r = ts.tScS[rr, 0][0]
        if col0 == 0 and r < rows.rows_valid:
            pmax = Float32(0.0)
            if m != -Float32.inf:
                pmax = cute.math.exp2(m * p.softmax_scale_log2 - lse2[rr], fastmath=False)
            tq, hq = rows.token_and_head(r)
            at = Int64(hq) * p.pool_stride_head + Int64(rows.tok0 + tq) * p.pool_stride_tok + kb
            p.pool[at] = cute.arch.fmax(p.pool[at], pmax)


def make_qk_host(variant: Variant):
    """The ``@cute.jit`` host function (and kernel) of one qk variant."""
    x = variant.extra
    D = variant.key["head_dim"]
    cfg = FwdConfig(variant.key["dtype"], D, x["tile_m"], x["tile_n"], x["num_warps"])
    storage_cls = cfg.shared_storage()
    nthr = cfg.nthr
    tile_m, tile_n = cfg.tile_m, cfg.tile_n
    sink_compare = x["sink_compare"]

    @cute.kernel
    def kernel(p: SimpleNamespace):
        tidx, _, _ = cute.arch.thread_idx()
        tidx0 = tidx
        sm = SmemTensors(cfg, storage_cls)
        st = _strides(p)
        mask = ElementMask(p, sm.mask, tile_m, tile_n, nthr, sink_compare)
        ts = ThreadSetup(cfg, tidx, sm, p.softmax_scale_log2)
        sched = TileScheduler(p.persistent, p.tile_counter, sm.sched)
        tile_idx = sched.first_tile(tile_count(p.num_tiles, p.num_tiles_ptr), tidx0)
        while tile_idx >= 0:
            tile, seq, rows = tile_prologue(cfg, p, st, ts, mask, sched, tile_idx, tidx)
            lse2 = cute.make_rmem_tensor(cute.size(ts.tScS, mode=[0]), Float32)
            _row_lse2(p, ts, rows, lse2)
            col0 = ts.tScS[0, 0][1]
            for ci in cutlass.range(tile.n_chunks, unroll=1):
                _pool_chunk(cfg, p, st, ts, mask, tile, seq, rows, ci, tidx, col0, lse2)
            cute.arch.cp_async_wait_group(0)  # a tile without chunks may still be loading Q
            cute.arch.barrier()  # sQ, the mask rows and the scheduler slot are reused by the next tile
            tile_idx = sched.next_tile()
        sched.finish(tidx0)

    kernel.set_name_prefix(f"vb_{variant.name}", remove_cutlass_symbol=True, keep_mangled_name=False)

    def launch(p: SimpleNamespace):
        kernel(p).launch(grid=[p.num_ctas, 1, 1], block=[nthr, 1, 1], smem=storage_cls.size_in_bytes())

    return jit_host(variant.params, launch, name=f"host_{variant.name}")


@cute.jit
def _reduce_2d(p, w: Int32, lane: Int32):
    """Row ``(b, ho, m)`` of the 2D map: max over the group's heads and the block's tokens, row-normalised."""
    m = w % p.mb
    ho = (w // p.mb) % p.num_heads_out
    b = w // (p.mb * p.num_heads_out)
    cq0 = p.cu_seqlens_q[b]
    lq = p.cu_seqlens_q[b + 1] - cq0
    lk = p.cu_seqlens_k[b + 1] - p.cu_seqlens_k[b]
    n_b = (lk + p.block_k - 1) // p.block_k
    t0 = m * p.block_q
    t1 = cutlass.min(t0 + p.block_q, lq)
    out_row = Int64(w) * p.nbo
    total = Float32(0.0)
    # pass 1: block maxima -> out (unnormalised) and the row sum; pass 2: out / sum (each lane rereads its own
    # columns, so the large 1D map is read once)
    for n0 in cutlass.range(0, p.nbo, 32):
        n = n0 + lane
        v = Float32(0.0)
        if n < n_b:
            for g in cutlass.range(p.group):
                base = Int64(ho * p.group + g) * p.pool_stride_head + Int64(n)
                for t in cutlass.range(t0, t1):
                    v = cute.arch.fmax(v, p.pool[base + Int64(cq0 + t) * p.pool_stride_tok])
        total = total + warp_sum(v)
        if n < p.nbo:
            p.out[out_row + Int64(n)] = v
    if total > Float32(0.0):
        for n in cutlass.range(lane, p.nbo, 32):
            p.out[out_row + Int64(n)] = p.out[out_row + Int64(n)] / total


@cute.jit
def _reduce_1d(p, w: Int32, lane: Int32):
    """Row ``(ho, tok)`` of the group-pooled 1D map: max over the group's heads."""
    tok = w % p.mb
    ho = w // p.mb
    out_row = Int64(w) * p.nbo
    for n in cutlass.range(lane, p.nbo, 32):
        v = Float32(0.0)
        for g in cutlass.range(p.group):
            at = Int64(ho * p.group + g) * p.pool_stride_head + Int64(tok) * p.pool_stride_tok + Int64(n)
            v = cute.arch.fmax(v, p.pool[at])
        p.out[out_row + Int64(n)] = v


def make_reduce_host(variant: Variant):
    """The ``@cute.jit`` host function (and kernel) of a reduce variant."""
    mode = variant.key["mode"]

    @cute.kernel
    def kernel(p: SimpleNamespace):
        tidx, _, _ = cute.arch.thread_idx()
        bidx, _, _ = cute.arch.block_idx()
        lane = Int32(tidx) % 32
        w = Int32(bidx) * REDUCE_WARPS + Int32(tidx) // 32
        if w < p.num_items:
            if cutlass.const_expr(mode == 0):
                _reduce_2d(p, w, lane)
            else:
                _reduce_1d(p, w, lane)

    kernel.set_name_prefix(f"vb_{variant.name}", remove_cutlass_symbol=True, keep_mangled_name=False)

    def launch(p: SimpleNamespace):
        kernel(p).launch(grid=[(p.num_items + REDUCE_WARPS - 1) // REDUCE_WARPS, 1, 1],
                         block=[32 * REDUCE_WARPS, 1, 1])

    return jit_host(variant.params, launch, name=f"host_{variant.name}")
