"""CuTe DSL implementation of ``attention_pool_sm90`` (build time only: needs ``cutlass``); see
``attention_pool_sm90.py`` for the design and ``attention_pool.py`` for the contract.

Reused as they are from the Hopper forward: the configuration (swizzled layouts, the S = Q K^T tiled wgmma), the
tile-index ring, the tile count / next-tile fetch, the TMA loads of Q and of a K chunk, the per-warpgroup
element-mask inputs, the wgmma issue helper, the accumulator views and the masks on wgmma fragments. Copied in
reduced form (the forward's versions also drive V): the pipelines (Q and K only) and the producer loop (K chunks
back to back, no V trailing one chunk behind). New: the shared storage (no V / O buffers, more K stages) and the
consumer's per-chunk pooling step.

Named barriers: 0 = CTA, 1 + wg = consumer warpgroup wg (128 threads), 3 + wg = the ping-pong turn of consumer
warpgroup wg (256 threads; the forward's turns: the two warpgroups issue their S wgmma in turn, so one's masking
and pooling overlaps the other's S).
"""

# (no `from __future__ import annotations`: cute.struct reads the annotations as objects)
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import cutlass
import cutlass.cute as cute
import cutlass.pipeline as pipeline
from cutlass import Float32, Int32, Int64, Uint32
from cutlass._mlir.dialects import llvm
from cutlass.cute.nvgpu import cpasync, warpgroup
from cutlass.cute.typing import T

from varblock.abi import LOG2E
from varblock.kernels._attn_fwd_sm90_consumer import (
    WG_THREADS,
    _chunk_keys_mask_inputs,
    _mask_scores,
    _read_chunk_clamped,
    _turn_pass,
    _turn_wait,
    first_turn,
    mn_view,
    wg_sync,
    wgmma,
)
from varblock.kernels._attn_fwd_sm90_debug import bounded_mbarrier_waits
from varblock.kernels._attn_fwd_sm90_impl import (
    Q_THREADS,
    TILE_RING,
    Sm90Config,
    TileRing,
    _load_kv,
    _mask_of,
    _next_tile,
    _row_copy,
    _tile_count,
)
from varblock.kernels.attention_pool_sm90 import CONSUMER_REGS, HALF, PRODUCER_REGS, Q_STAGES, THREADS
from varblock.kernels.common import gmem_io
from varblock.kernels.common.scheduler import TileScheduler, count_tile
from varblock.kernels.common.signature import jit_host
from varblock.kernels.common.warp_mma import quad_max
from varblock.kernels.common.work_tile import Sequence, TileRows, WorkTile, read_chunk


def shared_storage(cfg: Sm90Config):
    """The kernel's shared memory (``attention_pool_sm90.smem_bytes`` mirrors it)."""
    dtype, tm, tn, D, st = cfg.dtype, cfg.tile_m, cfg.tile_n, cfg.D, cfg.stages
    mr, al = cute.struct.MemRange, cute.struct.Align

    @cute.struct
    class SharedStorage:
        mbar_q: mr[Int64, 2 * Q_STAGES]
        mbar_k: mr[Int64, 2 * st]
        mbar_t: mr[Int64, 2 * TILE_RING]
        sQ: al[mr[dtype, Q_STAGES * tm * D], 1024]
        sK: al[mr[dtype, st * tn * D], 1024]
        # element-mask inputs, one copy per consumer warpgroup (common/mask.py; _attn_fwd_sm90_impl._mask_of)
        sRowPos: al[mr[Int32, 2 * tm], 16]
        sRowDoc: al[mr[Int32, 2 * tm], 16]
        sRowTm: al[mr[Int64, 2 * tm], 16]
        sDocK: al[mr[Int32, 2 * tn], 16]
        sTok: al[mr[Uint32, 2 * tm * (tn // 32)], 16]
        sTiles: al[mr[Int32, 4], 16]

    return SharedStorage


def _pipelines(cfg: Sm90Config, storage):
    """Q (producer warps 2-3: 64 arrivals, plus the TMA bytes; read by the 256 consumer threads) and K (TMA,
    released by each of the 8 consumer warps): the forward's Q and K pipelines, without V's."""
    thr = pipeline.Agent.Thread
    q = pipeline.PipelineAsync.create(
        barrier_storage=storage.mbar_q.data_ptr(), num_stages=Q_STAGES,
        producer_group=pipeline.CooperativeGroup(thr, Q_THREADS),
        consumer_group=pipeline.CooperativeGroup(thr, 2 * WG_THREADS), defer_sync=True)
    k = pipeline.PipelineTmaAsync.create(
        barrier_storage=storage.mbar_k.data_ptr(), num_stages=cfg.stages,
        producer_group=pipeline.CooperativeGroup(thr, 1),
        consumer_group=pipeline.CooperativeGroup(thr, 2 * WG_THREADS // 32), tx_count=cfg.kv_bytes,
        defer_sync=True)
    return q, k


@cute.jit
def _load_q_tma(cfg: Sm90Config, tma_q, m_q, s_q, bar, rows, stage):
    """Warp 2: expect the Q tile's bytes on the Q full barrier (before this thread's arrive), then TMA the
    ``tile_m`` rows from token ``tok0`` of query head ``hq0`` into Q stage ``stage`` (the forward's
    ``_load_q_tma`` with a staged buffer)."""
    with cute.arch.elect_one():
        cute.arch.mbarrier_expect_tx(bar, cfg.tile_m * cfg.D * cfg.dtype.width // 8)
    g = cute.local_tile(cute.domain_offset((rows.tok0, 0), m_q[None, None, rows.hq0]), (cfg.tile_m, cfg.D), (0, 0))
    t_s, t_g = cpasync.tma_partition(tma_q, 0, cute.make_layout(1), cute.group_modes(s_q, 0, 2),
                                     cute.group_modes(g, 0, 2))
    cute.copy(tma_q, t_g, t_s[None, stage], tma_bar_ptr=bar)


@cute.jit
def _load_q_async(cfg: Sm90Config, p, sm, pipe_q, q_state, rows, tmas, g2s, t_qs, t_qc, warp_idx):
    """Producer warps 2-3: the tile's Q rows into Q stage ``q_state.index`` (TMA when rows are consecutive tokens
    of one head, else cp.async with rows past the tile zero-filled), then their 64 arrivals on its full barrier."""
    tma_q, m_q = tmas
    pipe_q.producer_acquire(q_state)
    if p.pack_gqa == 1:
        if warp_idx == 2:
            _load_q_tma(cfg, tma_q, m_q, sm.sQ, pipe_q.producer_get_barrier(q_state), rows, q_state.index)
    else:
        q_st, q_sh = cute.assume(p.q_stride_tok, divby=8), cute.assume(p.q_stride_head, divby=8)
        gmem_io.load_q_rows(g2s, t_qs[None, None, None, q_state.index], t_qc, p.q, rows, q_st, q_sh, cfg.D)
        cute.arch.cp_async_commit_group()
        cute.arch.cp_async_wait_group(0)
        cute.arch.fence_view_async_shared()  # cp.async writes -> wgmma (async proxy) reads
    pipe_q.producer_commit(q_state)


@cute.jit
def _producer(cfg: Sm90Config, p, sm, pipes, ring: TileRing, tmas, warp_idx, tidx):
    """Warpgroup 0: warp 0 fetches tile indices and issues the K chunks of every tile back to back; warps 2-3 load
    Q; warp 1 follows the ring."""
    pipe_q, pipe_k = pipes
    tma_q, m_q, tma_k, m_k = tmas
    g2s = _row_copy(cfg.dtype, cpasync.CopyG2SOp(cache_mode=cpasync.LoadCacheMode.GLOBAL), Q_THREADS, cfg.D)
    g2s_thr = g2s.get_slice(tidx % Q_THREADS)  # (used by warps 2-3: threads 64..127)
    t_qs = g2s_thr.partition_D(sm.sQ)
    t_qc = g2s_thr.partition_S(cute.make_identity_tensor((cfg.tile_m, cfg.D)))
    lane = cute.arch.lane_idx()
    nt = _tile_count(p)
    ring_p = pipeline.make_pipeline_state(pipeline.PipelineUserType.Producer, TILE_RING)
    ring_c = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, TILE_RING)
    q_state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Producer, Q_STAGES)
    k_state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Producer, cfg.stages)
    tile_idx = Int32(-1)
    if warp_idx == 0:
        bidx, _, _ = cute.arch.block_idx()
        if Int32(bidx) < nt:
            tile_idx = Int32(bidx)
        ring_p = ring.push(ring_p, tile_idx)
    else:
        tile_idx, ring_c = ring.pop(ring_c)
    while tile_idx >= 0:
        nxt = Int32(-1)
        if warp_idx == 0:
            nxt = _next_tile(p, tile_idx, nt, lane)
            count_tile(p.debug_counts, tile_idx, tidx)
            ring_p = ring.push(ring_p, nxt)  # early: the consumers read it after this tile
        tile = WorkTile.load(p.tiles, tile_idx)
        seq = Sequence.load(p.cu_seqlens_q, p.cu_seqlens_k, tile.batch)
        rows = TileRows.of(tile, seq, p.pack_gqa, p.qhead_per_kvhead)
        if tile.n_chunks > 0:
            if warp_idx == 0:
                k_start, _ = read_chunk(p.chunks, tile.chunk_begin)
                _load_kv(tma_k, m_k, sm.sK, pipe_k, k_state, rows.hkv, seq.seq_k + k_start, cfg.tile_n, cfg.D)
                k_state.advance()
            if warp_idx >= 2:
                _load_q_async(cfg, p, sm, pipe_q, q_state, rows, (tma_q, m_q), g2s, t_qs, t_qc, warp_idx)
                q_state.advance()
            if warp_idx == 0:
                for ci in cutlass.range(1, tile.n_chunks, unroll=1):
                    k_start, _ = read_chunk(p.chunks, tile.chunk_begin + ci)
                    _load_kv(tma_k, m_k, sm.sK, pipe_k, k_state, rows.hkv, seq.seq_k + k_start, cfg.tile_n, cfg.D)
                    k_state.advance()
        if warp_idx == 0:
            tile_idx = nxt
        else:
            tile_idx, ring_c = ring.pop(ring_c)
    if warp_idx == 0:
        TileScheduler(p.persistent, p.tile_counter, None).finish(tidx)


@dataclass(frozen=True)
class PoolSetup:
    """A consumer thread's S wgmma fragments and accumulator coordinates (the fields ``_mask_scores`` reads)."""

    mma_qk: Any
    rQ: Any
    rK: Any
    shape_S: Any
    tScS: Any
    t0ScS: Any

    @staticmethod
    def create(cfg: Sm90Config, sm, ctid, wg) -> "PoolSetup":
        mma_qk, _ = cfg.tiled_mmas()
        wg_qk = mma_qk.get_slice(wg * WG_THREADS)
        cS = cute.make_identity_tensor((cfg.tile_m, cfg.tile_n))
        return PoolSetup(
            mma_qk=mma_qk,
            rQ=wg_qk.make_fragment_A(wg_qk.partition_A(sm.sQ)),
            rK=wg_qk.make_fragment_B(wg_qk.partition_B(sm.sK)),
            shape_S=wg_qk.partition_shape_C((cfg.tile_m, cfg.tile_n)),
            tScS=mn_view(mma_qk.get_slice(ctid).partition_C(cS)),
            t0ScS=mn_view(mma_qk.get_slice(0).partition_C(cS)),
        )


@cute.jit
def _row_inputs(p, cs: PoolSetup, tile: WorkTile, rows: TileRows, ri: cute.Tensor, lse2: cute.Tensor):
    """This thread's rows, once per tile: in ``ri`` (Int64 ``[2, rows]``) the offset of the row in the 1D map and
    in the raw 2D map (``-1``: no token, nothing written), in ``lse2`` the row's LSE as loaded (-inf without a
    token; :func:`_lse_base2` converts it after the tile's barriers, so the loads' latency overlaps them). Returns
    whether this warp's 16 rows lie in one query block of one head (then the warp writes one 2D maximum per half
    instead of one per row)."""
    for rr in cutlass.range_constexpr(cute.size(lse2)):
        r = cs.tScS[rr, 0][0]
        x = -Float32.inf
        off = Int64(-1)
        off2 = Int64(-1)
        if r < rows.rows_valid:
            tq, hq = rows.token_and_head(r)
            x = p.lse[Int64(hq) * p.lse_stride_head + Int64(rows.tok0 + tq)]
            off = Int64(hq) * p.pool_stride_head + Int64(rows.tok0 + tq) * p.pool_stride_tok
            off2 = (Int64(tile.batch) * p.pool2d_stride_b + Int64(hq // p.pool_group) * p.pool2d_stride_h
                    + Int64((tile.q_start + tq) // p.pool_block_q) * p.pool2d_stride_m)
        ri[0, rr] = off
        ri[1, rr] = off2
        lse2[rr] = x
    r0 = cs.tScS[0, 0][0]
    first = tile.q_start + (r0 - r0 % 16)  # the warp's rows: 16 consecutive tokens of one head when pack_gqa == 1
    return (p.pack_gqa == 1) & (first // p.pool_block_q == (first + 15) // p.pool_block_q)


@cute.jit
def _lse_base2(lse2: cute.Tensor):
    """The loaded LSEs in base 2, ``+inf`` for -inf (rows without a token, or nothing attended): P = 0."""
    for rr in cutlass.range_constexpr(cute.size(lse2)):
        x = lse2[rr]
        v = Float32.inf
        if x != -Float32.inf:
            v = x * LOG2E
        lse2[rr] = v


@cute.jit
def _red_max(ptr, value: Float32):
    """``*ptr = max(*ptr, value)`` for ``value >= 0`` over non-negative floats (their bits order like unsigned
    ints): one fire-and-forget ``red.global.max.u32``."""
    bits = llvm.bitcast(T.i32(), value.ir_value())
    cute.arch.red(cute.recast_ptr(ptr, dtype=Uint32), Uint32(bits), op="umax", dtype="u32", sem="relaxed",
                  scope="gpu")


def _rows_max(x):
    """Max over the 8 quads of a warp (its 16 accumulator rows; the 4 lanes of a quad already agree)."""
    for off in (4, 8, 16):
        x = cute.arch.fmax(x, cute.arch.shuffle_sync_bfly(x, offset=off, mask=-1, mask_and_clamp=31))
    return x


@cute.jit
def _pool_chunk(p, cs: PoolSetup, acc_s_mn, k_start, ri: cute.Tensor, lse2: cute.Tensor, warp_block):
    """Per row of this thread and per 64-key half of the chunk: max of the masked S -> max-pooled probability ->
    ``pool[hq, tok, (k_start + 64 h) // pool_block_k]`` and the raw 2D map at the row's query block and that key
    block (max over a warp's 16 rows first when they share the block; values 0 write nothing)."""
    col0 = cs.tScS[0, 0][1]
    n_cols = cute.size(acc_s_mn, mode=[1])
    n_rows = cute.size(lse2)
    blk = (Int64(k_start // p.pool_block_k), Int64((k_start + HALF) // p.pool_block_k))
    pm = cute.make_rmem_tensor((2, n_rows), Float32)
    for rr in cutlass.range_constexpr(n_rows):
        m0 = -Float32.inf
        m1 = -Float32.inf
        for cc in cutlass.range_constexpr(n_cols):
            if cutlass.const_expr(cs.t0ScS[0, cc][1] < HALF):
                m0 = cute.arch.fmax(m0, acc_s_mn[rr, cc])
            else:
                m1 = cute.arch.fmax(m1, acc_s_mn[rr, cc])
        for h in cutlass.range_constexpr(2):
            m = quad_max(m0 if h == 0 else m1)
            v = Float32(0.0)
            if m != -Float32.inf:
                v = cute.math.exp2(m * p.softmax_scale_log2 - lse2[rr], fastmath=False)
            pm[h, rr] = v
            if col0 == 0 and ri[0, rr] >= Int64(0) and v > Float32(0.0):
                _red_max(p.pool + (ri[0, rr] + blk[h]), v)
    if warp_block:
        for h in cutlass.range_constexpr(2):
            v = pm[h, 0]
            for rr in cutlass.range_constexpr(1, n_rows):
                v = cute.arch.fmax(v, pm[h, rr])
            v = _rows_max(v)
            if cute.arch.lane_idx() == 0 and ri[1, 0] >= Int64(0) and v > Float32(0.0):
                _red_max(p.pool2d + (ri[1, 0] + blk[h]), v)
    else:
        for rr in cutlass.range_constexpr(n_rows):
            for h in cutlass.range_constexpr(2):
                if col0 == 0 and ri[1, rr] >= Int64(0) and pm[h, rr] > Float32(0.0):
                    _red_max(p.pool2d + (ri[1, rr] + blk[h]), pm[h, rr])


@cute.jit
def _tile_chunks(cfg: Sm90Config, p, cs: PoolSetup, mask, pipes, q_state, k_state, tile: WorkTile, seq, rows,
                 row_in, wtid, wg):
    """The chunks of one tile: wait K, take the ping-pong turn, issue S = Q K^T, pass the turn (the other
    warpgroup's S runs on the tensor cores while this one masks and pools), wait S, release K, mask, pool. Each
    chunk's ``(k_start, k_len)`` is read one chunk ahead. A warpgroup whose 64 rows hold no token (tiles of at most
    64 rows: layouts with 64-token query blocks) only follows the K ring and the turns, leaving the tensor cores to
    the other."""
    pipe_q, pipe_k = pipes
    ri, lse2, warp_block = row_in
    busy = rows.rows_valid > wg * (cfg.tile_m // 2)
    k_start, k_len = read_chunk(p.chunks, tile.chunk_begin)
    pipe_q.consumer_wait(q_state)
    for ci in cutlass.range(tile.n_chunks, unroll=1):
        nk_start, nk_len = _read_chunk_clamped(p, tile, ci + 1)
        _chunk_keys_mask_inputs(p, mask, tile, seq, ci, k_start, k_len, wtid, wg, False)
        pipe_k.consumer_wait(k_state)
        _turn_wait(wg)
        if busy:
            acc_S = cute.make_rmem_tensor(cs.shape_S, Float32)
            wgmma(cs.mma_qk, acc_S, cs.rQ[None, None, None, q_state.index],
                  cs.rK[None, None, None, k_state.index], True, -1)
            _turn_pass(wg)
            warpgroup.wait_group(0)
            pipe_k.consumer_release(k_state)
            acc_S_mn = mn_view(acc_S)
            _mask_scores(mask, cs, acc_S_mn, tile.is_partial(ci), k_start, k_len)
            _pool_chunk(p, cs, acc_S_mn, k_start, ri, lse2, warp_block)
        else:
            _turn_pass(wg)
            pipe_k.consumer_release(k_state)
        k_state.advance()
        k_start, k_len = nk_start, nk_len
    pipe_q.consumer_release(q_state)
    q_state.advance()
    return q_state, k_state


@cute.jit
def _consumer(cfg: Sm90Config, p, sm, storage, pipes, ring: TileRing, warp_group_idx, tidx):
    """Warpgroups 1, 2: pop tiles, pool their 64 rows of each."""
    wg = warp_group_idx - 1
    ctid = tidx - WG_THREADS
    wtid = ctid - wg * WG_THREADS
    cs = PoolSetup.create(cfg, sm, ctid, wg)
    mask = _mask_of(cfg, p, storage, wg)
    ring_c = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, TILE_RING)
    q_state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, Q_STAGES)
    k_state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, cfg.stages)
    ri = cute.make_rmem_tensor((2, cute.size(cs.tScS, mode=[0])), Int64)
    lse2 = cute.make_rmem_tensor(cute.size(cs.tScS, mode=[0]), Float32)
    first_turn(wg)
    tile_idx, ring_c = ring.pop(ring_c)
    while tile_idx >= 0:
        tile = WorkTile.load(p.tiles, tile_idx)
        seq = Sequence.load(p.cu_seqlens_q, p.cu_seqlens_k, tile.batch)
        rows = TileRows.of(tile, seq, p.pack_gqa, p.qhead_per_kvhead)
        if tile.n_chunks > 0:
            warp_block = _row_inputs(p, cs, tile, rows, ri, lse2)  # (LSE loads in flight over the barriers)
            wg_sync(wg)  # the previous tile's readers of the mask inputs are done
            mask.load_rows(wtid, tile, seq, rows)
            wg_sync(wg)
            _lse_base2(lse2)
            q_state, k_state = _tile_chunks(cfg, p, cs, mask, pipes, q_state, k_state, tile, seq, rows,
                                            (ri, lse2, warp_block), wtid, wg)
        tile_idx, ring_c = ring.pop(ring_c)


def make_host(name: str, host_params, dtype_name: str, D: int, tile_m: int, tile_n: int, stages: int):
    """The ``@cute.jit`` host function of one variant: builds the Q / K TMA descriptors and launches once."""
    cfg = Sm90Config(dtype_name, D, tile_m, tile_n, stages)
    storage_cls = shared_storage(cfg)

    @cute.kernel
    def kernel(tma_q: cute.CopyAtom, m_q: cute.Tensor, tma_k: cute.CopyAtom, m_k: cute.Tensor, p: SimpleNamespace):
        tidx, _, _ = cute.arch.thread_idx()
        warp_idx = cute.arch.make_warp_uniform(cute.arch.warp_idx())
        warp_group_idx = cute.arch.make_warp_uniform(tidx // WG_THREADS)
        if warp_idx == 0:
            cpasync.prefetch_descriptor(tma_q)
            cpasync.prefetch_descriptor(tma_k)
        storage = cutlass.utils.SmemAllocator().allocate(storage_cls)
        pipes = _pipelines(cfg, storage)
        ring = TileRing.create(storage)
        cute.arch.mbarrier_init_fence()
        cute.arch.sync_threads()
        q_layout, k_layout = cfg.smem_layout(tile_m, Q_STAGES), cfg.smem_layout(tile_n, stages)
        sm = SimpleNamespace(sQ=storage.sQ.get_tensor(q_layout.outer, swizzle=q_layout.inner),
                             sK=storage.sK.get_tensor(k_layout.outer, swizzle=k_layout.inner))
        if warp_group_idx == 0:
            cute.arch.setmaxregister_decrease(PRODUCER_REGS)
            _producer(cfg, p, sm, pipes, ring, (tma_q, m_q, tma_k, m_k), warp_idx, tidx)
        else:
            cute.arch.setmaxregister_increase(CONSUMER_REGS)
            _consumer(cfg, p, sm, storage, pipes, ring, warp_group_idx, tidx)

    kernel.set_name_prefix(f"vb_{name}", remove_cutlass_symbol=True, keep_mangled_name=False)

    def launch(p: SimpleNamespace):
        q_one = cute.slice_(cfg.smem_layout(tile_m, Q_STAGES), (None, None, 0))
        k_one = cute.slice_(cfg.smem_layout(tile_n, stages), (None, None, 0))
        atoms = []
        for ptr, rows, heads, s_tok, s_head, s_layout, tile_rows in (
                (p.q, p.total_q, p.num_heads_q, p.q_stride_tok, p.q_stride_head, q_one, tile_m),
                (p.k, p.total_k, p.num_heads_kv, p.k_stride_tok, p.k_stride_head, k_one, tile_n)):
            m = cute.make_tensor(ptr, cute.make_layout(
                (rows, D, heads), stride=(cute.assume(s_tok, divby=8), 1, cute.assume(s_head, divby=8))))
            atoms.extend(cpasync.make_tiled_tma_atom(cpasync.CopyBulkTensorTileG2SOp(), m, s_layout, (tile_rows, D)))
        with bounded_mbarrier_waits():  # hang diagnosis, off unless VARBLOCK_SM90_DEBUG_HANGS=1 at build time
            kernel(*atoms, p).launch(grid=[p.num_ctas, 1, 1], block=[THREADS, 1, 1],
                                     smem=storage_cls.size_in_bytes(), min_blocks_per_mp=1)

    return jit_host(host_params, launch, name=f"host_{name}")
