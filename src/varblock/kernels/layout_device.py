"""Device-side LAYOUT builder: a padded block mask (or top-k block indices) on the GPU -> the canonical layout's
kernel-facing tables (rows + entries, the forward's tiles + chunks, the key-major columns + entries the backward
needs), in fixed-capacity buffers, with no host synchronisation (capturable in a CUDA graph).

Kernels (one variant each per arch; ``cells`` has one per mask element type), run in this order on one stream:

* ``topk`` (optional source, launched once per index list): one warp per padded row ``(b, hl, m)`` of ``indices
  [Bm, H, MB, K]`` zeroes its row of the cell codes ``[Bm, H, MB, NB]`` (uint8; ``clear``) and writes ``value`` at
  the listed cells (top-k: 1 = kept; FA4 / FlexAttention: 1 = partial list, then 2 = full list); bad slots (range,
  ``strict`` ascending order, a full block already partial) -> ``topk_err`` (per row, flat slot + ``slot_offset``).
* ``pack`` (SeerAttention 1D token masks): one warp per (head, sequence, token) row copies the token mask ``[Bm, H,
  T, NB]`` into the packed ``[H, B * T, NB]`` the attention kernels read as their token mask.
* ``cells``: one CTA per GROUP of ``WARPS`` padded layout rows ``(hl, b, m)`` (a warp each: classify the row's
  cells inside its sequence — every cell for integer codes, which are validated — with warp ballots giving each
  kept cell its position in the row's full / partial group, written to ``info``; count entries and chunks), then
  one CTA per group of padded columns ``(hl, b, n)`` (a warp counts a column's full / partial cells); each CTA
  writes its group's sums of the scanned quantities (``row_part`` / ``col_part``; token masks: the separate
  ``cols`` kernel counts the columns from ``info`` instead, one read per cell rather than one per token).
* ``scan``: one CTA validates ``cu_seqlens`` and the mask shape, scans the GROUP sums (coalesced, 1024 groups per
  step: exclusive prefixes ``row_gp`` / ``col_gp``), checks the capacities, writes the status word and the plan's
  copies of ``cu_seqlens``.
* ``fill``: the same CTAs as ``cells``; a warp adds the rows (columns) before its own in the group to the group's
  prefix and writes every table at those offsets (nothing when status says error).

The exact NumPy model is :mod:`varblock.device_layout.model` (one function per kernel); formats and error codes are
in :mod:`varblock.device_layout.codes`. Every index fits in int32 (the runtime checks ``B * H * MB * NB *
ceil(block_k / tile_n) < 2**31`` and the capacities before launching).

This module imports ``cutlass`` only inside functions, so the registry can list variants without the DSL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import abi
from ..device_layout import codes
from . import common
from .registry import ARCHES, Family, Param, Variant

FAMILY_NAME = "layout_device"
WARPS = codes.GROUP  #: warps per CTA of the per-row kernels (topk, pack, cells, cols, fill): one per row / column
SCAN_THREADS = 1024  #: the scan kernel's single CTA (32 warps: the second scan level is one warp)
#: cells variants: bool / int8 / uint8 block masks read as bytes, int32 codes, SeerAttention 1D token masks (bytes)
MASK_DTYPES = ("uint8", "int32", "token")


def _ptrs(*names: str) -> tuple[Param, ...]:
    return tuple(Param(n, "ptr", 4 if n not in ("mask", "kept", "packed") else 1) for n in names)


def _i32(*names: str) -> tuple[Param, ...]:
    return tuple(Param(n, "i32") for n in names)


#: kernel parameters per stage, in ABI order
PARAMS: dict[str, tuple[Param, ...]] = {
    "topk": _ptrs("indices", "counts", "cu_seqlens_q", "cu_seqlens_k", "kept", "topk_err")
    + _i32("mask_batch", "batch", "num_layout_heads", "mb", "nb", "k", "block_q", "block_k", "has_counts",
           "num_items", "value", "clear", "strict", "pad_ok", "slot_offset"),
    "pack": _ptrs("mask", "packed", "cu_seqlens_q", "cu_seqlens_k")
    + _i32("mask_batch", "batch", "num_layout_heads", "q_tokens", "nb", "block_k", "num_items"),
    "cells": _ptrs("mask", "cu_seqlens_q", "cu_seqlens_k", "info", "row_counts", "col_counts", "row_part",
                   "col_part")
    + _i32("mask_batch", "batch", "num_layout_heads", "mb", "nb", "block_q", "block_k", "tile_n", "tokens_per_tile",
           "tile_heads", "window_left", "window_right", "codes", "num_groups", "q_tokens"),
    "cols": _ptrs("info", "cu_seqlens_q", "cu_seqlens_k", "col_counts", "col_part")
    + _i32("batch", "num_layout_heads", "mb", "nb", "block_q", "block_k", "num_groups"),
    "scan": _ptrs("cu_seqlens_q", "cu_seqlens_k", "row_part", "col_part", "topk_err", "row_gp", "col_gp",
                  "cu_copy_q", "cu_copy_k", "status")
    + _i32("batch", "num_layout_heads", "mb", "nb", "block_q", "block_k", "topk_rows", "max_entries", "max_tiles",
           "max_chunks", "max_q_tokens"),
    "fill": _ptrs("status", "cu_seqlens_q", "cu_seqlens_k", "info", "row_counts", "col_counts", "row_gp", "col_gp",
                  "rows", "entries", "tiles", "chunks", "cols", "col_entries")
    + _i32("batch", "num_layout_heads", "mb", "nb", "block_q", "block_k", "tile_n", "tokens_per_tile", "tile_heads",
           "head_mul", "num_groups", "max_entries", "max_tiles", "max_chunks"),
}
GRIDS: dict[str, tuple[Any, Any, Any]] = {
    "topk": (["cdiv", "num_items", WARPS], 1, 1),
    "pack": (["cdiv", "num_items", WARPS], 1, 1),
    "cols": ("num_groups", 1, 1),
    "cells": ("num_groups", 1, 1),
    "scan": (1, 1, 1),
    "fill": ("num_groups", 1, 1),
}
STAGES = tuple(PARAMS)


def variants(arch: str) -> list[Variant]:
    if arch not in ARCHES:
        raise ValueError(f"unknown arch {arch!r}")
    out = []
    for stage in STAGES:
        params = PARAMS[stage]
        requires = tuple({"what": f"{p.name} address", "value": p.name, "divisible_by": p.align}
                         for p in params if p.kind == "ptr")
        block = (SCAN_THREADS if stage == "scan" else 32 * WARPS, 1, 1)
        dtypes = MASK_DTYPES if stage == "cells" else (None,)
        for dt in dtypes:
            key = {"stage": stage, **({"mask_dtype": dt} if dt else {})}
            name = f"layout_device_{stage}{'_' + dt if dt else ''}_{arch}"
            out.append(Variant(family=FAMILY_NAME, name=name, arch=arch, key=key, params=params, block=block,
                               grid=GRIDS[stage], requires=requires, extra={"warps": WARPS}))
    return out


FAMILY = Family(name=FAMILY_NAME, module=__name__, variants=variants,
                sources=(__file__, str(Path(__file__).with_name("_layout_device_impl.py")),
                         str(Path(__file__).with_name("_layout_device_fill_impl.py")),
                         str(Path(__file__).with_name("_layout_device_scan_impl.py")), abi.__file__, codes.__file__,
                         *common.SOURCES))


def capture_cases(variant: Variant) -> list[dict[str, Any]]:
    """Realistic argument sets (fake device addresses) for the launch-capture check."""
    cases = []
    for i, (b, h, mb, nb) in enumerate(((8, 32, 26, 26), (3, 4, 5, 7), (0, 1, 0, 0))):
        vals: dict[str, Any] = {}
        for j, p in enumerate(variant.params):
            if p.kind == "ptr":
                vals[p.name] = 0x7F0000000000 + (j << 24) + (i << 12)
        rows_pad, cols_pad = h * b * mb, h * b * nb
        vals.update(value=1 + i % 2, clear=1 - i % 2, strict=i % 2, pad_ok=i % 2, slot_offset=i * 1000)
        vals.update(mask_batch=b, batch=b, num_layout_heads=h, mb=mb, nb=nb, k=3, block_q=128, block_k=64,
                    has_counts=i % 2, tile_n=64, window_left=-1 if i else 100, window_right=0, codes=i % 2,
                    tokens_per_tile=128, tile_heads=1, head_mul=1, topk_rows=b * h * mb, max_entries=1000 + i,
                    max_tiles=rows_pad, max_chunks=2000, q_tokens=mb * 100 + i, max_q_tokens=mb * 128)
        vals["num_items"] = {"topk": b * h * mb, "pack": h * b * mb * 100}.get(variant.key["stage"], 0)
        row_groups, col_groups = -(-rows_pad // WARPS), -(-cols_pad // WARPS)
        vals["num_groups"] = {"cols": col_groups}.get(variant.key["stage"], row_groups + col_groups)
        if variant.key.get("mask_dtype") == "token":
            vals["num_groups"] = row_groups
        cases.append({p.name: vals[p.name] for p in variant.params})
    return cases


def compile_args(variant: Variant):
    """The host function and its compile-time arguments (imports the DSL: build time only)."""
    if variant.key["stage"] in ("topk", "pack", "cells", "cols"):
        from varblock.kernels._layout_device_impl import make_host
    elif variant.key["stage"] == "scan":
        from varblock.kernels._layout_device_scan_impl import make_host
    else:
        from varblock.kernels._layout_device_fill_impl import make_host
    return make_host(variant)
