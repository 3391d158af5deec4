"""CuTe DSL implementation of ``attention_fwd_sm90`` (build time only: needs ``cutlass``).

See ``attention_fwd_sm90.py`` for the design and ``attention_fwd_mma.py`` for the contract. Pieces here:

* :class:`Sm90Config` - static shapes, shared-memory layouts (128B-swizzled, K-major rows of ``D``), the two
  wgmma tiled MMAs (S = Q K^T from shared memory; O += P V with P from registers, V read MN-major) and the shared
  storage struct;
* :func:`_producer` - warpgroup 0: tile indices (warp 0 fetches, a 2-slot mbarrier ring hands them out), Q by
  warps 2-3 (TMA, or cp.async with pack-GQA), K / V by TMA (warp 0), V one chunk behind K;
* :func:`_consumer` - warpgroups 1, 2: pop tiles, the chunk loop (``_attn_fwd_sm90_consumer``: intra-warpgroup
  overlap and ping-pong), the epilogue.

Named barriers: 0 = CTA, 1 + wg = consumer warpgroup wg (128 threads), 3 + wg = the ping-pong turn of
warpgroup wg (256 threads).
"""

# (no `from __future__ import annotations`: cute.struct reads the annotations as objects)
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import cutlass
import cutlass.cute as cute
import cutlass.pipeline as pipeline
import cutlass.utils.hopper_helpers as sm90_utils
from cutlass import Float32, Int32, Int64, Uint32
from cutlass.cute.nvgpu import cpasync, warpgroup
from cutlass.utils import LayoutEnum

from ._attn_fwd_sm90_consumer import (
    OVERLAP,
    WG_THREADS,
    ConsumerSetup,
    first_turn,
    mn_view,
    tile_mainloop,
    tile_mainloop_plain,
    wg_sync,
)
from ._attn_fwd_sm90_debug import bounded_mbarrier_waits
from ._dsl import dsl_dtype
from .attention_fwd_sm90 import CONSUMER_REGS, PRODUCER_REGS, THREADS
from .common import gmem_io
from .common.mask import ElementMask, MaskSmem
from .common.scheduler import TileScheduler, count_tile
from .common.signature import jit_host
from .common.work_tile import Sequence, TileRows, WorkTile, read_chunk

Q_THREADS = 64  #: producer warps 2-3 load Q (warp 0 keeps issuing K / V TMA meanwhile; warp 1 only follows the ring)
TILE_RING = 2  #: slots of the tile-index ring


class Sm90Config:
    """Static configuration of one variant."""

    def __init__(self, dtype_name: str, head_dim: int, tile_m: int, tile_n: int, stages: int):
        self.dtype = dsl_dtype(dtype_name)
        self.D, self.tile_m, self.tile_n, self.stages = head_dim, tile_m, tile_n, stages
        if head_dim % 32 or tile_m != 2 * 64 or tile_n % 64:
            raise ValueError(f"unsupported sm90 configuration: D={head_dim}, tile {tile_m}x{tile_n}")
        self.kv_bytes = tile_n * head_dim * self.dtype.width // 8

    def smem_layout(self, rows: int, stages: int = 0):
        """``(rows, D[, stages])``: swizzled K-major atoms (8 rows x 64 elements, 128B swizzle; 8 x 32, 64B swizzle
        when D is not a multiple of 64) tiled over the buffer."""
        atom = warpgroup.make_smem_layout_atom(
            sm90_utils.get_smem_layout_atom(LayoutEnum.ROW_MAJOR, self.dtype, self.D), self.dtype)
        shape = (rows, self.D, stages) if stages else (rows, self.D)
        return cute.tile_to_shape(atom, shape, (0, 1, 2) if stages else (0, 1))

    def tiled_mmas(self):
        """(S = Q K^T, O += P V): two warpgroups along M, 64 x N wgmma atoms."""
        qk = sm90_utils.make_trivial_tiled_mma(
            self.dtype, self.dtype, warpgroup.OperandMajorMode.K, warpgroup.OperandMajorMode.K, Float32,
            (2, 1, 1), (64, self.tile_n))
        pv = sm90_utils.make_trivial_tiled_mma(
            self.dtype, self.dtype, warpgroup.OperandMajorMode.K, warpgroup.OperandMajorMode.MN, Float32,
            (2, 1, 1), (64, self.D), warpgroup.OperandSource.RMEM)
        return qk, pv

    def shared_storage(self):
        """The kernel's shared memory (``attention_fwd_sm90.smem_bytes`` mirrors it)."""
        dtype, tm, tn, D, st = self.dtype, self.tile_m, self.tile_n, self.D, self.stages
        mr, al = cute.struct.MemRange, cute.struct.Align

        @cute.struct
        class SharedStorage:
            mbar_q: mr[Int64, 2]
            mbar_k: mr[Int64, 2 * st]
            mbar_v: mr[Int64, 2 * st]
            mbar_t: mr[Int64, 2 * TILE_RING]
            sQ: al[mr[dtype, tm * D], 1024]
            sK: al[mr[dtype, st * tn * D], 1024]
            sV: al[mr[dtype, st * tn * D], 1024]
            sO: al[mr[dtype, tm * D], 1024]
            # element-mask inputs, one copy per consumer warpgroup (common/mask.py)
            sRowPos: al[mr[Int32, 2 * tm], 16]
            sRowDoc: al[mr[Int32, 2 * tm], 16]
            sRowTm: al[mr[Int64, 2 * tm], 16]
            sDocK: al[mr[Int32, 2 * tn], 16]
            sTok: al[mr[Uint32, 2 * tm * (tn // 32)], 16]
            sTiles: al[mr[Int32, 4], 16]

        return SharedStorage


def _strides(p) -> SimpleNamespace:
    """Q / O element strides, known multiples of 8 (16-byte vectors)."""
    return SimpleNamespace(q_st=cute.assume(p.q_stride_tok, divby=8), q_sh=cute.assume(p.q_stride_head, divby=8),
                           o_st=cute.assume(p.o_stride_tok, divby=8), o_sh=cute.assume(p.o_stride_head, divby=8))


def _row_copy(dtype, op, nthr: int, D: int):
    """A tiled copy of 16-byte vectors over rows of ``D``: ``tpr`` threads per row slice of ``8 * tpr`` columns (8,
    or 4 when D is not a multiple of 64), ``nthr / tpr`` rows per pass."""
    tpr = 8 if D % 64 == 0 else 4
    atom = cute.make_copy_atom(op, dtype, num_bits_per_copy=128)
    return cute.make_tiled_copy_tv(atom, cute.make_layout((nthr // tpr, tpr), stride=(tpr, 1)),
                                   cute.make_layout((1, 8)))


@dataclass(frozen=True)
class TileRing:
    """The tile-index ring: warp 0 pushes (producer group: its 32 lanes), every other warp pops (352 threads).
    (Frozen: read-only to the DSL, so method calls inside dynamic control flow do not carry it.)"""

    pipe: Any
    slots: Any

    @staticmethod
    def create(storage) -> "TileRing":
        pipe = pipeline.PipelineAsync.create(
            barrier_storage=storage.mbar_t.data_ptr(), num_stages=TILE_RING,
            producer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread, 32),
            consumer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread, THREADS - 32), defer_sync=True)
        return TileRing(pipe, storage.sTiles.get_tensor(cute.make_layout(4)))

    @cute.jit
    def push(self, state, value: Int32):
        slots = self.slots
        self.pipe.producer_acquire(state)
        slots[state.index] = value
        self.pipe.producer_commit(state)
        state.advance()
        return state

    @cute.jit
    def pop(self, state):
        slots = self.slots
        self.pipe.consumer_wait(state)
        value = slots[state.index]
        self.pipe.consumer_release(state)
        state.advance()
        return value, state


def _pipelines(cfg: Sm90Config, storage):
    """Q (cp.async by producer warps 2-3, read by 256 consumer threads), K and V (TMA, released by each of the 8
    consumer warps)."""
    thr = pipeline.Agent.Thread
    q = pipeline.PipelineAsync.create(
        barrier_storage=storage.mbar_q.data_ptr(), num_stages=1,
        producer_group=pipeline.CooperativeGroup(thr, Q_THREADS),
        consumer_group=pipeline.CooperativeGroup(thr, 2 * WG_THREADS), defer_sync=True)
    k, v = (pipeline.PipelineTmaAsync.create(
        barrier_storage=bar, num_stages=cfg.stages, producer_group=pipeline.CooperativeGroup(thr, 1),
        consumer_group=pipeline.CooperativeGroup(thr, 2 * WG_THREADS // 32), tx_count=cfg.kv_bytes,
        defer_sync=True) for bar in (storage.mbar_k.data_ptr(), storage.mbar_v.data_ptr()))
    return q, k, v


@cute.jit
def _tile_count(p) -> Int32:
    """``*num_tiles_ptr`` when nonzero, else ``num_tiles``, without a branch: the load always runs (from
    ``cu_seqlens_q`` when there is no count pointer), so no uniform-register move lands in a predicated block
    (``@P R2UR`` is illegal on sm_90a, cutlass grouped_gemm.py)."""
    has = p.num_tiles_ptr.toint() != Int64(0)
    addr = p.num_tiles_ptr.toint() if has else p.cu_seqlens_q.toint()
    loaded = cute.make_ptr(Int32, addr, cute.AddressSpace.gmem, assumed_align=4)[0]
    return loaded if has else p.num_tiles


@cute.jit
def _next_tile(p, tile_idx: Int32, nt: Int32, lane: Int32) -> Int32:
    """Warp 0: the CTA's next tile (``gridDim.x + atomicAdd`` when persistent), or -1."""
    nxt = Int32(-1)
    if p.persistent != 0:
        fetched = Int32(0)
        if lane == 0:
            fetched = cute.arch.atomic_add(p.tile_counter, Int32(1))
        nxt = cute.arch.shuffle_sync(fetched, 0) + cute.arch.grid_dim()[0]
        if nxt >= nt:
            nxt = Int32(-1)
    return nxt


@cute.jit
def _load_kv(tma, m_coords, s_buf, pipe, state, hkv: Int32, row0: Int32, tile_n: cutlass.Constexpr,
             D: cutlass.Constexpr):
    """TMA of ``tile_n`` rows from token row ``row0`` of KV head ``hkv`` into stage ``state.index``."""
    g = cute.local_tile(cute.domain_offset((row0, 0), m_coords[None, None, hkv]), (tile_n, D), (0, 0))
    t_s, t_g = cpasync.tma_partition(tma, 0, cute.make_layout(1), cute.group_modes(s_buf, 0, 2),
                                     cute.group_modes(g, 0, 2))
    pipe.producer_acquire(state)
    cute.copy(tma, t_g, t_s[None, state.index], tma_bar_ptr=pipe.producer_get_barrier(state))


@cute.jit
def _load_q_tma(cfg: Sm90Config, tma_q, m_q, s_q, bar, rows):
    """Warp 2: expect the Q tile's bytes on the Q full barrier (before this thread's arrive), then TMA the
    ``tile_m`` rows from token ``tok0`` of query head ``hq0``."""
    with cute.arch.elect_one():
        cute.arch.mbarrier_expect_tx(bar, cfg.tile_m * cfg.D * cfg.dtype.width // 8)
    g = cute.local_tile(cute.domain_offset((rows.tok0, 0), m_q[None, None, rows.hq0]), (cfg.tile_m, cfg.D), (0, 0))
    t_s, t_g = cpasync.tma_partition(tma_q, 0, cute.make_layout(1), cute.group_modes(s_q, 0, 2),
                                     cute.group_modes(g, 0, 2))
    cute.copy(tma_q, t_g, t_s, tma_bar_ptr=bar)


@cute.jit
def _prefetch_q_tma(cfg: Sm90Config, tma_q, m_q, s_q, rows):
    """Warp 2: TMA prefetch of the Q tile into L2 (``cp.async.bulk.prefetch.tensor``; no shared memory, no
    barrier). Issued as soon as warp 2 has the tile's rows, a whole tile before the Q buffer is free: Q is read
    once, from DRAM, and its load otherwise sits between two tiles."""
    g = cute.local_tile(cute.domain_offset((rows.tok0, 0), m_q[None, None, rows.hq0]), (cfg.tile_m, cfg.D), (0, 0))
    _, t_g = cpasync.tma_partition(tma_q, 0, cute.make_layout(1), cute.group_modes(s_q, 0, 2),
                                   cute.group_modes(g, 0, 2))
    cute.prefetch(tma_q, t_g)


@cute.jit
def _producer(cfg: Sm90Config, p, sm, pipes, ring: TileRing, tmas, warp_idx, tidx):
    """Warpgroup 0: tile indices and K / V by TMA (warp 0), Q (warps 2-3: TMA, or cp.async with pack-GQA), warp 1
    follows along."""
    pipe_q, pipe_k, pipe_v = pipes
    tma_q, m_q, tma_k, m_k, tma_v, m_v = tmas
    tile_n, D = cfg.tile_n, cfg.D
    st = _strides(p)
    g2s = _row_copy(cfg.dtype, cpasync.CopyG2SOp(cache_mode=cpasync.LoadCacheMode.GLOBAL), Q_THREADS, D)
    g2s_thr = g2s.get_slice(tidx % Q_THREADS)  # (used by warps 2-3: threads 64..127)
    t_qs = g2s_thr.partition_D(sm.sQ)
    t_qc = g2s_thr.partition_S(cute.make_identity_tensor((cfg.tile_m, D)))
    lane = cute.arch.lane_idx()
    nt = _tile_count(p)
    ring_p = pipeline.make_pipeline_state(pipeline.PipelineUserType.Producer, TILE_RING)
    ring_c = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, TILE_RING)
    q_state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Producer, 1)
    kv_state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Producer, cfg.stages)
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
            k_start, _ = read_chunk(p.chunks, tile.chunk_begin)
            if warp_idx == 0:
                _load_kv(tma_k, m_k, sm.sK, pipe_k, kv_state, rows.hkv, seq.seq_k + k_start, tile_n, D)
            if warp_idx >= 2:
                if p.pack_gqa == 1:
                    if warp_idx == 2:
                        _prefetch_q_tma(cfg, tma_q, m_q, sm.sQ, rows)
                pipe_q.producer_acquire(q_state)
                if p.pack_gqa == 1:  # tile rows are consecutive tokens of one head: one TMA box
                    if warp_idx == 2:
                        _load_q_tma(cfg, tma_q, m_q, sm.sQ, pipe_q.producer_get_barrier(q_state), rows)
                else:
                    gmem_io.load_q_rows(g2s, t_qs, t_qc, p.q, rows, st.q_st, st.q_sh, D)
                    cute.arch.cp_async_commit_group()
                    cute.arch.cp_async_wait_group(0)
                    cute.arch.fence_view_async_shared()  # cp.async / st.shared writes -> wgmma (async proxy) reads
                pipe_q.producer_commit(q_state)  # 64 arrivals; with TMA the phase also waits for its bytes
                q_state.advance()
            if warp_idx == 0:
                for ci in cutlass.range(1, tile.n_chunks, unroll=1):
                    prev = kv_state.clone()
                    kv_state.advance()
                    k_start, _ = read_chunk(p.chunks, tile.chunk_begin + ci)
                    _load_kv(tma_k, m_k, sm.sK, pipe_k, kv_state, rows.hkv, seq.seq_k + k_start, tile_n, D)
                    k_prev, _ = read_chunk(p.chunks, tile.chunk_begin + ci - 1)
                    _load_kv(tma_v, m_v, sm.sV, pipe_v, prev, rows.hkv, seq.seq_k + k_prev, tile_n, D)
                k_last, _ = read_chunk(p.chunks, tile.chunk_begin + tile.n_chunks - 1)
                _load_kv(tma_v, m_v, sm.sV, pipe_v, kv_state, rows.hkv, seq.seq_k + k_last, tile_n, D)
                kv_state.advance()
        if warp_idx == 0:
            tile_idx = nxt
        else:
            tile_idx, ring_c = ring.pop(ring_c)
    if warp_idx == 0:
        TileScheduler(p.persistent, p.tile_counter, None).finish(tidx)


def _mask_of(cfg: Sm90Config, p, storage, wg) -> ElementMask:
    """This warpgroup's copy of the element-mask inputs (full tile rows: rows are indexed by tile row)."""
    tm, tn, nw = cfg.tile_m, cfg.tile_n, cfg.tile_n // 32

    def part(field, n):
        return cute.make_tensor(field.data_ptr() + wg * n, cute.make_layout(n))

    ms = MaskSmem(row_pos=part(storage.sRowPos, tm), row_doc=part(storage.sRowDoc, tm),
                  row_tm=part(storage.sRowTm, tm), doc_k=part(storage.sDocK, tn),
                  tok=cute.make_tensor(storage.sTok.data_ptr() + wg * (tm * nw),
                                       cute.make_layout((tm, nw), stride=(nw, 1))),
                  n_words=nw)
    return ElementMask(p, ms, tm, tn, WG_THREADS, drop_fold=True)


@cute.jit
def _epilogue(cfg: Sm90Config, p, sm, cs: ConsumerSetup, rows, ctid, wtid, wg):
    """O / row sum and LSE; O -> shared memory (this warpgroup's 64 rows) -> 16-byte stores of the valid rows."""
    acc_O_mn = mn_view(cs.acc_O)
    cs.softmax.finalize(acc_O_mn)
    gmem_io.store_lse(p.lse, cs.tOcO, cs.softmax.lse, rows, p.lse_stride_head)
    rO = cute.make_fragment_like(cs.acc_O, cfg.dtype)
    rO.store(cs.acc_O.load().to(cfg.dtype))
    r2s_atom = cute.make_copy_atom(cute.nvgpu.CopyUniversalOp(), cfg.dtype, num_bits_per_copy=32)
    r2s = cute.make_tiled_copy_C(r2s_atom, cs.mma_pv).get_slice(ctid)
    cute.copy(r2s_atom, r2s.retile(rO), r2s.partition_D(sm.sO))
    wg_sync(wg)
    s2g = _row_copy(cfg.dtype, cute.nvgpu.CopyUniversalOp(), WG_THREADS, cfg.D)
    s2g_thr = s2g.get_slice(wtid)
    half = (cfg.tile_m // 2, cfg.D)
    t_os = s2g_thr.partition_S(cute.local_tile(sm.sO, half, (wg, 0)))
    t_oc = s2g_thr.partition_S(cute.local_tile(cute.make_identity_tensor((cfg.tile_m, cfg.D)), half, (wg, 0)))
    t_or = cute.make_fragment_like(t_os, cfg.dtype)
    cute.autovec_copy(t_os, t_or)
    st = _strides(p)
    gmem_io.store_rows(s2g, t_or, t_oc, p.o, rows, st.o_st, st.o_sh, cfg.D)


@cute.jit
def _consumer(cfg: Sm90Config, p, sm, storage, pipes, ring: TileRing, warp_group_idx, tidx):
    """Warpgroups 1, 2: pop tiles, run their 64 rows of each, write O and LSE."""
    wg = warp_group_idx - 1
    ctid = tidx - WG_THREADS
    wtid = ctid - wg * WG_THREADS
    cs = ConsumerSetup.create(cfg, sm, ctid, wg, p.softmax_scale_log2)
    mask = _mask_of(cfg, p, storage, wg)
    ring_c = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, TILE_RING)
    q_state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, 1)
    kv_state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, cfg.stages)
    first_turn(wg)
    tile_idx, ring_c = ring.pop(ring_c)
    while tile_idx >= 0:
        tile = WorkTile.load(p.tiles, tile_idx)
        seq = Sequence.load(p.cu_seqlens_q, p.cu_seqlens_k, tile.batch)
        rows = TileRows.of(tile, seq, p.pack_gqa, p.qhead_per_kvhead)
        wg_sync(wg)  # the previous tile's readers of sO and of the mask inputs are done
        mask.load_rows(wtid, tile, seq, rows)
        wg_sync(wg)
        cs.acc_O.fill(0.0)
        cs.softmax.reset()
        if tile.n_chunks > 0:
            if cutlass.const_expr(OVERLAP):
                q_state, kv_state = tile_mainloop(cfg, p, cs, mask, pipes, q_state, kv_state, tile, seq, wtid, wg)
            else:
                q_state, kv_state = tile_mainloop_plain(cfg, p, cs, mask, pipes, q_state, kv_state, tile, seq,
                                                        wtid, wg)
        _epilogue(cfg, p, sm, cs, rows, ctid, wtid, wg)
        tile_idx, ring_c = ring.pop(ring_c)


def make_host(name: str, host_params, dtype_name: str, D: int, tile_m: int, tile_n: int, stages: int):
    """The ``@cute.jit`` host function of one variant: builds the K / V TMA descriptors and launches once."""
    cfg = Sm90Config(dtype_name, D, tile_m, tile_n, stages)
    storage_cls = cfg.shared_storage()

    @cute.kernel
    def kernel(tma_q: cute.CopyAtom, m_q: cute.Tensor, tma_k: cute.CopyAtom, m_k: cute.Tensor, tma_v: cute.CopyAtom,
               m_v: cute.Tensor, p: SimpleNamespace):
        tidx, _, _ = cute.arch.thread_idx()
        warp_idx = cute.arch.make_warp_uniform(cute.arch.warp_idx())
        warp_group_idx = cute.arch.make_warp_uniform(tidx // WG_THREADS)
        if warp_idx == 0:
            cpasync.prefetch_descriptor(tma_q)
            cpasync.prefetch_descriptor(tma_k)
            cpasync.prefetch_descriptor(tma_v)
        storage = cutlass.utils.SmemAllocator().allocate(storage_cls)
        pipes = _pipelines(cfg, storage)
        ring = TileRing.create(storage)
        cute.arch.mbarrier_init_fence()
        cute.arch.sync_threads()
        kv_layout = cfg.smem_layout(tile_n, stages)
        sV = storage.sV.get_tensor(kv_layout.outer, swizzle=kv_layout.inner)
        sm = SimpleNamespace(
            sQ=storage.sQ.get_tensor(cfg.smem_layout(tile_m).outer, swizzle=cfg.smem_layout(tile_m).inner),
            sK=storage.sK.get_tensor(kv_layout.outer, swizzle=kv_layout.inner),
            sV=sV,
            sVt=cute.composition(sV, cute.make_ordered_layout((D, tile_n, stages), order=(1, 0, 2))),
            sO=storage.sO.get_tensor(cfg.smem_layout(tile_m).outer, swizzle=cfg.smem_layout(tile_m).inner),
        )
        if warp_group_idx == 0:
            cute.arch.setmaxregister_decrease(PRODUCER_REGS)
            _producer(cfg, p, sm, pipes, ring, (tma_q, m_q, tma_k, m_k, tma_v, m_v), warp_idx, tidx)
        else:
            cute.arch.setmaxregister_increase(CONSUMER_REGS)
            _consumer(cfg, p, sm, storage, pipes, ring, warp_group_idx, tidx)

    kernel.set_name_prefix(f"vb_{name}", remove_cutlass_symbol=True, keep_mangled_name=False)

    def launch(p: SimpleNamespace):
        kv_one = cute.slice_(cfg.smem_layout(tile_n, stages), (None, None, 0))
        atoms = []
        for ptr, rows, heads, s_tok, s_head, s_layout, tile_rows in (
                (p.q, p.total_q, p.num_heads_q, p.q_stride_tok, p.q_stride_head, cfg.smem_layout(tile_m), tile_m),
                (p.k, p.total_k, p.num_heads_kv, p.k_stride_tok, p.k_stride_head, kv_one, tile_n),
                (p.v, p.total_k, p.num_heads_kv, p.v_stride_tok, p.v_stride_head, kv_one, tile_n)):
            m = cute.make_tensor(ptr, cute.make_layout(
                (rows, D, heads), stride=(cute.assume(s_tok, divby=8), 1, cute.assume(s_head, divby=8))))
            atoms.extend(cpasync.make_tiled_tma_atom(cpasync.CopyBulkTensorTileG2SOp(), m, s_layout, (tile_rows, D)))
        with bounded_mbarrier_waits():  # hang diagnosis, off unless VARBLOCK_SM90_DEBUG_HANGS=1 at build time
            kernel(*atoms, p).launch(grid=[p.num_ctas, 1, 1], block=[THREADS, 1, 1],
                                     smem=storage_cls.size_in_bytes(), min_blocks_per_mp=1)

    return jit_host(host_params, launch, name=f"host_{name}")
