"""The backward work list (``varblock.bwd_worklist``) against a brute-force expansion of the layout: every kept
(query head, query, key) pair that the element mask's band allows is computed exactly once, with the layout's
full/partial flag; pairs left out are band-masked ones of partial entries; every key token of every tile head is
in exactly one tile; spans respect the tile sizes."""

from __future__ import annotations

import numpy as np
import pytest

from varblock import layout as L
from varblock.bwd_worklist import BWD_TILE_FIELDS, build_bwd_worklist, bwd_tile_pairs


def _cu(lens):
    return np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)


def _layout_pairs(lay, hq_n, hkv_n):
    """{(hq, q token, k token): partial} from the layout's RowSpans, expanded with plain loops."""
    rows = lay.rows()
    hmap = lay.head_map(hq_n, hkv_n)
    cu_q, cu_k = lay.cu_seqlens_q.astype(np.int64), lay.cu_seqlens_k.astype(np.int64)
    out = {}
    for r in range(rows.head.shape[0]):
        hl, b = int(rows.head[r]), int(rows.batch[r])
        qs, ql = int(rows.q_start[r]), int(rows.q_len[r])
        e0, e1 = int(rows.ent_ptr[r]), int(rows.ent_ptr[r + 1])
        for e in range(e0, e1):
            partial = e - e0 >= int(rows.n_full[r])
            ks, kl = int(rows.k_start[e]), int(rows.k_len[e])
            for hq in np.nonzero(hmap == hl)[0]:
                for i in range(qs, qs + ql):
                    for j in range(ks, ks + kl):
                        out[(int(hq), int(cu_q[b] + i), int(cu_k[b] + j))] = partial
    return out


def _band_allows(lay, hq, tq, tk, num_sink_tokens):
    cu_q, cu_k = lay.cu_seqlens_q.astype(np.int64), lay.cu_seqlens_k.astype(np.int64)
    b = int(np.searchsorted(cu_q, tq, side="right") - 1)
    while cu_q[b + 1] == cu_q[b]:  # empty sequences share a start
        b += 1
    i, j = tq - cu_q[b], tk - cu_k[b]
    off = (cu_k[b + 1] - cu_k[b]) - (cu_q[b + 1] - cu_q[b])
    lo, hi = lay.mask.band
    d = j - i - off
    return (hi is None or d <= hi) and (lo is None or d >= lo or j < num_sink_tokens)


def _opaque(lay) -> bool:
    return lay.mask.doc_ids_q is not None or lay.mask.token_mask is not None


def _check(lay, hq_n, hkv_n, tile_m, tile_n, hpt, num_sink_tokens=0, tile_order="longest_first",
           chunk_order="ascending", group_keys=True):
    wl = build_bwd_worklist(lay.transposed(), lay.cu_seqlens_q, lay.cu_seqlens_k, num_heads_q=hq_n,
                            num_heads_kv=hkv_n, head_mode=lay.head_mode, num_layout_heads=lay.num_heads,
                            tile_m=tile_m, tile_n=tile_n, heads_per_tile=hpt, band=lay.mask.band,
                            num_sink_tokens=num_sink_tokens, tile_order=tile_order, chunk_order=chunk_order,
                            group_keys=group_keys, opaque_mask=_opaque(lay))
    assert len(BWD_TILE_FIELDS) == wl.tiles.shape[1] == 8
    assert wl.tiles.dtype == np.int32 and wl.chunks.dtype == np.int32
    assert wl.num_tile_heads == hq_n // hpt
    t = wl.tiles
    assert (t[:, 3] >= 1).all() and (t[:, 3] <= tile_n).all(), "1 <= k_len <= tile_n"
    if wl.chunks.size:
        assert (wl.chunks[:, 1] >= 1).all() and (wl.chunks[:, 1] <= tile_m).all(), "1 <= q_len <= tile_m"
    assert (t[:, 7] == 0).all()
    counts = t[:, 5].astype(np.int64) + t[:, 6]
    if tile_order.startswith("longest_first"):
        assert (np.diff(counts) <= 0).all(), "longest first"
    elif tile_order == "shortest_first":
        assert (np.diff(counts) >= 0).all(), "shortest first"

    # every key token of every tile head in exactly one tile
    cu_k = lay.cu_seqlens_k.astype(np.int64)
    cover = np.zeros((wl.num_tile_heads, int(cu_k[-1])), dtype=np.int64)
    for row in t.astype(np.int64):
        b, h, ks, kl = row[:4]
        cover[h, cu_k[b] + ks: cu_k[b] + ks + kl] += 1
    assert (cover == 1).all(), "each key token of each tile head in exactly one tile"

    hq, qt, kt, part, tile = bwd_tile_pairs(wl, lay.cu_seqlens_q, lay.cu_seqlens_k, num_heads_q=hq_n,
                                           num_heads_kv=hkv_n)
    # the tile's key range and head are consistent with the pair
    assert ((t[tile, 1].astype(np.int64) * hpt <= hq) & (hq < (t[tile, 1].astype(np.int64) + 1) * hpt)).all()
    got = {}
    for h, a, c, p in zip(hq.tolist(), qt.tolist(), kt.tolist(), part.tolist()):
        assert (h, a, c) not in got, f"pair {(h, a, c)} computed twice"
        got[(h, a, c)] = p
    ref = _layout_pairs(lay, hq_n, hkv_n)
    for key, p in got.items():
        if key not in ref:  # walked by a key group: must be masked by the band of a partial chunk
            assert group_keys and p and not _band_allows(lay, *key, num_sink_tokens), f"pair {key} not kept"
        elif ref[key] != p:  # a full block in a key group's partial chunk: the band must allow it
            assert group_keys and p and not _opaque(lay) and _band_allows(lay, *key, num_sink_tokens), \
                f"full/partial flag differs at {key}"
    for key in set(ref) - set(got):
        assert ref[key], f"full pair {key} dropped"
        assert not _band_allows(lay, *key, num_sink_tokens), f"band-allowed pair {key} dropped"
    _check_dq_order(wl)
    if chunk_order == "descending":
        for row in t.astype(np.int64):  # full chunks by decreasing q_start, then partial ones by decreasing q_start
            cb, nf, npart = row[4:7]
            for part_ in (wl.chunks[cb:cb + nf, 0], wl.chunks[cb + nf:cb + nf + npart, 0]):
                assert (np.diff(part_.astype(np.int64)) < 0).all(), "descending chunk order"
    return wl


def _check_dq_order(wl):
    """Deterministic dQ order: for each (query head, span) the contributing tiles have turns 0..n-1 in tile order,
    every one knows n, and one semaphore means one query span."""
    d = wl.dq_order
    assert d.shape == (wl.chunks.shape[0], 3) and d.dtype == np.int32
    span_of_sem = {}
    contributors = {}
    for i, row in enumerate(wl.tiles.astype(np.int64)):
        b, h, _, _, cb, nf, npart, _ = row
        for c in range(cb, cb + nf + npart):
            sem, turn, n = (int(x) for x in d[c])
            assert 0 <= sem < wl.num_sems
            span = (int(b), int(wl.chunks[c, 0]), int(wl.chunks[c, 1]))
            assert span_of_sem.setdefault(sem, span) == span, "one semaphore, one query span"
            for g in range(wl.heads_per_tile):
                contributors.setdefault((h * wl.heads_per_tile + g, sem), []).append((i, turn, n))
    for key, lst in contributors.items():
        lst.sort()
        assert [t for _, t, _ in lst] == list(range(len(lst))), f"turns of {key} not in tile order: {lst}"
        assert all(n == len(lst) for _, _, n in lst), f"contributor count of {key}"


LENS = [1, 3, 113, 0, 200, 64]


@pytest.mark.parametrize("hq,hkv,mode,hpt", [(4, 4, "per_q_head", 1), (4, 1, "per_kv_head", 4),
                                             (4, 1, "per_kv_head", 1), (8, 2, "broadcast", 4),
                                             (6, 2, "broadcast", 1), (6, 3, "per_q_head", 1)])
@pytest.mark.parametrize("causal", [False, True])
def test_random_blocks(hq, hkv, mode, hpt, causal):
    cu = _cu(LENS)
    nh = {"per_q_head": hq, "per_kv_head": hkv, "broadcast": 1}[mode]
    lay = L.random_blocks(cu, cu, density=0.5, num_heads=nh, head_mode=mode, causal=causal, seed=hq + hpt,
                          block_q=32, block_k=32)
    _check(lay, hq, hkv, tile_m=16, tile_n=16, hpt=hpt)


@pytest.mark.parametrize("tile_m,tile_n", [(64, 128), (16, 16), (32, 64), (64, 32)])
def test_causal_split_blocks(tile_m, tile_n):
    """Block sizes different from the kernel tile: fully masked (tile, chunk) pairs of diagonal blocks dropped."""
    lq, lk = [50, 300, 1, 129], [200, 300, 77, 1000]
    lay = L.causal(_cu(lq), _cu(lk), block_q=64, block_k=64, num_heads=2, head_mode="per_q_head")
    wl = _check(lay, 2, 1, tile_m, tile_n, 1)
    if tile_n < 64 and tile_m < 64:
        # a split causal diagonal leaves fully masked sub-blocks out: fewer steps than the unpruned list
        full_lay = _check(lay.with_mask(lay.mask.__class__()), 2, 1, tile_m, tile_n, 1)
        assert wl.chunks.shape[0] < full_lay.chunks.shape[0]


@pytest.mark.parametrize("tile_order", ["shortest_first", "layout", "longest_first_interleaved"])
def test_tile_orders(tile_order):
    cu = _cu(LENS)
    lay = L.random_blocks(cu, cu, density=0.5, num_heads=2, head_mode="per_kv_head", causal=True, seed=5,
                          block_q=32, block_k=32)
    _check(lay, 4, 2, 16, 16, 2, tile_order=tile_order)
    _check(lay, 4, 2, 32, 16, 1, tile_order=tile_order)


@pytest.mark.parametrize("causal", [False, True])
def test_descending_chunk_order(causal):
    """The deterministic mode's walk: same pairs, flags and dQ turns, chunks by decreasing position; on a causal
    layout every tile of a column group reaches a shared full query span at the same step (counted from its end)."""
    cu = _cu(LENS)
    lay = L.random_blocks(cu, cu, density=0.6, num_heads=2, head_mode="per_kv_head", causal=causal, seed=9,
                          block_q=32, block_k=32)
    _check(lay, 4, 2, 16, 32, 2, chunk_order="descending")
    _check(lay, 4, 2, 32, 16, 1, chunk_order="descending")
    dense = L.dense(cu, cu, causal=True, block_q=32, block_k=32)
    wl = _check(dense, 2, 1, 32, 32, 1, chunk_order="descending")
    for row in wl.tiles.astype(np.int64):
        b, _, _, _, cb, nf, _, _ = row
        n_q = (int(cu[b + 1] - cu[b]) + 31) // 32
        steps = {int(q) // 32: i for i, q in enumerate(wl.chunks[cb:cb + nf, 0])}
        assert all(steps[c] == n_q - 1 - c for c in steps), "full span c at step n - 1 - c in every tile"


@pytest.mark.parametrize("group_keys", [True, False])
def test_64_key_blocks_grouped_where_exact(group_keys):
    """64-wide key blocks on 128-key tiles: grouped in pairs for causal / dense / window layouts (as many steps
    as 128-wide blocks), left alone without grouping; every pair still exactly once (``_check``)."""
    cu = _cu([200, 1, 0, 129])
    for lay, lay128 in ((L.causal(cu, cu, block_q=64, block_k=64), L.causal(cu, cu, block_q=64, block_k=128)),
                        (L.dense(cu, cu, block_q=64, block_k=64), L.dense(cu, cu, block_q=64, block_k=128))):
        wl = _check(lay, 2, 1, 64, 128, 1, group_keys=group_keys)
        steps = int((wl.tiles[:, 5] + wl.tiles[:, 6]).sum())
        ref = _check(lay128, 2, 1, 64, 128, 1, group_keys=False)
        if group_keys:
            assert wl.num_tiles == ref.num_tiles and steps == int((ref.tiles[:, 5] + ref.tiles[:, 6]).sum())
        else:
            assert (wl.tiles[:, 3] <= 64).all() and wl.num_tiles > ref.num_tiles
    win = L.sliding_window(cu, cu, window_left=100, window_right=0, num_sink_tokens=2, block_q=32, block_k=32)
    wl = _check(win, 2, 1, 32, 128, 2, num_sink_tokens=2, group_keys=group_keys)
    assert ((wl.tiles[:, 3] > 32).any()) == group_keys


def test_key_groups_fall_back_where_inexact():
    """Random blocks (a column keeping what its neighbour does not, unmasked by the band) stay single tiles; a
    document mask never lets a full block into a partial chunk."""
    cu = _cu([192, 130])
    lay = L.random_blocks(cu, cu, density=0.5, num_heads=1, causal=False, seed=4, block_q=32, block_k=32)
    wl = _check(lay, 2, 1, 32, 128, 1)
    assert (wl.tiles[:, 3] <= 32).mean() > 0.5
    doc = np.repeat(np.arange(4), [100, 60, 32, 130]).astype(np.int32)
    _check(L.document(cu, cu, doc_ids_q=doc, causal=True, block_q=32, block_k=32), 2, 1, 32, 128, 1)


def test_window_with_sinks():
    cu = _cu([300, 17, 0, 129])
    lay = L.sliding_window(cu, cu, window_left=40, window_right=0, sink_blocks=1, block_q=32, block_k=32,
                           num_heads=1)
    _check(lay, 2, 1, 16, 16, 2)
    _check(lay, 2, 2, 16, 64, 1, num_sink_tokens=5)


def test_variable_spans_flashinfer():
    """FlashInfer variable blocks: arbitrary key/query spans, longer than the tile, split into tiles/chunks."""
    rng = np.random.default_rng(0)
    row_sz = np.array([[5, 40, 19], [30, 30, 4]])
    col_sz = np.array([[70, 1, 33, 20], [12, 12, 60, 40]])
    mask = rng.random((2, 3, 4)) < 0.6
    lay = L.from_flashinfer(mask, row_sz, col_sz)
    _check(lay, 4, 2, 16, 32, 2)
    _check(lay, 4, 2, 16, 32, 1)


def test_empty_layout_still_covers_keys():
    cu = _cu([0, 40, 7])
    lay = L.random_blocks(cu, cu, density=0.0, num_heads=1, keep_diagonal=False, block_q=16, block_k=16)
    wl = _check(lay, 2, 1, 16, 16, 2)
    assert wl.chunks.shape[0] == 0 and wl.num_tiles > 0


def test_bad_arguments():
    cu = _cu([10])
    lay = L.random_blocks(cu, cu, density=1.0, num_heads=2, head_mode="per_q_head", block_q=16, block_k=16)
    kw = dict(num_heads_q=2, num_heads_kv=1, head_mode="per_q_head", num_layout_heads=2, tile_m=16, tile_n=16)
    with pytest.raises(ValueError, match="heads_per_tile"):
        build_bwd_worklist(lay.transposed(), cu, cu, heads_per_tile=2, **kw)
    with pytest.raises(ValueError, match="heads_per_tile"):
        build_bwd_worklist(lay.transposed(), cu, cu, heads_per_tile=3, **kw)
    with pytest.raises(ValueError, match="layout heads"):
        build_bwd_worklist(lay.transposed(), cu, cu, **{**kw, "num_layout_heads": 1})
    with pytest.raises(ValueError, match="tile_order"):
        build_bwd_worklist(lay.transposed(), cu, cu, tile_order="random", **kw)
    with pytest.raises(ValueError, match="chunk_order"):
        build_bwd_worklist(lay.transposed(), cu, cu, chunk_order="random", **kw)
    with pytest.raises(ValueError, match="head_mode"):
        build_bwd_worklist(lay.transposed(), cu, cu, **{**kw, "head_mode": "nope"})
