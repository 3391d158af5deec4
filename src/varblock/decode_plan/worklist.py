"""The decode work list on the host (NumPy): chunks per (sequence, KV head), row tiles, split-KV, partial slots.

``build_worklist`` is pure NumPy, so every rule here is tested on the CPU. Formats: ``varblock.decode_plan.abi``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from varblock.decode_plan import abi
from varblock.decode_plan.cost import choose_chunks_per_split, choose_grid
from varblock.layout.decode import DecodeLayout


@dataclass(frozen=True)
class WorkList:
    """``items`` int32 [W, ITEM_WIDTH], ``chunks`` int32 [C, CHUNK_WIDTH], ``num_slots`` split partial slots;
    ``num_ctas``: the grid (CTA ``c`` runs items ``c, c + num_ctas, ...``; 0 means one CTA per item)."""

    items: np.ndarray
    chunks: np.ndarray
    num_slots: int
    tile_m: int
    tile_n: int
    num_ctas: int = 0

    @property
    def grid(self) -> int:
        return self.num_ctas if self.num_ctas > 0 else self.num_items

    @property
    def num_items(self) -> int:
        return int(self.items.shape[0])


def group_spans(layout: DecodeLayout | None, kv_lens: np.ndarray, num_heads_q: int, num_heads_kv: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Kept key spans per (sequence, KV head) group ``g = b * Hkv + h``: ``(group, k_start, k_end, head_mask)``,
    sorted by (group, k_start), adjacent spans with equal masks merged. Dense (``layout=None``): one span
    ``[0, kv_len)`` per group."""
    B = kv_lens.shape[0]
    G = num_heads_q // num_heads_kv
    if layout is None:
        grp = np.arange(B * num_heads_kv, dtype=np.int64)
        end = np.repeat(kv_lens, num_heads_kv)
        keep = end > 0
        return grp[keep], np.zeros(int(keep.sum()), np.int64), end[keep], np.full(int(keep.sum()), -1, np.int64)
    nh = layout.num_heads
    rows = np.repeat(np.arange(B * nh, dtype=np.int64), np.diff(layout.indptr))
    blk = layout.blocks.astype(np.int64)
    b, h = np.divmod(rows, nh)
    if layout.head_mode == "per_q_head":
        grp = b * num_heads_kv + h // G
        bit = np.left_shift(np.int64(1), h % G)
        key = np.unique(grp * (2**31) + blk)
        mask = np.zeros(key.shape[0], dtype=np.int64)
        np.bitwise_or.at(mask, np.searchsorted(key, grp * (2**31) + blk), bit)
        grp, blk = np.divmod(key, 2**31)
        full = (1 << G) - 1
        mask = np.where(mask == full, -1, mask)
    else:
        grp = b * num_heads_kv + h
        mask = np.full(grp.shape[0], -1, dtype=np.int64)
    bs = layout.block_size
    start = blk * bs
    end = np.minimum(start + bs, kv_lens[grp // num_heads_kv])
    return _merge_adjacent(grp, start, end, mask)


def _merge_adjacent(grp, start, end, mask):
    """Merge span i into span i - 1 when they touch, in one group, with one head mask (input sorted)."""
    if grp.size == 0:
        return grp, start, end, mask
    joins = np.zeros(grp.shape[0], dtype=bool)
    joins[1:] = (grp[1:] == grp[:-1]) & (start[1:] == end[:-1]) & (mask[1:] == mask[:-1])
    first = np.flatnonzero(~joins)
    last = np.concatenate([first[1:], [grp.shape[0]]]) - 1
    return grp[first], start[first], end[last], mask[first]


def cut_chunks(grp, start, end, mask, tile_n: int, num_groups: int):
    """Cut spans into chunks of at most ``tile_n`` keys: ``(chunks [C, 3], group_begin [num_groups + 1])``."""
    n = (end - start + tile_n - 1) // tile_n
    span = np.repeat(np.arange(grp.shape[0]), n)
    first = np.repeat(np.cumsum(n) - n, n)
    k0 = start[span] + (np.arange(span.shape[0]) - first) * tile_n
    k_len = np.minimum(end[span] - k0, tile_n)
    chunks = np.stack([k0, k_len, mask[span]], axis=1).astype(np.int32) if span.size else \
        np.zeros((0, abi.CHUNK_WIDTH), np.int32)
    counts = np.bincount(grp[span], minlength=num_groups) if span.size else np.zeros(num_groups, np.int64)
    return chunks, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


def build_worklist(cu_seqlens_q: np.ndarray, kv_lens: np.ndarray, *, num_heads_q: int, num_heads_kv: int,
                   tile_m: int, tile_n: int, layout: DecodeLayout | None, num_sms: int, ctas_per_sm: int = 1,
                   num_splits: int | None = None, max_splits: int | None = None,
                   persistent: bool | None = None) -> WorkList:
    """Items (one CTA each) and chunks of one decode step. ``num_splits`` forces the split count of every row tile
    (clipped to its chunk count); by default the count with the least estimated time
    (:func:`varblock.decode_plan.cost.choose_chunks_per_split` over ``num_sms * ctas_per_sm`` CTA slots).
    ``persistent`` forces (True) or forbids (False) a persistent grid of that many CTAs (None: the cost model,
    :func:`varblock.decode_plan.cost.choose_grid`)."""
    B = kv_lens.shape[0]
    G = num_heads_q // num_heads_kv
    n_q = np.diff(cu_seqlens_q).astype(np.int64)
    num_groups = B * num_heads_kv
    grp, start, end, mask = group_spans(layout, kv_lens, num_heads_q, num_heads_kv)
    chunks, gbeg = cut_chunks(grp, start, end, mask, tile_n, num_groups)
    g_chunks = np.diff(gbeg)
    # row tiles per group: ceil(n_q * G / tile_m) (0 when the sequence has no new token)
    g_tiles = np.repeat(-(-(n_q * G) // tile_m), num_heads_kv)
    if num_splits is None:
        cps = choose_chunks_per_split(np.where(g_tiles > 0, g_chunks, 0), g_tiles, num_sms * ctas_per_sm,
                                      max_splits)
        g_splits = np.maximum(1, -(-g_chunks // cps))
    else:
        g_splits = np.clip(np.minimum(num_splits, g_chunks), 1, None)
    # one row per (group, row tile, split)
    t_group = np.repeat(np.arange(num_groups), g_tiles)
    t_row = np.arange(t_group.shape[0]) - np.repeat(np.cumsum(g_tiles) - g_tiles, g_tiles)
    t_splits = g_splits[t_group]
    split_slots = np.where(t_splits > 1, t_splits, 0)
    t_slot_base = np.cumsum(split_slots) - split_slots
    i_tile = np.repeat(np.arange(t_group.shape[0]), t_splits)
    i_split = np.arange(i_tile.shape[0]) - np.repeat(np.cumsum(t_splits) - t_splits, t_splits)
    g = t_group[i_tile]
    nc, ns = g_chunks[g], t_splits[i_tile]
    # balanced splits: split s reads chunks [s * nc // ns, (s + 1) * nc // ns)
    c_lo = i_split * nc // ns
    c_hi = (i_split + 1) * nc // ns
    items = np.zeros((i_tile.shape[0], abi.ITEM_WIDTH), dtype=np.int64)
    items[:, abi.ITEM_BATCH] = g // num_heads_kv
    items[:, abi.ITEM_KV_HEAD] = g % num_heads_kv
    items[:, abi.ITEM_ROW_START] = t_row[i_tile] * tile_m
    items[:, abi.ITEM_CHUNK_BEGIN] = gbeg[g] + c_lo
    items[:, abi.ITEM_N_CHUNKS] = c_hi - c_lo
    base = np.where(ns > 1, t_slot_base[i_tile], 0)
    items[:, abi.ITEM_SLOT] = np.where(ns > 1, base + i_split, 0)
    items[:, abi.ITEM_SLOT_BASE] = base
    items[:, abi.ITEM_NUM_SPLITS] = ns
    items[:, abi.ITEM_KV_LEN] = kv_lens[g // num_heads_kv]
    # longest first: the block scheduler issues CTAs in index order (or a persistent grid, in snake order)
    items = items[np.argsort(-items[:, abi.ITEM_N_CHUNKS], kind="stable")]
    grid, order = choose_grid(items[:, abi.ITEM_N_CHUNKS], items[:, abi.ITEM_NUM_SPLITS], num_sms * ctas_per_sm,
                              persistent)
    return WorkList(items[order].astype(np.int32), chunks, int(split_slots.sum()), tile_m, tile_n, grid)
