"""The runtime side of the device layout builder: fixed-capacity buffers and the launches of the
``layout_device`` kernels (``varblock/kernels/layout_device.py``), with no host synchronisation and no allocation
per build, so a build can be captured in a CUDA graph.

A :class:`DeviceLayoutBuilder` is made once per (mask shape, batch size, heads, block / tile sizes, band, capacity);
:meth:`DeviceLayoutBuilder.build` launches the kernels on a stream for a block mask or top-k indices on the GPU and
device ``cu_seqlens``. The tables it writes are described in :mod:`varblock.device_layout.codes`; their exact NumPy
model is :mod:`varblock.device_layout.model`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from varblock.abi import CHUNK_WIDTH, STATUS_ERROR, TILE_WIDTH
from varblock.device_layout.codes import (
    COL_ENTRY_WIDTH,
    COL_PART_WIDTH,
    COL_WIDTH,
    ENTRY_WIDTH,
    ERROR_NAMES,
    ROW_PART_WIDTH,
    ROW_WIDTH,
    STATUS_DETAIL,
    STATUS_NUM_CHUNKS,
    STATUS_NUM_COLS,
    STATUS_NUM_ENTRIES,
    STATUS_NUM_ROWS,
    STATUS_NUM_TILES,
    STATUS_WIDTH,
)
from varblock.device_layout.model import DeviceLayoutArrays, Geometry, check_geometry, num_groups
from varblock.runtime.launch import launch_variant
from varblock.runtime.memory import DeviceBuffer
from varblock.runtime.select import variant_for
from varblock.runtime.tensors import DeviceArray, as_device_array

FAMILY = "layout_device"
_I32_LIMIT = 2**31 - 1
_BYTE_DTYPES = ("bool", "uint8", "int8")


def mask_kind(a: DeviceArray) -> tuple[str, int]:
    """(cells variant, codes flag) for a device mask: bool = kept cells; (u)int8 / int32 = codes 0/1/2."""
    name = a.dtype.rsplit(".", 1)[-1]
    if name in _BYTE_DTYPES:
        return "uint8", int(name != "bool")
    if name == "int32":
        return "int32", 1
    raise TypeError(f"mask: expected a bool, int8, uint8 or int32 block mask, got dtype {a.dtype}")


def check_contiguous(a: DeviceArray, ndim: int, what: str) -> None:
    """A C-contiguous ``ndim``-D device array (strides in elements)."""
    if len(a.shape) != ndim:
        raise ValueError(f"{a.name}: expected a {ndim}-D array {what}, got shape {a.shape}")
    expect, acc = [], 1
    for s in reversed(a.shape):
        expect.append(acc)
        acc *= max(int(s), 1)
    if any(sh > 1 and st != e for sh, st, e in zip(a.shape, a.strides, reversed(expect))):
        raise ValueError(f"{a.name}: expected a contiguous array, got strides {a.strides} for shape {a.shape}")


@dataclass
class BuildInputs:
    """Device pointers of one build: the source and the caller's ``cu_seqlens`` (the scan kernel copies them into
    the builder's ``cu_seqlens_q/k`` buffers, which the attention kernels read)."""

    cu_q: int
    cu_k: int
    mask: int = 0  #: block mask [Bm, H, MB, NB] (0 with top-k)
    mask_variant: str = "uint8"
    codes: int = 0
    indices: int = 0  #: top-k indices / partial list [Bm, H, MB, K] int32 (0 with a mask)
    counts: int = 0  #: their counts [Bm, H, MB] int32 (0 = none)
    k: int = 0
    lists: bool = False  #: FA4 / FlexAttention lists: codes 1 (partial list) and 2 (full list), strict order
    pad_ok: bool = False  #: indices in [N_b, NB) are padding (FlexAttention), not errors
    full_indices: int = 0  #: full list [Bm, H, MB, K2] int32 (0 = none)
    full_counts: int = 0
    k2: int = 0
    token: bool = False  #: ``mask`` is a SeerAttention 1D token mask [Bm, H, T, NB] (``Geometry.q_tokens`` = T)


class DeviceLayoutBuilder:
    """Buffers and launches for one device layout geometry (see the module docstring)."""

    def __init__(self, geo: Geometry, ordinal: int, stream: Any, topk_k: int = 0, full_k: int = 0,
                 token: bool = False):
        check_geometry(geo)
        self.geo = geo
        self.ordinal = ordinal
        H, B, MB, NB = geo.num_layout_heads, geo.batch, geo.mb, geo.nb
        cells = H * B * MB * NB
        if cells * -(-geo.block_k // geo.tile_n) > _I32_LIMIT or geo.mask_batch * H * MB * max(NB, topk_k) > \
                _I32_LIMIT:
            raise ValueError(f"mask: {cells} cells (x chunks per block) exceed the kernels' int32 indexing")
        if geo.max_tiles * TILE_WIDTH > _I32_LIMIT or geo.max_chunks * CHUNK_WIDTH > _I32_LIMIT or \
                geo.max_entries * COL_ENTRY_WIDTH > _I32_LIMIT:
            raise ValueError(f"max_kept_blocks: {geo.max_entries} makes the tables exceed int32 indexing")
        rows_pad, cols_pad = H * B * MB, H * B * NB
        rg, cg = max(num_groups(rows_pad), 1), max(num_groups(cols_pad), 1)
        st = stream
        self.buffers: dict[str, DeviceBuffer] = {
            "info": DeviceBuffer(ordinal, 4 * cells, st),
            "row_counts": DeviceBuffer(ordinal, 16 * rows_pad, st),
            "col_counts": DeviceBuffer(ordinal, 8 * cols_pad, st),
            "row_part": DeviceBuffer(ordinal, 4 * ROW_PART_WIDTH * rg, st),
            "col_part": DeviceBuffer(ordinal, 4 * COL_PART_WIDTH * cg, st),
            "row_gp": DeviceBuffer(ordinal, 4 * 4 * rg, st),
            "col_gp": DeviceBuffer(ordinal, 4 * COL_PART_WIDTH * cg, st),
            "status": DeviceBuffer.zeros(ordinal, 4 * STATUS_WIDTH, st),
            "cu_seqlens_q": DeviceBuffer(ordinal, 4 * (B + 1), st),
            "cu_seqlens_k": DeviceBuffer(ordinal, 4 * (B + 1), st),
            "rows": DeviceBuffer(ordinal, 4 * ROW_WIDTH * rows_pad, st),
            "entries": DeviceBuffer(ordinal, 4 * ENTRY_WIDTH * geo.max_entries, st),
            "tiles": DeviceBuffer(ordinal, 4 * TILE_WIDTH * geo.max_tiles, st),
            "chunks": DeviceBuffer(ordinal, 4 * CHUNK_WIDTH * geo.max_chunks, st),
            "cols": DeviceBuffer(ordinal, 4 * COL_WIDTH * cols_pad, st),
            "col_entries": DeviceBuffer(ordinal, 4 * COL_ENTRY_WIDTH * geo.max_entries, st),
        }
        if topk_k:
            topk_rows = geo.mask_batch * H * MB
            self.buffers["kept"] = DeviceBuffer(ordinal, topk_rows * NB, st)
            self.buffers["topk_err"] = DeviceBuffer(ordinal, 4 * topk_rows * (2 if full_k else 1), st)
        self.topk_k, self.full_k = int(topk_k), int(full_k)
        self.token = bool(token)
        if token:  # the packed token mask the attention kernels read: [H, B * T, NB] bytes
            if H * B * geo.q_tokens * NB > _I32_LIMIT:
                raise ValueError("mask: the token mask exceeds the kernels' int32 indexing")
            self.buffers["tok_mask"] = DeviceBuffer(ordinal, H * B * geo.q_tokens * NB, st)

    @property
    def head_mul(self) -> int:
        """Tile head = layout head * head_mul + tile-head index (see ``Geometry.tile_heads``)."""
        g = self.geo
        if g.pack_gqa > 1:
            return 0 if g.head_mode == "broadcast" else 1
        return {"per_q_head": 1, "per_kv_head": g.num_heads_q // g.num_heads_kv, "broadcast": 0}[g.head_mode]

    def ptr(self, name: str) -> int:
        b = self.buffers.get(name)
        return 0 if b is None else b.ptr

    def build(self, src: BuildInputs, stream: Any) -> None:
        """Launch the kernels on ``stream`` (no host synchronisation, no allocation)."""
        g = self.geo
        H, B, MB, NB = g.num_layout_heads, g.batch, g.mb, g.nb
        rg, cg = num_groups(H * B * MB), num_groups(H * B * NB)
        common = dict(cu_seqlens_q=src.cu_q, cu_seqlens_k=src.cu_k, mask_batch=g.mask_batch, batch=B,
                      num_layout_heads=H, mb=MB, nb=NB, block_q=g.block_q, block_k=g.block_k, tile_n=g.tile_n)
        mask_ptr, variant, codes, topk_rows = src.mask, src.mask_variant, src.codes, 0
        if src.indices:
            if (src.k, src.k2) != (self.topk_k, self.full_k):
                raise ValueError(f"indices: this plan was built for ({self.topk_k}, {self.full_k}) slots, got "
                                 f"({src.k}, {src.k2})")
            rows = g.mask_batch * H * MB
            entry = variant_for(FAMILY, self.ordinal, {"stage": "topk"})
            lists = [(src.indices, src.counts, src.k, 1, 1, int(src.lists), 0)]
            if src.full_indices:
                lists.append((src.full_indices, src.full_counts, src.k2, 2, 0, 1, rows * src.k))
            for i, (ind, cnt, k, value, clear, strict, offset) in enumerate(lists):
                launch_variant(entry, self.ordinal, stream, {
                    **common, "indices": ind, "counts": cnt, "kept": self.ptr("kept"),
                    "topk_err": self.ptr("topk_err") + 4 * rows * i, "k": k, "has_counts": int(cnt != 0),
                    "num_items": rows, "value": value, "clear": clear, "strict": strict,
                    "pad_ok": int(src.pad_ok), "slot_offset": offset})
            topk_rows = rows * len(lists)
            mask_ptr, variant, codes = self.ptr("kept"), "uint8", int(src.lists)
        if src.token != self.token:
            raise ValueError("mask: the plan was made for a " + ("token" if self.token else "block") + " mask")
        if self.token:
            launch_variant(variant_for(FAMILY, self.ordinal, {"stage": "pack"}), self.ordinal, stream, {
                **common, "mask": mask_ptr, "packed": self.ptr("tok_mask"), "q_tokens": g.q_tokens,
                "num_items": H * B * g.q_tokens})
            variant, codes = "token", 0
        # every buffer by name but the plan's cu_seqlens copies (the kernels read the caller's; scan writes these)
        tables = {n: self.ptr(n) for n in self.buffers if not n.startswith("cu_seqlens")}
        sizes = dict(tokens_per_tile=g.tokens_per_tile, tile_heads=g.tile_heads, max_entries=g.max_entries,
                     max_tiles=g.max_tiles, max_chunks=g.max_chunks, max_q_tokens=g.max_q_tokens)
        launch_variant(variant_for(FAMILY, self.ordinal, {"stage": "cells", "mask_dtype": variant}), self.ordinal,
                       stream, {**common, **tables, **sizes, "mask": mask_ptr, "window_left": g.window_left,
                                "window_right": g.window_right, "codes": codes,
                                "num_groups": rg if self.token else rg + cg, "q_tokens": g.max_q_tokens})
        if self.token:  # columns counted from the classified cells (a token mask is costly to read by column)
            launch_variant(variant_for(FAMILY, self.ordinal, {"stage": "cols"}), self.ordinal, stream, {
                **common, **tables, "num_groups": cg})
        launch_variant(variant_for(FAMILY, self.ordinal, {"stage": "scan"}), self.ordinal, stream, {
            **common, **tables, **sizes, "topk_err": self.ptr("topk_err"), "topk_rows": topk_rows,
            "cu_copy_q": self.ptr("cu_seqlens_q"), "cu_copy_k": self.ptr("cu_seqlens_k")})
        launch_variant(variant_for(FAMILY, self.ordinal, {"stage": "fill"}), self.ordinal, stream, {
            **common, **tables, **sizes, "head_mul": self.head_mul, "num_groups": rg + cg})

    # ------------------------------------------------------------------------------------------ host reads (sync)
    def read_status(self) -> np.ndarray:
        """The status word (a synchronous copy: for checks and tests, not for the hot path)."""
        return self.buffers["status"].to_host(np.int32, STATUS_WIDTH)

    def to_host(self) -> DeviceLayoutArrays:
        """Every table, compact (synchronous copies; tests and debugging)."""
        s = self.read_status()

        def table(name: str, count_word: int, width: int) -> np.ndarray:
            n = int(s[count_word])
            return self.buffers[name].to_host(np.int32, n * width).reshape(n, width)

        return DeviceLayoutArrays(
            status=s, rows=table("rows", STATUS_NUM_ROWS, ROW_WIDTH),
            entries=table("entries", STATUS_NUM_ENTRIES, ENTRY_WIDTH),
            tiles=table("tiles", STATUS_NUM_TILES, TILE_WIDTH), chunks=table("chunks", STATUS_NUM_CHUNKS, CHUNK_WIDTH),
            cols=table("cols", STATUS_NUM_COLS, COL_WIDTH),
            col_entries=table("col_entries", STATUS_NUM_ENTRIES, COL_ENTRY_WIDTH))


def describe_status(status: np.ndarray) -> str:
    """A readable sentence for a status word."""
    code, detail = int(status[STATUS_ERROR]), int(status[STATUS_DETAIL])
    name = ERROR_NAMES.get(code, f"unknown error {code}")
    if code == 0:
        return (f"ok: {int(status[STATUS_NUM_ROWS])} rows, {int(status[STATUS_NUM_ENTRIES])} kept blocks, "
                f"{int(status[STATUS_NUM_TILES])} tiles, {int(status[STATUS_NUM_CHUNKS])} chunks")
    what = {"capacity": f"{detail} kept blocks exceed max_kept_blocks",
            "mask_shape": f"sequence {detail} has more blocks than the mask's padded dims",
            "mask_value": f"mask cell {detail} (flat index) is not a code 0/1/2",
            "index": f"top-k slot {detail} (flat index) is out of range (or its row's count is)",
            "cu_seqlens": "cu_seqlens_q/k are negative or decreasing"}.get(name, "")
    return f"{name}: {what}" if what else name


def device_view(x: Any, name: str) -> DeviceArray:
    """A device array view (TypeError / ValueError naming ``name`` for host arrays)."""
    return as_device_array(x, name)
