"""Work list of the attention backward kernel, built from a layout's key-block-major index (``ColSpans``).

Pure NumPy and vectorised: no Python loop per column, entry, tile or token. The format mirrors the forward's
(``docs/contracts.md`` section 2) with the roles of queries and keys swapped:

* ``tiles`` int32 ``[T, 8]``: ``(batch, head, k_start, k_len, chunk_begin, n_full, n_partial, n_left)``: one CTA per
  tile owns keys ``[k_start, k_start + k_len)`` (``1 <= k_len <= tile_n``, relative to the sequence start) and
  walks ``chunks[chunk_begin : chunk_begin + n_full + n_partial]``; chunk ``i`` of the tile is partial iff ``i <
  n_left or i >= n_left + n_full`` (this builder writes ``n_left = 0``: full chunks first, then partial ones).
  ``head`` is a *tile head*: the tile processes query heads ``head * heads_per_tile + g``, ``g < heads_per_tile``,
  and its dK/dV go to accumulator head ``head`` (``Hq / heads_per_tile`` of them; the postprocess sums each KV
  head's ``(Hq / Hkv) / heads_per_tile`` accumulator heads).
* ``chunks`` int32 ``[C, 2]``: ``(q_start, q_len)``, ``1 <= q_len <= tile_m``, relative to the sequence start.
* ``dq_order`` int32 ``[C, 3]``: ``(semaphore, turn, contributors)`` of each chunk row for the deterministic dQ
  order: chunks with the same (layout head, sequence, q_start) are the same query span; its ``contributors`` tiles
  add their dQ to it in the order of the tile table, the tile holding this chunk row being number ``turn``. The
  kernel's semaphore of query head ``hq`` and this span is ``hq * num_sems + semaphore``. Tiles of different tile
  heads that share a chunk row come in the same relative order, so one turn serves every head.

Rules: every key token of every (tile head, sequence) is in exactly one tile, whether or not any query keeps it
(a tile with no chunk writes zero dK/dV). A layout column longer than ``tile_n`` is split into several tiles and a
kept query span longer than ``tile_m`` into several chunks; each (tile, chunk) pair of a *partial* entry is dropped
when the causal / window band (with attention sinks) leaves no allowed pair in it, so split diagonal blocks cost
nothing where they are fully masked. Full entries are never dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from varblock import abi
from varblock.bwd_key_groups import group_key_tiles
from varblock.worklist import segment_ids, to_i32

#: column names of a backward ``tiles`` row (queries and keys swapped with respect to the forward's)
BWD_TILE_FIELDS = ("batch", "head", "k_start", "k_len", "chunk_begin", "n_full", "n_partial", "n_left")
BWD_CHUNK_FIELDS = ("q_start", "q_len")
TILE_ORDERS = ("longest_first", "longest_first_interleaved", "shortest_first", "layout")


@dataclass(frozen=True, eq=False)
class BwdWorkList:
    """The backward kernel's work list (see the module docstring)."""

    tiles: np.ndarray  #: int32 [T, 8]
    chunks: np.ndarray  #: int32 [C, 2]
    tile_m: int
    tile_n: int
    heads_per_tile: int
    num_tile_heads: int  #: heads of the dK/dV accumulators (Hq // heads_per_tile)
    dq_order: np.ndarray  #: int32 [C, 3] (semaphore, turn, contributors)
    num_sems: int  #: distinct query spans (semaphores per query head)

    @property
    def num_tiles(self) -> int:
        return int(self.tiles.shape[0])

    def pairs_per_tile(self) -> np.ndarray:
        """int64 [T]: chunk steps of each tile times the query heads it processes (a work estimate)."""
        t = self.tiles.astype(np.int64)
        return (t[:, 5] + t[:, 6]) * self.heads_per_tile


def _band_keeps(qs, ql, ks, kl, off, band: tuple[int | None, int | None], num_sink_tokens: int) -> np.ndarray:
    """Whether the causal/window band (``lo <= j - i - off <= hi``; keys ``j < num_sink_tokens`` waive ``lo``)
    allows at least one pair of query span ``[qs, qs + ql)`` x key span ``[ks, ks + kl)``."""
    lo, hi = band
    dmin = ks - (qs + ql - 1) - off  # smallest j - i - off of the block
    dmax = ks + kl - 1 - qs - off
    keep = np.ones(qs.shape[0], dtype=bool)
    if hi is not None:
        keep &= dmin <= hi
    if lo is not None:
        sink = np.zeros_like(keep)
        if num_sink_tokens > 0:
            sink = ks < num_sink_tokens
        keep &= (dmax >= lo) | sink
    return keep


def tile_heads_for(head_mode: str, num_heads_q: int, num_heads_kv: int, heads_per_tile: int) -> int:
    """Check ``heads_per_tile`` (1, or the GQA group size for layouts shared by the group); return the number of
    tile heads ``Hq // heads_per_tile``."""
    group = num_heads_q // num_heads_kv
    if heads_per_tile not in (1, group):
        raise ValueError(f"heads_per_tile: expected 1 or the GQA group size {group}, got {heads_per_tile}")
    if heads_per_tile > 1 and head_mode == abi.HEAD_MODE_PER_Q_HEAD:
        raise ValueError("heads_per_tile: a per-query-head layout needs heads_per_tile = 1")
    return num_heads_q // heads_per_tile


def build_bwd_worklist(cols: Any, cu_seqlens_q: Any, cu_seqlens_k: Any, *, num_heads_q: int, num_heads_kv: int,
                       head_mode: str, num_layout_heads: int, tile_m: int, tile_n: int, heads_per_tile: int = 1,
                       band: tuple[int | None, int | None] = (None, None), num_sink_tokens: int = 0,
                       tile_order: str = "longest_first", chunk_order: str = "ascending", group_keys: bool = True,
                       opaque_mask: bool = True) -> BwdWorkList:
    """Tiles and chunks for ``cols`` (a ``ColSpans``: head, batch, k_start, k_len, ent_ptr, n_full, q_start,
    q_len), see the module docstring.

    ``band`` = ``(lo, hi)`` bounds on ``j - i - off`` of the element mask (``ElementMask.band``; None =
    unbounded), used only to drop fully masked (tile, chunk) pairs of partial entries. ``tile_order``:
    ``"longest_first"`` (decreasing number of chunks, stable: shortens the tail of the launch),
    ``"longest_first_interleaved"`` (the same, tiles of equal length ordered by key position, then sequence, then
    head: tiles adding dQ to one query span start further apart, so they wait less for each other in the
    deterministic mode), ``"shortest_first"`` (increasing) or ``"layout"`` (columns in layout order, tile heads
    innermost). ``chunk_order``: each tile walks its full chunks, then its partial ones, by increasing
    (``"ascending"``) or decreasing (``"descending"``) ``q_start``. ``group_keys``: narrow adjacent key tiles share
    one tile where exact (:func:`group_key_tiles`); ``opaque_mask``: the element mask has document ids or a token
    mask (then a full block never joins a partial chunk).
    """
    if chunk_order not in ("ascending", "descending"):
        raise ValueError(f"chunk_order: expected 'ascending' or 'descending', got {chunk_order!r}")
    if tile_order not in TILE_ORDERS:
        raise ValueError(f"tile_order: expected one of {TILE_ORDERS}, got {tile_order!r}")
    hq_n, hkv_n = int(num_heads_q), int(num_heads_kv)
    if hq_n < 1 or hkv_n < 1 or hq_n % hkv_n:
        raise ValueError(f"num_heads_q={hq_n} must be a positive multiple of num_heads_kv={hkv_n}")
    if head_mode not in abi.HEAD_MODES:
        raise ValueError(f"head_mode must be one of {abi.HEAD_MODES}, got {head_mode!r}")
    if tile_m < 1 or tile_n < 1:
        raise ValueError(f"tile_m={tile_m}, tile_n={tile_n} must be >= 1")
    group = hq_n // hkv_n
    n_tile_heads = tile_heads_for(head_mode, hq_n, hkv_n, int(heads_per_tile))
    hl_expected = {abi.HEAD_MODE_PER_Q_HEAD: hq_n, abi.HEAD_MODE_PER_KV_HEAD: hkv_n,
                   abi.HEAD_MODE_BROADCAST: 1}[head_mode]
    if int(num_layout_heads) != hl_expected:
        raise ValueError(f"head_mode {head_mode!r} needs {hl_expected} layout heads, the layout has "
                         f"{num_layout_heads}")
    cu_q = np.asarray(cu_seqlens_q).astype(np.int64)
    cu_k = np.asarray(cu_seqlens_k).astype(np.int64)
    if cu_q.ndim != 1 or cu_q.shape != cu_k.shape or cu_q.shape[0] < 1:
        raise ValueError("cu_seqlens_q / cu_seqlens_k must be 1-D of the same length B + 1")
    off_b = np.diff(cu_k) - np.diff(cu_q)

    c_head = np.asarray(cols.head, np.int64)
    c_batch = np.asarray(cols.batch, np.int64)
    c_ks = np.asarray(cols.k_start, np.int64)
    c_kl = np.asarray(cols.k_len, np.int64)
    ent_ptr = np.asarray(cols.ent_ptr, np.int64)
    c_nfull = np.asarray(cols.n_full, np.int64)
    e_qs = np.asarray(cols.q_start, np.int64)
    e_ql = np.asarray(cols.q_len, np.int64)
    if ent_ptr.shape[0] != c_head.shape[0] + 1:
        raise ValueError("cols.ent_ptr must have one entry more than there are columns")
    if (c_kl < 1).any() or (e_ql < 1).any():
        raise ValueError("cols: key and query spans must have length >= 1")

    # ---- sub-tiles: every column split into ceil(k_len / tile_n) tiles of at most tile_n keys
    n_sub = (c_kl + tile_n - 1) // tile_n
    s_col, s_pos = segment_ids(n_sub)
    s_ks = c_ks[s_col] + s_pos * tile_n
    s_kl = np.minimum(c_kl[s_col] - s_pos * tile_n, tile_n)
    s_head, s_batch = c_head[s_col], c_batch[s_col]

    # ---- (sub-tile, entry) pairs, then (sub-tile, chunk) pairs: entries split into chunks of <= tile_m queries
    n_ent = np.diff(ent_ptr)
    se_sub, se_pos = segment_ids(n_ent[s_col])
    se_ent = ent_ptr[s_col[se_sub]] + se_pos
    se_full = se_pos < c_nfull[s_col[se_sub]]
    n_ch = (e_ql[se_ent] + tile_m - 1) // tile_m
    sc_se, sc_pos = segment_ids(n_ch)
    sc_sub = se_sub[sc_se]
    sc_qs = e_qs[se_ent[sc_se]] + sc_pos * tile_m
    sc_ql = np.minimum(e_ql[se_ent[sc_se]] - sc_pos * tile_m, tile_m)
    sc_full = se_full[sc_se]
    if group_keys:
        subs, pairs = group_key_tiles((s_head, s_batch, s_ks, s_kl), (sc_sub, sc_qs, sc_ql, sc_full), off_b,
                                      tile_n=tile_n, band=band, num_sink_tokens=int(num_sink_tokens),
                                      opaque_mask=opaque_mask)
        (s_head, s_batch, s_ks, s_kl), (sc_sub, sc_qs, sc_ql, sc_full) = subs, pairs
    keep = sc_full | _band_keeps(sc_qs, sc_ql, s_ks[sc_sub], s_kl[sc_sub], off_b[s_batch[sc_sub]], band,
                                 int(num_sink_tokens))
    sc_sub, sc_qs, sc_ql, sc_full = sc_sub[keep], sc_qs[keep], sc_ql[keep], sc_full[keep]
    if chunk_order == "descending":  # per sub-tile: full chunks by decreasing q_start, then partial ones
        by = np.lexsort((-sc_qs, ~sc_full, sc_sub))
        sc_sub, sc_qs, sc_ql, sc_full = sc_sub[by], sc_qs[by], sc_ql[by], sc_full[by]
    n_sub_total = s_ks.shape[0]
    st_full = np.bincount(sc_sub[sc_full], minlength=n_sub_total).astype(np.int64)
    st_all = np.bincount(sc_sub, minlength=n_sub_total).astype(np.int64)
    st_begin = np.cumsum(st_all) - st_all  # chunks are grouped by sub-tile, full before partial (entry order)

    # ---- tiles: sub-tiles replicated over the tile heads of their layout head
    hl = s_head
    if head_mode == abi.HEAD_MODE_PER_Q_HEAD:
        reps, base, stride = 1, hl, 0
    elif head_mode == abi.HEAD_MODE_PER_KV_HEAD:
        reps = 1 if heads_per_tile > 1 else group
        base, stride = (hl if heads_per_tile > 1 else hl * group), 1
    else:
        reps, base, stride = n_tile_heads, np.zeros_like(hl), 1
    t_sub, t_rep = segment_ids(np.full(n_sub_total, reps, dtype=np.int64))
    t_head = base[t_sub] + t_rep * stride
    tiles = np.stack([s_batch[t_sub], t_head, s_ks[t_sub], s_kl[t_sub], st_begin[t_sub], st_full[t_sub],
                      st_all[t_sub] - st_full[t_sub], np.zeros_like(t_head)], axis=1).reshape(-1, abi.TILE_WIDTH)
    order = np.arange(tiles.shape[0])
    if tile_order != "layout" and tiles.shape[0]:
        count = tiles[:, 5] + tiles[:, 6]
        if tile_order == "longest_first_interleaved":  # equal lengths: by key position, then sequence, then head
            order = np.lexsort((tiles[:, 1], tiles[:, 0], tiles[:, 2], -count))
        else:
            order = np.argsort(-count if tile_order == "longest_first" else count, kind="stable")
        tiles = tiles[order]
    chunks = np.stack([sc_qs, sc_ql], axis=1).reshape(-1, 2)
    dq_order, num_sems = _dq_order(t_sub[order], n_sub_total, sc_sub, hl[sc_sub], s_batch[sc_sub], sc_qs)
    return BwdWorkList(tiles=to_i32(tiles, "tiles"), chunks=to_i32(chunks, "chunks"), tile_m=int(tile_m),
                       tile_n=int(tile_n), heads_per_tile=int(heads_per_tile), num_tile_heads=n_tile_heads,
                       dq_order=to_i32(dq_order, "dq_order"), num_sems=num_sems)


def _dq_order(sub_of_tile: np.ndarray, n_sub: int, sc_sub: np.ndarray, sc_head: np.ndarray, sc_batch: np.ndarray,
              sc_qs: np.ndarray) -> tuple[np.ndarray, int]:
    """``dq_order`` (see the module docstring) from the sub-tile of each tile (in tile order) and the sub-tile,
    layout head, sequence and q_start of each chunk row."""
    pos = np.full(n_sub, np.iinfo(np.int64).max, dtype=np.int64)  # first tile of each sub-tile
    np.minimum.at(pos, sub_of_tile, np.arange(sub_of_tile.shape[0], dtype=np.int64))
    if sc_sub.size == 0:
        return np.zeros((0, 3), dtype=np.int64), 0
    # one int64 per (head, sequence, q_start), ordered as the triples (q_start < 2**31): a 1-D unique is much faster
    key = ((sc_head * (int(sc_batch.max()) + 1) + sc_batch) << 32) + sc_qs
    _, sem, counts = np.unique(key, return_inverse=True, return_counts=True)
    sem = sem.reshape(-1)
    by = np.argsort(sem * (int(pos[sc_sub].max()) + 1) + pos[sc_sub])  # grouped by span, contributors in tile order
    first = np.cumsum(counts) - counts
    turn = np.empty_like(sem)
    turn[by] = np.arange(sem.shape[0]) - first[sem[by]]
    return np.stack([sem, turn, counts[sem]], axis=1), int(counts.shape[0])


def bwd_tile_pairs(wl: BwdWorkList, cu_seqlens_q: Any, cu_seqlens_k: Any, *, num_heads_q: int, num_heads_kv: int):
    """Expand a backward work list into the (query head, packed query token, packed key token, partial, tile)
    tuples it computes, as flat int64 arrays (test helper; memory proportional to the number of pairs)."""
    cu_q = np.asarray(cu_seqlens_q).astype(np.int64)
    cu_k = np.asarray(cu_seqlens_k).astype(np.int64)
    t = wl.tiles.astype(np.int64)
    hpt = wl.heads_per_tile
    # (tile, head in tile)
    th_t, th_g = segment_ids(np.full(t.shape[0], hpt, dtype=np.int64))
    hq = t[th_t, 1] * hpt + th_g
    # chunks of each (tile, head)
    nch = t[th_t, 5] + t[th_t, 6]
    ci_th, ci_pos = segment_ids(nch)
    tt = th_t[ci_th]
    c = t[tt, 4] + ci_pos
    partial = (ci_pos < t[tt, 7]) | (ci_pos >= t[tt, 7] + t[tt, 5])
    ch = wl.chunks.astype(np.int64)
    # (chunk step, query row), then (.., key)
    r_id, r_pos = segment_ids(ch[c, 1])
    k_id, k_pos = segment_ids(t[tt[r_id], 3])
    step = r_id[k_id]
    tile = tt[step]
    qtok = cu_q[t[tile, 0]] + ch[c[step], 0] + r_pos[k_id]
    ktok = cu_k[t[tile, 0]] + t[tile, 2] + k_pos
    return hq[ci_th[step]], qtok, ktok, partial[step], tile
