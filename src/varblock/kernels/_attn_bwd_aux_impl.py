"""CuTe DSL source of the backward's pre- and post-processing kernels (see ``attention_bwd_mma.py``). Build time only.

Both are memory-bound row kernels: one warp per row, lanes stride over the head dimension in 16-byte vectors of 8
elements (``head_dim`` and the token / head strides of the 16-bit arrays are multiples of 8, every pointer is
16-byte aligned), every shape and stride a runtime value.
"""

# (no `from __future__ import annotations`: the DSL reads the kernel's annotations as objects)
from collections.abc import Sequence
from types import SimpleNamespace

import cutlass
import cutlass.cute as cute
from cutlass import Float32, Int64

from varblock.abi import LOG2E
from varblock.kernels._dsl import dsl_dtype
from varblock.kernels.common.signature import jit_host
from varblock.kernels.common.warp_reduce import warp_sum

_VEC = 8  #: elements per lane and step


def _vec(ptr, off):
    """The 8 consecutive elements at ``ptr + off`` (``off`` a multiple of 8) as a tensor."""
    return cute.make_tensor(ptr + cute.assume(off, divby=_VEC), cute.make_layout(_VEC))


def _lane_and_row(warps: int):
    """This thread's lane and the row its warp handles (one warp per row, ``warps`` rows per CTA)."""
    tidx, _, _ = cute.arch.thread_idx()
    bidx, _, _ = cute.arch.block_idx()
    return tidx % 32, Int64(bidx) * warps + tidx // 32


def make_preprocess(name: str, params: Sequence, dtype_name: str, warps: int):
    """``dpsum = rowsum(dO * O)``, ``lse_log2 = LSE * log2(e)`` (``+inf`` for ``-inf``), dQ accumulator row = 0.
    ``dtype_name`` is the dtype of ``out`` / ``dout``."""
    dtype = dsl_dtype(dtype_name)

    @cute.kernel
    def kernel(p: SimpleNamespace):
        lane, row = _lane_and_row(warps)
        ld16 = cute.make_copy_atom(cute.nvgpu.CopyUniversalOp(), dtype, num_bits_per_copy=128)
        st32 = cute.make_copy_atom(cute.nvgpu.CopyUniversalOp(), Float32, num_bits_per_copy=128)
        if row < Int64(p.total_q) * Int64(p.num_heads_q):
            tok = row // Int64(p.num_heads_q)
            head = row - tok * Int64(p.num_heads_q)
            o_base = tok * cute.assume(p.o_stride_tok, divby=_VEC) + head * cute.assume(p.o_stride_head, divby=_VEC)
            do_base = tok * cute.assume(p.do_stride_tok, divby=_VEC) + head * cute.assume(p.do_stride_head, divby=_VEC)
            acc_base = (head * Int64(p.total_q) + tok) * Int64(p.head_dim)  # dq_accum [Hq, total_q, D]
            acc = Float32(0.0)
            ro = cute.make_rmem_tensor(_VEC, dtype)
            rd = cute.make_rmem_tensor(_VEC, dtype)
            zero = cute.make_rmem_tensor(_VEC, Float32)
            zero.fill(0.0)
            for d in cutlass.range(lane * _VEC, p.head_dim, 32 * _VEC):
                cute.copy(ld16, _vec(p.out, o_base + Int64(d)), ro)
                cute.copy(ld16, _vec(p.dout, do_base + Int64(d)), rd)
                prod = ro.load().to(Float32) * rd.load().to(Float32)
                acc += prod.reduce(cute.ReductionOp.ADD, Float32(0.0), 0)
                dst = _vec(p.dq_accum, acc_base + Int64(d))
                for h in cutlass.range_constexpr(2):
                    cute.copy(st32, cute.local_tile(zero, (4,), (h,)), cute.local_tile(dst, (4,), (h,)))
            acc = warp_sum(acc)
            if lane == 0:
                lv = p.lse[head * p.lse_stride_head + tok]
                stat = head * p.stat_stride_head + tok
                p.dpsum[stat] = acc
                p.lse_log2[stat] = Float32.inf if lv == -Float32.inf else lv * Float32(LOG2E)

    kernel.set_name_prefix(f"vb_{name}", remove_cutlass_symbol=True, keep_mangled_name=False)

    def launch(p: SimpleNamespace):
        kernel(p).launch(grid=[(p.total_q * p.num_heads_q + warps - 1) // warps, 1, 1], block=[32 * warps, 1, 1])

    return jit_host(params, launch, name=f"host_{name}")


def make_postprocess(name: str, params: Sequence, dtype_name: str, warps: int):
    """``dq = scale * dq_accum``; ``dk = scale * sum_g dk_accum``, ``dv = sum_g dv_accum`` over the accumulator
    heads of each KV head; converted to the output dtype."""
    dtype = dsl_dtype(dtype_name)

    @cute.kernel
    def kernel(p: SimpleNamespace):
        lane, row = _lane_and_row(warps)
        rows_q = Int64(p.total_q) * Int64(p.num_heads_q)
        ld32 = cute.make_copy_atom(cute.nvgpu.CopyUniversalOp(), Float32, num_bits_per_copy=128)
        st16 = cute.make_copy_atom(cute.nvgpu.CopyUniversalOp(), dtype, num_bits_per_copy=128)
        ra = cute.make_rmem_tensor(_VEC, Float32)
        rb = cute.make_rmem_tensor(_VEC, Float32)
        ro = cute.make_rmem_tensor(_VEC, dtype)
        if row < rows_q:
            tok = row // Int64(p.num_heads_q)
            head = row - tok * Int64(p.num_heads_q)
            dst = tok * cute.assume(p.dq_stride_tok, divby=_VEC) + head * cute.assume(p.dq_stride_head, divby=_VEC)
            src = (head * Int64(p.total_q) + tok) * Int64(p.head_dim)  # dq_accum [Hq, total_q, D]
            for d in cutlass.range(lane * _VEC, p.head_dim, 32 * _VEC):
                s = _vec(p.dq_accum, src + Int64(d))
                for h in cutlass.range_constexpr(2):
                    cute.copy(ld32, cute.local_tile(s, (4,), (h,)), cute.local_tile(ra, (4,), (h,)))
                ro.store((ra.load() * p.softmax_scale).to(dtype))
                cute.copy(st16, ro, _vec(p.dq, dst + Int64(d)))
        elif row < rows_q + Int64(p.total_k) * Int64(p.num_heads_kv):
            r = row - rows_q
            tok = r // Int64(p.num_heads_kv)
            head = r - tok * Int64(p.num_heads_kv)
            group = p.num_tile_heads // p.num_heads_kv
            src0 = (tok * Int64(p.num_tile_heads) + head * Int64(group)) * Int64(p.head_dim)
            k_dst = tok * cute.assume(p.dk_stride_tok, divby=_VEC) + head * cute.assume(p.dk_stride_head, divby=_VEC)
            v_dst = tok * cute.assume(p.dv_stride_tok, divby=_VEC) + head * cute.assume(p.dv_stride_head, divby=_VEC)
            rk = cute.make_rmem_tensor(_VEC, Float32)
            rv = cute.make_rmem_tensor(_VEC, Float32)
            for d in cutlass.range(lane * _VEC, p.head_dim, 32 * _VEC):
                rk.fill(0.0)
                rv.fill(0.0)
                for g in cutlass.range(group, unroll=1):
                    off = src0 + Int64(g) * Int64(p.head_dim) + Int64(d)
                    sk = _vec(p.dk_accum, off)
                    sv = _vec(p.dv_accum, off)
                    for h in cutlass.range_constexpr(2):
                        cute.copy(ld32, cute.local_tile(sk, (4,), (h,)), cute.local_tile(ra, (4,), (h,)))
                        cute.copy(ld32, cute.local_tile(sv, (4,), (h,)), cute.local_tile(rb, (4,), (h,)))
                    rk.store(rk.load() + ra.load())
                    rv.store(rv.load() + rb.load())
                ro.store((rk.load() * p.softmax_scale).to(dtype))
                cute.copy(st16, ro, _vec(p.dk, k_dst + Int64(d)))
                ro.store(rv.load().to(dtype))
                cute.copy(st16, ro, _vec(p.dv, v_dst + Int64(d)))

    kernel.set_name_prefix(f"vb_{name}", remove_cutlass_symbol=True, keep_mangled_name=False)

    def launch(p: SimpleNamespace):
        kernel(p).launch(grid=[(p.total_q * p.num_heads_q + p.total_k * p.num_heads_kv + warps - 1) // warps, 1, 1],
                          block=[32 * warps, 1, 1])

    return jit_host(params, launch, name=f"host_{name}")
