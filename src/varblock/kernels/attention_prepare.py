"""Device-side PREPARE of the attention work list for dense / causal / sliding-window varlen attention.

When ``cu_seqlens_q/k`` live on the GPU (training), the work list is built on the device, with no host
synchronisation, from the device ``cu_seqlens``. The NumPy model :func:`varblock.dense_worklist.dense_worklist`
produces exactly the arrays this kernel writes (same order); see that module for the format and the band rules.

Work list written (``docs/contracts.md`` section 2, dense form):

* ``tiles`` int32 ``[T, 8]`` = ``(batch, head, q_start, q_len, chunk_begin, n_full, n_partial, n_left)``; chunk ``i``
  of a tile (``0 <= i < n_full + n_partial``, at ``chunks[chunk_begin + i]``) is partial iff ``i < n_left or
  i >= n_left + n_full``. Order: sequences in batch order; within a sequence m-blocks from last to first; tile
  heads innermost. ``tokens per tile = tile_m // pack_gqa``.
* ``chunks`` int32 ``[C, 2]`` = ``(k_start, k_len)``: per sequence ``b``, ``(j * tile_n, min(tile_n, len_k - j *
  tile_n))`` for ``j < ceil(len_k / tile_n)``, stored at offset ``sum_{b' < b} ceil(len_k_b' / tile_n)``.
* ``status`` int32 ``[2]`` = ``(num_tiles, error)``: error 0 = ok, 1 = a capacity (``max_tiles`` / ``max_chunks``)
  would be exceeded, 2 = ``cu_seqlens_q/k`` negative or not non-decreasing, 3 = bad scalar parameters (``batch <
  0``, ``num_tile_heads < 1``, ``pack_gqa < 1``, ``tile_m < pack_gqa``, ``tile_n < 1``). On error ``num_tiles = 0``
  and neither ``tiles`` nor ``chunks`` is written. Nothing is ever written out of bounds.
* ``scratch`` int32 ``[2 * (B + 1)]``: workspace, overwritten (``[0, B]``: exclusive prefix of the m-block counts
  ``ceil(len_q / tpt)``, total at ``B``; ``[B + 1, 2B + 1]``: exclusive prefix of the chunk counts). No zeroing
  needed.

Algorithm: one CTA of ``THREADS`` threads (grid ``(1, 1, 1)``). (1) Each thread validates a contiguous range of
``ceil(B / THREADS)`` sequences and sums their m-block and chunk counts; a block-wide scan (warp shuffles + one
shared-memory round) gives every thread its exclusive prefix and the totals; every thread derives the same
decision (error / ``T``). (2) Each thread writes its sequences' prefixes to ``scratch``; thread 0 writes
``status``. Barrier. (3) Threads stride over tiles (``t = tid, tid + THREADS, ...``): ``t // num_tile_heads`` is a
global m-block index, its sequence a binary search in ``scratch`` (lower bound carried between iterations, as
``t`` increases); the band is evaluated in int64. Same for chunks. Cost: ``O(B / THREADS + log B)`` per thread for
the scan, ``O((T + C) / THREADS * log B)`` for the fill.

This module imports ``cutlass`` only inside functions, so the registry can list variants without the DSL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import abi
from . import common
from .registry import ARCHES, Family, Param, Variant, pointer_requires

FAMILY_NAME = "attention_prepare"
THREADS = 512
WARPS = THREADS // 32

#: kernel parameters, in ABI order
PARAMS: tuple[Param, ...] = (
    Param("cu_seqlens_q", "ptr", 4),  # int32 [B+1] (device)
    Param("cu_seqlens_k", "ptr", 4),  # int32 [B+1] (device)
    Param("tiles", "ptr", 4),  # int32 [max_tiles, 8] output
    Param("chunks", "ptr", 4),  # int32 [max_chunks, 2] output
    Param("status", "ptr", 4),  # int32 [2] output: (num_tiles, error)
    Param("scratch", "ptr", 4),  # int32 [2 * (B + 1)] workspace
    Param("batch", "i32"),  # B
    Param("num_tile_heads", "i32"),  # query heads, or KV heads with pack-GQA
    Param("pack_gqa", "i32"),  # G (1 = off)
    Param("tile_m", "i32"),  # tile rows; tokens per tile = tile_m // pack_gqa
    Param("tile_n", "i32"),  # chunk length
    Param("window_left", "i32"),  # < 0 = unbounded
    Param("window_right", "i32"),  # < 0 = unbounded (causal: 0)
    Param("max_tiles", "i32"),  # capacity of tiles (rows)
    Param("max_chunks", "i32"),  # capacity of chunks (rows)
)
PARAM_NAMES = tuple(p.name for p in PARAMS)

GRID = (1, 1, 1)

#: int32 element offsets into tiles / chunks stay below 2**31
MAX_TILES_LIMIT = 2**31 // 8 - 1
MAX_CHUNKS_LIMIT = 2**31 // 2 - 1


def variants(arch: str) -> list[Variant]:
    if arch not in ARCHES:
        raise ValueError(f"unknown arch {arch!r}")
    requires = pointer_requires(PARAMS) + (
        {"what": "batch", "value": "batch", "range": [0, 2**30]},
        {"what": "max_tiles", "value": "max_tiles", "range": [0, MAX_TILES_LIMIT]},
        {"what": "max_chunks", "value": "max_chunks", "range": [0, MAX_CHUNKS_LIMIT]},
    )
    return [Variant(family=FAMILY_NAME, name=f"attention_prepare_{arch}", arch=arch, key={}, params=PARAMS,
                    block=(THREADS, 1, 1), grid=GRID, requires=requires, extra={"threads": THREADS})]


FAMILY = Family(name=FAMILY_NAME, module=__name__, variants=variants,
                sources=(__file__, str(Path(__file__).with_name("_attention_prepare_dsl.py")), abi.__file__,
                         *common.SOURCES))


def capture_cases(variant: Variant) -> list[dict[str, Any]]:
    """Realistic argument sets (fake device addresses) for the launch-capture check."""
    cases = []
    for b, h, g, tm, tn, wl, wr, mt, mc in ((4, 32, 1, 128, 64, -1, 0, 4096, 100),
                                            (1, 8, 4, 128, 128, 255, 0, 80, 9),
                                            (3000, 2, 8, 64, 64, -1, -1, 123456, 70000),
                                            (0, 1, 1, 1, 1, 0, 0, 0, 0)):
        cases.append({
            "cu_seqlens_q": 0x7F0000000000, "cu_seqlens_k": 0x7F0000001000, "tiles": 0x7F1000000000,
            "chunks": 0x7F2000000000, "status": 0x7F3000000000, "scratch": 0x7F3000000100,
            "batch": b, "num_tile_heads": h, "pack_gqa": g, "tile_m": tm, "tile_n": tn,
            "window_left": wl, "window_right": wr, "max_tiles": mt, "max_chunks": mc,
        })
    return cases


def compile_args(variant: Variant):
    """The host function and its compile-time arguments (imports the DSL: build time only)."""
    from varblock.kernels._attention_prepare_dsl import make_host

    return make_host(variant)
