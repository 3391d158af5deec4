"""Tile pairing: small layout rows share one query tile, adjacent key spans share one chunk (exactly).

A layout of 64-token blocks fed to kernels with 128-row tiles and 128-key chunks would otherwise compute a quarter
of every MMA for nothing. ``merge_rows`` turns the rows of a layout (``RowSpans``, docs/contracts.md section 1) into
*groups* and per-group chunk lists for ``worklist.build_worklist``:

* **Rows.** Consecutive rows of one (layout head, sequence) that tile one aligned window of ``rows_per_tile`` query
  tokens (``[w * rows_per_tile, (w + 1) * rows_per_tile)``) with no gap form a group: one tile walks the *union* of
  their key spans. That is exact only when every element the union adds for a member row is masked anyway by the
  element mask the kernel applies to partial chunks (and every element of a member's full span inside a partial
  chunk is allowed by it): checked on the band (causal / window / sinks, ``layout.mask.band_classify``, exact on
  rectangles) and on document ids where a span lies in one document. A group that is not exact falls back to its
  single rows. Token masks only ever mask more, so they never break a "not kept -> masked" argument, but they make
  "full -> allowed" unprovable (``BandMask.opaque``).
* **Keys.** The group's key spans (*units*) are walked in order; contiguous units form *runs* that are cut into
  ``tile_n``-wide chunks from the run start, so two adjacent 64-wide kept blocks make one 128-wide chunk and a lone
  64-wide block one 64-wide chunk. A chunk is full when every member keeps every unit it touches as full, partial
  otherwise. A full unit whose elements the mask does not provably all allow (token masks, or a layout that calls
  masked blocks full) is kept in runs of its own, so it is never masked.

Rows whose entries overlap each other (legal in ``RowSpans``) are left as they are: one run per entry (*plain*).
Pure NumPy and vectorised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .abi import CHUNK_DROP_KEY_HALF
from .layout._host import ragged_arange
from .layout.mask import band_classify

#: most rows one group may hold (bounds the member x key-unit status table)
MAX_GROUP_ROWS = 8
#: unit status of a member row: not kept / kept partial / kept full
_NOT_KEPT, _PARTIAL, _FULL = 0, 1, 2


@dataclass(frozen=True, eq=False)
class BandMask:
    """The element mask the kernels apply to partial chunks, as far as pairing needs it: the band as the kernels
    take it (``window_left`` / ``window_right``, causal folded into the right bound, -1 = unbounded), the sink
    count, the document ids (``doc_ids_q [total_q]`` / ``doc_ids_k [total_k]`` or None) and ``opaque`` (a token
    mask is present: it may mask any pair, so "every pair allowed" can never be proven)."""

    window_left: int = -1
    window_right: int = -1
    num_sink_tokens: int = 0
    opaque: bool = False
    doc_ids_q: np.ndarray | None = None
    doc_ids_k: np.ndarray | None = None

    @property
    def allows_all(self) -> bool:
        """No band, no documents, no token mask: every pair of every rectangle is allowed."""
        return (self.window_left < 0 and self.window_right < 0 and self.doc_ids_q is None and not self.opaque)

    def classify(self, qs, ql, ks, kl, off, q_base, k_base) -> tuple[np.ndarray, np.ndarray]:
        """(every pair allowed, no pair allowed) for query x key rectangles of sequences whose first query / key
        token is ``q_base`` / ``k_base``, vectorised. Documents decide only where both spans are one document."""
        lo = -self.window_left if self.window_left >= 0 else None
        hi = self.window_right if self.window_right >= 0 else None
        all_, none = band_classify(qs, ql, ks, kl, off, lo, hi, self.num_sink_tokens)
        if self.doc_ids_q is not None:
            (one_q, doc_q), (one_k, doc_k) = (_one_document(d, base + s, n) for d, base, s, n in (
                (self.doc_ids_q, q_base, qs, ql), (self.doc_ids_k, k_base, ks, kl)))
            both = one_q & one_k
            all_ = all_ & both & (doc_q == doc_k)
            none = none | (both & (doc_q != doc_k))
        return (np.zeros_like(all_) if self.opaque else all_), none


def _one_document(doc: np.ndarray, start: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For token spans [start, start + length) of ``doc``: (all one document, the document of the first token)."""
    doc = np.asarray(doc)
    run = np.zeros(doc.shape[0], dtype=np.int64)
    if doc.shape[0] > 1:
        run[1:] = np.cumsum(doc[1:] != doc[:-1])
    if doc.shape[0] == 0:
        return np.zeros(np.shape(start), dtype=bool), np.zeros(np.shape(start), dtype=np.int64)
    return run[start + length - 1] == run[start], doc[start]


class RowArrays(NamedTuple):
    """Checked rows as int64 arrays (``RowSpans`` fields)."""

    head: np.ndarray
    batch: np.ndarray
    q_start: np.ndarray
    q_len: np.ndarray
    ent_ptr: np.ndarray
    n_full: np.ndarray
    k_start: np.ndarray
    k_len: np.ndarray


class MergedRows(NamedTuple):
    """Groups (one output row each, sorted like the input rows) and their chunk lists: chunks
    ``[cbeg[g], cbeg[g] + nfull[g] + npart[g])``, the full ones first; ``ch_drop``: the row-half drop bits of each
    chunk (``varblock.abi.CHUNK_DROP_LO`` / ``CHUNK_DROP_HI``; only on partial chunks of half pairs)."""

    head: np.ndarray
    batch: np.ndarray
    q_start: np.ndarray
    q_len: np.ndarray
    ch_start: np.ndarray
    ch_len: np.ndarray
    cbeg: np.ndarray
    nfull: np.ndarray
    npart: np.ndarray
    ch_drop: np.ndarray


def merge_rows(r: RowArrays, len_q: np.ndarray, len_k: np.ndarray, *, rows_per_tile: int, tile_n: int,
               mask: BandMask, half_tokens: int = 0) -> MergedRows:
    """Group the rows ``r`` (sorted by (head, batch, q_start), non-overlapping, spans inside their sequences) for
    tiles of ``rows_per_tile`` query tokens and chunks of ``tile_n`` keys; see the module docstring.
    ``half_tokens``: query tokens in the lower row half of a tile (the kernels' row-half drop bits; 0 = the kernel
    has none, so only exact groups pair)."""
    for name, doc, total in (("doc_ids_q", mask.doc_ids_q, len_q.sum()), ("doc_ids_k", mask.doc_ids_k, len_k.sum())):
        if (doc is None) != (mask.doc_ids_q is None) or (doc is not None and np.shape(doc) != (total,)):
            raise ValueError(f"mask.{name}: expected {total} document ids (one per token), got "
                             f"{None if doc is None else np.shape(doc)}")
    out = _merge(r, len_q, len_k, int(rows_per_tile), int(tile_n), mask, int(half_tokens))
    cut = _split_at_windows(r, len_q, int(rows_per_tile), int(half_tokens)) if half_tokens > 0 else None
    if cut is not None:  # rows across window edges: cut them there when that computes less (never more)
        alt = _merge(cut, len_q, len_k, int(rows_per_tile), int(tile_n), mask, int(half_tokens))
        if mma_tiles(alt, rows_per_tile) < mma_tiles(out, rows_per_tile):
            return alt
    return out


def mma_tiles(m: MergedRows, rows_per_tile: int) -> int:
    """Chunk steps of the tiles the groups ``m`` make (a group longer than a tile is cut into tiles that each walk
    its whole chunk list): the MMA work in units of one ``tile_m x tile_n`` chunk."""
    tiles = -(-m.q_len // rows_per_tile)
    return int(((m.nfull + m.npart) * tiles).sum())


def _split_at_windows(r: RowArrays, len_q: np.ndarray, tpt: int, half: int) -> RowArrays | None:
    """``r`` with every row that crosses an aligned window of ``tpt`` tokens and lies on the row-half grid (starts
    at a multiple of ``half`` and ends at one or at its sequence end) cut at the window edges; each piece keeps the
    row's entries. Pieces fill whole row halves, so two of them in one window pair as a half pair (drop bits) where
    their key sets differ. None when no row is cut."""
    end = r.q_start + r.q_len
    on_grid = (r.q_start % half == 0) & ((end % half == 0) | (end == len_q[r.batch]))
    n_pieces = np.where(on_grid, (end - 1) // tpt - r.q_start // tpt + 1, 1)
    if (n_pieces == 1).all():
        return None
    row, pos = ragged_arange(n_pieces)
    lo = np.where(pos == 0, r.q_start[row], (r.q_start[row] // tpt + pos) * tpt)
    hi = np.where(pos == n_pieces[row] - 1, end[row], (r.q_start[row] // tpt + pos + 1) * tpt)
    n_ent = np.diff(r.ent_ptr)
    e_row, e_pos = ragged_arange(n_ent[row])
    src = r.ent_ptr[row][e_row] + e_pos
    ent_ptr = np.concatenate([[0], np.cumsum(n_ent[row])])
    return RowArrays(r.head[row], r.batch[row], lo, hi - lo, ent_ptr, r.n_full[row], r.k_start[src], r.k_len[src])


def _merge(r: RowArrays, len_q: np.ndarray, len_k: np.ndarray, rows_per_tile: int, tile_n: int, mask: BandMask,
           half_tokens: int) -> MergedRows:
    """``merge_rows`` for one set of rows (no window cuts)."""
    nr, nb = r.head.shape[0], len_q.shape[0]
    grp = window_groups(r.head * nb + r.batch, r.q_start, r.q_len, int(rows_per_tile))
    plain = np.zeros(nr, dtype=bool)  # per row (rows of a plain group are alone)
    for _ in range(3):
        out, broken = _build(r, grp, plain, len_q, len_k, int(tile_n), mask, int(half_tokens))
        if not broken.any():
            return out
        # overlapping key spans: the rows of such a group become single groups; such a single row becomes plain
        first = group_first(grp)
        size = np.diff(np.append(first, nr))
        bad_row = broken[grp]
        plain |= bad_row & (size[grp] == 1)
        grp = split_groups(grp, bad_row & (size[grp] > 1))
    raise AssertionError("internal: tile pairing did not settle")  # pragma: no cover


def window_groups(key: np.ndarray, start: np.ndarray, length: np.ndarray, window: int,
                  max_members: int = MAX_GROUP_ROWS) -> np.ndarray:
    """Group id per span (spans sorted by ``key`` then ``start``): runs of contiguous spans of one ``key`` inside
    one aligned window ``[w * window, (w + 1) * window)``, at most ``max_members`` each. Tile pairing groups query
    rows this way, the backward's key grouping (``bwd_key_groups``) key sub-tiles."""
    n = key.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    w0 = start // window
    fits = w0 == (start + length - 1) // window
    new = np.ones(n, dtype=bool)
    new[1:] = ((key[1:] != key[:-1]) | (w0[1:] != w0[:-1]) | ~fits[1:] | ~fits[:-1]
               | (start[1:] != start[:-1] + length[:-1]))
    grp = np.cumsum(new) - 1
    new |= (np.arange(n) - group_first(grp)[grp]) % max_members == 0
    return np.cumsum(new) - 1


def group_first(grp: np.ndarray) -> np.ndarray:
    """First index of every group (``grp`` non-decreasing, ids 0..G-1)."""
    new = np.ones(grp.shape[0], dtype=bool)
    new[1:] = grp[1:] != grp[:-1]
    return np.flatnonzero(new)


def split_groups(grp: np.ndarray, alone: np.ndarray) -> np.ndarray:
    """Group ids after putting every member flagged ``alone`` in a group of its own."""
    new = np.ones(grp.shape[0], dtype=bool)
    new[1:] = (grp[1:] != grp[:-1]) | alone[1:] | alone[:-1]
    return np.cumsum(new) - 1


class _Units(NamedTuple):
    """Key units of the groups (one distinct key span of a group each) and their classes."""

    g: np.ndarray  #: group of each unit
    ks: np.ndarray
    kl: np.ndarray
    plain: np.ndarray
    all_full: np.ndarray  #: every member keeps it full
    #: the element mask (and the row-half drop bits ``drop``) give every member exactly its kept pairs (may join a
    #: partial chunk)
    maskable: np.ndarray
    drop: np.ndarray  #: row-half drop bits a chunk holding the unit needs (half pairs only; else 0)

    def take(self, sel: np.ndarray, g: np.ndarray) -> _Units:
        return _Units(g, self.ks[sel], self.kl[sel], self.plain[sel], self.all_full[sel], self.maskable[sel],
                      self.drop[sel])


class _Statuses(NamedTuple):
    """One entry per (unit, member row of its group)."""

    unit: np.ndarray
    member: np.ndarray
    status: np.ndarray  #: _NOT_KEPT / _PARTIAL / _FULL
    allowed: np.ndarray  #: the element mask allows every pair of (member rows x unit keys)


def _build(r: RowArrays, grp: np.ndarray, plain: np.ndarray, len_q: np.ndarray, len_k: np.ndarray, tile_n: int,
           mask: BandMask, half_tokens: int) -> tuple[MergedRows | None, np.ndarray]:
    """Chunks for the grouping ``grp``, where groups that are not exact fall back to single rows; also bool
    [groups of ``grp``]: groups whose key spans overlap (then there is no output)."""
    nr = grp.shape[0]
    first = group_first(grp)
    member = np.arange(nr) - first[grp]
    size = np.diff(np.append(first, nr))
    half = (size == 2) & (r.q_len[first] == half_tokens) if half_tokens > 0 else np.zeros(first.shape[0], bool)
    u, st, inexact, broken = _units(r, grp, member, plain[first], size, first, len_q, len_k, mask, half)
    if broken.any():
        return None, broken
    ngrp = grp
    if inexact.any():  # their rows become single groups, with their own units (already classified per member)
        ngrp = split_groups(grp, inexact[grp])
        u = _regroup(u, st, inexact, first, ngrp)
    nfirst = group_first(ngrp)
    n_groups = nfirst.shape[0]
    ch_start, ch_len, ch_g, ch_part, ch_drop = _run_chunks(u, tile_n)
    order = np.argsort(ch_g * 2 + ch_part, kind="stable")  # full chunks first, each kind by key (as made)
    ch_start, ch_len, ch_g, ch_part, ch_drop = (x[order] for x in (ch_start, ch_len, ch_g, ch_part, ch_drop))
    n_ch = np.bincount(ch_g, minlength=n_groups)
    npart = np.bincount(ch_g[ch_part], minlength=n_groups)
    cbeg = np.concatenate([[0], np.cumsum(n_ch)[:-1]]) if n_groups else np.zeros(0, dtype=np.int64)
    q_len = np.add.reduceat(r.q_len, nfirst) if n_groups else np.zeros(0, dtype=np.int64)
    out = MergedRows(r.head[nfirst], r.batch[nfirst], r.q_start[nfirst], q_len, ch_start, ch_len, cbeg,
                     n_ch - npart, npart, ch_drop)
    return out, broken


def _regroup(units: _Units, st: _Statuses, inexact: np.ndarray, first: np.ndarray, ngrp: np.ndarray) -> _Units:
    """Units of the new grouping ``ngrp``, sorted by (group, k_start): exact groups keep theirs; every member of an
    inexact group gets the units it keeps itself, classed by its own status."""
    c_unit, c_mem, status, allowed = st
    keep = ~inexact[units.g]
    kept = units.take(keep, ngrp[first[units.g[keep]]])
    own = inexact[units.g[c_unit]] & (status != _NOT_KEPT)
    cu, full = c_unit[own], status[own] == _FULL
    singles = _Units(ngrp[first[units.g[cu]] + c_mem[own]], units.ks[cu], units.kl[cu], units.plain[cu], full,
                     ~full | allowed[own], np.zeros(cu.shape[0], dtype=np.int64))
    both = [np.concatenate([a, b]) for a, b in zip(kept, singles)]
    order = np.lexsort((both[1], both[0]))
    return _Units(*(x[order] for x in both))


def _units(r: RowArrays, grp, member, g_plain, size, first, len_q, len_k, mask: BandMask,
           g_half: np.ndarray) -> tuple[_Units, _Statuses, np.ndarray, np.ndarray]:
    """The key units of every group with their classes, the per-member statuses, and bool [groups] of the groups
    that are not exact and of those whose key spans overlap (or that keep one span twice). ``g_half``: bool
    [groups], two members holding one row half each: a member that does not keep a unit may have its half masked
    by the chunk's drop bits instead of by the element mask."""
    n_groups = first.shape[0]
    n_ent = np.diff(r.ent_ptr)
    e_row, e_pos = ragged_arange(n_ent)
    e_full = e_pos < r.n_full[e_row]
    e_g, e_mem = grp[e_row], member[e_row]
    e_plain = g_plain[e_g]
    ne = e_row.shape[0]
    # plain groups never share a unit between entries: their entry index joins the unit key
    e_tag = np.where(e_plain, np.arange(ne), -1) if e_plain.any() else np.full(ne, -1)
    # by (group, k_start); the stable sort keeps each group's entries in row (= member) order within a tie
    order = np.argsort(e_g * (int(r.k_start.max(initial=0)) + 1) + r.k_start, kind="stable")
    e_g, e_mem, e_full, e_plain, e_tag = e_g[order], e_mem[order], e_full[order], e_plain[order], e_tag[order]
    ks, kl = r.k_start[order], r.k_len[order]
    same_g = np.zeros(ne, dtype=bool)
    same_g[1:] = e_g[1:] == e_g[:-1]
    same_span = np.zeros(ne, dtype=bool)
    same_span[1:] = same_g[1:] & (ks[1:] == ks[:-1]) & (kl[1:] == kl[:-1]) & (e_tag[1:] == e_tag[:-1])
    # overlapping distinct spans, or one member keeping the same span twice: not mergeable
    overlap = np.zeros(ne, dtype=bool)
    overlap[1:] = same_g[1:] & ~same_span[1:] & (ks[1:] < ks[:-1] + kl[:-1])
    twice = np.zeros(ne, dtype=bool)
    twice[1:] = same_span[1:] & (e_mem[1:] == e_mem[:-1])
    broken = np.zeros(n_groups, dtype=bool)
    broken[e_g[(overlap | twice) & ~e_plain]] = True
    unit_of = np.cumsum(~same_span) - 1
    uf = np.flatnonzero(~same_span)
    ug, uks, ukl, uplain = e_g[uf], ks[uf], kl[uf], e_plain[uf]
    # status of every (unit, member) pair
    c_unit, c_mem = ragged_arange(size[ug])
    c_ptr = np.concatenate([[0], np.cumsum(size[ug])])
    status = np.zeros(c_unit.shape[0], dtype=np.int8)
    status[c_ptr[unit_of] + e_mem] = np.where(e_full, _FULL, _PARTIAL)
    if mask.allows_all:
        allowed, none = np.ones(c_unit.shape[0], dtype=bool), np.zeros(c_unit.shape[0], dtype=bool)
    else:
        row = first[ug[c_unit]] + c_mem
        b = r.batch[row]
        allowed, none = mask.classify(r.q_start[row], r.q_len[row], uks[c_unit], ukl[c_unit], len_k[b] - len_q[b],
                                      _starts(len_q)[b], _starts(len_k)[b])
    ok = (status == _PARTIAL) | ((status == _FULL) & allowed) | ((status == _NOT_KEPT) & none)
    n_u = uf.shape[0]
    # half pairs: a member whose pairs the mask does not hide drops its row half in the unit's chunks
    need = (status == _NOT_KEPT) & ~ok & g_half[ug[c_unit]]
    drop = np.bincount(c_unit, weights=need * (1 << c_mem), minlength=n_u).astype(np.int64)
    all_full = np.bincount(c_unit, weights=status != _FULL, minlength=n_u) == 0
    maskable = (np.bincount(c_unit, weights=~(ok | need), minlength=n_u) == 0) & ~(uplain & all_full)
    inexact = np.zeros(n_groups, dtype=bool)
    inexact[ug[~all_full & ~maskable]] = True
    units = _Units(ug, uks, ukl, uplain, all_full, maskable, drop)
    return units, _Statuses(c_unit, c_mem, status, allowed), inexact, broken


def _starts(lens: np.ndarray) -> np.ndarray:
    """First token of every sequence."""
    return np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64) if lens.shape[0] else lens


def _run_chunks(u: _Units, tile_n: int) -> tuple[np.ndarray, ...]:
    """Cut the units into runs (contiguous, one group, not plain, same 'full only' class), the runs into segments
    of equal drop bits, the segments into pieces of ``tile_n / 2`` keys from the segment start, and pair adjacent
    pieces of a run into ``tile_n``-wide chunks (a piece shorter than ``tile_n / 2`` ends a pairing chain), so each
    key half of a chunk has one set of row-half drop bits. Returns (start, length, group, partial, drop) per chunk;
    drop bit ``2 * key_half + row_half`` (``varblock.abi.CHUNK_DROP_KEY_HALF``). Without drop bits this is a cut
    of every run into ``tile_n`` chunks from its start."""
    n_u = u.g.shape[0]
    if n_u == 0:
        z = np.zeros(0, dtype=np.int64)
        return z, z, z, np.zeros(0, dtype=bool), z
    even = tile_n % 2 == 0  # the kernels' key halves need an even chunk width
    half = tile_n // 2 if even else tile_n
    full_only = u.all_full & ~u.maskable
    new_run = np.ones(n_u, dtype=bool)
    new_run[1:] = ((u.g[1:] != u.g[:-1]) | (u.ks[1:] != u.ks[:-1] + u.kl[:-1]) | u.plain[1:] | u.plain[:-1]
                   | (full_only[1:] != full_only[:-1]))
    new_seg = new_run.copy()
    new_seg[1:] |= u.drop[1:] != u.drop[:-1]
    run_of_seg = (np.cumsum(new_run) - 1)[new_seg]
    seg = np.cumsum(new_seg) - 1
    sf = np.flatnonzero(new_seg)
    s_start, s_len = u.ks[sf], np.add.reduceat(u.kl, sf)
    # pieces of half a chunk, and whether each touches a unit that is not full for every member
    n_p = (s_len + half - 1) // half
    p_seg, p_pos = ragged_arange(n_p)
    p_start = s_start[p_seg] + p_pos * half
    p_len = np.minimum(s_len[p_seg] - p_pos * half, half)
    code = seg << 32
    first_u = np.searchsorted(code + u.ks + u.kl, (p_seg << 32) + p_start, side="right")
    last_u = np.searchsorted(code + u.ks, (p_seg << 32) + p_start + p_len, side="left")
    not_full = np.concatenate([[0], np.cumsum(~u.all_full)])
    p_part = (not_full[last_u] - not_full[first_u]) > 0
    p_run, p_drop = run_of_seg[p_seg], u.drop[sf][p_seg]
    # pairing chains: a new chain starts at a run's first piece and after a short piece; pairs from the chain start
    n_pc = p_run.shape[0]
    new_chain = np.ones(n_pc, dtype=bool)
    new_chain[1:] = (p_run[1:] != p_run[:-1]) | (p_len[:-1] < half)
    pos = np.arange(n_pc) - np.flatnonzero(new_chain)[np.cumsum(new_chain) - 1]
    nxt_same = np.zeros(n_pc, dtype=bool)
    nxt_same[:-1] = ~new_chain[1:]
    second = np.zeros(n_pc, dtype=bool)  # the second piece of a pair
    second[1:] = (pos[1:] % 2 == 1) & even
    lead = np.flatnonzero(~second)
    paired = nxt_same[lead] & (pos[lead] % 2 == 0) & even
    nx = np.minimum(lead + 1, n_pc - 1)
    c_len = p_len[lead] + np.where(paired, p_len[nx], 0)
    c_part = p_part[lead] | (paired & p_part[nx])
    d0 = p_drop[lead]
    c_drop = d0 | (np.where(paired, p_drop[nx], d0) << CHUNK_DROP_KEY_HALF)
    c_part |= c_drop != 0
    return p_start[lead], c_len, u.g[sf][p_seg[lead]], c_part, c_drop
