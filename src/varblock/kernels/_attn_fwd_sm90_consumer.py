"""The consumer side of ``attention_fwd_sm90`` (build time only): wgmma fragments and helpers, online softmax
steps, the element mask on wgmma accumulators, and the chunk loop of a tile - with intra-warpgroup overlap and
ping-pong (:func:`tile_mainloop`), or plain (:func:`tile_mainloop_plain`, a debug build: ``VARBLOCK_SM90_PLAIN=1``).

Named barriers: 1 + wg = consumer warpgroup wg (128 threads), 3 + wg = the ping-pong turn of warpgroup wg
(256 threads).
"""

# (no `from __future__ import annotations`: the DSL reads annotations as objects)
from dataclasses import dataclass
from typing import Any

import cutlass
import cutlass.cute as cute
from cutlass import Float32
from cutlass.cute.nvgpu import warpgroup

from varblock.abi import CHUNK_DROP_KEY_HALF, CHUNK_DROP_LO

from ._attn_fwd_sm90_debug import plain
from .common.mask import ElementMask
from .common.softmax import OnlineSoftmax
from .common.work_tile import WorkTile, read_chunk, read_chunk_rows

WG_THREADS = 128
BAR_WG = 1  #: + wg: one consumer warpgroup
BAR_TURN = 3  #: + wg: ping-pong turn of consumer warpgroup wg
OVERLAP = not plain()  #: intra-warpgroup overlap (False: the plain loop, a debug build: VARBLOCK_SM90_PLAIN=1)
PINGPONG = OVERLAP  #: warpgroups take turns issuing wgmma
#: the drop bits of row half 0 in both key halves (row half 1: shifted left by one)
_HALF_BITS = CHUNK_DROP_LO | CHUNK_DROP_LO << CHUNK_DROP_KEY_HALF


def mn_view(t):
    """A wgmma accumulator ``((2, 2, V), MMA_M, MMA_N)`` as ``(rows, cols)`` = ``((2, MMA_M), (2, V, MMA_N))``."""
    lay = cute.make_layout(t.layout.shape)
    mn = cute.make_layout(
        ((lay.shape[0][1], lay.shape[1]), (lay.shape[0][0], lay.shape[0][2], lay.shape[2])),
        stride=((lay.stride[0][1], lay.stride[1]), (lay.stride[0][0], lay.stride[0][2], lay.stride[2])))
    return cute.make_tensor(t.iterator, cute.composition(t.layout, mn))


def acc_as_operand_a(t):
    """A wgmma accumulator ``((2, 2, V), MMA_M, MMA_N)`` as the register A operand of the next wgmma:
    ``((2, 2, 2), MMA_M, (V / 2, MMA_N))`` (two n8 column groups make one k16 slice)."""
    div = cute.logical_divide(t.layout, ((None, None, 2), None, None))
    lay = cute.make_layout(
        ((div.shape[0][0], div.shape[0][1], div.shape[0][2][0]), div.shape[1], (div.shape[0][2][1], div.shape[2])),
        stride=((div.stride[0][0], div.stride[0][1], div.stride[0][2][0]), div.stride[1],
                (div.stride[0][2][1], div.stride[2])))
    return cute.make_tensor(t.iterator, lay)


@cute.jit
def wgmma(tiled_mma, acc, frag_a, frag_b, zero_init: cutlass.Constexpr, wait: cutlass.Constexpr):
    """Issue ``acc (+)= A B`` over the k slices as one wgmma group; wait until ``wait`` groups are pending
    (``wait < 0``: do not wait)."""
    warpgroup.fence()
    atom = cute.make_mma_atom(tiled_mma.op)
    atom.set(warpgroup.Field.ACCUMULATE, not zero_init)
    for k in cutlass.range_constexpr(cute.size(frag_a.shape[2])):
        cute.gemm(atom, acc, frag_a[None, None, k], frag_b[None, None, k], acc)
        atom.set(warpgroup.Field.ACCUMULATE, True)
    warpgroup.commit_group()
    if cutlass.const_expr(wait >= 0):
        warpgroup.wait_group(wait)


@cute.jit
def softmax_step(sm: OnlineSoftmax, acc_s_mn, corr):
    """Fold a chunk of scores in (base 2): new row max, ``P = exp2(S * scale - max * scale)`` over S, row sums;
    the O correction ``exp2((old max - new max) * scale)`` goes to ``corr`` (applied once the in-flight P V
    wgmma of the previous chunk is done). Fully masked rows so far use max 0, so they contribute exactly 0."""
    for rr in cutlass.range_constexpr(sm.n_rows):
        corr[rr] = sm.fold_row(acc_s_mn, rr)


@cute.jit
def _rescale(acc_o_mn, corr, n_rows: cutlass.Constexpr):
    for rr in cutlass.range_constexpr(n_rows):
        acc_o_mn[rr, None] = acc_o_mn[rr, None].load() * corr[rr]


@cute.jit
def wg_sync(wg):
    cute.arch.barrier(barrier_id=BAR_WG + wg, number_of_threads=WG_THREADS)


@dataclass(frozen=True)
class ConsumerSetup:
    """A consumer thread's wgmma fragments, accumulators, coordinates and softmax state (frozen: read-only to
    the DSL; the tensors it holds are written in place)."""

    mma_qk: Any
    mma_pv: Any
    rQ: Any
    rK: Any
    rVt: Any
    rP: Any
    acc_O: Any
    shape_S: Any
    tScS: Any
    t0ScS: Any
    tOcO: Any
    softmax: Any
    corr: Any

    @staticmethod
    def create(cfg, sm, ctid, wg, scale_log2) -> "ConsumerSetup":
        tm, tn, D = cfg.tile_m, cfg.tile_n, cfg.D
        mma_qk, mma_pv = cfg.tiled_mmas()
        wg_qk = mma_qk.get_slice(wg * WG_THREADS)
        wg_pv = mma_pv.get_slice(wg * WG_THREADS)
        cS = cute.make_identity_tensor((tm, tn))
        tScS = mn_view(mma_qk.get_slice(ctid).partition_C(cS))
        n_rows = cute.size(tScS, mode=[0])
        return ConsumerSetup(
            mma_qk=mma_qk, mma_pv=mma_pv,
            rQ=wg_qk.make_fragment_A(wg_qk.partition_A(sm.sQ)),
            rK=wg_qk.make_fragment_B(wg_qk.partition_B(sm.sK)),
            rVt=wg_pv.make_fragment_B(wg_pv.partition_B(sm.sVt)),
            rP=wg_pv.make_fragment_A(wg_pv.partition_shape_A((tm, tn))),
            acc_O=cute.make_rmem_tensor(wg_pv.partition_shape_C((tm, D)), Float32),
            shape_S=wg_qk.partition_shape_C((tm, tn)),
            tScS=tScS,
            t0ScS=mn_view(mma_qk.get_slice(0).partition_C(cS)),
            tOcO=mn_view(mma_pv.get_slice(ctid).partition_C(cute.make_identity_tensor((tm, D)))),
            softmax=OnlineSoftmax.create(n_rows, scale_log2),
            corr=cute.make_rmem_tensor(n_rows, Float32),
        )


@cute.jit
def _mask_scores(mask: ElementMask, cs: ConsumerSetup, acc_s_mn, partial, k_start, k_len):
    """Mask a chunk of scores (``(rows, cols)`` view): the element mask on partial chunks, the ``k_len`` tail on
    full ones (also used by the pooling kernel, ``_attention_pool_sm90_impl``)."""
    col0 = cs.tScS[0, 0][1]
    if partial:
        mask.apply_partial(acc_s_mn, cs.tScS, cs.t0ScS, col0, k_start, k_len)
    else:
        mask.apply_tail(acc_s_mn, cs.t0ScS, col0, k_len)


@cute.jit
def _mask_softmax(mask: ElementMask, cs: ConsumerSetup, acc_S, partial, k_start, k_len, drop):
    """Mask a chunk of scores (a partial chunk: with its row-half ``drop`` bits) and fold it into the online
    softmax. Each branch ends with its own copy of the
    softmax: the join (where the caller waits for the in-flight P V wgmma) then comes after the softmax. With one
    softmax after the join, ptxas scheduled that wait (``WARPGROUP.DEPBAR``) at the top of the join block, ahead of
    the whole softmax, and the softmax of S(n) no longer overlapped P(n-1) V(n-1)."""
    acc_s_mn = mn_view(acc_S)
    col0 = cs.tScS[0, 0][1]
    if partial:
        mask.apply_partial(acc_s_mn, cs.tScS, cs.t0ScS, col0, k_start, k_len, drop)
        softmax_step(cs.softmax, acc_s_mn, cs.corr)
    else:
        mask.apply_tail(acc_s_mn, cs.t0ScS, col0, k_len)
        softmax_step(cs.softmax, acc_s_mn, cs.corr)


@cute.jit
def _chunk_mask_inputs(p, mask: ElementMask, tile: WorkTile, seq, ci, wtid, wg, first: cutlass.Constexpr):
    """:func:`_chunk_keys_mask_inputs` with chunk ``ci``'s keys read from the chunk list (used by the pooling
    kernel, ``_attention_pool_sm90_impl``)."""
    k_start, k_len = read_chunk(p.chunks, tile.chunk_begin + ci)
    _chunk_keys_mask_inputs(p, mask, tile, seq, ci, k_start, k_len, wtid, wg, first)


@cute.jit
def _chunk_keys_mask_inputs(p, mask: ElementMask, tile: WorkTile, seq, ci, k_start, k_len, wtid, wg,
                            first: cutlass.Constexpr):
    """Partial chunk ``ci`` (keys ``k_start .. k_start + k_len - 1``) with document / token masks: its per-key
    inputs -> this warpgroup's shared memory, between barriers (the previous chunk's readers are done; this chunk's
    readers wait)."""
    if tile.is_partial(ci) & (p.mask_flags != 0):
        if cutlass.const_expr(not first):
            wg_sync(wg)
        mask.load_chunk(wtid, seq, k_start, k_len)
        wg_sync(wg)


@cute.jit
def _read_chunk_clamped(p, tile: WorkTile, ci):
    """``(k_start, k_len)`` of chunk ``min(ci, n_chunks - 1)`` of the tile (a prefetch one chunk ahead never reads
    past the tile's run)."""
    return read_chunk(p.chunks, tile.chunk_begin + cutlass.min(ci, tile.n_chunks - 1))


@cute.jit
def _read_chunk_rows_clamped(p, tile: WorkTile, ci):
    """:func:`_read_chunk_clamped` with the chunk's row-half drop bits: ``(k_start, k_len, drop)``."""
    return read_chunk_rows(p.chunks, tile.chunk_begin + cutlass.min(ci, tile.n_chunks - 1))


@cute.jit
def first_turn(wg):
    """Ping-pong start: warpgroup 0 holds the first turn."""
    if cutlass.const_expr(PINGPONG):
        if wg == 0:
            cute.arch.barrier_arrive(barrier_id=BAR_TURN, number_of_threads=2 * WG_THREADS)


@cute.jit
def _turn_wait(wg):
    if cutlass.const_expr(PINGPONG):
        cute.arch.barrier(barrier_id=BAR_TURN + wg, number_of_threads=2 * WG_THREADS)


@cute.jit
def _turn_pass(wg):
    if cutlass.const_expr(PINGPONG):
        cute.arch.barrier_arrive(barrier_id=BAR_TURN + 1 - wg, number_of_threads=2 * WG_THREADS)


@cute.jit
def _half_live(drop, wg):
    """Does warpgroup ``wg`` compute anything in a chunk with row-half ``drop`` bits? (Its row half is dropped
    whole when both of its quarters are: bits ``wg`` and ``2 + wg``; a chunk no wider than ``tile_n / 2`` carries
    its key half 0 bits in both key halves.)"""
    return ((drop >> wg) & _HALF_BITS) != _HALF_BITS


@cute.jit
def tile_mainloop(cfg, p, cs: ConsumerSetup, mask: ElementMask, pipes, q_state, kv_state,
                   tile: WorkTile, seq, wtid, wg):
    """The chunks of one tile: S(0); then for each next chunk S(n) and P(n-1) V(n-1) in flight together, the
    softmax of S(n) while P V runs; finally P(last) V(last). Each chunk's ``(k_start, k_len)`` is read one chunk
    ahead (a global load right before its use stalled every chunk at the top of the loop).

    A chunk whose drop bits drop this warpgroup's whole row half (a half pair of tile pairing where the other
    member keeps the keys) costs this warpgroup no wgmma: S(n), its softmax and P(n) V(n) are skipped (all its
    scores would be masked: the softmax state would not change and P would be 0). The K / V waits and releases and
    the ping-pong turns stay in the same order for every chunk, so the other warpgroup and the producer see the
    same protocol; the other warpgroup gets the tensor cores for that turn."""
    pipe_q, pipe_k, pipe_v = pipes
    acc_O_mn = mn_view(cs.acc_O)
    n_rows = cs.softmax.n_rows
    k_start, k_len, drop = read_chunk_rows(p.chunks, tile.chunk_begin)
    nk_start, nk_len, n_drop = _read_chunk_rows_clamped(p, tile, 1)
    pipe_q.consumer_wait(q_state)
    _chunk_keys_mask_inputs(p, mask, tile, seq, 0, k_start, k_len, wtid, wg, True)
    pipe_k.consumer_wait(kv_state)
    live_p = _half_live(drop, wg)
    if live_p:
        acc_S = cute.make_rmem_tensor(cs.shape_S, Float32)
        wgmma(cs.mma_qk, acc_S, cs.rQ, cs.rK[None, None, None, kv_state.index], True, 0)
        pipe_k.consumer_release(kv_state)
        _mask_softmax(mask, cs, acc_S, tile.is_partial(0), k_start, k_len, drop)
        cs.rP.store(acc_as_operand_a(acc_S).load().to(cfg.dtype))
    else:
        pipe_k.consumer_release(kv_state)
    for ci in cutlass.range(1, tile.n_chunks, unroll=1):
        prev = kv_state.clone()
        kv_state.advance()
        k_start, k_len, drop = nk_start, nk_len, n_drop
        nk_start, nk_len, n_drop = _read_chunk_rows_clamped(p, tile, ci + 1)
        _chunk_keys_mask_inputs(p, mask, tile, seq, ci, k_start, k_len, wtid, wg, False)
        live = _half_live(drop, wg)
        pipe_k.consumer_wait(kv_state)
        _turn_wait(wg)
        if live:
            acc_S = cute.make_rmem_tensor(cs.shape_S, Float32)
            wgmma(cs.mma_qk, acc_S, cs.rQ, cs.rK[None, None, None, kv_state.index], True, -1)
            pipe_v.consumer_wait(prev)
            if live_p:  # S(ci) and P V(ci-1) overlap the softmax (the common path)
                wgmma(cs.mma_pv, cs.acc_O, cs.rP, cs.rVt[None, None, None, prev.index], False, -1)
                _turn_pass(wg)
                warpgroup.wait_group(1)  # S(ci) done, P V still running
                pipe_k.consumer_release(kv_state)
                _mask_softmax(mask, cs, acc_S, tile.is_partial(ci), k_start, k_len, drop)
                warpgroup.wait_group(0)
                pipe_v.consumer_release(prev)
                cs.rP.store(acc_as_operand_a(acc_S).load().to(cfg.dtype))
                _rescale(acc_O_mn, cs.corr, n_rows)
            else:  # P(ci-1) is all zero: S(ci) alone
                _turn_pass(wg)
                warpgroup.wait_group(0)
                pipe_k.consumer_release(kv_state)
                _mask_softmax(mask, cs, acc_S, tile.is_partial(ci), k_start, k_len, drop)
                pipe_v.consumer_release(prev)
                cs.rP.store(acc_as_operand_a(acc_S).load().to(cfg.dtype))
                _rescale(acc_O_mn, cs.corr, n_rows)
        else:
            if live_p:  # this warpgroup's rows keep no key of chunk ci: only P V(ci-1)
                pipe_v.consumer_wait(prev)
                wgmma(cs.mma_pv, cs.acc_O, cs.rP, cs.rVt[None, None, None, prev.index], False, -1)
                _turn_pass(wg)
                pipe_k.consumer_release(kv_state)
                warpgroup.wait_group(0)
            else:
                _turn_pass(wg)
                pipe_k.consumer_release(kv_state)
                pipe_v.consumer_wait(prev)  # (the stage's V load must land before the stage is released)
            pipe_v.consumer_release(prev)
        live_p = live
    pipe_q.consumer_release(q_state)
    q_state.advance()
    pipe_v.consumer_wait(kv_state)
    if live_p:
        wgmma(cs.mma_pv, cs.acc_O, cs.rP, cs.rVt[None, None, None, kv_state.index], False, 0)
    pipe_v.consumer_release(kv_state)
    kv_state.advance()
    return q_state, kv_state


@cute.jit
def tile_mainloop_plain(cfg, p, cs: ConsumerSetup, mask: ElementMask, pipes, q_state, kv_state,
                         tile: WorkTile, seq, wtid, wg):
    """Debug build: each chunk's S, mask, softmax, O rescale and P V one after the other (no overlap, no turns)."""
    pipe_q, pipe_k, pipe_v = pipes
    acc_O_mn = mn_view(cs.acc_O)
    pipe_q.consumer_wait(q_state)
    for ci in cutlass.range(tile.n_chunks, unroll=1):
        k_start, k_len, drop = read_chunk_rows(p.chunks, tile.chunk_begin + ci)
        if ci > 0:
            _chunk_keys_mask_inputs(p, mask, tile, seq, ci, k_start, k_len, wtid, wg, False)
        else:
            _chunk_keys_mask_inputs(p, mask, tile, seq, ci, k_start, k_len, wtid, wg, True)
        pipe_k.consumer_wait(kv_state)
        acc_S = cute.make_rmem_tensor(cs.shape_S, Float32)
        wgmma(cs.mma_qk, acc_S, cs.rQ, cs.rK[None, None, None, kv_state.index], True, 0)
        pipe_k.consumer_release(kv_state)
        _mask_softmax(mask, cs, acc_S, tile.is_partial(ci), k_start, k_len, drop)
        _rescale(acc_O_mn, cs.corr, cs.softmax.n_rows)
        cs.rP.store(acc_as_operand_a(acc_S).load().to(cfg.dtype))
        pipe_v.consumer_wait(kv_state)
        wgmma(cs.mma_pv, cs.acc_O, cs.rP, cs.rVt[None, None, None, kv_state.index], False, 0)
        pipe_v.consumer_release(kv_state)
        kv_state.advance()
    pipe_q.consumer_release(q_state)
    q_state.advance()
    return q_state, kv_state
