"""Device-side builder of fixed-capacity decode work lists (no host synchronisation, CUDA-graph capturable).

Writes exactly what :func:`varblock.decode_plan.fixed.fixed_worklist` (the NumPy twin, see it for the rules)
returns: ``items`` ``[num_items, ITEM_WIDTH]``, ``chunks`` ``[num_groups * chunk_cap, CHUNK_WIDTH]`` and ``status``
``[2] = (num_items, error)``, from the device ``cu_seqlens_q``, KV lengths (``kv_lens`` or, when that pointer is
0, ``cu_seqlens_k``) and, for top-k sparsity, ``block_idx [B, Hkv, topk]`` (+ optional ``block_cnt [B, Hkv]``;
pointer 0 = dense). One thread per chunk slot and per item (grid ``ceil(max(slots, items) / 128)``); no thread
depends on another, so no scan and no atomics (``status[1]`` is only ever set to ERR_CAPACITY).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from varblock.decode_plan import abi

from . import common
from .registry import ARCHES, Family, Param, Variant, pointer_requires

FAMILY_NAME = "decode_prepare"
THREADS = 128

PARAMS: tuple[Param, ...] = (
    Param("cu_seqlens_q", "ptr", 4),
    Param("kv_lens", "ptr", 4),  # int32 [B] or 0
    Param("cu_seqlens_k", "ptr", 4),  # int32 [B+1] (read when kv_lens is 0)
    Param("block_idx", "ptr", 4),  # int32 [B, Hkv, topk] or 0 (dense)
    Param("block_cnt", "ptr", 4),  # int32 [B, Hkv] or 0 (every listed entry counts)
    Param("items", "ptr", 4),
    Param("chunks", "ptr", 4),
    Param("status", "ptr", 4),
    Param("bi_stride_b", "i64"),  # element strides of block_idx (last dim contiguous)
    Param("bi_stride_h", "i64"),
    Param("bc_stride_b", "i64"),  # element strides of block_cnt
    Param("bc_stride_h", "i64"),
    Param("num_groups", "i32"),  # B * Hkv
    Param("num_heads_kv", "i32"),
    Param("group_size", "i32"),
    Param("tile_m", "i32"),
    Param("tile_n", "i32"),
    Param("row_tiles", "i32"),
    Param("splits", "i32"),
    Param("chunk_cap", "i32"),
    Param("block_size", "i32"),
    Param("topk", "i32"),
    Param("num_items", "i32"),  # num_groups * row_tiles * splits
)
PARAM_NAMES = tuple(p.name for p in PARAMS)
GRID = (["cdiv", ["max", ["mul", "num_groups", "chunk_cap"], "num_items"], THREADS], 1, 1)


def variants(arch: str) -> list[Variant]:
    if arch not in ARCHES:
        raise ValueError(f"unknown arch {arch!r}")
    requires = pointer_requires(PARAMS) + (
        {"what": "num_groups * chunk_cap (chunk rows)", "value": ["mul", "num_groups", "chunk_cap"],
         "range": [0, 2**31 // abi.CHUNK_WIDTH - 1]},
        {"what": "num_items", "value": "num_items", "range": [0, 2**31 // abi.ITEM_WIDTH - 1]},
        {"what": "tile_n >= 1", "value": "tile_n", "range": [1, 2**20]},
        {"what": "tile_m >= 1", "value": "tile_m", "range": [1, 2**20]},
        {"what": "splits >= 1", "value": "splits", "range": [1, 2**20]},
        {"what": "row_tiles >= 1", "value": "row_tiles", "range": [1, 2**20]},
        {"what": "num_heads_kv >= 1", "value": "num_heads_kv", "range": [1, 2**20]},
        {"what": "group_size >= 1", "value": "group_size", "range": [1, 2**20]},
        {"what": "block_size >= 0", "value": "block_size", "range": [0, 2**30]},
        {"what": "topk >= 0", "value": "topk", "range": [0, 2**30]},
    )
    return [Variant(family=FAMILY_NAME, name=f"decode_prepare_{arch}", arch=arch, key={}, params=PARAMS,
                    block=(THREADS, 1, 1), grid=GRID, requires=requires, extra={"threads": THREADS})]


FAMILY = Family(name=FAMILY_NAME, module=__name__, variants=variants,
                sources=(__file__, str(Path(__file__).with_name("_decode_prepare_dsl.py")), abi.__file__,
                         *common.SOURCES))


def capture_cases(variant: Variant) -> list[dict[str, Any]]:
    """Realistic argument sets (fake device addresses) for the launch-capture check."""
    cases = []
    for ng, hkv, g, tm, tn, rt, s, cap, bs, k, dense in ((512, 8, 8, 16, 64, 1, 2, 512, 0, 0, True),
                                                         (8, 8, 8, 16, 64, 1, 64, 2048, 64, 512, False),
                                                         (3, 3, 1, 64, 32, 2, 1, 7, 128, 2, False)):
        cases.append({
            "cu_seqlens_q": 0x7F0000000000, "kv_lens": 0x7F0000001000, "cu_seqlens_k": 0,
            "block_idx": 0 if dense else 0x7F1000000000, "block_cnt": 0 if dense else 0x7F1100000000,
            "items": 0x7F2000000000, "chunks": 0x7F3000000000, "status": 0x7F3100000000,
            "bi_stride_b": hkv * k, "bi_stride_h": k, "bc_stride_b": hkv, "bc_stride_h": 1,
            "num_groups": ng, "num_heads_kv": hkv, "group_size": g, "tile_m": tm, "tile_n": tn, "row_tiles": rt,
            "splits": s, "chunk_cap": cap, "block_size": bs, "topk": k, "num_items": ng * rt * s,
        })
    return cases


def compile_args(variant: Variant):
    """The host function and its compile-time arguments (imports the DSL: build time only)."""
    from varblock.kernels._decode_prepare_dsl import make_host

    return make_host(variant)
