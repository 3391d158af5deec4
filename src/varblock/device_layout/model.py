"""Exact NumPy model of the device-side layout kernels (``varblock/kernels/layout_device.py``).

Each stage computes what the corresponding kernel writes, in the same order, so the GPU tests compare the kernels'
buffers with this model byte for byte, and the CPU tests compare this model with the HOST builders
(``layout.from_block_mask(...).rows()``, ``.transposed()`` and ``worklist.build_worklist(..., longest_first=False)``)
on many random cases. Pure NumPy and vectorised.

Stages (one kernel each):

1. ``cells``: classify every cell of the padded block mask ``[Bm, H, MB, NB]`` (``Bm`` = B or 1) of every padded
   row ``p = (hl * B + b) * MB + m`` (``m < MB``): bool kept cells against the causal / window band (full where it
   allows every pair, skipped where none, partial otherwise; exact on rectangles), integer codes 0/1/2 taken as
   given; cells outside the sequence's ``M_b x N_b`` blocks are skipped. Per padded row: full / partial entry and
   chunk counts; per padded column ``q = (hl * B + b) * NB + n``: full / partial counts; per cell: its class and
   its position inside its row's class group (``cell_info``); per group of ``GROUP`` consecutive padded rows
   (columns), one CTA: the sums of the scanned quantities and the first bad code (``row_part`` / ``col_part``).
2. ``scan``: validation of ``cu_seqlens`` and of the mask shape, exclusive prefix sums over the groups (one CTA,
   coalesced), capacity checks, the status word, the plan's copies of ``cu_seqlens``.
3. ``fill``: the layout rows and entries, the forward tiles and chunks, the key-major columns and their entries; a
   row's (column's) offsets are its group's prefix plus the rows (columns) before it inside the group.

Top-k indices (``topk_cells``) are first scattered into a kept mask (one warp per padded row on the device).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from varblock.abi import (
    CHUNK_WIDTH,
    ERR_CAPACITY,
    ERR_CU_SEQLENS,
    ERR_OK,
    HEAD_MODE_BROADCAST,
    HEAD_MODE_PER_KV_HEAD,
    HEAD_MODE_PER_Q_HEAD,
    HEAD_MODES,
    TILE_WIDTH,
)
from varblock.device_layout.codes import (
    CELL_FULL,
    CELL_PARTIAL,
    CELL_POS_SHIFT,
    COL_ENTRY_WIDTH,
    COL_WIDTH,
    ENTRY_WIDTH,
    ERR_INDEX,
    ERR_MASK_SHAPE,
    ERR_MASK_VALUE,
    GROUP,
    ROW_WIDTH,
    STATUS_DETAIL,
    STATUS_ERROR,
    STATUS_NUM_CHUNKS,
    STATUS_NUM_COLS,
    STATUS_NUM_ENTRIES,
    STATUS_NUM_ROWS,
    STATUS_NUM_TILES,
    STATUS_WIDTH,
)


@dataclass(frozen=True)
class Geometry:
    """Static description of one device-layout build (what the kernels take as scalars)."""

    batch: int  #: B (sequences)
    mask_batch: int  #: Bm: B, or 1 (one mask for every sequence)
    num_layout_heads: int  #: H of the mask
    mb: int  #: padded query blocks per sequence (mask dim 2)
    nb: int  #: padded key blocks per sequence (mask dim 3)
    block_q: int
    block_k: int
    tile_m: int
    tile_n: int
    num_heads_q: int
    num_heads_kv: int
    head_mode: str
    pack_gqa: int  #: G (1 = off)
    window_left: int = -1  #: -1 = unbounded
    window_right: int = -1  #: -1 = unbounded (causal: 0)
    max_entries: int = 0  #: capacity in kept blocks
    q_tokens: int = 0  #: token-mask sources: query tokens per sequence the mask holds (0: ``mb * block_q``)

    @property
    def max_q_tokens(self) -> int:
        return self.q_tokens if self.q_tokens else self.mb * self.block_q

    @property
    def tokens_per_tile(self) -> int:
        return self.tile_m // self.pack_gqa

    @property
    def tile_heads(self) -> int:
        """Tiles per (row, query split): the query heads (or KV heads with pack-GQA) sharing one layout row."""
        group = self.num_heads_q // self.num_heads_kv
        if self.pack_gqa > 1:
            return self.num_heads_kv if self.head_mode == HEAD_MODE_BROADCAST else 1
        return {HEAD_MODE_PER_Q_HEAD: 1, HEAD_MODE_PER_KV_HEAD: group, HEAD_MODE_BROADCAST: self.num_heads_q}[
            self.head_mode]

    @property
    def max_rows(self) -> int:
        return self.num_layout_heads * self.batch * self.mb

    @property
    def max_cols(self) -> int:
        return self.num_layout_heads * self.batch * self.nb

    @property
    def max_tiles(self) -> int:
        """Tiles of the fullest possible layout of this shape (the forward tile buffer's capacity)."""
        return self.max_rows * -(-self.block_q // self.tokens_per_tile) * self.tile_heads

    @property
    def max_chunks(self) -> int:
        return self.max_entries * -(-self.block_k // self.tile_n)


def check_geometry(g: Geometry) -> None:
    """ValueError naming the argument when the scalars are what the kernels report as ERR_PARAMS."""
    if g.head_mode not in HEAD_MODES:
        raise ValueError(f"head_mode: expected one of {HEAD_MODES}, got {g.head_mode!r}")
    hq, hkv = g.num_heads_q, g.num_heads_kv
    if hq < 1 or hkv < 1 or hq % hkv:
        raise ValueError(f"num_heads_q: {hq} must be a positive multiple of num_heads_kv = {hkv}")
    want = {HEAD_MODE_PER_Q_HEAD: hq, HEAD_MODE_PER_KV_HEAD: hkv, HEAD_MODE_BROADCAST: 1}[g.head_mode]
    if g.num_layout_heads != want:
        raise ValueError(f"mask: head_mode {g.head_mode!r} needs {want} layout heads (mask dim 1), got "
                         f"{g.num_layout_heads}")
    if g.mask_batch not in (1, g.batch):
        raise ValueError(f"mask: dim 0 must be the batch size {g.batch} or 1, got {g.mask_batch}")
    for name in ("block_q", "block_k", "tile_m", "tile_n"):
        if getattr(g, name) < 1:
            raise ValueError(f"{name}: expected a positive size, got {getattr(g, name)}")
    if g.pack_gqa not in (1, hq // hkv) or g.tile_m < g.pack_gqa:
        raise ValueError(f"pack_gqa: expected 1 or the group size {hq // hkv} (<= tile_m), got {g.pack_gqa}")
    if g.pack_gqa > 1 and g.head_mode == HEAD_MODE_PER_Q_HEAD:
        raise ValueError("pack_gqa: needs a layout shared by the GQA group (per_kv_head or broadcast)")
    if g.max_entries < 0 or g.mb < 0 or g.nb < 0 or g.batch < 0:
        raise ValueError("max_kept_blocks / mask dims / batch must be >= 0")


def _cdiv(a: Any, b: Any) -> Any:
    return -(-a // b)


def _band(g: Geometry) -> tuple[int | None, int | None]:
    return (-g.window_left if g.window_left >= 0 else None), (g.window_right if g.window_right >= 0 else None)


@dataclass
class Cells:
    """Stage 1 output (per padded row / column / cell, and per group of ``GROUP`` rows / columns)."""

    info: np.ndarray  #: int32 [B*H*MB*NB] class | position << CELL_POS_SHIFT, cells ordered (hl, b, m, n)
    row_counts: np.ndarray  #: int32 [B*H*MB, 4] (n_full, n_partial, full chunks, partial chunks)
    col_counts: np.ndarray  #: int32 [B*H*NB, 2] (n_full, n_partial)
    row_part: np.ndarray  #: int32 [ROW_PART_WIDTH, RG] per row group: rows, entries, chunks, tiles, first bad cell
    col_part: np.ndarray  #: int32 [COL_PART_WIDTH, CG] per column group: columns, entries


def _seq_lengths(cu_q: np.ndarray, cu_k: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """Lengths (clamped to >= 0) and whether cu_seqlens are valid (non-negative, non-decreasing)."""
    lq, lk = np.diff(cu_q), np.diff(cu_k)
    ok = not ((cu_q < 0).any() or (cu_k < 0).any() or (lq < 0).any() or (lk < 0).any())
    return np.maximum(lq, 0), np.maximum(lk, 0), ok


def num_groups(n: int) -> int:
    """Groups of ``GROUP`` consecutive padded rows (columns): the CTAs of the cells / fill kernels for them."""
    return -(-int(n) // GROUP)


def row_values(row_counts: np.ndarray, cu_q: np.ndarray, g: Geometry) -> np.ndarray:
    """The scanned quantities of every padded row, int64 ``[H*B*MB, 4]``: (exists, entries, chunks, tiles)."""
    H, B, MB = g.num_layout_heads, g.batch, g.mb
    lq, _, _ = _seq_lengths(cu_q.astype(np.int64), cu_q.astype(np.int64))
    exists = np.arange(MB)[None, :] < _cdiv(lq, g.block_q)[:, None]  # [B, MB]
    ql = np.minimum(g.block_q, lq[:, None] - np.arange(MB)[None, :] * g.block_q)
    tiles = np.where(exists, _cdiv(np.maximum(ql, 1), g.tokens_per_tile) * g.tile_heads, 0)
    rc = row_counts.astype(np.int64).reshape(H, B, MB, 4)
    return np.stack([np.broadcast_to(exists, (H, B, MB)), rc[..., 0] + rc[..., 1], rc[..., 2] + rc[..., 3],
                     np.broadcast_to(tiles, (H, B, MB))], axis=-1).reshape(-1, 4).astype(np.int64)


def col_values(col_counts: np.ndarray, cu_k: np.ndarray, g: Geometry) -> np.ndarray:
    """The scanned quantities of every padded column, int64 ``[H*B*NB, 2]``: (exists, entries)."""
    H, B, NB = g.num_layout_heads, g.batch, g.nb
    _, lk, _ = _seq_lengths(cu_k.astype(np.int64), cu_k.astype(np.int64))
    exists = np.arange(NB)[None, :] < _cdiv(lk, g.block_k)[:, None]
    cc = col_counts.astype(np.int64).reshape(H, B, NB, 2)
    return np.stack([np.broadcast_to(exists, (H, B, NB)), cc[..., 0] + cc[..., 1]], axis=-1).reshape(-1, 2)


def _grouped(vals: np.ndarray, fill_value: int = 0) -> np.ndarray:
    """``vals [n, k]`` padded to whole groups, ``[groups, GROUP, k]``."""
    n, k = vals.shape
    pad = np.full((num_groups(n) * GROUP, k), fill_value, np.int64)
    pad[:n] = vals
    return pad.reshape(-1, GROUP, k)


def group_sums(vals: np.ndarray) -> np.ndarray:
    """Per group of ``GROUP`` consecutive items of ``vals [n, k]``: the sums, SoA ``[k, groups]``."""
    return _grouped(vals).sum(axis=1).T


def in_group_prefix(vals: np.ndarray) -> np.ndarray:
    """Exclusive prefix sums of ``vals [n, k]``, restarted at every group of ``GROUP`` items."""
    g3 = _grouped(vals)
    return (np.cumsum(g3, axis=1) - g3).reshape(-1, vals.shape[1])[: vals.shape[0]]


def _group_first_error(row_err: np.ndarray) -> np.ndarray:
    """Per row group: the smallest non-negative ``row_err`` (-1 = none)."""
    big = np.iinfo(np.int64).max
    e = np.where(row_err >= 0, row_err.astype(np.int64), big)[:, None]
    first = _grouped(e, big).min(axis=(1, 2), initial=big)
    return np.where(first == big, -1, first)


def count_columns(info: np.ndarray, cu_k: np.ndarray, g: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """Per padded column its (n_full, n_partial) counted from the classified cells, and the column groups' sums
    (what the ``cols`` kernel writes for token masks; the block-mask ``cells`` kernel writes the same)."""
    cls = info.astype(np.int64).reshape(g.num_layout_heads, g.batch, g.mb, g.nb) & 3
    col_counts = np.stack([(cls == CELL_FULL).sum(2), (cls == CELL_PARTIAL).sum(2)], axis=-1).reshape(-1, 2)
    col_counts = col_counts.astype(np.int32)
    return col_counts, group_sums(col_values(col_counts, cu_k, g)).astype(np.int32)


def band_classes(kept: np.ndarray, all_extra: np.ndarray | None, cu_q: np.ndarray, cu_k: np.ndarray, g: Geometry
                 ) -> np.ndarray:
    """Classes (0 skip, 1 partial, 2 full) of candidate cells ``kept [H, B, MB, NB]`` (``(hl, b, m, n)``) against
    the causal / window band (exact on rectangles) and, when given, a further "every pair allowed" condition;
    cells outside a sequence's blocks are skipped."""
    B, MB, NB = g.batch, g.mb, g.nb
    lq, lk, _ = _seq_lengths(cu_q.astype(np.int64), cu_k.astype(np.int64))
    bq, bk = g.block_q, g.block_k
    bidx = np.arange(B, dtype=np.int64)[None, :, None, None]
    m = np.arange(MB, dtype=np.int64)[None, None, :, None]
    n = np.arange(NB, dtype=np.int64)[None, None, None, :]
    lq4, lk4 = lq[bidx], lk[bidx]
    inside = (m * bq < lq4) & (n * bk < lk4)
    qs, ql = m * bq, np.minimum(bq, lq4 - m * bq)
    ks, kl = n * bk, np.minimum(bk, lk4 - n * bk)
    off = lk4 - lq4
    dmin = ks - (qs + ql - 1) - off
    dmax = ks + kl - 1 - qs - off
    lo, hi = _band(g)
    all_ = np.ones(kept.shape, dtype=np.bool_) if all_extra is None else all_extra.copy()
    none = np.zeros(kept.shape, dtype=np.bool_)
    if hi is not None:
        all_ &= dmax <= hi
        none |= dmin > hi
    if lo is not None:
        all_ &= dmin >= lo
        none |= dmax < lo
    return np.where(kept & inside & ~none, np.where(all_, CELL_FULL, CELL_PARTIAL), 0).astype(np.int64)


def cells_from_classes(cls: np.ndarray, row_err: np.ndarray, cu_q: np.ndarray, cu_k: np.ndarray, g: Geometry
                       ) -> Cells:
    """Positions, per-row / per-column counts and group sums of classified cells ``cls [H, B, MB, NB]``
    (``row_err [H*B*MB]``: each row's first bad flat mask index, -1 = none)."""
    _, lk, _ = _seq_lengths(cu_k.astype(np.int64), cu_k.astype(np.int64))
    n = np.arange(g.nb, dtype=np.int64)[None, None, None, :]
    lk4 = lk[np.arange(g.batch, dtype=np.int64)[None, :, None, None]]
    full, part = cls == CELL_FULL, cls == CELL_PARTIAL
    pos = np.where(full, np.cumsum(full, axis=3) - 1, np.where(part, np.cumsum(part, axis=3) - 1, 0))
    info = (cls | (pos << CELL_POS_SHIFT)).astype(np.int32).reshape(-1)
    kl_all = np.minimum(g.block_k, lk4 - n * g.block_k)
    nch = np.where(cls > 0, _cdiv(np.maximum(kl_all, 1), g.tile_n), 0)
    row_counts = np.stack([full.sum(3), part.sum(3), (nch * full).sum(3), (nch * part).sum(3)], axis=-1)
    row_counts = row_counts.reshape(-1, 4).astype(np.int32)
    row_part = np.concatenate([group_sums(row_values(row_counts, cu_q, g)),
                               _group_first_error(np.asarray(row_err).reshape(-1))[None, :]])
    col_counts, col_part = count_columns(info, cu_k, g)
    return Cells(info=info, row_counts=row_counts, col_counts=col_counts, row_part=row_part.astype(np.int32),
                 col_part=col_part)


def mask_cells(mask: np.ndarray, cu_q: np.ndarray, cu_k: np.ndarray, g: Geometry) -> Cells:
    """Stage 1 (kernel ``layout_device_cells``) for a bool or integer block mask ``[Bm, H, MB, NB]``."""
    a = np.asarray(mask)
    H, B, MB, NB = g.num_layout_heads, g.batch, g.mb, g.nb
    a4 = np.broadcast_to(a, (B, H, MB, NB)).transpose(1, 0, 2, 3)  # (hl, b, m, n)
    if a.dtype == np.bool_:
        bad = np.zeros(a4.shape, dtype=np.bool_)
        cls = band_classes(a4, None, cu_q, cu_k, g)
    else:
        v = a4.astype(np.int64)
        bad = (v < 0) | (v > 2)
        lq, lk, _ = _seq_lengths(cu_q.astype(np.int64), cu_k.astype(np.int64))
        bidx = np.arange(B, dtype=np.int64)[None, :, None, None]
        inside = ((np.arange(MB)[None, None, :, None] * g.block_q < lq[bidx])
                  & (np.arange(NB)[None, None, None, :] * g.block_k < lk[bidx]))
        cls = np.where(inside & ~bad, v, 0).astype(np.int64)
    # first bad cell of each row, as a flat index into the caller's mask [Bm, H, MB, NB]
    bm = np.minimum(np.arange(B, dtype=np.int64)[None, :, None, None], a.shape[0] - 1)
    hl = np.arange(H, dtype=np.int64)[:, None, None, None]
    flat = ((bm * H + hl) * MB + np.arange(MB)[None, None, :, None]) * NB + np.arange(NB)[None, None, None, :]
    big = np.iinfo(np.int64).max
    row_err = np.where(bad, flat, big).min(axis=3, initial=big)
    return cells_from_classes(cls, np.where(row_err == big, -1, row_err), cu_q, cu_k, g)


@dataclass(frozen=True)
class ListRules:
    """How the scatter kernel reads one list of block indices (a launch of ``layout_device_topk``)."""

    value: int = 1  #: cell code written (1 = kept / partial, 2 = full)
    clear: bool = True  #: zero the rows first (the first list of a source)
    strict: bool = False  #: indices must ascend strictly within a row's count (FA4 / FlexAttention lists)
    pad_ok: bool = False  #: indices in [N_b, NB) are padding (ignored later), not errors (FlexAttention)
    slot_offset: int = 0  #: added to the reported flat slot index (the second list follows the first)


def topk_cells(indices: np.ndarray, counts: np.ndarray | None, cu_q: np.ndarray, cu_k: np.ndarray,
               g: Geometry, rules: ListRules = ListRules(), prior: np.ndarray | None = None
               ) -> tuple[np.ndarray, int]:
    """The cells ``[Bm, H, MB, NB]`` (uint8) the scatter kernel writes from block indices ``[Bm, H, MB, K]``
    (optional ``counts [Bm, H, MB]``: slots ``k >= count`` are ignored) and the flat index (+ ``slot_offset``) of the
    first bad slot (-1 = none). Bad: a count outside ``[0, K]`` (reported at the row's slot 0); an index outside
    ``[0, N_b)`` (``[0, NB)`` with ``pad_ok``); with ``strict`` an index not above the previous slot's; with
    ``value = 2`` a cell the previous list (``prior``) set (a block both partial and full). Without ``strict``
    duplicates merge. Rows beyond a sequence's query blocks are ignored. For a broadcast source (``Bm = 1``) the
    bounds are the largest ``M_b`` / ``N_b`` of the batch (cells beyond a shorter sequence are then padding)."""
    idx = np.asarray(indices).astype(np.int64)
    Bm, H, MB, K = idx.shape
    lq, lk, _ = _seq_lengths(cu_q.astype(np.int64), cu_k.astype(np.int64))
    mblk, nblk = _cdiv(lq, g.block_q), _cdiv(lk, g.block_k)
    if Bm == 1:
        m_lim = np.array([mblk.max(initial=0)], dtype=np.int64)
        n_lim = np.array([nblk.max(initial=0)], dtype=np.int64)
    else:
        m_lim, n_lim = mblk, nblk
    n_lim = np.full_like(n_lim, g.nb) if rules.pad_ok else np.minimum(n_lim, g.nb)
    cnt = np.full((Bm, H, MB), K, dtype=np.int64) if counts is None else np.asarray(counts).astype(np.int64)
    live = np.arange(MB)[None, None, :] < m_lim[:, None, None]
    cnt_bad = live & ((cnt < 0) | (cnt > K))
    used = live[..., None] & (np.arange(K)[None, None, None, :] < np.clip(cnt, 0, K)[..., None]) & ~cnt_bad[..., None]
    in_range = (idx >= 0) & (idx < n_lim[:, None, None, None])
    idx_bad = used & ~in_range
    if rules.strict and K > 1:
        idx_bad[..., 1:] |= used[..., 1:] & (idx[..., 1:] <= idx[..., :-1])
    out = np.zeros((Bm, H, MB, g.nb), dtype=np.uint8) if rules.clear or prior is None else prior.copy()
    if rules.value == 2 and prior is not None:
        hit = np.zeros(idx.shape, dtype=np.bool_)
        b_, h_, m_, k_ = np.nonzero(used & in_range)
        hit[b_, h_, m_, k_] = prior[b_, h_, m_, idx[b_, h_, m_, k_]] == 1
        idx_bad |= hit
    flat_slot = np.arange(idx.size, dtype=np.int64).reshape(idx.shape)
    big = np.iinfo(np.int64).max
    bad_at = np.where(idx_bad, flat_slot, big).min(axis=3, initial=big)
    bad_at = np.minimum(bad_at, np.where(cnt_bad, flat_slot[..., 0], big))
    first = int(bad_at.min(initial=big))
    ok = used & ~idx_bad
    b_, h_, m_, k_ = np.nonzero(ok)
    out[b_, h_, m_, idx[b_, h_, m_, k_]] = rules.value
    return out, (-1 if first == big else first + rules.slot_offset)


@dataclass
class Scan:
    """Stage 2 output: exclusive prefixes of the row / column groups (SoA, int64) and the status word."""

    row_gp: np.ndarray  #: int64 [4, RG] (rows, entries, chunks, tiles) before each row group
    col_gp: np.ndarray  #: int64 [2, CG] (cols, entries) before each column group
    status: np.ndarray = field(default_factory=lambda: np.zeros(STATUS_WIDTH, np.int32))


def scan(cells: Cells, cu_q: np.ndarray, cu_k: np.ndarray, g: Geometry, index_error: int = -1) -> Scan:
    """Stage 2 (kernel ``layout_device_scan``): group prefixes, validation and capacity checks, the status word.
    Precedence: cu_seqlens, mask shape (detail = sequence), index / value (detail = first flat cell), capacity
    (detail = kept blocks needed)."""
    cq, ck = cu_q.astype(np.int64), cu_k.astype(np.int64)
    lq, lk, ok = _seq_lengths(cq, ck)
    MB, NB = g.mb, g.nb
    mblk, nblk = _cdiv(lq, g.block_q), _cdiv(lk, g.block_k)
    rp = cells.row_part.astype(np.int64)
    cp = cells.col_part.astype(np.int64)
    row_gp, col_gp = np.cumsum(rp[:4], axis=1) - rp[:4], np.cumsum(cp, axis=1) - cp
    t_rows, n_ent, t_ch, t_tiles = (int(x) for x in rp[:4].sum(axis=1))
    status = np.zeros(STATUS_WIDTH, np.int32)
    status[STATUS_DETAIL] = -1
    bad = rp[4][rp[4] >= 0]
    cell_err = int(bad.min()) if bad.size else -1
    if not ok:
        code = ERR_CU_SEQLENS
    elif ((mblk > MB) | (nblk > NB) | (lq > g.max_q_tokens)).any():
        code = ERR_MASK_SHAPE
        status[STATUS_DETAIL] = int(np.argmax((mblk > MB) | (nblk > NB) | (lq > g.max_q_tokens)))
    elif index_error >= 0:
        code = ERR_INDEX
        status[STATUS_DETAIL] = index_error
    elif cell_err >= 0:
        code = ERR_MASK_VALUE
        status[STATUS_DETAIL] = cell_err
    elif n_ent > g.max_entries or t_ch > g.max_chunks or t_tiles > g.max_tiles:
        code = ERR_CAPACITY
        status[STATUS_DETAIL] = n_ent
    else:
        code = ERR_OK
        status[STATUS_NUM_TILES] = t_tiles
        status[STATUS_NUM_ROWS] = t_rows
        status[STATUS_NUM_ENTRIES] = n_ent
        status[STATUS_NUM_CHUNKS] = t_ch
        status[STATUS_NUM_COLS] = int(cp[0].sum())
    status[STATUS_ERROR] = code
    return Scan(row_gp=row_gp, col_gp=col_gp, status=status)


@dataclass
class DeviceLayoutArrays:
    """What the kernels write (compact: the first ``status[...]`` rows of each buffer)."""

    status: np.ndarray  #: int32 [STATUS_WIDTH]
    rows: np.ndarray  #: int32 [R, ROW_WIDTH]
    entries: np.ndarray  #: int32 [E, ENTRY_WIDTH]
    tiles: np.ndarray  #: int32 [T, TILE_WIDTH]
    chunks: np.ndarray  #: int32 [C, CHUNK_WIDTH]
    cols: np.ndarray  #: int32 [NC, COL_WIDTH]
    col_entries: np.ndarray  #: int32 [E, COL_ENTRY_WIDTH]

    @property
    def error(self) -> int:
        return int(self.status[STATUS_ERROR])


def _empty(status: np.ndarray) -> DeviceLayoutArrays:
    z = np.zeros
    return DeviceLayoutArrays(status, z((0, ROW_WIDTH), np.int32), z((0, ENTRY_WIDTH), np.int32),
                              z((0, TILE_WIDTH), np.int32), z((0, CHUNK_WIDTH), np.int32),
                              z((0, COL_WIDTH), np.int32), z((0, COL_ENTRY_WIDTH), np.int32))


def fill(cells: Cells, sc: Scan, cu_q: np.ndarray, cu_k: np.ndarray, g: Geometry) -> DeviceLayoutArrays:
    """Stage 3 (kernel ``layout_device_fill``): every table, from the cells and the prefixes."""
    if sc.status[STATUS_ERROR] != ERR_OK:
        return _empty(sc.status)
    lq, lk, _ = _seq_lengths(cu_q.astype(np.int64), cu_k.astype(np.int64))
    H, B, MB, NB = g.num_layout_heads, g.batch, g.mb, g.nb
    bq, bk = g.block_q, g.block_k
    mblk, nblk = _cdiv(lq, bq), _cdiv(lk, bk)
    rc = cells.row_counts.astype(np.int64)
    # each row's (column's) exclusive prefixes: its group's, plus the rows (columns) before it in the group
    rv = row_values(cells.row_counts, cu_q, g)
    rp = sc.row_gp[:, np.arange(rv.shape[0]) // GROUP].T + in_group_prefix(rv)
    cp = sc.col_gp[:, np.arange(H * B * NB) // GROUP].T + in_group_prefix(col_values(cells.col_counts, cu_k, g))
    # ---- rows (padded row p exists iff m < M_b)
    p = np.arange(H * B * MB, dtype=np.int64)
    p_hl, p_b, p_m = p // (B * MB), (p // MB) % B, p % MB
    live = p_m < mblk[p_b]
    pl = p[live]
    r_qs = p_m[pl] * bq
    r_ql = np.minimum(bq, lq[p_b[pl]] - r_qs)
    rows = np.stack([p_hl[pl], p_b[pl], r_qs, r_ql, rp[pl, 1], rc[pl, 0], rc[pl, 1]], axis=1)
    # ---- entries and chunks: each kept cell at its row's entry offset (+ n_full for partial cells)
    info = cells.info.astype(np.int64)
    cls, pos = info & 3, info >> CELL_POS_SHIFT
    c_idx = np.flatnonzero(cls)
    c_p, c_n = c_idx // NB, c_idx % NB
    c_full = cls[c_idx] == CELL_FULL
    e_idx = rp[c_p, 1] + np.where(c_full, pos[c_idx], rc[c_p, 0] + pos[c_idx])
    e_ks = c_n * bk
    e_kl = np.minimum(bk, lk[p_b[c_p]] - e_ks)
    entries = np.zeros((int(sc.status[STATUS_NUM_ENTRIES]), ENTRY_WIDTH), np.int64)
    entries[e_idx] = np.stack([e_ks, e_kl], axis=1)
    # chunk offset of an entry: the row's chunk prefix + the chunks of the entries before it (in entry order)
    e_nch = np.zeros(entries.shape[0], np.int64)
    e_nch[e_idx] = _cdiv(e_kl, g.tile_n)
    e_off = np.cumsum(e_nch) - e_nch  # entries of a row are consecutive and rows in order: a global prefix works
    chunks = np.zeros((int(sc.status[STATUS_NUM_CHUNKS]), CHUNK_WIDTH), np.int64)
    if entries.shape[0]:
        e_rep = np.repeat(np.arange(entries.shape[0]), e_nch)
        j = np.arange(e_rep.shape[0]) - e_off[e_rep]
        ks = entries[e_rep, 0] + j * g.tile_n
        chunks[:] = np.stack([ks, np.minimum(g.tile_n, entries[e_rep, 0] + entries[e_rep, 1] - ks)], axis=1)
    # ---- tiles: per row, query splits x tile heads (tile heads innermost)
    tpt, nth = g.tokens_per_tile, g.tile_heads
    n_t = rv[pl, 3]
    t_row = np.repeat(np.arange(pl.shape[0]), n_t)
    t_pos = np.arange(t_row.shape[0]) - np.repeat(rp[pl, 3], n_t)
    seg, th = t_pos // nth, t_pos % nth
    hl = p_hl[pl][t_row]
    group = g.num_heads_q // g.num_heads_kv
    if g.pack_gqa > 1:
        t_head = th if g.head_mode == HEAD_MODE_BROADCAST else hl
    else:
        t_head = {HEAD_MODE_PER_Q_HEAD: hl, HEAD_MODE_PER_KV_HEAD: hl * group + th, HEAD_MODE_BROADCAST: th}[
            g.head_mode]
    t_qs = r_qs[t_row] + seg * tpt
    tiles = np.stack([p_b[pl][t_row], t_head, t_qs, np.minimum(tpt, r_ql[t_row] - seg * tpt), rp[pl, 2][t_row],
                      rc[pl, 2][t_row], rc[pl, 3][t_row], np.zeros_like(t_qs)], axis=1)
    # ---- key-major columns: full entries first (ascending row), then partial ones
    q = np.arange(H * B * NB, dtype=np.int64)
    q_hl, q_b, q_n = q // (B * NB), (q // NB) % B, q % NB
    qlive = q[q_n < nblk[q_b]]
    cc = cells.col_counts.astype(np.int64)
    c_ks = q_n[qlive] * bk
    cols = np.stack([q_hl[qlive], q_b[qlive], c_ks, np.minimum(bk, lk[q_b[qlive]] - c_ks), cp[qlive, 1],
                     cc[qlive, 0], cc[qlive, 1]], axis=1)
    col_of = (p_hl[c_p] * B + p_b[c_p]) * NB + c_n
    # rank of a cell inside its column's class group = kept cells of that class above it in the column
    m_of = p_m[c_p]
    order = np.lexsort((m_of, ~c_full, col_of))
    col_entries = np.zeros((entries.shape[0], COL_ENTRY_WIDTH), np.int64)
    q_s = m_of[order] * bq
    col_entries[cp[col_of[order], 1] + _rank_in_group(col_of[order])] = np.stack(
        [q_s, np.minimum(bq, lq[p_b[c_p[order]]] - q_s), rp[c_p[order], 0], e_idx[order]], axis=1)
    return DeviceLayoutArrays(sc.status, *(x.astype(np.int32) for x in (rows, entries, tiles, chunks, cols,
                                                                        col_entries)))


def _rank_in_group(keys: np.ndarray) -> np.ndarray:
    """Position of each element inside its run of equal (sorted) keys."""
    if keys.size == 0:
        return keys
    start = np.ones(keys.shape[0], dtype=np.bool_)
    start[1:] = keys[1:] != keys[:-1]
    idx = np.arange(keys.shape[0])
    return idx - np.maximum.accumulate(np.where(start, idx, 0))


def build_from_mask(mask: Any, cu_q: Any, cu_k: Any, g: Geometry, index_error: int = -1) -> DeviceLayoutArrays:
    """All three stages for a padded block mask (bool kept cells, or integer codes 0/1/2)."""
    check_geometry(g)
    cq = np.asarray(cu_q).astype(np.int64).reshape(-1)
    ck = np.asarray(cu_k).astype(np.int64).reshape(-1)
    cells = mask_cells(np.asarray(mask), cq, ck, g)
    sc = scan(cells, cq, ck, g, index_error)
    return fill(cells, sc, cq, ck, g)


def build_from_topk(indices: Any, counts: Any, cu_q: Any, cu_k: Any, g: Geometry) -> DeviceLayoutArrays:
    """All stages for top-k block indices ``[Bm, H, MB, K]`` (kept blocks, classified like a bool mask)."""
    check_geometry(g)
    cq = np.asarray(cu_q).astype(np.int64).reshape(-1)
    ck = np.asarray(cu_k).astype(np.int64).reshape(-1)
    kept, err = topk_cells(np.asarray(indices), None if counts is None else np.asarray(counts), cq, ck, g)
    return build_from_mask(kept.astype(np.bool_), cq, ck, g, index_error=err)


def build_from_lists(partial: tuple[Any, Any], full: tuple[Any, Any] | None, cu_q: Any, cu_k: Any, g: Geometry,
                     *, pad_ok: bool) -> DeviceLayoutArrays:
    """All stages for FA4 / FlexAttention block lists: ``partial = (counts [Bm, H, MB], indices [Bm, H, MB, K1])``
    become code 1, ``full`` (optional, same leading shape) code 2, both taken as given (no classification)."""
    check_geometry(g)
    cq = np.asarray(cu_q).astype(np.int64).reshape(-1)
    ck = np.asarray(cu_k).astype(np.int64).reshape(-1)
    p_cnt, p_idx = (np.asarray(x) for x in partial)
    cells, err = topk_cells(p_idx, p_cnt, cq, ck, g, ListRules(1, True, True, pad_ok, 0))
    if full is not None:
        f_cnt, f_idx = (np.asarray(x) for x in full)
        cells, err2 = topk_cells(f_idx, f_cnt, cq, ck, g, ListRules(2, False, True, pad_ok, p_idx.size), cells)
        err = err if err >= 0 else err2
    return build_from_mask(cells.astype(np.int32), cq, ck, g, index_error=err)
