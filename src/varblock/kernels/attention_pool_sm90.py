"""Hopper (sm_90a) QK^T kernel of attention POOLING: the work of ``attention_pool_qk`` (``attention_pool.py``, the
contract) on the machine of ``attention_fwd_sm90`` (TMA + wgmma, warp-specialized). The reduce kernels of
``attention_pool`` are reused unchanged: this kernel writes the same 1D map.

* Same work list, masks and row mapping (incl. pack-GQA) as the forward's sm90 plan: tiles of up to ``TILE_M`` = 128
  query rows, chunks of up to ``TILE_N`` = 128 keys (plans with smaller tiles run as they are).
* 384 threads: warpgroup 0 is the producer (tile indices through the forward's tile ring; Q by TMA, or cp.async with
  pack-GQA; K by TMA into a ``STAGES``-deep ring), warpgroups 1 and 2 the consumers, 64 query rows each. V is never
  loaded, and there is no P V, no online softmax and no epilogue: per chunk, S = Q K^T (wgmma), the element mask on
  partial chunks (the ``k_len`` tail on full ones), then per row and per 64-key half of the chunk the max of S ->
  ``exp2(max * scale_log2 - lse * log2 e)``, max-accumulated into ``pool[hq, tok, (k_start + 64 h) // block_k]``
  with ``red.global.max.u32`` (probabilities are >= 0, whose float bits order like unsigned ints: no read, no
  stall), and into the raw 2D map ``pool2d[b, hq // pool_group, q // pool_block_q, block]`` (one red per warp and
  half when the warp's 16 rows lie in one query block of one head, else one per row), so the 2D reduce only
  normalises that small map instead of reading the 1D one. Values 0 (masked, past ``k_len``, underflow) write
  nothing: both maps were zeroed. Ping-pong turns (the forward's named barriers) stagger the two warpgroups' S
  wgmma so that one masks and pools while the other's S runs.
* Requirements (the op checks them before choosing this family): chunk starts are multiples of 64 (the layout's
  key block, or the plan's ``tile_n`` for dense plans, is a multiple of 64) and ``pool_block_k`` is a multiple of
  64, so a 64-key half never straddles two pooling blocks. ``block_k`` 64: two pooling blocks per 128-key chunk;
  128: one (or two halves of neighbouring blocks when the chunk starts mid-block); multiples spanning several
  chunks accumulate through the max.

Kernel ABI: the host function takes ``HOST_PARAMS`` (``attention_pool.QK_PARAMS`` plus the extents of the TMA
descriptors); the kernel's parameters are ``(tma_q, q_coords, tma_k, k_coords, *HOST_PARAMS)``, the descriptors
from the forward's recipes (``attention_fwd_sm90.tensormap_recipe``). sm90 only; head dims ``HEAD_DIMS``.

This module imports ``cutlass`` only inside functions, so the registry can list variants without the DSL.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from .. import abi
from . import attention_fwd_mma as portable
from . import attention_fwd_sm90 as fwd90
from . import attention_pool as pool
from . import common
from .registry import Family, Param, Variant

FAMILY_NAME = "attention_pool_sm90"
HEAD_DIMS = pool.HEAD_DIMS
TILE_M = fwd90.TILE_M
TILE_N = fwd90.TILE_N
HALF = 64  #: keys per pooling segment of a chunk: chunk starts and pooling blocks are multiples of it
STAGES = {64: 6, 128: 4}  #: K ring depth per head dim (no V: the forward's V stages go to K)
Q_STAGES = 2  #: Q ring depth: the next tile's Q loads while this tile's chunks run (short tiles: W3)
THREADS = fwd90.THREADS
PRODUCER_REGS = fwd90.PRODUCER_REGS
CONSUMER_REGS = fwd90.CONSUMER_REGS
_ELEM = 2

#: what the host function takes: the portable pooling kernel's parameters, the TMA descriptors' extents, then the
#: raw 2D map this kernel also writes (float32 ``[B, Ho, MB, NB]``, zero before the launch: per query block x key
#: block the largest probability, before the row normalisation the reduce kernel does)
HOST_PARAMS: tuple[Param, ...] = pool.QK_PARAMS + (
    Param("total_k", "i32"),
    Param("num_heads_kv", "i32"),
    Param("total_q", "i32"),
    Param("num_heads_q", "i32"),
    Param("pool2d", "ptr", 4),
    Param("pool2d_stride_b", "i64"),
    Param("pool2d_stride_h", "i64"),
    Param("pool2d_stride_m", "i64"),
    Param("pool_block_q", "i32"),  # query tokens per 2D block
    Param("pool_group", "i32"),  # query heads per 2D output head (pool_gqa: the GQA group, else 1)
)
_EXTENTS = {"q": ("total_q", "num_heads_q"), "k": ("total_k", "num_heads_kv")}


def kernel_params(head_dim: int, dtype: str) -> tuple[Param, ...]:
    """The Q and K descriptors (the forward's recipes), each with its coordinate-tensor extents, then HOST_PARAMS."""
    out: tuple[Param, ...] = ()
    for x in ("q", "k"):
        out += (Param(f"tma_{x}", "tensormap", 64, fwd90.tensormap_recipe(x, head_dim, dtype)),
                Param(f"{x}_coords", "i32x2", 4, {"fields": list(_EXTENTS[x])}))
    return out + HOST_PARAMS


def smem_bytes(head_dim: int) -> int:
    """Dynamic shared memory (mirrors ``_attention_pool_sm90_impl.shared_storage``): mbarriers, the Q and K stages
    (1024-byte aligned), two per-warpgroup copies of the mask inputs, the tile-index ring."""

    def up(x: int, a: int) -> int:
        return (x + a - 1) // a * a

    st = STAGES[head_dim]
    off = 8 * (2 * Q_STAGES + 2 * st + 4)  # mbarriers: Q and K full/empty per stage, tile ring full/empty x 2
    for size in (Q_STAGES * TILE_M * head_dim * _ELEM, st * TILE_N * head_dim * _ELEM):
        off = up(off, 1024) + size
    for _ in range(2):  # per consumer warpgroup: row pos, row doc, row token-mask offset, key docs, token bits
        for size in (4 * TILE_M, 4 * TILE_M, 8 * TILE_M, 4 * TILE_N, TILE_M * TILE_N // 8):
            off = up(off, 16) + size
    off = up(off, 16) + 16  # tile-index ring (2 slots, padded)
    return up(off, 1024)


def variant_name(dtype: str, head_dim: int) -> str:
    return f"{FAMILY_NAME}_qk_{dtype}_d{head_dim}"


def _requires() -> tuple[dict[str, Any], ...]:
    req = [r for r in portable._requires(TILE_M) if r["value"] not in pool._FWD_ONLY]
    req += [
        {"what": "pool pointer 4-byte aligned", "value": "pool", "divisible_by": 4},
        {"what": f"pool_block_k a positive multiple of {HALF}", "value": "pool_block_k", "divisible_by": HALF},
        {"what": "pool_block_k >= 1", "value": "pool_block_k", "range": [1, 2**30]},
        {"what": "pool2d pointer 4-byte aligned", "value": "pool2d", "divisible_by": 4},
        {"what": "pool_block_q >= 1", "value": "pool_block_q", "range": [1, 2**30]},
        {"what": "pool_group >= 1", "value": "pool_group", "range": [1, 2**30]},
        {"what": "total_k in [1, 2**31 - 1] (TMA extent)", "value": "total_k", "range": [1, 2**31 - 1]},
        {"what": "num_heads_kv >= 1", "value": "num_heads_kv", "range": [1, 2**31 - 1]},
    ]
    return tuple(req)


def variants(arch: str) -> list[Variant]:
    """sm90 only: wgmma, TMA and setmaxnreg are Hopper's."""
    if arch != "sm90":
        return []
    out = []
    for dtype, dtype_name in portable.DTYPES:
        for d in HEAD_DIMS:
            smem = smem_bytes(d)
            assert smem <= portable.SMEM_LIMIT["sm90"], (d, smem)
            out.append(Variant(
                family=FAMILY_NAME, name=variant_name(dtype, d), arch=arch,
                key={"stage": "qk", "dtype": dtype_name, "head_dim": d},
                params=kernel_params(d, dtype_name), host_params=HOST_PARAMS, block=(THREADS, 1, 1),
                grid=("num_ctas", 1, 1), requires=_requires(),
                extra={"tile_m": TILE_M, "tile_n": TILE_N, "stages": STAGES[d], "q_stages": Q_STAGES,
                       "smem_bytes": smem,
                       "chunk_align": HALF, "producer_regs": PRODUCER_REGS, "consumer_regs": CONSUMER_REGS,
                       "entry": f"vb_{variant_name(dtype, d)}_0"},
            ))
    return out


FAMILY = Family(
    name=FAMILY_NAME,
    module=__name__,
    variants=variants,
    sources=(__file__, str(Path(__file__).with_name("_attention_pool_sm90_impl.py")), pool.__file__,
             fwd90.__file__, str(Path(fwd90.__file__).with_name("_attn_fwd_sm90_impl.py")),
             str(Path(fwd90.__file__).with_name("_attn_fwd_sm90_consumer.py")),
             str(Path(fwd90.__file__).with_name("_attn_fwd_sm90_debug.py")), portable.__file__, abi.__file__,
             *common.SOURCES),
    arches=("sm90",),
)


def capture_cases(variant: Variant) -> list[dict[str, Any]]:
    """The sm90 forward's cases without V / O, plus the pooling maps (key block sizes 64, 128, 64, 256)."""
    cases = []
    for i, c in enumerate(fwd90.capture_cases(variant)):
        c = {k: v for k, v in c.items() if k not in pool._FWD_ONLY}
        c.update(pool=0x7E0000000000 + (i << 20), pool_stride_head=1000 * 64, pool_stride_tok=64,
                 pool_block_k=(64, 128, 64, 256)[i % 4], pool2d=0x7D0000000000 + (i << 20),
                 pool2d_stride_b=8 * 16 * 64, pool2d_stride_h=16 * 64, pool2d_stride_m=64,
                 pool_block_q=(64, 128, 32, 256)[i % 4], pool_group=(1, 1, 4, 2)[i % 4])
        cases.append({p.name: c[p.name] for p in variant.host_params})
    return cases


def compile_args(variant: Variant):
    """``(host_jit_function, args)`` for ``cute.compile``: fake pointers, unit scalars (build time: imports
    cutlass)."""
    import cutlass

    from ._dsl import dsl_dtype
    from .common.signature import fake_args

    dtype = dsl_dtype(variant.key["dtype"])
    pointee = {"q": dtype, "k": dtype, "lse": cutlass.Float32, "tok_mask": cutlass.Uint8, "pool": cutlass.Float32}
    args = fake_args(variant.host_params, pointee)
    for i, p in enumerate(variant.host_params):  # strides: multiples of 8 elements (the TMA atoms assume it)
        if p.kind == "i64" and (p.name.endswith("stride_tok") or p.name.endswith("stride_head")):
            args[i] = cutlass.Int64(8)
    return _make_host(variant.name, variant.key["dtype"], variant.key["head_dim"]), args


@functools.cache
def _make_host(name: str, dtype_name: str, head_dim: int):
    from ._attention_pool_sm90_impl import make_host

    return make_host(name, HOST_PARAMS, dtype_name, head_dim, TILE_M, TILE_N, STAGES[head_dim])
