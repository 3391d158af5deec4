"""Work list of the attention forward kernels (docs/contracts.md section 2), built from a layout's ``RowSpans``.

Pure NumPy and vectorised: no Python loop per row, entry, tile or token.

Output, for a kernel tile size ``(tile_m, tile_n)``:

* ``tiles`` int32 ``[T, 8]``: ``(batch, head, q_start, q_len, chunk_begin, n_full, n_partial, n_left)``. A CTA
  processes one tile at a time. ``head`` is the query head, or the KV head with pack-GQA (``pack_gqa = G > 1``: tile
  row ``r`` is token ``q_start + r // G`` of query head ``head * G + r % G``; ``q_len`` counts tokens, ``q_len * G
  <= tile_m``).
* ``chunks`` int32 ``[C, 2]``: ``(k_start, k_len)`` with ``1 <= k_len <= tile_n``, relative to the sequence start
  (merged plans: the ``k_len`` word may carry row-half drop bits above ``CHUNK_DROP_SHIFT``, partial chunks only);
  a tile's chunks are ``chunks[chunk_begin : chunk_begin + n_full + n_partial]``; chunk ``i`` of the tile (0-based)
  is *partial* iff ``i < n_left or i >= n_left + n_full``, *full* otherwise. So a tile's list is ``n_left`` partial
  chunks, then the ``n_full`` full ones, then ``n_partial - n_left`` partial ones (a dense sliding-window row can
  reference one contiguous per-sequence list: left-edge partial, full middle, right-edge partial). This builder
  always writes ``n_left = 0`` (full chunks first, then partial).

Rules: a tile never crosses a layout row (rows longer than the tile are split); entries longer than ``tile_n`` are
split into chunks; tiles of the same layout row share that row's chunk list (one copy, whatever the number of query
heads or query splits). Query tokens that no layout row covers (a layout may leave them out) get tiles with no chunk,
so that every ``(query head, token)`` is written exactly once (O = 0, LSE = -inf there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from .abi import (
    CHUNK_DROP_HI,
    CHUNK_DROP_KEY_HALF,
    CHUNK_DROP_LO,
    CHUNK_DROP_SHIFT,
    CHUNK_K_LEN,
    CHUNK_K_LEN_MASK,
    CHUNK_K_START,
    CHUNK_WIDTH,
    HEAD_MODES,
    TILE_BATCH,
    TILE_CHUNK_BEGIN,
    TILE_HEAD,
    TILE_N_FULL,
    TILE_N_LEFT,
    TILE_N_PARTIAL,
    TILE_Q_LEN,
    TILE_Q_START,
    TILE_WIDTH,
)
from .tile_pairing import BandMask, RowArrays, merge_rows

_I32_MAX = 2**31 - 1


@dataclass(frozen=True, eq=False)
class WorkList:
    tiles: np.ndarray  #: int32 [T, 8]
    chunks: np.ndarray  #: int32 [C, 2]
    tile_m: int
    tile_n: int
    pack_gqa: int  #: G (1 = off)
    #: built with ``merge``: a tile may hold several layout rows and a chunk several key spans (``tile_pairing``)
    merged: bool = False

    @property
    def num_tiles(self) -> int:
        return int(self.tiles.shape[0])


def _i64(a: Any, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise TypeError(f"rows.{name}: expected a 1-D integer array, got dtype {arr.dtype} shape {arr.shape}")
    return arr.astype(np.int64, copy=False)


def to_i32(a: np.ndarray, what: str) -> np.ndarray:
    """``a`` as a C-contiguous int32 array; ValueError naming ``what`` when a value does not fit."""
    if a.size and (a.min() < -_I32_MAX - 1 or a.max() > _I32_MAX):
        raise ValueError(f"{what} does not fit in int32")
    return np.ascontiguousarray(a, dtype=np.int32)


def segment_ids(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For counts c_r: (r repeated c_r times, position 0..c_r-1 inside each group)."""
    total = int(counts.sum())
    ids = np.repeat(np.arange(counts.shape[0], dtype=np.int64), counts)
    starts = np.cumsum(counts) - counts
    pos = np.arange(total, dtype=np.int64) - np.repeat(starts, counts)
    return ids, pos


def build_worklist(
    rows: Any,
    cu_seqlens_q: Any,
    cu_seqlens_k: Any,
    *,
    num_heads_q: int,
    num_heads_kv: int,
    head_mode: str,
    tile_m: int,
    tile_n: int,
    pack_gqa: bool | int = False,
    num_layout_heads: int | None = None,
    longest_first: bool = False,
    merge: BandMask | None = None,
    drop_bits: bool = True,
) -> WorkList:
    """Tiles and chunks for ``rows`` (a ``RowSpans``: head, batch, q_start, q_len, ent_ptr, n_full, k_start, k_len).

    ``pack_gqa``: False/1 (off), True (G = Hq // Hkv) or G itself (must equal Hq // Hkv); needs a layout shared by
    the group (``per_kv_head`` or ``broadcast``). ``longest_first`` orders tiles by decreasing chunk count (stable),
    which shortens the tail of a non-persistent launch; otherwise tiles follow the rows, query heads innermost.
    ``merge``: the element mask the kernel applies to partial chunks; given, small rows share tiles and adjacent
    key spans share chunks wherever that is exact (``varblock.tile_pairing``), and two rows that fill one row half
    of a tile each also pair where their key sets differ: a partial chunk one of them does not keep carries the
    row-half drop bits of that half in its ``k_len`` word (``varblock.abi.CHUNK_DROP_SHIFT``) — unless
    ``drop_bits`` is False (then only exact groups pair).
    """
    hq_n, hkv_n = int(num_heads_q), int(num_heads_kv)
    g, hl_n = _heads(hq_n, hkv_n, head_mode, tile_m, tile_n, pack_gqa, num_layout_heads)
    cu_q = np.asarray(cu_seqlens_q).astype(np.int64)
    cu_k = np.asarray(cu_seqlens_k).astype(np.int64)
    if cu_q.ndim != 1 or cu_q.shape != cu_k.shape or cu_q.shape[0] < 1:
        raise ValueError("cu_seqlens_q / cu_seqlens_k must be 1-D of the same length B + 1")
    len_q, len_k = np.diff(cu_q), np.diff(cu_k)
    if (len_q < 0).any() or (len_k < 0).any():
        raise ValueError("cu_seqlens_q / cu_seqlens_k must be non-decreasing")
    r = _checked_rows(rows, hl_n, len_q, len_k)
    if merge is not None and not isinstance(merge, BandMask):
        raise TypeError(f"merge: expected a varblock.tile_pairing.BandMask or None, got {type(merge).__name__}")
    if merge is None:
        ch_start, ch_len, row_cbeg, row_nfull, row_npart = _chunks(r, tile_n)
    else:
        _check_order(r.head * r.nb + r.batch, r.q_start, r.q_len)
        half_tokens = tile_m // (2 * g) if drop_bits and tile_m % (2 * g) == 0 else 0
        m = merge_rows(RowArrays(*r[:8]), len_q, len_k, rows_per_tile=tile_m // g if g > 1 else tile_m,
                       tile_n=tile_n, mask=merge, half_tokens=half_tokens)
        r = r._replace(head=m.head, batch=m.batch, q_start=m.q_start, q_len=m.q_len)
        ch_start, row_cbeg, row_nfull, row_npart = m.ch_start, m.cbeg, m.nfull, m.npart
        ch_len = m.ch_len | (m.ch_drop << CHUNK_DROP_SHIFT)
    r_head, r_batch, r_qs, r_ql, r_cb, r_nf, r_np = _complete_rows(r, row_cbeg, row_nfull, row_npart, hl_n, len_q)
    tiles = _tiles(r_head, r_batch, r_qs, r_ql, r_cb, r_nf, r_np, hq_n, hkv_n, head_mode, tile_m, g)
    if longest_first and tiles.shape[0]:
        tiles = tiles[np.argsort(-(tiles[:, TILE_N_FULL] + tiles[:, TILE_N_PARTIAL]), kind="stable")]
    chunks = np.stack([ch_start, ch_len], axis=1) if ch_start.size else np.zeros((0, CHUNK_WIDTH), dtype=np.int64)
    return WorkList(tiles=to_i32(tiles.reshape(-1, TILE_WIDTH), "tiles"),
                    chunks=to_i32(chunks.reshape(-1, CHUNK_WIDTH), "chunks"),
                    tile_m=int(tile_m), tile_n=int(tile_n), pack_gqa=g, merged=merge is not None)


def _heads(hq_n: int, hkv_n: int, head_mode: str, tile_m: int, tile_n: int, pack_gqa: bool | int,
           num_layout_heads: int | None) -> tuple[int, int]:
    """(pack-GQA group G, number of layout heads) after checking heads, head mode, tile sizes and pack_gqa."""
    if hq_n < 1 or hkv_n < 1 or hq_n % hkv_n:
        raise ValueError(f"num_heads_q={hq_n} must be a positive multiple of num_heads_kv={hkv_n}")
    group = hq_n // hkv_n
    if head_mode not in HEAD_MODES:
        raise ValueError(f"head_mode must be one of {HEAD_MODES}, got {head_mode!r}")
    if tile_m < 1 or tile_n < 1:
        raise ValueError(f"tile_m={tile_m}, tile_n={tile_n} must be >= 1")
    if pack_gqa is True:
        g = group
    elif pack_gqa is False or pack_gqa is None:
        g = 1
    else:
        g = int(pack_gqa)
        if g != 1 and g != group:
            raise ValueError(f"pack_gqa={g} must be 1 or the group size Hq // Hkv = {group}")
    if g > 1 and head_mode == "per_q_head":
        raise ValueError("pack_gqa needs a layout shared by the GQA group (head_mode per_kv_head or broadcast)")
    if g > tile_m:
        raise ValueError(f"pack_gqa group {g} does not fit in tile_m={tile_m}")
    hl_expected = {"per_q_head": hq_n, "per_kv_head": hkv_n, "broadcast": 1}[head_mode]
    hl_n = hl_expected if num_layout_heads is None else int(num_layout_heads)
    if hl_n != hl_expected:
        raise ValueError(f"head_mode {head_mode!r} needs {hl_expected} layout heads, the layout has {hl_n}")
    return g, hl_n


class _Rows(NamedTuple):
    head: np.ndarray
    batch: np.ndarray
    q_start: np.ndarray
    q_len: np.ndarray
    ent_ptr: np.ndarray
    n_full: np.ndarray
    k_start: np.ndarray
    k_len: np.ndarray
    nb: int


def _checked_rows(rows: Any, hl_n: int, len_q: np.ndarray, len_k: np.ndarray) -> _Rows:
    """The row arrays as int64, checked: CSR offsets, spans inside their sequences, heads and batches in range."""
    nb = len_q.shape[0]
    head, batch = _i64(rows.head, "head"), _i64(rows.batch, "batch")
    q_start, q_len = _i64(rows.q_start, "q_start"), _i64(rows.q_len, "q_len")
    ent_ptr, n_full = _i64(rows.ent_ptr, "ent_ptr"), _i64(rows.n_full, "n_full")
    k_start, k_len = _i64(rows.k_start, "k_start"), _i64(rows.k_len, "k_len")
    nr, ne = head.shape[0], k_start.shape[0]
    if not (batch.shape[0] == q_start.shape[0] == q_len.shape[0] == n_full.shape[0] == nr):
        raise ValueError("rows: head/batch/q_start/q_len/n_full must have the same length")
    if ent_ptr.shape[0] != nr + 1 or k_len.shape[0] != ne or (nr + 1 and (ent_ptr[0] != 0 or ent_ptr[-1] != ne)):
        raise ValueError("rows.ent_ptr must be CSR offsets [R+1] from 0 to the number of entries")
    n_ent = np.diff(ent_ptr)
    if (n_ent < 0).any() or (n_full < 0).any() or (n_full > n_ent).any():
        raise ValueError("rows: ent_ptr must be non-decreasing and 0 <= n_full <= entries of the row")
    if nr:
        if (head < 0).any() or (head >= hl_n).any():
            raise ValueError(f"rows.head out of range [0, {hl_n})")
        if (batch < 0).any() or (batch >= nb).any():
            raise ValueError(f"rows.batch out of range [0, {nb})")
        if (q_len < 1).any() or (q_start < 0).any() or (q_start + q_len > len_q[batch]).any():
            raise ValueError("rows: query spans must satisfy q_len >= 1 and lie inside their sequence")
    if ne:
        ent_row = np.repeat(np.arange(nr, dtype=np.int64), n_ent)
        if (k_len < 1).any() or (k_start < 0).any() or (k_start + k_len > len_k[batch[ent_row]]).any():
            raise ValueError("rows: key spans must satisfy k_len >= 1 and lie inside their sequence")
    return _Rows(head, batch, q_start, q_len, ent_ptr, n_full, k_start, k_len, nb)


def _chunks(r: _Rows, tile_n: int) -> tuple[np.ndarray, ...]:
    """Split every entry into ceil(k_len / tile_n) chunks (entry order kept: full entries first); returns the chunk
    starts and lengths and, per row, its first chunk and its full / partial chunk counts."""
    n_ch_e = (r.k_len + tile_n - 1) // tile_n
    e_id, e_pos = segment_ids(n_ch_e)
    ch_start = r.k_start[e_id] + e_pos * tile_n
    ch_len = np.minimum(r.k_len[e_id] - e_pos * tile_n, tile_n)
    csum = np.concatenate([[0], np.cumsum(n_ch_e)])
    row_cbeg = csum[r.ent_ptr[:-1]]
    row_nfull = csum[r.ent_ptr[:-1] + r.n_full] - row_cbeg
    row_npart = csum[r.ent_ptr[1:]] - row_cbeg - row_nfull
    return ch_start, ch_len, row_cbeg, row_nfull, row_npart


def _complete_rows(r: _Rows, row_cbeg, row_nfull, row_npart, hl_n: int, len_q: np.ndarray) -> tuple[np.ndarray, ...]:
    """Every query token of every (layout head, sequence) in exactly one row: the gaps between and after the given
    rows become empty rows. Returns (head, batch, q_start, q_len, chunk_begin, n_full, n_partial) sorted by
    (head, batch, q_start)."""
    nb, nr = r.nb, r.head.shape[0]
    q_start, q_len = r.q_start, r.q_len
    key = r.head * nb + r.batch
    _check_order(key, q_start, q_len)
    # gaps before each row (within its (head, batch)), and after the last row of every (head, batch)
    start_of = np.zeros(nr, dtype=np.int64)
    if nr > 1:
        start_of[1:] = np.where(key[1:] == key[:-1], q_start[:-1] + q_len[:-1], 0)
    gap_b = q_start - start_of
    sel = gap_b > 0
    g_key, g_start, g_len = [key[sel]], [start_of[sel]], [gap_b[sel]]
    last_end = np.zeros(hl_n * nb, dtype=np.int64)
    if nr:
        is_last = np.ones(nr, dtype=bool)
        is_last[:-1] = key[1:] != key[:-1]
        last_end[key[is_last]] = (q_start + q_len)[is_last]
    all_keys = np.arange(hl_n * nb, dtype=np.int64)
    tail = np.tile(len_q, hl_n) - last_end
    sel = tail > 0
    g_key.append(all_keys[sel])
    g_start.append(last_end[sel])
    g_len.append(tail[sel])
    gk, gs, gl = (np.concatenate(x) for x in (g_key, g_start, g_len))
    zeros = np.zeros(gk.shape[0], dtype=np.int64)
    r_key = np.concatenate([key, gk])
    cols = [np.concatenate([q_start, gs]), np.concatenate([q_len, gl]), np.concatenate([row_cbeg, zeros]),
            np.concatenate([row_nfull, zeros]), np.concatenate([row_npart, zeros])]
    order = np.lexsort((cols[0], r_key))
    r_key = r_key[order]
    r_head, r_batch = (r_key // nb, r_key % nb) if nb else (r_key, r_key)
    return (r_head, r_batch, *(c[order] for c in cols))


def _check_order(key: np.ndarray, q_start: np.ndarray, q_len: np.ndarray) -> None:
    """ValueError unless rows are sorted by (head, batch) key and q_start and do not overlap."""
    if key.shape[0] > 1:
        same = key[1:] == key[:-1]
        if (key[1:] < key[:-1]).any() or (same & (q_start[1:] < q_start[:-1] + q_len[:-1])).any():
            raise ValueError("rows must be sorted by (head, batch, q_start) and must not overlap")


def _tiles(r_head, r_batch, r_qs, r_ql, r_cb, r_nf, r_np, hq_n: int, hkv_n: int, head_mode: str, tile_m: int,
           g: int) -> np.ndarray:
    """Per row, (query split) x (tile head) tiles, tile heads innermost; int64 [T, TILE_WIDTH] with n_left = 0."""
    group = hq_n // hkv_n
    if g > 1:  # tile head = KV head; rows of a tile are (token, head in group) pairs
        n_th = hkv_n if head_mode == "broadcast" else 1
        tpt = tile_m // g  # tokens per tile
    else:
        n_th = {"per_q_head": 1, "per_kv_head": group, "broadcast": hq_n}[head_mode]
        tpt = tile_m
    n_seg = (r_ql + tpt - 1) // tpt
    t_row, t_pos = segment_ids(n_seg * n_th)
    seg = t_pos // n_th
    th = t_pos % n_th
    if g > 1:
        t_head = th if head_mode == "broadcast" else r_head[t_row]
    else:
        t_head = {"per_q_head": r_head[t_row], "per_kv_head": r_head[t_row] * group + th, "broadcast": th}[head_mode]
    t_qs = r_qs[t_row] + seg * tpt
    t_ql = np.minimum(r_ql[t_row] - seg * tpt, tpt)
    return np.stack([r_batch[t_row], t_head, t_qs, t_ql, r_cb[t_row], r_nf[t_row], r_np[t_row],
                     np.zeros_like(t_qs)], axis=1)  # n_left = 0: full chunks first


def tile_pairs(wl: WorkList, cu_seqlens_q: Any, cu_seqlens_k: Any, *, num_heads_q: int, num_heads_kv: int):
    """Expand a work list into the (query head, packed query token, packed key token, partial) tuples it computes,
    as flat int64 arrays (test helper; vectorised, memory proportional to the number of pairs); rows a chunk's
    row-half drop bits mask compute none of its pairs."""
    cu_q = np.asarray(cu_seqlens_q).astype(np.int64)
    cu_k = np.asarray(cu_seqlens_k).astype(np.int64)
    t = wl.tiles.astype(np.int64)
    g = wl.pack_gqa
    # rows of each tile: (token, head)
    n_rows = t[:, TILE_Q_LEN] * g
    tid, rpos = segment_ids(n_rows)
    tok = cu_q[t[tid, TILE_BATCH]] + t[tid, TILE_Q_START] + rpos // g
    hq = t[tid, TILE_HEAD] * g + rpos % g if g > 1 else t[tid, TILE_HEAD]
    # chunks of each row's tile
    nch = t[tid, TILE_N_FULL] + t[tid, TILE_N_PARTIAL]
    rid, cpos = segment_ids(nch)
    c = t[tid[rid], TILE_CHUNK_BEGIN] + cpos
    n_left = t[tid[rid], TILE_N_LEFT]
    partial = (cpos < n_left) | (cpos >= n_left + t[tid[rid], TILE_N_FULL])
    ch = wl.chunks.astype(np.int64)
    word = ch[c, CHUNK_K_LEN]
    pid, kpos = segment_ids(word & CHUNK_K_LEN_MASK)
    live = ~dropped(word[pid], rpos[rid[pid]], kpos, wl.tile_m, wl.tile_n)
    pid, kpos = pid[live], kpos[live]
    ktok = cu_k[t[tid[rid[pid]], TILE_BATCH]] + ch[c[pid], CHUNK_K_START] + kpos
    return hq[rid[pid]], tok[rid[pid]], ktok, partial[pid]


def dropped(k_len_word: Any, row: Any, col: Any, tile_m: int, tile_n: int) -> np.ndarray:
    """Whether element (tile row ``row``, chunk column ``col``) of a chunk whose ``k_len`` word is ``k_len_word`` is
    masked by the chunk's drop bits (``varblock.abi.CHUNK_DROP_SHIFT``), as the forward kernels read them."""
    bit = np.where(np.asarray(row) >= tile_m // 2, CHUNK_DROP_HI, CHUNK_DROP_LO)
    bit = np.where(np.asarray(col) >= tile_n // 2, bit << CHUNK_DROP_KEY_HALF, bit)
    return ((np.asarray(k_len_word) >> CHUNK_DROP_SHIFT) & bit) != 0
