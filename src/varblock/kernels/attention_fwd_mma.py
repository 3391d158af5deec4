"""Portable varlen block-sparse attention forward: warp-level MMA (mma.sync m16n8k16), CuTe DSL.

One source, compiled for every arch in ``registry.ARCHES`` (sm80, sm90a, sm100f, sm120f). It is the correctness
backbone of the library and the fallback on GPUs without a tuned kernel. FA2-style: a CTA works on one work-list
tile at a time, Q tile in shared memory, K/V chunks streamed with cp.async (single stage: K(c+1) load overlaps
softmax + PV(c), V(c) load overlaps QK(c)), ldmatrix + mma.sync, online softmax in fp32 with exp2.

What one tile is (``docs/contracts.md`` section 2): ``tiles[t] = (batch, head, q_start, q_len, chunk_begin, n_full,
n_partial, n_left)``; the CTA loops over ``chunks[chunk_begin : chunk_begin + n_full + n_partial]`` (each
``(k_start, k_len)``, positions relative to the sequence starts). Chunk ``i`` of the tile is partial iff ``i <
n_left or i >= n_left + n_full``, full otherwise (``n_left = 0``: full chunks first, then partial). Full chunks get
no element mask (only the ``k_len < tile_n`` tail is masked); partial chunks get the element mask (window/causal,
document ids, token mask). Rows with no allowed key get O = 0 and LSE = -inf.

Row mapping: with ``pack_gqa == 1`` the tile's ``head`` is the query head and tile row ``r`` is query token
``q_start + r``; with ``pack_gqa == G > 1`` the tile's ``head`` is the KV head and tile row ``r`` is token
``q_start + r // G`` of query head ``head * G + r % G`` (``q_len`` counts tokens, ``q_len * G <= tile_m``).
The KV head of a tile is always ``(head * pack_gqa) // qhead_per_kvhead``.

Element mask of partial chunks (query ``i``, key ``j`` relative to their sequences, ``off = len_k - len_q``):
``(window_left < 0 or j < num_sink_tokens or j >= i + off - window_left) and (window_right < 0 or j <= i + off +
window_right)`` (attention sinks waive only the left bound), and with
``mask_flags & MASK_DOC`` ``doc_q[tq] == doc_k[tk]``, and with ``mask_flags & MASK_TOKEN``
``tok_mask[hq // tok_head_div, tq, j // tok_block_k] != 0``. Pointers of unused inputs may be 0.

Schedule. The tile count is ``*num_tiles_ptr`` (int32 written on the device, e.g. by a prepare kernel) when
``num_tiles_ptr != 0``, else the scalar ``num_tiles``; it is read once per CTA. The grid is ``[num_ctas, 1, 1]``.

* ``persistent == 0``: one tile per CTA, tile ``blockIdx.x``; CTAs with ``blockIdx.x >= tile count`` do nothing
  (so ``num_ctas = num_tiles`` when the count is known on the host, or an upper bound of it). No atomics;
  ``tile_counter`` is not touched (may be 0).
* ``persistent == 1``: dynamic persistent schedule (``num_ctas`` about a few CTAs per SM). A CTA's first tile is
  ``blockIdx.x``, its next ones ``gridDim.x + atomicAdd(&tile_counter[0], 1)``, in the order of the tile table
  (sort it longest-first), until the index reaches the tile count. Thread 0 fetches the next index early in each
  tile (its latency hides behind the Q/K loads) and broadcasts it through shared memory. ``tile_counter`` is
  ``int32[2] = {next, done}``, zero before the first launch; at exit every CTA does ``threadfence();
  atomicAdd(&done, 1)`` and the last one resets both to 0, so the counter is ready for the next launch (plans can be
  reused call after call and in CUDA graphs with no memset). Two launches sharing one counter must not overlap in
  time (same stream, or distinct counters).
* ``debug_counts`` (int32 ``[tile count]``, or 0 = off): every processed tile does ``atomicAdd(&debug_counts[tile],
  1)`` once (tests check that each tile is processed exactly once).

Kernel ABI (see ``PARAMS``): only raw global pointers and scalars, in the order of ``PARAMS``; the host
``@cute.jit`` function's signature and the kernel's parameter list are generated from ``PARAMS``
(``common/signature.py``); the host takes exactly these and launches once with grid ``[num_ctas, 1, 1]``. Entry name:
``vb_<variant name>_0``. Parameter byte offsets (all arches): 12 pointers at 0..88, 12 int64 at 96..184, 9
four-byte scalars at 192..224, then ``num_tiles_ptr`` 232, ``tile_counter`` 240, ``debug_counts`` 248,
``persistent`` 256, ``num_ctas`` 260, ``num_sink_tokens`` 264 (268 bytes).

This module imports ``cutlass`` only inside functions, so the registry can list variants without the DSL.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

from .. import abi
from ..abi import MASK_DOC, MASK_FLAG_BITS, MASK_TOKEN
from . import common
from .registry import ARCHES, Family, Param, Variant, pointer_requires

FAMILY_NAME = "attention_fwd_mma"
#: (short name used in variant names, dtype name used in keys)
DTYPES = (("fp16", "float16"), ("bf16", "bfloat16"))
HEAD_DIMS = abi.HEAD_DIMS[FAMILY_NAME]

#: dynamic shared memory limit per CTA (opt-in), bytes. sm80 cubins also run on sm86/sm89 (99 KB), so the sm80
#: configurations are chosen to fit 99 KB as well (see ``_TILES``).
SMEM_LIMIT = {"sm80": 163 * 1024, "sm90": 227 * 1024, "sm100": 227 * 1024, "sm120": 99 * 1024}
SMEM_LIMIT_PORTABLE_SM8X = 99 * 1024

#: (tile_m, tile_n, num_warps) per head dim; per-arch overrides below. The defaults fit 99 KB of shared memory
#: (sm86/sm89 run the sm80 cubins; sm120 has 99 KB), so d192/d256 use 64-row tiles there.
_TILES_DEFAULT = {
    64: (128, 128, 4),
    96: (128, 64, 4),
    128: (128, 64, 4),
    192: (64, 64, 4),
    256: (64, 64, 4),
}
_TILES_ARCH = {
    # Hopper / Blackwell datacenter parts have 227 KB: 128 query rows and 8 warps (as FA2 on A100)
    "sm90": {192: (128, 64, 8), 256: (128, 64, 8)},
    # ptxas for sm_100f / sm_120f allocates mma.sync code less tightly than for sm_80 / sm_90a: with 192 fp32
    # accumulators per thread (d64 at 128x128, d128 at 128x64 with 4 warps) it spills 250-650 bytes, so these
    # arches keep O + S accumulators at <= 160 per thread
    "sm100": {64: (128, 64, 4), 128: (128, 64, 8), 192: (128, 64, 8), 256: (128, 64, 8)},
    "sm120": {64: (128, 64, 4), 128: (128, 64, 8)},
}

#: (arch, head_dim) whose per-thread setup (copy / MMA partitions, coordinates) is built once before the tile loop,
#: where LLVM hoists its address math out of the loop; elsewhere it is rebuilt in every tile from an opaque thread
#: index (``_attn_fwd_mma_impl._thread_idx_opaque``). Chosen per variant by ptxas spill bytes (see the impl module).
_SETUP_HOISTED = {("sm80", 64), ("sm90", 128), ("sm120", 256)}

#: (arch, head_dim) whose partial-chunk mask evaluates the two-sided left bound (attention sinks) as two compares;
#: elsewhere one unsigned compare (``common/mask.py``, ``ElementMask._band``). Chosen per variant by ptxas spill bytes.
_SINK_COMPARE_PAIR = {("sm80", 64)}

#: (arch, head_dim) whose partial-chunk mask folds the tile-pairing drop bits into the band's right bound; elsewhere
#: a pass of its own behind ``drop != 0`` (``common/mask.py``, ``ElementMask.drop_fold``). Chosen per variant by ptxas
#: spill bytes (folding spilled 48-64 bytes at sm90 d128; the pass 16 more at sm120 fp16 d256).
_DROP_FOLD = {("sm120", 256)}

_DT_BYTES = 2
#: Q, O, K, V element strides must be multiples of this (16-byte vectors); pointers 16-byte aligned.
_VEC = 8

#: kernel parameters, in ABI order. Pointer ``align`` = byte alignment the kernel assumes.
PARAMS: tuple[Param, ...] = (
    Param("q", "ptr", 16),  # [total_q, Hq, D] fp16/bf16, last dim contiguous
    Param("k", "ptr", 16),  # [total_k, Hkv, D]
    Param("v", "ptr", 16),  # [total_k, Hkv, D]
    Param("o", "ptr", 16),  # [total_q, Hq, D] output
    Param("lse", "ptr", 4),  # [Hq, total_q] fp32 output (natural log), token stride 1
    Param("cu_seqlens_q", "ptr", 4),  # int32 [B+1]
    Param("cu_seqlens_k", "ptr", 4),  # int32 [B+1]
    Param("tiles", "ptr", 4),  # int32 [num_tiles, 8]
    Param("chunks", "ptr", 4),  # int32 [C, 2]
    Param("doc_q", "ptr", 4),  # int32 [total_q] (read only if mask_flags & MASK_DOC)
    Param("doc_k", "ptr", 4),  # int32 [total_k] (read only if mask_flags & MASK_DOC)
    Param("tok_mask", "ptr", 1),  # uint8 [Hm, total_q, max_nb] (read only if mask_flags & MASK_TOKEN)
    Param("q_stride_tok", "i64"),  # element strides
    Param("q_stride_head", "i64"),
    Param("k_stride_tok", "i64"),
    Param("k_stride_head", "i64"),
    Param("v_stride_tok", "i64"),
    Param("v_stride_head", "i64"),
    Param("o_stride_tok", "i64"),
    Param("o_stride_head", "i64"),
    Param("lse_stride_head", "i64"),
    Param("tm_stride_head", "i64"),  # tok_mask element strides
    Param("tm_stride_tok", "i64"),
    Param("tm_stride_blk", "i64"),
    Param("num_tiles", "i32"),
    Param("softmax_scale_log2", "f32"),  # softmax_scale * log2(e)
    Param("window_left", "i32"),  # -1 = unbounded
    Param("window_right", "i32"),  # -1 = unbounded (causal: 0)
    Param("qhead_per_kvhead", "i32"),  # Hq // Hkv
    Param("pack_gqa", "i32"),  # G (== qhead_per_kvhead) or 1 = off
    Param("tok_block_k", "i32"),  # key block size of tok_mask (>= 1)
    Param("tok_head_div", "i32"),  # hm = hq // tok_head_div (1: per q head, group: per kv head, Hq: broadcast)
    Param("mask_flags", "i32"),  # MASK_DOC | MASK_TOKEN
    Param("num_tiles_ptr", "ptr", 4),  # int32 [1] or 0: if nonzero, the tile count (overrides num_tiles)
    Param("tile_counter", "ptr", 4),  # int32 [2] = {next, done}, zero before the first launch (persistent == 1)
    Param("debug_counts", "ptr", 4),  # int32 [num_tiles] or 0: every processed tile adds 1 to its entry
    Param("persistent", "i32"),  # 0: one tile per CTA (tile = blockIdx.x); 1: dynamic persistent schedule
    Param("num_ctas", "i32"),  # the grid size
    Param("num_sink_tokens", "i32"),  # keys j < this are exempt from the left window bound (partial chunks); 0 = none
)
PARAM_NAMES = tuple(p.name for p in PARAMS)


def tile_config(arch: str, head_dim: int) -> tuple[int, int, int]:
    """(tile_m, tile_n, num_warps) of the variant for ``arch`` and ``head_dim``."""
    return _TILES_ARCH.get(arch, {}).get(head_dim, _TILES_DEFAULT[head_dim])


def smem_bytes(tile_m: int, tile_n: int, head_dim: int) -> int:
    """Dynamic shared memory of a variant (the kernel's SharedStorage struct): Q (reused for O), K, V (each 1024-byte
    aligned), then per-row mask info (int32 position, int32 doc id, int64 token-mask offset), per-column doc ids
    (int32), token-mask bits (tile_n / 32 words per row) and 16 bytes for the persistent scheduler (the next tile
    index); the total is rounded up to 1024 bytes."""

    def up(x: int, a: int) -> int:
        return (x + a - 1) // a * a

    off = 0
    for size, align in ((tile_m * head_dim * _DT_BYTES, 1024), (tile_n * head_dim * _DT_BYTES, 1024),
                        (tile_n * head_dim * _DT_BYTES, 1024), (4 * tile_m, 16), (4 * tile_m, 16), (8 * tile_m, 16),
                        (4 * tile_n, 16), (tile_m * tile_n // 8, 16), (16, 16)):
        off = up(off, align) + size
    return up(off, 1024)


def variant_name(dtype: str, head_dim: int) -> str:
    return f"{FAMILY_NAME}_{dtype}_d{head_dim}"


def entry_name(variant: Variant) -> str:
    """The cubin entry (kernel) name: ``set_name_prefix(f"vb_{name}", keep_mangled_name=False)`` + ``_0``."""
    return f"vb_{variant.name}_0"


def _requires(tile_m: int) -> tuple[dict[str, Any], ...]:
    req = list(pointer_requires(PARAMS))
    for s in ("q_stride_tok", "q_stride_head", "k_stride_tok", "k_stride_head", "v_stride_tok", "v_stride_head",
              "o_stride_tok", "o_stride_head"):
        req.append({"what": f"{s} multiple of {_VEC} elements (16 bytes)", "value": s, "divisible_by": _VEC})
    req.append({"what": "num_tiles >= 0 (ignored when num_tiles_ptr is nonzero)", "value": "num_tiles",
                "range": [0, 2**31 - 1]})
    req.append({"what": "num_ctas >= 1 (the grid size)", "value": "num_ctas", "range": [1, 2**31 - 1]})
    req.append({"what": "persistent in 0..1", "value": "persistent", "range": [0, 1]})
    req.append({"what": "qhead_per_kvhead >= 1", "value": "qhead_per_kvhead", "range": [1, 2**31 - 1]})
    req.append({"what": "pack_gqa in [1, tile_m]", "value": "pack_gqa", "range": [1, tile_m]})
    for w in ("window_left", "window_right"):  # -1 = unbounded; clamp larger windows to the longest sequence
        req.append({"what": f"{w} in [-1, 2**30]", "value": w, "range": [-1, 2**30]})
    req.append({"what": "tok_block_k >= 1", "value": "tok_block_k", "range": [1, 2**31 - 1]})
    req.append({"what": "tok_head_div >= 1", "value": "tok_head_div", "range": [1, 2**31 - 1]})
    req.append({"what": "mask_flags in 0..3", "value": "mask_flags", "range": [0, 3]})
    # like the windows: clamp larger values to the longest key sequence (the mask computes a - window_left - sinks)
    req.append({"what": "num_sink_tokens in [0, 2**30]", "value": "num_sink_tokens", "range": [0, 2**30]})
    return tuple(req)


def variants(arch: str) -> list[Variant]:
    if arch not in ARCHES:
        raise ValueError(f"unknown arch {arch!r}")
    out = []
    for dtype, dtype_name in DTYPES:
        for d in HEAD_DIMS:
            tm, tn, nw = tile_config(arch, d)
            smem = smem_bytes(tm, tn, d)
            assert smem <= (SMEM_LIMIT_PORTABLE_SM8X if arch == "sm80" else SMEM_LIMIT[arch]), (arch, d, smem)
            out.append(
                Variant(
                    family=FAMILY_NAME,
                    name=variant_name(dtype, d),
                    arch=arch,
                    key={"dtype": dtype_name, "head_dim": d},
                    params=PARAMS,
                    block=(32 * nw, 1, 1),
                    grid=("num_ctas", 1, 1),
                    requires=_requires(tm),
                    extra={
                        "tile_m": tm,
                        "tile_n": tn,
                        "num_warps": nw,
                        "smem_bytes": smem,
                        "setup_per_tile": (arch, d) not in _SETUP_HOISTED,
                        "sink_compare": "pair" if (arch, d) in _SINK_COMPARE_PAIR else "unsigned",
                        "drop_fold": (arch, d) in _DROP_FOLD,
                        "entry": f"vb_{variant_name(dtype, d)}_0",
                        "mask_flags": dict(MASK_FLAG_BITS),
                        "lse_token_stride": 1,
                    },
                )
            )
    return out


FAMILY = Family(
    name=FAMILY_NAME,
    module=__name__,
    variants=variants,
    sources=(__file__, str(Path(__file__).with_name("_attn_fwd_mma_impl.py")), abi.__file__, *common.SOURCES),
)


# ----------------------------------------------------------------------------------------------------------------
# Build time (imports cutlass)
# ----------------------------------------------------------------------------------------------------------------


def compile_args(variant: Variant):
    """``(host_jit_function, args)`` for ``cute.compile``; fake (null) pointers and unit scalars."""
    import cutlass

    from ._dsl import dsl_dtype
    from .common.signature import fake_args

    dtype = dsl_dtype(variant.key["dtype"])
    pointee = {"q": dtype, "k": dtype, "v": dtype, "o": dtype, "lse": cutlass.Float32, "tok_mask": cutlass.Uint8}
    x = variant.extra
    host = _make_host(variant.name, variant.key["dtype"], variant.key["head_dim"], x["tile_m"], x["tile_n"],
                      x["num_warps"], x["setup_per_tile"], x["sink_compare"], x["drop_fold"])
    return host, fake_args(variant.params, pointee)


def capture_cases(variant: Variant) -> list[dict[str, Any]]:
    """A few realistic parameter sets (fake pointers) for the launch-capture check."""
    base = 0x7F0000000000
    cases = []
    shapes = [  # (num_tiles, Hq, Hkv, total_q, total_k, pack, flags, wl, wr, persistent, num_ctas, null pointers)
        (1, 1, 1, 1, 1, 1, 0, -1, -1, 0, 1, ("num_tiles_ptr", "tile_counter", "debug_counts")),
        (37, 8, 2, 1000, 3000, 1, 0, -1, 0, 1, 264, ("num_tiles_ptr",)),
        (0, 32, 8, 65536, 65536, 4, MASK_DOC | MASK_TOKEN, 127, 0, 1, 528, ()),  # count from num_tiles_ptr
        (513, 16, 16, 7777, 123, 1, MASK_TOKEN, 0, 5, 0, 4096, ("tile_counter",)),
    ]
    d = variant.key["head_dim"]
    for i, (nt, hq, hkv, tq, _tk, pack, flags, wl, wr, pers, nctas, nulls) in enumerate(shapes):
        c: dict[str, Any] = {}
        for j, p in enumerate(variant.params):
            if p.kind == "ptr":
                c[p.name] = 0 if p.name in nulls else base + (i << 36) + (j << 30)
        g = hq // hkv
        c.update(
            q_stride_tok=hq * d, q_stride_head=d, k_stride_tok=hkv * d, k_stride_head=d,
            v_stride_tok=2 * hkv * d + 8 * i, v_stride_head=d, o_stride_tok=hq * d, o_stride_head=d,
            lse_stride_head=tq, tm_stride_head=tq * 64, tm_stride_tok=64, tm_stride_blk=1,
            num_tiles=nt, softmax_scale_log2=(1.0 / math.sqrt(d)) * math.log2(math.e), window_left=wl,
            window_right=wr, qhead_per_kvhead=g, pack_gqa=pack, tok_block_k=64,
            tok_head_div=1 if i % 2 else max(g, 1), mask_flags=flags, persistent=pers, num_ctas=nctas,
            num_sink_tokens=(0, 4, 100, 2**30)[i % 4],
        )
        cases.append(c)
    return cases


@functools.cache
def _make_host(name: str, dtype_name: str, D: int, tile_m: int, tile_n: int, num_warps: int, setup_per_tile: bool,
               sink_compare: str, drop_fold: bool):
    from ._attn_fwd_mma_impl import make_host

    return make_host(name, PARAMS, dtype_name, D, tile_m, tile_n, num_warps, setup_per_tile, sink_compare, drop_fold)
