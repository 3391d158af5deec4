"""Hopper (sm_90a) varlen block-sparse attention forward: warp-specialized, TMA + wgmma, CuTe DSL.

Same work list, masks, schedules and outputs as the portable family (``attention_fwd_mma.py``, whose docstring is
the contract: tiles / chunks tables, full vs partial chunks, element mask, pack-GQA row mapping, the single and
dynamic persistent schedules with the self-resetting counter, ``debug_counts``). What differs is the machine:

* 384 threads: warpgroup 0 is the producer (``setmaxnreg`` down to ``PRODUCER_REGS``), warpgroups 1 and 2 are the
  consumers (up to ``CONSUMER_REGS``), each owning 64 rows of the 128-row query tile.
* Producer: warp 0 fetches tiles (``blockIdx.x``, then the atomic counter when persistent) and hands each index to
  every other warp through a small mbarrier pipeline; it issues the TMA loads of K and V (one descriptor each,
  ``tensormap`` kernel parameters) into ``STAGES``-deep mbarrier pipelines, V one chunk behind K. Chunks start at
  arbitrary token rows (variable spans): the TMA box starts at ``seq_k + k_start`` and rows past ``k_len`` (the
  next sequence, or zeros past the tensor) are masked in S. Producer warps 2-3 load Q into its own pipeline (so
  warp 0 never waits for it): by TMA (a third descriptor; rows past the tile read the next sequence or zeros),
  or with ``pack_gqa > 1``, whose rows are not affine in memory, by cp.async (rows past the tile zero-filled).
* Consumers: S = Q K^T and O += P V with wgmma (P from registers); online softmax in fp32 with exp2; the softmax
  of chunk n overlaps the P V wgmma of chunk n-1 (intra-warpgroup overlap) and the two warpgroups take turns
  issuing wgmma (ping-pong on named barriers). Partial chunks get the element mask of ``kernels/common/mask.py``
  (wgmma accumulators have the mma.sync column pattern it assumes), full chunks only the ``k_len`` tail.
* Epilogue: O / row sum, LSE; O goes through shared memory (its own buffer, so the next tile's Q load is not held
  back) and leaves as 16-byte vector stores of the valid rows (varlen tails, pack-GQA rows).

Kernel ABI: the host function takes ``HOST_PARAMS`` (the portable family's parameters plus the extents the
descriptors need) and builds the three TMA descriptors; the kernel's parameters are ``(tma_q, q_coords, tma_k,
k_coords, tma_v, v_coords, *HOST_PARAMS)`` (``kernel_params``), the descriptors computed by the runtime from the
recipes below and checked field by field against the DSL's own by launch capture. sm90 only; head dims
``HEAD_DIMS``.

This module imports ``cutlass`` only inside functions, so the registry can list variants without the DSL.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from .. import abi
from ..abi import MASK_FLAG_BITS
from . import attention_fwd_mma as portable
from . import common
from .registry import Family, Param, Variant

FAMILY_NAME = "attention_fwd_sm90"
DTYPES = portable.DTYPES
HEAD_DIMS = (64, 96, 128)
TILE_M = 128  #: query rows per tile (two consumer warpgroups of 64)
TILE_N = 128  #: keys per chunk
STAGES = {64: 2, 96: 2, 128: 2}  #: K and V pipeline depth per head dim
THREADS = 384
PRODUCER_REGS = 40
CONSUMER_REGS = 232


def swizzle_span(head_dim: int) -> int:
    """Elements of one row of the shared-memory swizzle atom (and of the TMA box's inner extent): 64 (128-byte
    swizzle) when the head dim is a multiple of 64, else 32 (64-byte swizzle, e.g. d96: three TMA issues)."""
    return 64 if head_dim % 64 == 0 else 32

_ELEM = 2

#: what the host function takes: the portable family's parameters, then the extents of the TMA descriptors
HOST_PARAMS: tuple[Param, ...] = portable.PARAMS + (
    Param("total_k", "i32"),  # rows of k / v
    Param("num_heads_kv", "i32"),  # heads of k / v
    Param("total_q", "i32"),  # rows of q
    Param("num_heads_q", "i32"),  # heads of q
)
HOST_PARAM_NAMES = tuple(p.name for p in HOST_PARAMS)
#: the extents (TMA dims 1, 2) of each descriptor's array: tokens, heads
_EXTENTS = {"q": ("total_q", "num_heads_q"), "k": ("total_k", "num_heads_kv"), "v": ("total_k", "num_heads_kv")}


def tensormap_recipe(pointer: str, head_dim: int, dtype: str) -> dict[str, Any]:
    """The descriptor ``make_tiled_tma_atom`` builds for a ``[tokens, heads, D]`` Q, K or V array viewed as
    ``(token, dim, head)`` with a ``(TILE_M or TILE_N, D)`` tile over swizzled rows: TMA dims (innermost first) =
    head dim, token, head; box ``(swizzle_span(D), rows, 1)`` (d128: two TMA issues per tile, d96: three)."""
    span = swizzle_span(head_dim)
    return {
        "pointer": pointer, "dtype": dtype,
        "dims": [head_dim, *_EXTENTS[pointer]],
        "strides": [["mul", f"{pointer}_stride_tok", _ELEM], ["mul", f"{pointer}_stride_head", _ELEM]],
        "box": [span, TILE_M if pointer == "q" else TILE_N, 1], "element_strides": [1, 1, 1],
        "interleave": "none", "swizzle": f"{span * _ELEM}B", "l2_promotion": "128B", "oob_fill": "none",
    }


def kernel_params(head_dim: int, dtype: str) -> tuple[Param, ...]:
    """The kernel's parameters: the Q, K and V descriptors, each with its coordinate-tensor extents, then
    HOST_PARAMS."""
    out: tuple[Param, ...] = ()
    for x in ("q", "k", "v"):
        out += (Param(f"tma_{x}", "tensormap", 64, tensormap_recipe(x, head_dim, dtype)),
                Param(f"{x}_coords", "i32x2", 4, {"fields": list(_EXTENTS[x])}))
    return out + HOST_PARAMS


def smem_bytes(head_dim: int) -> int:
    """Dynamic shared memory of a variant (mirrors ``_attn_fwd_sm90_impl.shared_storage``): mbarriers, Q, K and V
    stages, O (each 1024-byte aligned), two per-warpgroup copies of the mask inputs, the tile-index ring."""

    def up(x: int, a: int) -> int:
        return (x + a - 1) // a * a

    st = STAGES[head_dim]
    tile_q = TILE_M * head_dim * _ELEM
    tile_kv = TILE_N * head_dim * _ELEM
    off = 8 * (2 + 4 * st + 4)  # mbarriers: Q full/empty, K and V full/empty per stage, tile ring full/empty x 2
    for size, align in ((tile_q, 1024), (st * tile_kv, 1024), (st * tile_kv, 1024), (tile_q, 1024)):
        off = up(off, align) + size
    for _ in range(2):  # per consumer warpgroup: row pos, row doc, row token-mask offset, key docs, token bits
        for size, align in ((4 * TILE_M, 16), (4 * TILE_M, 16), (8 * TILE_M, 16), (4 * TILE_N, 16),
                            (TILE_M * TILE_N // 8, 16)):
            off = up(off, align) + size
    off = up(off, 16) + 16  # tile-index ring (2 slots, padded)
    return up(off, 1024)


def variant_name(dtype: str, head_dim: int) -> str:
    return f"{FAMILY_NAME}_{dtype}_d{head_dim}"


def _requires() -> tuple[dict[str, Any], ...]:
    req = list(portable._requires(TILE_M))
    req.append({"what": "total_k in [1, 2**31 - 1] (TMA extent)", "value": "total_k", "range": [1, 2**31 - 1]})
    req.append({"what": "num_heads_kv >= 1", "value": "num_heads_kv", "range": [1, 2**31 - 1]})
    return tuple(req)


def variants(arch: str) -> list[Variant]:
    """sm90 only: wgmma, TMA and setmaxnreg are Hopper's."""
    if arch != "sm90":
        return []
    out = []
    for dtype, dtype_name in DTYPES:
        for d in HEAD_DIMS:
            smem = smem_bytes(d)
            assert smem <= portable.SMEM_LIMIT["sm90"], (d, smem)
            out.append(Variant(
                family=FAMILY_NAME, name=variant_name(dtype, d), arch=arch, key={"dtype": dtype_name, "head_dim": d},
                params=kernel_params(d, dtype_name), host_params=HOST_PARAMS, block=(THREADS, 1, 1),
                grid=("num_ctas", 1, 1), requires=_requires(),
                extra={"tile_m": TILE_M, "tile_n": TILE_N, "stages": STAGES[d], "smem_bytes": smem,
                       "producer_regs": PRODUCER_REGS, "consumer_regs": CONSUMER_REGS,
                       "entry": f"vb_{variant_name(dtype, d)}_0", "mask_flags": dict(MASK_FLAG_BITS),
                       "lse_token_stride": 1},
            ))
    return out


FAMILY = Family(
    name=FAMILY_NAME,
    module=__name__,
    variants=variants,
    sources=(__file__, str(Path(__file__).with_name("_attn_fwd_sm90_impl.py")),
             str(Path(__file__).with_name("_attn_fwd_sm90_consumer.py")),
             str(Path(__file__).with_name("_attn_fwd_sm90_debug.py")), portable.__file__, abi.__file__,
             *common.SOURCES),
    arches=("sm90",),
)


# ----------------------------------------------------------------------------------------------------------------
# Build time (imports cutlass)
# ----------------------------------------------------------------------------------------------------------------


def compile_args(variant: Variant):
    """``(host_jit_function, args)`` for ``cute.compile``: fake pointers, unit scalars."""
    import cutlass
    import cutlass.cute as cute
    from cutlass.cute.runtime import nullptr

    from ._dsl import dsl_dtype

    dtype = dsl_dtype(variant.key["dtype"])
    elem = {"q": dtype, "k": dtype, "v": dtype, "o": dtype, "lse": cutlass.Float32, "tok_mask": cutlass.Uint8}
    scal = {"i32": cutlass.Int32, "i64": cutlass.Int64, "f32": cutlass.Float32}
    args = []
    for p in variant.host_params:
        if p.kind == "ptr":
            args.append(nullptr(elem.get(p.name, cutlass.Int32), cute.AddressSpace.gmem, assumed_align=p.align))
        elif p.kind == "f32":
            args.append(scal[p.kind](1.0))
        else:
            args.append(scal[p.kind](8 if p.name.endswith("stride_tok") or p.name.endswith("stride_head") else 1))
    return _make_host(variant.name, variant.key["dtype"], variant.key["head_dim"]), args


def capture_cases(variant: Variant) -> list[dict[str, Any]]:
    """The portable family's cases with 16-byte aligned strides, plus the Q / K / V extents."""
    cases = []
    for i, c in enumerate(portable.capture_cases(variant)):
        c = dict(c)
        hkv = c["k_stride_tok"] // c["k_stride_head"]
        c["v_stride_tok"] = 2 * hkv * variant.key["head_dim"] + 8 * i  # multiple of 8 elements (16 bytes)
        c["total_k"] = (1, 3000, 65536, 123)[i % 4]
        c["num_heads_kv"] = hkv
        c["total_q"] = c["lse_stride_head"]
        c["num_heads_q"] = c["q_stride_tok"] // c["q_stride_head"]
        cases.append(c)
    return cases


@functools.cache
def _make_host(name: str, dtype_name: str, head_dim: int):
    from ._attn_fwd_sm90_impl import make_host

    return make_host(name, HOST_PARAMS, dtype_name, head_dim, TILE_M, TILE_N, STAGES[head_dim])
