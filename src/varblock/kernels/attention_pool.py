"""Fused attention POOLING for gate distillation (SeerAttention): max-pooled attention probabilities computed from
Q, K and the forward's LSE, without a t x t matrix in memory. CuTe DSL, portable mma.sync (every arch).

Two kernels:

* ``attention_pool_qk`` (per dtype and head dim): walks the attention forward's work list (``docs/contracts.md``
  section 2, the plan of ``varblock.plan`` / ``varblock.plan_device``) with the forward's tile code (Q tile in shared
  memory, K chunks by cp.async, S = Q K^T with ldmatrix + mma.sync, the same element mask on partial chunks, the same
  row mapping incl. pack-GQA), and for every tile row and chunk writes ``max_j P[i, j] = exp2(max_j S[i, j] *
  scale_log2 - lse[i] * log2(e))`` into ``pool[hq, tok, k_start // pool_block_k]`` (max with what is there: the
  chunks of one pooling block, which never straddle two blocks, arrive in turn at the same thread). ``pool`` is
  float32 ``[Hq, total_q, max_nb]`` and must be zero before the launch (blocks never attended stay 0). Every
  ``(query head, token)`` is in exactly one tile, so no two CTAs write one element.
* ``attention_pool_reduce`` (one variant per mode): one warp per output row.
  ``mode = 0`` (2D): row ``(b, ho, m)`` -> ``out[b, ho, m, n] = max`` over the ``G`` query heads ``ho * G + g`` and
  the tokens of query block ``m`` of ``pool[h, tok, n]``, then the row divided by its sum (all-zero rows stay 0);
  columns ``n >= N_b`` and rows ``m >= M_b`` are 0. ``mode = 1`` (1D, GQA group pooled): row ``(ho, tok)`` ->
  ``out[ho, tok, n] = max_g pool[ho * G + g, tok, n]``.

This module imports ``cutlass`` only inside functions, so the registry can list variants without the DSL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import abi
from . import attention_fwd_mma as fwd
from . import common
from .registry import ARCHES, Family, Param, Variant

FAMILY_NAME = "attention_pool"
HEAD_DIMS = (64, 128)  #: SeerAttention's gates are trained at these head dims
REDUCE_WARPS = 8
_FWD_ONLY = ("v", "o", "v_stride_tok", "v_stride_head", "o_stride_tok", "o_stride_head")

#: the qk kernel: the forward's parameters without V / O, plus the pooling output
QK_PARAMS: tuple[Param, ...] = tuple(p for p in fwd.PARAMS if p.name not in _FWD_ONLY) + (
    Param("pool", "ptr", 4),  # float32 [Hq, total_q, max_nb] in/out (zero before the launch)
    Param("pool_stride_head", "i64"),
    Param("pool_stride_tok", "i64"),
    Param("pool_block_k", "i32"),  # keys per pooling block (a chunk never straddles two)
)
REDUCE_PARAMS: tuple[Param, ...] = (
    Param("pool", "ptr", 4),  # float32 [Hq, total_q, max_nb]
    Param("out", "ptr", 4),  # float32: mode 0 [B, Ho, MB, NBo]; mode 1 [Ho, total_q, max_nb]
    Param("cu_seqlens_q", "ptr", 4),
    Param("cu_seqlens_k", "ptr", 4),
    Param("pool_stride_head", "i64"),
    Param("pool_stride_tok", "i64"),
    Param("batch", "i32"),
    Param("num_heads_out", "i32"),  # Ho
    Param("group", "i32"),  # G query heads per output head
    Param("mb", "i32"),  # mode 0: query blocks per sequence in out; mode 1: total_q
    Param("nbo", "i32"),  # columns of out (mode 0: max N_b; mode 1: max_nb)
    Param("block_q", "i32"),
    Param("block_k", "i32"),
    Param("num_items", "i32"),  # output rows (the grid covers them with REDUCE_WARPS warps per CTA)
)


def qk_name(dtype: str, head_dim: int) -> str:
    return f"{FAMILY_NAME}_qk_{dtype}_d{head_dim}"


def variants(arch: str) -> list[Variant]:
    if arch not in ARCHES:
        raise ValueError(f"unknown arch {arch!r}")
    out = []
    qk_req = tuple(r for r in fwd._requires(1) if r["value"] not in _FWD_ONLY and r["what"] != "pack_gqa in [1, "
                                                                                                    "tile_m]")
    for dtype, dtype_name in fwd.DTYPES:
        for d in HEAD_DIMS:
            tm, tn, nw = fwd.tile_config(arch, d)
            out.append(Variant(
                family=FAMILY_NAME, name=qk_name(dtype, d), arch=arch, key={"stage": "qk", "dtype": dtype_name,
                                                                            "head_dim": d},
                params=QK_PARAMS, block=(32 * nw, 1, 1), grid=("num_ctas", 1, 1),
                requires=qk_req + ({"what": "pack_gqa in [1, tile_m]", "value": "pack_gqa", "range": [1, tm]},
                                   {"what": "pool pointer 4-byte aligned", "value": "pool", "divisible_by": 4},
                                   {"what": "pool_block_k >= 1", "value": "pool_block_k", "range": [1, 2**30]}),
                extra={"tile_m": tm, "tile_n": tn, "num_warps": nw, "smem_bytes": fwd.smem_bytes(tm, tn, d),
                       "setup_per_tile": (arch, d) not in fwd._SETUP_HOISTED,
                       "sink_compare": "pair" if (arch, d) in fwd._SINK_COMPARE_PAIR else "unsigned"}))
    for mode in (0, 1):
        out.append(Variant(
            family=FAMILY_NAME, name=f"{FAMILY_NAME}_reduce{'2d' if mode == 0 else '1d'}_{arch}", arch=arch,
            key={"stage": "reduce", "mode": mode}, params=REDUCE_PARAMS, block=(32 * REDUCE_WARPS, 1, 1),
            grid=(["cdiv", "num_items", REDUCE_WARPS], 1, 1),
            requires=tuple({"what": f"{p.name} address", "value": p.name, "divisible_by": 4}
                           for p in REDUCE_PARAMS if p.kind == "ptr"),
            extra={"warps": REDUCE_WARPS}))
    return out


FAMILY = Family(name=FAMILY_NAME, module=__name__, variants=variants,
                sources=(__file__, str(Path(__file__).with_name("_attention_pool_impl.py")),
                         str(Path(__file__).with_name("_attn_fwd_mma_impl.py")), fwd.__file__, abi.__file__,
                         *common.SOURCES))


def capture_cases(variant: Variant) -> list[dict[str, Any]]:
    """Realistic argument sets (fake device addresses) for the launch-capture check."""
    if variant.key["stage"] == "qk":
        fwd_like = Variant(family=fwd.FAMILY_NAME, name="x", arch=variant.arch, key={"head_dim": variant.key[
            "head_dim"]}, params=fwd.PARAMS, block=variant.block, grid=variant.grid)
        cases = []
        for i, c in enumerate(fwd.capture_cases(fwd_like)):
            c = {k: v for k, v in c.items() if k not in _FWD_ONLY}
            c.update(pool=0x7E0000000000 + (i << 20), pool_stride_head=1000 * 64, pool_stride_tok=64,
                     pool_block_k=(64, 128, 64, 256)[i % 4])
            cases.append({p.name: c[p.name] for p in variant.params})
        return cases
    return [{"pool": 0x7F0000000000, "out": 0x7F0000100000, "cu_seqlens_q": 0x7F0000200000,
             "cu_seqlens_k": 0x7F0000300000, "pool_stride_head": t * nb, "pool_stride_tok": nb, "batch": b,
             "num_heads_out": ho, "group": g, "mb": mb, "nbo": nb, "block_q": 64, "block_k": 64,
             "num_items": ho * b * mb}
            for b, ho, g, mb, nb, t in ((3, 8, 1, 17, 17, 2000), (1, 2, 4, 1, 3, 100), (0, 1, 1, 0, 0, 0))]


def compile_args(variant: Variant):
    """The host function and its compile-time arguments (imports the DSL: build time only)."""
    import cutlass

    from .common.signature import fake_args

    if variant.key["stage"] == "reduce":
        from varblock.kernels._attention_pool_impl import make_reduce_host

        return make_reduce_host(variant), fake_args(variant.params, {"pool": cutlass.Float32,
                                                                     "out": cutlass.Float32})
    from varblock.kernels._attention_pool_impl import make_qk_host

    dtype = cutlass.BFloat16 if variant.key["dtype"] == "bfloat16" else cutlass.Float16
    pointee = {"q": dtype, "k": dtype, "lse": cutlass.Float32, "tok_mask": cutlass.Uint8, "pool": cutlass.Float32}
    return make_qk_host(variant), fake_args(variant.params, pointee)
