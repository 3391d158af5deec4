"""CuTe DSL source of the backward's pre- and post-processing kernels (see ``attention_bwd_mma.py``). Build time only.

Both are memory-bound row kernels: one warp per row, lanes stride over the head dimension (coalesced), every
shape and stride a runtime value.
"""

from __future__ import annotations

import math

import cutlass
import cutlass.cute as cute
from cutlass import Float32, Int32, Int64

from varblock.kernels._dsl import dsl_dtype

_LOG2E = math.log2(math.e)


def make_preprocess(name: str, dtype_name: str, warps: int):
    """``dpsum = rowsum(dO * O)``, ``lse_log2 = LSE * log2(e)`` (``+inf`` for ``-inf``), dQ accumulator row = 0.
    ``dtype_name`` is the dtype of ``out`` / ``dout`` (the pointer arguments carry it)."""

    @cute.kernel
    def kernel(out: cute.Pointer, dout: cute.Pointer, lse: cute.Pointer, lse_log2: cute.Pointer,
               dpsum: cute.Pointer, dq_accum: cute.Pointer, o_stride_tok: Int64, o_stride_head: Int64,
               do_stride_tok: Int64, do_stride_head: Int64, lse_stride_head: Int64, stat_stride_head: Int64,
               total_q: Int32, num_heads_q: Int32, head_dim: Int32):
        tidx, _, _ = cute.arch.thread_idx()
        bidx, _, _ = cute.arch.block_idx()
        lane = tidx % 32
        row = Int64(bidx) * warps + tidx // 32
        if row < Int64(total_q) * Int64(num_heads_q):
            tok = row // Int64(num_heads_q)
            head = row - tok * Int64(num_heads_q)
            o_base = tok * o_stride_tok + head * o_stride_head
            do_base = tok * do_stride_tok + head * do_stride_head
            acc_base = (head * Int64(total_q) + tok) * Int64(head_dim)  # dq_accum [Hq, total_q, D]
            acc = Float32(0.0)
            for d in cutlass.range(lane, head_dim, 32):
                acc += out[o_base + Int64(d)].to(Float32) * dout[do_base + Int64(d)].to(Float32)
                dq_accum[acc_base + Int64(d)] = Float32(0.0)
            for i in cutlass.range_constexpr(5):
                acc += cute.arch.shuffle_sync_bfly(acc, offset=1 << i)
            if lane == 0:
                lv = lse[head * lse_stride_head + tok]
                stat = head * stat_stride_head + tok
                dpsum[stat] = acc
                lse_log2[stat] = Float32.inf if lv == -Float32.inf else lv * Float32(_LOG2E)

    kernel.set_name_prefix(f"vb_{name}", remove_cutlass_symbol=True, keep_mangled_name=False)

    @cute.jit
    def host(out: cute.Pointer, dout: cute.Pointer, lse: cute.Pointer, lse_log2: cute.Pointer, dpsum: cute.Pointer,
             dq_accum: cute.Pointer, o_stride_tok: Int64, o_stride_head: Int64, do_stride_tok: Int64,
             do_stride_head: Int64, lse_stride_head: Int64, stat_stride_head: Int64, total_q: Int32,
             num_heads_q: Int32, head_dim: Int32):
        kernel(out, dout, lse, lse_log2, dpsum, dq_accum, o_stride_tok, o_stride_head, do_stride_tok,
               do_stride_head, lse_stride_head, stat_stride_head, total_q, num_heads_q, head_dim).launch(
            grid=[(total_q * num_heads_q + warps - 1) // warps, 1, 1], block=[32 * warps, 1, 1])

    return host


def make_postprocess(name: str, dtype_name: str, warps: int):
    """``dq = scale * dq_accum``; ``dk = scale * sum_g dk_accum``, ``dv = sum_g dv_accum`` over the accumulator
    heads of each KV head; converted to the output dtype."""
    dtype = dsl_dtype(dtype_name)

    @cute.kernel
    def kernel(dq_accum: cute.Pointer, dk_accum: cute.Pointer, dv_accum: cute.Pointer, dq: cute.Pointer,
               dk: cute.Pointer, dv: cute.Pointer, dq_stride_tok: Int64, dq_stride_head: Int64, dk_stride_tok: Int64,
               dk_stride_head: Int64, dv_stride_tok: Int64, dv_stride_head: Int64, total_q: Int32, total_k: Int32,
               num_heads_q: Int32, num_heads_kv: Int32, num_tile_heads: Int32, head_dim: Int32,
               softmax_scale: Float32):
        tidx, _, _ = cute.arch.thread_idx()
        bidx, _, _ = cute.arch.block_idx()
        lane = tidx % 32
        row = Int64(bidx) * warps + tidx // 32
        rows_q = Int64(total_q) * Int64(num_heads_q)
        if row < rows_q:
            tok = row // Int64(num_heads_q)
            head = row - tok * Int64(num_heads_q)
            dst = tok * dq_stride_tok + head * dq_stride_head
            src = (head * Int64(total_q) + tok) * Int64(head_dim)  # dq_accum [Hq, total_q, D]
            for d in cutlass.range(lane, head_dim, 32):
                dq[dst + Int64(d)] = (dq_accum[src + Int64(d)] * softmax_scale).to(dtype)
        elif row < rows_q + Int64(total_k) * Int64(num_heads_kv):
            r = row - rows_q
            tok = r // Int64(num_heads_kv)
            head = r - tok * Int64(num_heads_kv)
            group = num_tile_heads // num_heads_kv
            src0 = (tok * Int64(num_tile_heads) + head * Int64(group)) * Int64(head_dim)
            k_dst = tok * dk_stride_tok + head * dk_stride_head
            v_dst = tok * dv_stride_tok + head * dv_stride_head
            for d in cutlass.range(lane, head_dim, 32):
                sk = Float32(0.0)
                sv = Float32(0.0)
                for g in cutlass.range(group, unroll=1):
                    off = src0 + Int64(g) * Int64(head_dim) + Int64(d)
                    sk += dk_accum[off]
                    sv += dv_accum[off]
                dk[k_dst + Int64(d)] = (sk * softmax_scale).to(dtype)
                dv[v_dst + Int64(d)] = sv.to(dtype)

    kernel.set_name_prefix(f"vb_{name}", remove_cutlass_symbol=True, keep_mangled_name=False)

    @cute.jit
    def host(dq_accum: cute.Pointer, dk_accum: cute.Pointer, dv_accum: cute.Pointer, dq: cute.Pointer,
             dk: cute.Pointer, dv: cute.Pointer, dq_stride_tok: Int64, dq_stride_head: Int64, dk_stride_tok: Int64,
             dk_stride_head: Int64, dv_stride_tok: Int64, dv_stride_head: Int64, total_q: Int32, total_k: Int32,
             num_heads_q: Int32, num_heads_kv: Int32, num_tile_heads: Int32, head_dim: Int32,
             softmax_scale: Float32):
        kernel(dq_accum, dk_accum, dv_accum, dq, dk, dv, dq_stride_tok, dq_stride_head, dk_stride_tok,
               dk_stride_head, dv_stride_tok, dv_stride_head, total_q, total_k, num_heads_q, num_heads_kv,
               num_tile_heads, head_dim, softmax_scale).launch(
            grid=[(total_q * num_heads_q + total_k * num_heads_kv + warps - 1) // warps, 1, 1],
            block=[32 * warps, 1, 1])

    return host
