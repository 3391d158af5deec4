"""CuTe DSL source of the split-KV combine kernel (see merge_states.py). Build time only."""

# (no `from __future__ import annotations`: the DSL reads annotations as objects)
from types import SimpleNamespace

import cutlass
import cutlass.cute as cute
from cutlass import Float32

from varblock.kernels._dsl import dsl_dtype
from varblock.kernels.common.signature import fake_args, jit_host
from varblock.kernels.common.warp_reduce import warp_fmax, warp_sum
from varblock.kernels.merge_states import THREADS, WARPS
from varblock.kernels.registry import Variant


def make_host(variant: Variant):
    """Trace-ready host function for one merge_states variant, and its compile arguments."""
    t_in = dsl_dtype(variant.key["in_dtype"])
    t_out = dsl_dtype(variant.key["out_dtype"])

    @cute.kernel
    def merge_kernel(p: SimpleNamespace):
        tidx, _, _ = cute.arch.thread_idx()
        bidx, _, _ = cute.arch.block_idx()
        lane = tidx % 32
        row = bidx * WARPS + tidx // 32
        g_op = cute.make_tensor(p.out_parts, cute.make_layout((p.num_splits, p.total_q, p.num_heads, p.head_dim),
                                                              stride=(p.op_stride_s, p.op_stride_t, p.op_stride_h, 1)))
        g_lp = cute.make_tensor(p.lse_parts, cute.make_layout(
            (p.num_splits, p.num_heads, p.total_q), stride=(p.lp_stride_s, p.lp_stride_h, p.lp_stride_t)))
        g_o = cute.make_tensor(p.out, cute.make_layout(
            (p.total_q, p.num_heads, p.head_dim), stride=(p.o_stride_t, p.o_stride_h, 1)))
        g_l = cute.make_tensor(p.lse, cute.make_layout((p.num_heads, p.total_q), stride=(p.l_stride_h, p.l_stride_t)))
        if row < p.total_q * p.num_heads:
            tok = row // p.num_heads
            head = row % p.num_heads
            # row max over the splits (lanes stride over S, then a butterfly reduction)
            m = -Float32.inf
            for s in cutlass.range(lane, p.num_splits, 32):
                m = cute.arch.fmax(m, g_lp[s, head, tok])
            m = warp_fmax(m)
            if m == -Float32.inf:
                for d in cutlass.range(lane, p.head_dim, 32):
                    g_o[tok, head, d] = t_out(0.0)
                if lane == 0:
                    g_l[head, tok] = -Float32.inf
            else:
                total = Float32(0.0)
                for s in cutlass.range(lane, p.num_splits, 32):
                    total += cute.math.exp(g_lp[s, head, tok] - m)
                total = warp_sum(total)
                inv_total = Float32(1.0) / total
                for d in cutlass.range(lane, p.head_dim, 32):
                    acc = Float32(0.0)
                    for s in cutlass.range(p.num_splits):
                        w = cute.math.exp(g_lp[s, head, tok] - m)
                        acc += w * g_op[s, tok, head, d].to(Float32)
                    g_o[tok, head, d] = (acc * inv_total).to(t_out)
                if lane == 0:
                    g_l[head, tok] = m + cute.math.log(total)

    merge_kernel.set_name_prefix(f"vb_{variant.name}", remove_cutlass_symbol=True, keep_mangled_name=False)

    def launch(p: SimpleNamespace):
        merge_kernel(p).launch(grid=[(p.total_q * p.num_heads + WARPS - 1) // WARPS, 1, 1], block=[THREADS, 1, 1])

    host = jit_host(variant.params, launch, name=f"host_{variant.name}")
    return host, fake_args(variant.params, {"out_parts": t_in, "lse_parts": Float32, "out": t_out, "lse": Float32})
