"""Ordered block lists (FA4 / FlexAttention count + index tensors): reading, validation, padding
conventions, writing, and the per-batch grid geometry both formats share."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ._common import pos_str, seq_blocks
from ._host import as_int, exclusive_cumsum, ragged_arange
from .core import BlockSparseLayout
from .partition import fixed_partition


class Grid(NamedTuple):
    """Geometry of a count/index list pair: where each list row's slots start, how many, index bound."""

    slot_base: np.ndarray  # int64 [G] flat position of slot 0 of each list row in the index array
    width: np.ndarray  # int64 [G] slots per row
    nk: np.ndarray  # int64 [G] index bound (number of key blocks of the row); complement padding range


def complement_fill(grid: Grid, g: np.ndarray, vals: np.ndarray, size: int) -> np.ndarray:
    """Index array where each row holds its kept indices ascending, then the other indices of [0, nk) ascending,
    truncated to the row width (what FlexAttention's argsort(dense, descending, stable) produces)."""
    offs = exclusive_cumsum(grid.nk)
    member = np.zeros(int(offs[-1]), dtype=np.bool_)
    member[offs[g] + vals] = True
    seg, j = ragged_arange(grid.nk)
    order = np.argsort(seg * 2 + (~member), kind="stable")
    seq = j[order]  # per row: kept first then the rest, both ascending
    _, pos = ragged_arange(grid.nk)
    take = pos < grid.width[seg]
    out = np.zeros(size, dtype=np.int64)
    out[(grid.slot_base[seg] + pos)[take]] = seq[take]
    return out


def read_lists(cnt: np.ndarray, idx: np.ndarray, grid: Grid, cnt_name: str, idx_name: str,
                allow_unsorted: bool) -> tuple[np.ndarray, np.ndarray, str | None]:
    """Entries (grid row, index) of a count/index list pair, validated; and the padding convention detected
    ('zeros', 'complement', 'other', or None when no padding slot exists)."""
    c = cnt.reshape(-1)
    flat = idx.reshape(-1)
    if (c < 0).any():
        t = int(np.argmax(c < 0))
        raise ValueError(f"{cnt_name}: negative count {int(c[t])} at {pos_str(t, cnt.shape)}")
    over = c > np.minimum(grid.width, grid.nk)
    if over.any():
        t = int(np.argmax(over))
        raise ValueError(f"{cnt_name}: count {int(c[t])} at {pos_str(t, cnt.shape)} exceeds the "
                         f"{int(min(grid.width[t], grid.nk[t]))} key blocks / index slots of that row")
    g, pos = ragged_arange(c)
    p = grid.slot_base[g] + pos
    vals = flat[p]
    bad = (vals < 0) | (vals >= grid.nk[g])
    if bad.any():
        t = int(np.argmax(bad))
        raise ValueError(f"{idx_name}: index {int(vals[t])} at {pos_str(int(p[t]), idx.shape)} is out of range "
                         f"[0, {int(grid.nk[g[t]])}) (key blocks of that row)")
    if vals.size > 1:
        same = g[1:] == g[:-1]
        d = vals[1:] - vals[:-1]
        unsorted = same & (d < 0)
        if unsorted.any():
            if not allow_unsorted:
                t = int(np.argmax(unsorted)) + 1
                raise ValueError(f"{idx_name}: indices of a row must be sorted ascending (kernels and the "
                                 f"deterministic backward rely on the order); {int(vals[t])} at "
                                 f"{pos_str(int(p[t]), idx.shape)} follows {int(vals[t - 1])}; pass "
                                 f"allow_unsorted=True to sort them")
            order = np.lexsort((vals, g))
            g, vals, p = g[order], vals[order], p[order]
            same = g[1:] == g[:-1]
            d = vals[1:] - vals[:-1]
        dup = same & (d == 0)
        if dup.any():
            t = int(np.argmax(dup)) + 1
            raise ValueError(f"{idx_name}: duplicate index {int(vals[t])} in row {pos_str(int(g[t]), cnt.shape)}")
    # padding convention
    ptotal = int((grid.width - c).sum())
    if ptotal == 0:
        kind = None
    else:
        pseg, ppos = ragged_arange(grid.width - c)
        pvals = flat[grid.slot_base[pseg] + c[pseg] + ppos]
        if not pvals.any():
            kind = "zeros"
        else:
            comp = complement_fill(grid, g, vals, flat.size)
            mask = np.zeros(flat.size, dtype=np.bool_)
            mask[grid.slot_base[pseg] + c[pseg] + ppos] = True
            kind = "complement" if np.array_equal(comp[mask], flat[mask]) else "other"
    return g, vals, kind


def write_lists(grid: Grid, G_shape: tuple, idx_shape: tuple, g: np.ndarray, vals: np.ndarray, pad: str,
                 cnt_name: str) -> tuple[np.ndarray, np.ndarray]:
    """Count and index arrays (int32) for entries sorted by (grid row, index)."""
    G = grid.nk.shape[0]
    cnt = np.bincount(g, minlength=G) if g.size else np.zeros(G, dtype=np.int64)
    over = cnt > grid.width
    if over.any():
        t = int(np.argmax(over))
        raise ValueError(f"{cnt_name}: row {pos_str(t, G_shape)} keeps {int(cnt[t])} blocks but the index width "
                         f"is {int(grid.width[t])}; pass a larger index width")
    size = int(np.prod(idx_shape))
    if pad == "complement":
        flat = complement_fill(grid, g, vals, size)
    elif pad == "zeros":
        flat = np.zeros(size, dtype=np.int64)
        _, pos = ragged_arange(cnt)
        flat[grid.slot_base[g] + pos] = vals
    else:
        raise ValueError(f"pad: expected 'zeros' or 'complement', got {pad!r}")
    return cnt.astype(np.int32).reshape(G_shape), flat.astype(np.int32).reshape(idx_shape)


def gather_rows(lr_g: np.ndarray, g: np.ndarray, vals: np.ndarray, G: int) -> tuple[np.ndarray, np.ndarray]:
    """Map grid-row entries onto layout rows (layout row r reads grid row lr_g[r]): (layout row, index)."""
    gcnt = np.bincount(g, minlength=G) if g.size else np.zeros(G, dtype=np.int64)
    gptr = exclusive_cumsum(gcnt)
    seg, pos = ragged_arange(gcnt[lr_g])
    return seg, vals[gptr[lr_g][seg] + pos]


def norm_lists(cnt_arr, idx_arr, cnt_name, idx_name, ndim_cnt, ndim_idx):
    """Counts and indices as host int64 arrays of the expected ranks."""
    cnt = as_int(cnt_arr, cnt_name)
    idx = as_int(idx_arr, idx_name)
    if cnt.ndim != ndim_cnt or idx.ndim != ndim_idx:
        raise ValueError(f"{cnt_name} / {idx_name}: expected {ndim_cnt}-D counts and {ndim_idx}-D indices, got "
                         f"shapes {tuple(cnt.shape)} and {tuple(idx.shape)}")
    return cnt, idx


def batched_geometry(cnt_shape, idx_shape, cu_q, cu_k, bq, bk, nk_grid, ignore, cnt_name):
    """Grid / layout-row mapping for [B', H', M] counts and [B', H', M, W] indices."""
    Bp, Hp, Mg = cnt_shape
    W = idx_shape[3]
    B = cu_q.shape[0] - 1
    M, cu_m = seq_blocks(cu_q, bq)
    N, _ = seq_blocks(cu_k, bk)
    if Bp not in (1, B):
        raise ValueError(f"{cnt_name}: batch dimension {Bp} is neither 1 nor the {B} sequences of cu_seqlens_q")
    if B and int(M.max()) > Mg:
        raise ValueError(f"{cnt_name}: {Mg} query blocks per sequence, but a sequence of cu_seqlens_q has "
                         f"{int(M.max())} blocks of {bq}")
    assert W <= nk_grid and (not B or int(N.max()) <= nk_grid), "internal: grid narrower than the sequences"
    G = Bp * Hp * Mg
    grid = Grid(np.arange(G, dtype=np.int64) * W, np.full(G, W, dtype=np.int64),
                 np.full(G, nk_grid, dtype=np.int64))
    # layout rows (h, b, m < M_b) -> grid rows
    qpart = fixed_partition(cu_q, bq, Hp, "cu_seqlens_q")
    seg = qpart.seg()
    h = seg // max(B, 1)
    b = seg % max(B, 1)
    m = np.arange(qpart.size, dtype=np.int64) - qpart.ptr[:-1][seg]
    bsrc = b if Bp > 1 else np.zeros_like(b)
    lr_g = (bsrc * Hp + h) * Mg + m
    del cu_m
    return grid, qpart, lr_g, N, b, h


def import_lists(lists, grid, lr_g, qpart, kpart, N_row_b, ignore, allow_unsorted, G):
    """Read (cnt, idx, full?, names) lists against a grid, map to layout rows, check padding."""
    rows_all, kb_all, full_all, kinds = [], [], [], {}
    referenced = np.zeros(G, dtype=np.bool_)
    referenced[lr_g] = True
    for cnt, idx, is_full, cname, iname in lists:
        g, vals, kind = read_lists(cnt, idx, grid, cname, iname, allow_unsorted)
        kinds["full" if is_full else "mask"] = kind
        unref = ~referenced[g]
        if unref.any():
            if not ignore:
                t = int(np.argmax(unref))
                raise ValueError(f"{cname}: row {pos_str(int(g[t]), cnt.shape)} lies beyond its sequence's query "
                                 f"blocks but lists {int(cnt.reshape(-1)[g[t]])} key blocks (padding='ignore' "
                                 f"drops them)")
        r, kb = gather_rows(lr_g, g, vals, G)
        nb = N_row_b[r]
        beyond = kb >= nb
        if beyond.any():
            if not ignore:
                t = int(np.argmax(beyond))
                raise ValueError(f"{iname}: key block {int(kb[t])} is beyond the {int(nb[t])} key blocks of its "
                                 f"sequence (layout row {int(r[t])}); padding='ignore' drops it")
            r, kb = r[~beyond], kb[~beyond]
        rows_all.append(r)
        kb_all.append(kb)
        full_all.append(np.full(r.shape[0], is_full, dtype=np.bool_))
    return (np.concatenate(rows_all), np.concatenate(kb_all), np.concatenate(full_all), kinds)


def fixed_required(layout: BlockSparseLayout, what: str) -> tuple[int, int]:
    """The layout's (block_q, block_k); ValueError for variable spans."""
    if not layout.is_fixed:
        raise ValueError(f"layout: {what} needs fixed block sizes (block_q/block_k); this layout has variable spans")
    return layout.block_q, layout.block_k


def pick_pad(pad, source_pad, default):
    """The padding convention to export: the argument, else the imported one, else ``default``."""
    if pad is not None:
        return pad
    if isinstance(source_pad, str) and source_pad in ("zeros", "complement"):
        return source_pad
    return default


def per_batch_cells(layout: BlockSparseLayout):
    """Entries as (b, h, m, n, full), in (h, b, m) row order."""
    rs = layout.rows()
    counts = np.diff(rs.ent_ptr)
    e_row = np.repeat(np.arange(rs.num_rows, dtype=np.int64), counts)
    qp = layout.query_partition
    seg = qp.seg()
    mloc = np.arange(qp.size, dtype=np.int64) - qp.ptr[:-1][seg]
    return (rs.batch[e_row].astype(np.int64), rs.head[e_row].astype(np.int64), mloc[e_row],
            layout.entry_key_block.astype(np.int64), layout.entry_is_full())


def batched_export(layout, Bp, M_grid, W, nk_grid, direction, pads, include_full, names):
    """Counts/indices [B', H, rows, W] for the forward (kv) or transposed (q) direction."""
    B, H = layout.batch_size, layout.num_heads
    b, h, m, n, full = per_batch_cells(layout)
    if direction == "q":
        m, n = n, m
    if Bp == 1 and B > 1:
        bq, bk = layout.block_q, layout.block_k
        M, _ = seq_blocks(layout.cu_seqlens_q, bq)
        N, _ = seq_blocks(layout.cu_seqlens_k, bk)
        if (M != M[0]).any() or (N != N[0]).any():
            raise ValueError("broadcast_batch: a batch-broadcast export needs sequences of equal lengths")
        sel0 = b == 0
        ref = np.stack([h[sel0], m[sel0], n[sel0], full[sel0]])
        for bb in range(1, B):  # per sequence (not per block): compare whole arrays
            sel = b == bb
            if not np.array_equal(np.stack([h[sel], m[sel], n[sel], full[sel]]), ref):
                raise ValueError(f"broadcast_batch: sequence {bb} has a different pattern than sequence 0; export "
                                 f"per batch (broadcast_batch=False)")
        b, h, m, n, full = b[sel0], h[sel0], m[sel0], n[sel0], full[sel0]
    G = Bp * H * M_grid
    grid = Grid(np.arange(G, dtype=np.int64) * W, np.full(G, W, dtype=np.int64),
                 np.full(G, nk_grid, dtype=np.int64))
    g = (b * H + h) * M_grid + m
    out = []
    for is_full, (cname, _iname) in ((False, names[0]), (True, names[1])):
        if is_full and not include_full:
            if full.any():
                raise ValueError("include_full: the layout has full blocks; they cannot be dropped from the export")
            out += [None, None]
            continue
        sel = full if is_full else ~full
        gg, nn = g[sel], n[sel]
        order = np.lexsort((nn, gg))
        cnt, idx = write_lists(grid, (Bp, H, M_grid), (Bp, H, M_grid, W), gg[order], nn[order],
                                pads["full" if is_full else "mask"], cname)
        out += [cnt, idx]
    return out


def head_repeat(layout: BlockSparseLayout, num_heads_q: int | None) -> int:
    """How often to repeat each layout head to index ``num_heads_q`` query heads."""
    if num_heads_q is None or layout.head_mode == "broadcast":
        return 1
    if isinstance(num_heads_q, (bool, np.bool_)) or not isinstance(num_heads_q, (int, np.integer)) \
            or num_heads_q < 1 or num_heads_q % layout.num_heads:
        raise ValueError(f"num_heads_q: expected a positive multiple of the layout's {layout.num_heads} heads, got "
                         f"{num_heads_q!r}")
    if layout.head_mode == "per_q_head" and num_heads_q != layout.num_heads:
        raise ValueError(f"num_heads_q: the layout has {layout.num_heads} per-query-head patterns, got "
                         f"{num_heads_q}")
    return int(num_heads_q) // layout.num_heads
