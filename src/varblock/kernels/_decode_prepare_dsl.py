"""CuTe DSL source of the ``decode_prepare`` kernel (see decode_prepare.py). Build time only.

Exactness: every formula mirrors ``varblock.decode_plan.fixed.fixed_worklist`` (the NumPy twin); change both.
"""

# (no `from __future__ import annotations`: the DSL reads annotations as objects)
from types import SimpleNamespace

import cutlass
import cutlass.cute as cute
from cutlass import Int32, Int64

from varblock.decode_plan import abi
from varblock.decode_plan.fixed import ERR_CAPACITY, STATUS_ERROR, STATUS_NUM_ITEMS
from varblock.kernels.common.signature import fake_args, jit_host
from varblock.kernels.decode_prepare import THREADS
from varblock.kernels.registry import Variant


@cute.jit
def _kv_len(p: SimpleNamespace, b: Int32) -> Int32:
    """KV length of sequence ``b``: ``kv_lens[b]``, or ``cu_seqlens_k[b + 1] - cu_seqlens_k[b]``."""
    kv = Int32(0)
    if p.kv_lens.toint() != Int64(0):
        kv = p.kv_lens[b]
    else:
        kv = p.cu_seqlens_k[b + 1] - p.cu_seqlens_k[b]
    return kv


@cute.jit
def _count(p: SimpleNamespace, b: Int32, h: Int32) -> Int32:
    """Listed blocks of group (b, h), before clamping to ``topk``."""
    cnt = p.topk
    if p.block_cnt.toint() != Int64(0):
        cnt = p.block_cnt[Int64(b) * p.bc_stride_b + Int64(h) * p.bc_stride_h]
    return cnt


@cute.kernel
def _prepare_kernel(p: SimpleNamespace):
    tidx, _, _ = cute.arch.thread_idx()
    bidx, _, _ = cute.arch.block_idx()
    i = Int32(bidx) * THREADS + Int32(tidx)
    tn = p.tile_n
    hkv = p.num_heads_kv
    dense = p.block_idx.toint() == Int64(0)
    cpb = (p.block_size + tn - 1) // tn
    if i == 0:
        p.status[STATUS_NUM_ITEMS] = p.num_items

    # ---------------------------------------------------------------- chunk slot i
    if i < p.num_groups * p.chunk_cap:
        g = i // p.chunk_cap
        c = i - g * p.chunk_cap
        b = g // hkv
        h = g - b * hkv
        kv = _kv_len(p, b)
        ks = Int32(0)
        kl = Int32(0)
        if dense:
            n = (kv + tn - 1) // tn
            if n > p.chunk_cap and c == 0:
                p.status[STATUS_ERROR] = Int32(ERR_CAPACITY)
            if c < n:
                ks = c * tn
                kl = cutlass.min(tn, kv - ks)
        else:
            cnt = _count(p, b, h)
            if (cnt > p.topk or cnt < 0) and c == 0:
                p.status[STATUS_ERROR] = Int32(ERR_CAPACITY)
            cnt = cutlass.max(cutlass.min(cnt, p.topk), Int32(0))
            kk = c // cpb
            piece = c - kk * cpb
            if kk < cnt:
                blk = p.block_idx[Int64(b) * p.bi_stride_b + Int64(h) * p.bi_stride_h + Int64(kk)]
                if blk >= 0:
                    s0 = blk * p.block_size + piece * tn
                    ln = cutlass.min(cutlass.min(tn, p.block_size - piece * tn), kv - s0)
                    if ln > 0:
                        ks = s0
                        kl = ln
        o = Int64(i) * abi.CHUNK_WIDTH
        p.chunks[o + abi.CHUNK_K_START] = ks
        p.chunks[o + abi.CHUNK_K_LEN] = kl
        p.chunks[o + abi.CHUNK_HEAD_MASK] = Int32(abi.HEAD_MASK_ALL)

    # ---------------------------------------------------------------- item i
    if i < p.num_items:
        s = i % p.splits
        rt = (i // p.splits) % p.row_tiles
        g = i // (p.splits * p.row_tiles)
        b = g // hkv
        h = g - b * hkv
        kv = _kv_len(p, b)
        n = Int32(0)
        if dense:
            n = cutlass.min((kv + tn - 1) // tn, p.chunk_cap)
        else:
            n = cutlass.max(cutlass.min(_count(p, b, h), p.topk), Int32(0)) * cpb
        n_q = p.cu_seqlens_q[b + 1] - p.cu_seqlens_q[b]
        nc = Int32(0)
        if rt * p.tile_m < n_q * p.group_size:
            nc = n
        lo = s * nc // p.splits
        hi = (s + 1) * nc // p.splits
        o = Int64(i) * abi.ITEM_WIDTH
        p.items[o + abi.ITEM_BATCH] = b
        p.items[o + abi.ITEM_KV_HEAD] = h
        p.items[o + abi.ITEM_ROW_START] = rt * p.tile_m
        p.items[o + abi.ITEM_CHUNK_BEGIN] = g * p.chunk_cap + lo
        p.items[o + abi.ITEM_N_CHUNKS] = hi - lo
        slot = Int32(0)
        base = Int32(0)
        if p.splits > 1:
            slot = i
            base = i - s
        p.items[o + abi.ITEM_SLOT] = slot
        p.items[o + abi.ITEM_SLOT_BASE] = base
        p.items[o + abi.ITEM_NUM_SPLITS] = p.splits
        p.items[o + abi.ITEM_KV_LEN] = kv


def make_host(variant: Variant):
    """Trace-ready host function for the decode_prepare variant, and its compile arguments."""
    _prepare_kernel.set_name_prefix(f"vb_{variant.name}", remove_cutlass_symbol=True, keep_mangled_name=False)

    def launch(p: SimpleNamespace):
        n = cutlass.max(p.num_groups * p.chunk_cap, p.num_items)
        _prepare_kernel(p).launch(grid=[(n + THREADS - 1) // THREADS, 1, 1], block=[THREADS, 1, 1])

    return jit_host(variant.params, launch, name=f"host_{variant.name}"), fake_args(variant.params)
