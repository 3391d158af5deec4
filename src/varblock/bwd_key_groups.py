"""Key grouping for the backward work list: narrow adjacent key tiles share one ``tile_n``-wide tile (exactly).

A layout of 64-token key blocks gives the backward one column (one K/V tile) per 64 keys; with 128-key tiles every
step would compute half of its S / dP / dK / dV tiles for nothing. Here consecutive key *sub-tiles* of one (layout
head, sequence) that tile one aligned window of ``tile_n`` keys with no gap form a *group*: one CTA loads all their
keys and walks the *union* of their query chunks. That is exact only when, for every union chunk and every member:

* the member keeps the chunk as *partial* (the kernel applies the element mask, as the forward does), or
* the member keeps it as *full* and either every member keeps it full (the merged chunk stays full: no mask), or
  the band (causal / window / sinks) provably allows every pair of the member's rectangle and the mask is not
  opaque (document ids and token masks may mask more than the band), or
* the member does not keep it and the band masks the member's whole rectangle (P = 0 there).

A merged chunk is full iff every member keeps it full. Groups that are not exact (or whose members chunk one query
span differently) fall back to their single sub-tiles. Chunks are never merged along the query axis, so every
(head, sequence, q_start) still names one query span for the deterministic dQ order. Pure NumPy, vectorised.
"""

from __future__ import annotations

import numpy as np

from varblock.layout.mask import band_classify
from varblock.tile_pairing import group_first, split_groups, window_groups
from varblock.worklist import segment_ids

#: most sub-tiles one group may hold (bounds the member x chunk status table)
MAX_GROUP = 8
_NOT_KEPT, _PARTIAL, _FULL = 0, 1, 2


def group_key_tiles(subs: tuple[np.ndarray, ...], pairs: tuple[np.ndarray, ...], off_b: np.ndarray, *,
                    tile_n: int, band: tuple[int | None, int | None], num_sink_tokens: int, opaque_mask: bool
                    ) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """Group the sub-tiles ``subs`` = (head, batch, k_start, k_len) whose (sub-tile, chunk) pairs are ``pairs`` =
    (sub, q_start, q_len, full) (see the module docstring); ``off_b`` = len_k - len_q per sequence.

    Returns the grouped sub-tiles (head, batch, k_start, k_len) and their pairs (sub, q_start, q_len, full), the
    pairs sorted by (sub-tile, full first, q_start).
    """
    head, batch, ks, kl = subs
    grp = window_groups(head * (off_b.shape[0] + 1) + batch, ks, kl, int(tile_n), MAX_GROUP)
    if grp.size == 0 or grp[-1] == grp.size - 1:  # every group is a single sub-tile: nothing to merge
        return subs, pairs
    exact = _exact_groups(grp, subs, pairs, off_b, band, int(num_sink_tokens), bool(opaque_mask))
    grp = split_groups(grp, ~exact[grp])
    first = group_first(grp)
    size = np.diff(np.append(first, grp.shape[0]))
    g_kl = np.add.reduceat(kl, first) if first.size else np.zeros(0, dtype=np.int64)
    return (head[first], batch[first], ks[first], g_kl), _unions(grp[pairs[0]], pairs[1], pairs[2], pairs[3], size)


def _distinct(g: np.ndarray, qs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(order sorting the pairs by (group, q_start), distinct-chunk id of each sorted pair, first sorted pair of
    each distinct chunk)."""
    order = np.argsort((g << 32) + qs)  # (group, q_start) as one int64 (q_start < 2**31)
    gs, qss = g[order], qs[order]
    new = np.ones(gs.shape[0], dtype=bool)
    new[1:] = (gs[1:] != gs[:-1]) | (qss[1:] != qss[:-1])
    return order, np.cumsum(new) - 1, np.flatnonzero(new)


def _exact_groups(grp: np.ndarray, subs: tuple[np.ndarray, ...], pairs: tuple[np.ndarray, ...], off_b: np.ndarray,
                  band: tuple[int | None, int | None], sinks: int, opaque: bool) -> np.ndarray:
    """bool [groups]: whether walking the union of the members' chunks is exact (module docstring)."""
    _, batch, ks, kl = subs
    sub, qs, ql, full = pairs
    n_g = int(grp.max()) + 1 if grp.size else 0
    exact = np.ones(n_g, dtype=bool)
    if sub.size == 0:
        return exact
    first = group_first(grp)
    size = np.diff(np.append(first, grp.shape[0]))
    mem = np.arange(grp.shape[0]) - first[grp]
    order, uid, uf = _distinct(grp[sub], qs)
    s_sub, s_ql, s_full = sub[order], ql[order], full[order]
    u_g, u_qs, u_ql = grp[s_sub[uf]], qs[order][uf], s_ql[uf]
    exact[grp[s_sub[s_ql != u_ql[uid]]]] = False  # members chunk one query span differently
    c_u, c_mem = segment_ids(size[u_g])
    ptr = np.cumsum(size[u_g]) - size[u_g]
    status = np.full(c_u.shape[0], _NOT_KEPT, dtype=np.int8)
    status[ptr[uid] + mem[s_sub]] = np.where(s_full, _FULL, _PARTIAL)
    all_full = np.bincount(c_u, weights=status != _FULL, minlength=uf.shape[0]) == 0
    row = first[u_g[c_u]] + c_mem  # the member's sub-tile
    lo, hi = band
    allowed, none = band_classify(u_qs[c_u], u_ql[c_u], ks[row], kl[row], off_b[batch[row]], lo, hi, sinks)
    if opaque:
        allowed = np.zeros_like(allowed)
    ok = ((status == _PARTIAL) | ((status == _FULL) & (all_full[c_u] | allowed))
          | ((status == _NOT_KEPT) & none))
    exact[u_g[c_u[~ok]]] = False
    return exact


def _unions(g: np.ndarray, qs: np.ndarray, ql: np.ndarray, full: np.ndarray, size: np.ndarray
            ) -> tuple[np.ndarray, ...]:
    """The distinct (group, q_start) chunks of the pairs (group, q_start, q_len, full): full iff every member of
    the group (``size`` of them) keeps it full; sorted by (group, full first, q_start)."""
    if g.size == 0:
        z = np.zeros(0, dtype=np.int64)
        return z, z, z, np.zeros(0, dtype=bool)
    order, uid, uf = _distinct(g, qs)
    n_u = uf.shape[0]
    u_g = g[order][uf]
    n_full = np.bincount(uid, weights=full[order], minlength=n_u)
    u_full = n_full == size[u_g]
    u_qs, u_ql = qs[order][uf], ql[order][uf]
    by = np.argsort((u_g << 33) + ((~u_full).astype(np.int64) << 32) + u_qs)  # (group, full first, q_start)
    return u_g[by], u_qs[by], u_ql[by], u_full[by]
