"""CuTe DSL source of the split-KV combine kernel (see merge_states.py). Build time only."""

from __future__ import annotations

import cutlass
import cutlass.cute as cute
from cutlass import Float32, Int32, Int64

from varblock.kernels._dsl import dsl_dtype, fake_pointer
from varblock.kernels.merge_states import THREADS, WARPS
from varblock.kernels.registry import Variant


def make_host(variant: Variant):
    """Trace-ready host function for one merge_states variant, and its compile arguments."""
    t_in = dsl_dtype(variant.key["in_dtype"])
    t_out = dsl_dtype(variant.key["out_dtype"])

    @cute.kernel
    def merge_kernel(out_parts: cute.Pointer, lse_parts: cute.Pointer, out: cute.Pointer, lse: cute.Pointer,
                     num_splits: Int32, total_q: Int32, num_heads: Int32, head_dim: Int32,
                     op_stride_s: Int64, op_stride_t: Int64, op_stride_h: Int64,
                     lp_stride_s: Int64, lp_stride_h: Int64, lp_stride_t: Int64,
                     o_stride_t: Int64, o_stride_h: Int64, l_stride_h: Int64, l_stride_t: Int64):
        tidx, _, _ = cute.arch.thread_idx()
        bidx, _, _ = cute.arch.block_idx()
        lane = tidx % 32
        row = bidx * WARPS + tidx // 32
        g_op = cute.make_tensor(out_parts, cute.make_layout(
            (num_splits, total_q, num_heads, head_dim), stride=(op_stride_s, op_stride_t, op_stride_h, 1)))
        g_lp = cute.make_tensor(lse_parts, cute.make_layout(
            (num_splits, num_heads, total_q), stride=(lp_stride_s, lp_stride_h, lp_stride_t)))
        g_o = cute.make_tensor(out, cute.make_layout(
            (total_q, num_heads, head_dim), stride=(o_stride_t, o_stride_h, 1)))
        g_l = cute.make_tensor(lse, cute.make_layout((num_heads, total_q), stride=(l_stride_h, l_stride_t)))
        if row < total_q * num_heads:
            tok = row // num_heads
            head = row % num_heads
            # row max over the splits (lanes stride over S, then a butterfly reduction)
            m = -Float32.inf
            for s in cutlass.range(lane, num_splits, 32):
                m = cute.arch.fmax(m, g_lp[s, head, tok])
            for i in cutlass.range_constexpr(5):
                m = cute.arch.fmax(m, cute.arch.shuffle_sync_bfly(m, offset=1 << i))
            if m == -Float32.inf:
                for d in cutlass.range(lane, head_dim, 32):
                    g_o[tok, head, d] = t_out(0.0)
                if lane == 0:
                    g_l[head, tok] = -Float32.inf
            else:
                total = Float32(0.0)
                for s in cutlass.range(lane, num_splits, 32):
                    total += cute.math.exp(g_lp[s, head, tok] - m)
                for i in cutlass.range_constexpr(5):
                    total += cute.arch.shuffle_sync_bfly(total, offset=1 << i)
                inv_total = Float32(1.0) / total
                for d in cutlass.range(lane, head_dim, 32):
                    acc = Float32(0.0)
                    for s in cutlass.range(num_splits):
                        w = cute.math.exp(g_lp[s, head, tok] - m)
                        acc += w * g_op[s, tok, head, d].to(Float32)
                    g_o[tok, head, d] = (acc * inv_total).to(t_out)
                if lane == 0:
                    g_l[head, tok] = m + cute.math.log(total)

    merge_kernel.set_name_prefix(f"vb_{variant.name}", remove_cutlass_symbol=True, keep_mangled_name=False)

    @cute.jit
    def host(out_parts: cute.Pointer, lse_parts: cute.Pointer, out: cute.Pointer, lse: cute.Pointer,
             num_splits: Int32, total_q: Int32, num_heads: Int32, head_dim: Int32,
             op_stride_s: Int64, op_stride_t: Int64, op_stride_h: Int64,
             lp_stride_s: Int64, lp_stride_h: Int64, lp_stride_t: Int64,
             o_stride_t: Int64, o_stride_h: Int64, l_stride_h: Int64, l_stride_t: Int64):
        merge_kernel(out_parts, lse_parts, out, lse, num_splits, total_q, num_heads, head_dim,
                     op_stride_s, op_stride_t, op_stride_h, lp_stride_s, lp_stride_h, lp_stride_t,
                     o_stride_t, o_stride_h, l_stride_h, l_stride_t).launch(
            grid=[(total_q * num_heads + WARPS - 1) // WARPS, 1, 1], block=[THREADS, 1, 1])

    al = {p.name: p.align for p in variant.params}
    args = (fake_pointer(t_in, al["out_parts"]), fake_pointer(Float32, 4), fake_pointer(t_out, al["out"]),
            fake_pointer(Float32, 4),
            *[Int32(1)] * 4, *[Int64(1)] * 10)
    return host, args
