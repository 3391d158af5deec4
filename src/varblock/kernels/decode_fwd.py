"""Portable block-sparse flash-decode over a paged (or contiguous varlen) KV cache, split-KV, GQA-packed.

One CuTe DSL source for every arch in ``registry.ARCHES`` (cp.async + ldmatrix + mma.sync m16n8k16).

Work (``varblock.decode_plan.abi`` and ``docs/decode.md``): one CTA per row of ``items``, ``(batch, kv_head,
row_start, chunk_begin, n_chunks, slot, slot_base, num_splits, kv_len)``. The CTA's ``tile_m`` rows are the
(token, head-in-group) pairs ``p = row_start + r``, token ``t = p // G``, query head ``kv_head * G + p % G``, so the
query heads of a GQA group and the new tokens share one pass over the group's KV (each K/V byte is read once per
row tile). It streams ``chunks[chunk_begin : chunk_begin + n_chunks]`` (``(k_start, k_len, head_mask)``, keys
relative to the sequence) through a ``stages``-deep cp.async ring; each K/V row is addressed on its own through
the page table (``page = page_table[b, j // page_size]``, row ``j % page_size`` of that page) or, for a
contiguous cache (``paged == 0``), row ``cu_seqlens_k[b] + j``.

Warps: ``warps_m = tile_m / 16`` along the rows, ``warps_n`` along the keys of a chunk (``tile_n / warps_n`` each);
every warp keeps its own online-softmax state and they are merged through shared memory at the end.

Masks (only in chunks that need one): the ``k_len`` tail; with ``causal``, token ``t`` of ``n_q`` sees keys
``j <= kv_len - n_q + t``; ``head_mask`` bit ``g`` clear drops the chunk for head ``g`` of the group.

Split-KV: an item with ``num_splits == 1`` writes ``o``/``lse``. Otherwise it writes its normalised fp32 partial
to ``part_o[slot]`` / ``part_lse[slot]``, then ``atomicAdd(&counters[slot_base], 1)``; the CTA that sees
``num_splits - 1`` merges the row tile's ``num_splits`` partials (slots ``slot_base ..``) into ``o``/``lse`` and
resets the counter to 0, so counters are zero between launches (plans are reusable and CUDA-graph capturable).
Empty rows (no allowed key) give O = 0 and LSE = -inf. The item count is ``*num_items_ptr`` when that pointer is
nonzero (device-built plans), else ``num_items``; CTAs past it exit.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

from varblock.decode_plan import abi

from . import common
from .registry import ARCHES, Family, Param, Variant, pointer_requires

FAMILY_NAME = "decode_fwd"
DTYPES = (("fp16", "float16"), ("bf16", "bfloat16"))
HEAD_DIMS = abi.HEAD_DIMS
TILE_MS = abi.TILE_MS
_DT_BYTES = 2
_VEC = 8  # elements per 16-byte vector

#: dynamic shared memory an arch's variants may use (sm80 cubins also run on sm86/sm89 with 99 KB)
SMEM_LIMIT = {"sm80": 99 * 1024, "sm90": 227 * 1024, "sm100": 227 * 1024, "sm120": 99 * 1024}
_BIG_SMEM = ("sm90", "sm100")

#: (tile_n, stages) per (big shared memory?, head_dim, tile_m)
_CONFIGS = {
    (True, 64, 16): (64, 4), (True, 64, 64): (64, 4),
    (True, 128, 16): (64, 3), (True, 128, 64): (64, 3),
    (True, 256, 16): (64, 2), (True, 256, 64): (32, 3),
    (False, 64, 16): (64, 4), (False, 64, 64): (64, 3),
    (False, 128, 16): (64, 2), (False, 128, 64): (64, 2),
    (False, 256, 16): (32, 2), (False, 256, 64): (32, 2),
}

PARAMS: tuple[Param, ...] = (
    Param("q", "ptr", 16),  # [total_q, Hq, D]
    Param("k_cache", "ptr", 16),  # paged [num_pages, page_size, Hkv, D] or contiguous [total_k, Hkv, D]
    Param("v_cache", "ptr", 16),
    Param("o", "ptr", 16),  # [total_q, Hq, D]
    Param("lse", "ptr", 4),  # [Hq, total_q] fp32, token stride 1
    Param("cu_seqlens_q", "ptr", 4),  # int32 [B+1]
    Param("cu_seqlens_k", "ptr", 4),  # int32 [B+1] (contiguous cache only; else 0)
    Param("page_table", "ptr", 4),  # int32 [B, pt_stride] (paged only; else 0)
    Param("items", "ptr", 4),  # int32 [W, ITEM_WIDTH]
    Param("chunks", "ptr", 4),  # int32 [C, CHUNK_WIDTH]
    Param("part_o", "ptr", 16),  # fp32 [slots, tile_m, D] split workspace (0 if no item splits)
    Param("part_lse", "ptr", 4),  # fp32 [slots, tile_m]
    Param("counters", "ptr", 4),  # int32 [slots], zero between launches
    Param("num_items_ptr", "ptr", 4),  # int32 [1] or 0
    Param("q_stride_tok", "i64"),
    Param("q_stride_head", "i64"),
    Param("k_stride_page", "i64"),  # element strides of the caches (contiguous: page stride unused)
    Param("k_stride_tok", "i64"),
    Param("k_stride_head", "i64"),
    Param("v_stride_page", "i64"),
    Param("v_stride_tok", "i64"),
    Param("v_stride_head", "i64"),
    Param("o_stride_tok", "i64"),
    Param("o_stride_head", "i64"),
    Param("lse_stride_head", "i64"),
    Param("pt_stride", "i64"),  # page table row stride (elements)
    Param("num_items", "i32"),
    Param("softmax_scale_log2", "f32"),  # softmax_scale * log2(e)
    Param("group_size", "i32"),  # G = Hq / Hkv
    Param("page_size", "i32"),
    Param("paged", "i32"),  # 1: page table addressing; 0: contiguous (cu_seqlens_k)
    Param("causal", "i32"),  # 1: causal within the new tokens (bottom-right aligned)
    Param("num_ctas", "i32"),  # the grid size (>= the item count)
)
PARAM_NAMES = tuple(p.name for p in PARAMS)


def tile_config(arch: str, head_dim: int, tile_m: int) -> dict[str, int]:
    """Static configuration of one variant: tile_m, tile_n, stages, warps_m, warps_n, num_warps."""
    tile_n, stages = _CONFIGS[(arch in _BIG_SMEM, head_dim, tile_m)]
    warps_m = tile_m // 16
    warps_n = max(1, min(4 // warps_m, tile_n // 16))
    return {"tile_m": tile_m, "tile_n": tile_n, "stages": stages, "warps_m": warps_m, "warps_n": warps_n,
            "num_warps": warps_m * warps_n}


def smem_bytes(cfg: dict[str, int], head_dim: int) -> int:
    """Dynamic shared memory of a variant: sQ, the K/V ring (reused as the fp32 epilogue buffer), per-warp row
    statistics and per-row scratch, each 1024-byte aligned, total rounded up to 1024."""

    def up(x: int, a: int) -> int:
        return (x + a - 1) // a * a

    tm, tn, st, wn = cfg["tile_m"], cfg["tile_n"], cfg["stages"], cfg["warps_n"]
    ring = 2 * st * tn * head_dim * _DT_BYTES
    assert wn * tm * head_dim * 4 <= ring, "the epilogue buffer must fit in the K/V ring"
    off = 0
    for size, align in ((tm * head_dim * _DT_BYTES, 1024), (ring, 1024), (8 * wn * tm, 16), (12 * tm, 16),
                        (16, 16)):
        off = up(off, align) + size
    return up(off, 1024)


def variant_name(dtype: str, head_dim: int, tile_m: int) -> str:
    return f"{FAMILY_NAME}_{dtype}_d{head_dim}_m{tile_m}"


def _requires() -> tuple[dict[str, Any], ...]:
    req = list(pointer_requires(PARAMS))
    for s in ("q_stride_tok", "q_stride_head", "k_stride_page", "k_stride_tok", "k_stride_head", "v_stride_page",
              "v_stride_tok", "v_stride_head", "o_stride_tok", "o_stride_head"):
        req.append({"what": f"{s} multiple of {_VEC} elements (16 bytes)", "value": s, "divisible_by": _VEC})
    req += [
        {"what": "num_items >= 0", "value": "num_items", "range": [0, 2**31 - 1]},
        {"what": "num_ctas >= 1", "value": "num_ctas", "range": [1, 2**31 - 1]},
        {"what": "group_size >= 1", "value": "group_size", "range": [1, 2**20]},
        {"what": "page_size >= 1", "value": "page_size", "range": [1, 2**30]},
        {"what": "paged in 0..1", "value": "paged", "range": [0, 1]},
        {"what": "causal in 0..1", "value": "causal", "range": [0, 1]},
    ]
    return tuple(req)


def variants(arch: str) -> list[Variant]:
    if arch not in ARCHES:
        raise ValueError(f"unknown arch {arch!r}")
    out = []
    for dtype, dtype_name in DTYPES:
        for d in HEAD_DIMS:
            for tm in TILE_MS:
                cfg = tile_config(arch, d, tm)
                smem = smem_bytes(cfg, d)
                assert smem <= SMEM_LIMIT[arch], (arch, d, tm, smem)
                name = variant_name(dtype, d, tm)
                out.append(Variant(
                    family=FAMILY_NAME, name=name, arch=arch,
                    key={"dtype": dtype_name, "head_dim": d, "tile_m": tm},
                    params=PARAMS, block=(32 * cfg["num_warps"], 1, 1), grid=("num_ctas", 1, 1),
                    requires=_requires(),
                    extra={**cfg, "smem_bytes": smem, "entry": f"vb_{name}_0", "lse_token_stride": 1},
                ))
    return out


FAMILY = Family(name=FAMILY_NAME, module=__name__, variants=variants,
                sources=(__file__, str(Path(__file__).with_name("_decode_fwd_impl.py")),
                         str(Path(abi.__file__)), *common.SOURCES))


def capture_cases(variant: Variant) -> list[dict[str, Any]]:
    """Realistic parameter sets (fake pointers) for the launch-capture check."""
    base = 0x7F0000000000
    d = variant.key["head_dim"]
    cases = []
    shapes = [  # (num_items, Hq, Hkv, total_q, page_size, paged, causal, num_ctas, null pointers)
        (1, 1, 1, 1, 1, 0, 0, 1, ("page_table", "part_o", "part_lse", "counters", "num_items_ptr")),
        (2048, 64, 8, 256, 64, 1, 1, 2048, ("cu_seqlens_k", "num_items_ptr")),
        (0, 32, 8, 4096, 16, 1, 1, 8192, ("cu_seqlens_k",)),
        (77, 8, 2, 123, 128, 0, 1, 77, ("page_table", "num_items_ptr")),
    ]
    for i, (nw, hq, hkv, tq, ps, paged, causal, nctas, nulls) in enumerate(shapes):
        c: dict[str, Any] = {}
        for j, p in enumerate(variant.params):
            if p.kind == "ptr":
                c[p.name] = 0 if p.name in nulls else base + (i << 36) + (j << 30)
        c.update(
            q_stride_tok=hq * d, q_stride_head=d, k_stride_page=ps * hkv * d, k_stride_tok=hkv * d,
            k_stride_head=d, v_stride_page=ps * 2 * hkv * d, v_stride_tok=2 * hkv * d, v_stride_head=d,
            o_stride_tok=hq * d, o_stride_head=d, lse_stride_head=tq, pt_stride=1000 + i,
            num_items=nw, softmax_scale_log2=(1.0 / math.sqrt(d)) * math.log2(math.e), group_size=hq // hkv,
            page_size=ps, paged=paged, causal=causal, num_ctas=nctas,
        )
        cases.append(c)
    return cases


def compile_args(variant: Variant):
    """``(host_jit_function, args)`` for ``cute.compile``; fake (null) pointers and unit scalars."""
    import cutlass

    from ._dsl import dsl_dtype
    from .common.signature import fake_args

    dtype = dsl_dtype(variant.key["dtype"])
    elem = {"q": dtype, "k_cache": dtype, "v_cache": dtype, "o": dtype, "lse": cutlass.Float32,
            "part_o": cutlass.Float32, "part_lse": cutlass.Float32}
    args = fake_args(variant.params, elem)
    e = variant.extra
    host = _make_host(variant.name, variant.key["dtype"], variant.key["head_dim"], e["tile_m"], e["tile_n"],
                      e["stages"], e["warps_m"], e["warps_n"])
    return host, args


@functools.cache
def _make_host(name: str, dtype_name: str, D: int, tile_m: int, tile_n: int, stages: int, warps_m: int,
               warps_n: int):
    from ._decode_fwd_impl import make_host

    return make_host(name, PARAMS, dtype_name, D, tile_m, tile_n, stages, warps_m, warps_n)
