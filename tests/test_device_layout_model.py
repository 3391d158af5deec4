"""The NumPy model of the device-side layout kernels (``varblock.device_layout.model``) equals the HOST builders bit
for bit: ``from_block_mask(...).rows()`` (rows, entries), ``.transposed()`` (key-major columns and entries) and
``build_worklist(..., longest_first=False)`` (forward tiles and chunks), on many random batches, masks, head modes,
block / tile sizes and bands; top-k indices equal the mask they select; every error goes to the status word."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from varblock.abi import ERR_CAPACITY, ERR_CU_SEQLENS, ERR_OK, STATUS_ERROR, STATUS_NUM_TILES
from varblock.device_layout.codes import (
    ERR_INDEX,
    ERR_MASK_SHAPE,
    ERR_MASK_VALUE,
    STATUS_DETAIL,
    STATUS_NUM_CHUNKS,
    STATUS_NUM_COLS,
    STATUS_NUM_ENTRIES,
    STATUS_NUM_ROWS,
)
from varblock.device_layout.model import Geometry, build_from_mask, build_from_topk
from varblock.layout import from_block_mask
from varblock.worklist import build_worklist

HEADS = {"per_q_head": lambda hq, hkv: hq, "per_kv_head": lambda hq, hkv: hkv, "broadcast": lambda hq, hkv: 1}


def _cu(lens) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)


def _geometry(B, Bm, hq, hkv, mode, mb, nb, bq, bk, tm, tn, g=1, wl=-1, wr=-1, cap=10**6) -> Geometry:
    return Geometry(batch=B, mask_batch=Bm, num_layout_heads=HEADS[mode](hq, hkv), mb=mb, nb=nb, block_q=bq,
                    block_k=bk, tile_m=tm, tile_n=tn, num_heads_q=hq, num_heads_kv=hkv, head_mode=mode, pack_gqa=g,
                    window_left=wl, window_right=wr, max_entries=cap)


def _host_tables(mask, cu_q, cu_k, geo: Geometry):
    """The host builders' tables in the device layout's format."""
    lay = from_block_mask(mask, cu_q, cu_k, block_q=geo.block_q, block_k=geo.block_k, head_mode=geo.head_mode,
                          window=(geo.window_left, geo.window_right), padding="ignore")
    r = lay.rows()
    rows = np.stack([r.head, r.batch, r.q_start, r.q_len, r.ent_ptr[:-1], r.n_full, np.diff(r.ent_ptr) - r.n_full],
                    axis=1)
    entries = np.stack([r.k_start, r.k_len], axis=1)
    c = lay.transposed()
    cols = np.stack([c.head, c.batch, c.k_start, c.k_len, c.ent_ptr[:-1], c.n_full, np.diff(c.ent_ptr) - c.n_full],
                    axis=1)
    col_entries = np.stack([c.q_start, c.q_len, c.row, c.entry], axis=1)
    wl = build_worklist(r, cu_q, cu_k, num_heads_q=geo.num_heads_q, num_heads_kv=geo.num_heads_kv,
                        head_mode=geo.head_mode, tile_m=geo.tile_m, tile_n=geo.tile_n, pack_gqa=geo.pack_gqa,
                        num_layout_heads=geo.num_layout_heads, longest_first=False)
    return rows, entries, wl.tiles, wl.chunks, cols, col_entries


def _assert_equal_to_host(out, mask, cu_q, cu_k, geo):
    assert out.error == ERR_OK, out.status
    host = _host_tables(mask, cu_q, cu_k, geo)
    names = ("rows", "entries", "tiles", "chunks", "cols", "col_entries")
    for name, h in zip(names, host):
        d = getattr(out, name)
        assert d.dtype == np.int32
        assert d.shape[0] == h.shape[0], name
        if h.size:
            np.testing.assert_array_equal(d, h.astype(np.int64), err_msg=name)
    s = out.status
    assert (s[STATUS_NUM_ROWS], s[STATUS_NUM_ENTRIES], s[STATUS_NUM_TILES], s[STATUS_NUM_CHUNKS],
            s[STATUS_NUM_COLS]) == tuple(x.shape[0] for x in (host[0], host[1], host[2], host[3], host[4]))
    assert s[STATUS_DETAIL] == -1


def _random_case(rng: np.random.Generator):
    B = int(rng.integers(1, 6))
    lens_q = rng.integers(0, 700, size=B)
    lens_k = lens_q + rng.integers(0, 200, size=B) * (rng.random() < 0.5)
    bq = int(rng.choice([16, 64, 128, 256]))
    bk = int(rng.choice([16, 64, 128, 256]))
    tm = int(rng.choice([64, 128]))
    tn = int(rng.choice([32, 64, 128]))
    hkv = int(rng.choice([1, 2, 4]))
    hq = hkv * int(rng.choice([1, 2, 4]))
    mode = str(rng.choice(list(HEADS)))
    g = hq // hkv if (mode != "per_q_head" and hq > hkv and rng.random() < 0.5) else 1
    if mode == "broadcast" and rng.random() < 0.5:
        g = 1
    wl = int(rng.choice([-1, -1, 0, 100, 300]))
    wr = int(rng.choice([-1, 0, 0, 50]))
    mb = int(np.max(-(-lens_q // bq), initial=0) + rng.integers(0, 3))
    nb = int(np.max(-(-lens_k // bk), initial=0) + rng.integers(0, 3))
    Bm = B if rng.random() < 0.8 else 1
    geo = _geometry(B, Bm, hq, hkv, mode, mb, nb, bq, bk, tm, tn, g, wl, wr)
    density = float(rng.choice([0.05, 0.3, 1.0]))
    cells = rng.random((Bm, geo.num_layout_heads, mb, nb)) < density
    if rng.random() < 0.3:  # integer codes (taken as given; padding zero)
        codes = (rng.integers(1, 3, size=cells.shape) * cells).astype(rng.choice([np.int8, np.int32, np.uint8]))
        return codes, _cu(lens_q), _cu(lens_k), geo
    return cells, _cu(lens_q), _cu(lens_k), geo


@pytest.mark.parametrize("seed", range(120))
def test_model_equals_host_builders(seed):
    rng = np.random.default_rng(seed)
    mask, cu_q, cu_k, geo = _random_case(rng)
    if not np.issubdtype(mask.dtype, np.bool_) and mask.shape[0] != geo.batch:
        # integer codes broadcast over the batch must leave padding cells empty for every sequence
        mask = np.broadcast_to(mask, (geo.batch, *mask.shape[1:])).copy()
        geo = _geometry(geo.batch, geo.batch, geo.num_heads_q, geo.num_heads_kv, geo.head_mode, geo.mb, geo.nb,
                        geo.block_q, geo.block_k, geo.tile_m, geo.tile_n, geo.pack_gqa, geo.window_left,
                        geo.window_right)
    if not np.issubdtype(mask.dtype, np.bool_):
        lq, lk = np.diff(cu_q), np.diff(cu_k)
        inside = ((np.arange(geo.mb)[None, :] * geo.block_q < lq[:, None])[:, None, :, None]
                  & (np.arange(geo.nb)[None, :] * geo.block_k < lk[:, None])[:, None, None, :])
        mask = (mask * inside).astype(mask.dtype)
    out = build_from_mask(mask, cu_q, cu_k, geo)
    _assert_equal_to_host(out, mask, cu_q, cu_k, geo)


def test_w1_shape_dense_and_causal():
    """W1-like: 8 sequences of 3328 tokens, 128 x 128 blocks, 32 heads, density 0.1 plus the diagonal."""
    rng = np.random.default_rng(1)
    cu = _cu([3328] * 8)
    mb = 26
    mask = rng.random((8, 32, mb, mb)) < 0.1
    mask |= np.eye(mb, dtype=bool)[None, None]
    for wr in (-1, 0):
        geo = _geometry(8, 8, 32, 8, "per_q_head", mb, mb, 128, 128, 128, 128, wr=wr, cap=8 * 32 * mb * mb)
        _assert_equal_to_host(build_from_mask(mask, cu, cu, geo), mask, cu, cu, geo)


@pytest.mark.parametrize("causal", [False, True])
def test_w1_padded_mask_equals_host(causal):
    """The W1 benchmark's padded mask [8, 32, 64, 64] (8 sequences of 512..8192 tokens): 16 384 padded rows and
    columns, 2048 groups of each (two scan steps), most rows padding."""
    from tests.test_device_layout_large_gpu import W1_LENS, _w1_mask

    cu = _cu(W1_LENS)
    mask = _w1_mask(np.random.default_rng(13 + causal), 0.1)
    geo = _geometry(8, 8, 32, 8, "per_q_head", 64, 64, 128, 128, 128, 64, wr=0 if causal else -1, cap=8 * 32 * 64 * 64)
    _assert_equal_to_host(build_from_mask(mask, cu, cu, geo), mask, cu, cu, geo)


def test_group_sums_and_prefixes():
    """The two-level scan's pieces: group sums, prefixes restarted per group, empty inputs."""
    from varblock.device_layout.codes import GROUP
    from varblock.device_layout.model import group_sums, in_group_prefix, num_groups

    v = np.arange(2 * (3 * GROUP + 5)).reshape(-1, 2)
    sums = group_sums(v)
    assert sums.shape == (2, num_groups(v.shape[0])) == (2, 4)
    assert np.array_equal(sums[:, 3], v[3 * GROUP:].sum(axis=0))
    group_start = (np.cumsum(sums, axis=1) - sums)[:, np.arange(v.shape[0]) // GROUP].T
    assert np.array_equal(group_start + in_group_prefix(v), np.cumsum(v, axis=0) - v)  # = the one-level scan
    assert group_sums(np.zeros((0, 3))).shape == (3, 0) and in_group_prefix(np.zeros((0, 3))).shape == (0, 3)


@pytest.mark.parametrize("seed", range(30))
def test_topk_equals_selected_mask(seed):
    rng = np.random.default_rng(100 + seed)
    B = int(rng.integers(1, 5))
    lens = rng.integers(1, 900, size=B)
    cu = _cu(lens)
    bs = 64
    nblk = -(-lens // bs)
    mb = nb = int(nblk.max())
    H, K = 2, int(rng.integers(1, 6))
    geo = _geometry(B, B, H, H, "per_q_head", mb, nb, bs, bs, 128, 64, wr=0)
    idx = np.zeros((B, H, mb, K), np.int32)
    cnt = rng.integers(0, K + 1, size=(B, H, mb)).astype(np.int32)
    for b in range(B):
        idx[b] = rng.integers(0, nblk[b], size=(H, mb, K))  # duplicates allowed: they merge
    sel = np.zeros((B, H, mb, nb), bool)
    for b, h, m in np.ndindex(B, H, mb):
        if m < nblk[b]:
            sel[b, h, m, idx[b, h, m, :cnt[b, h, m]]] = True
    out = build_from_topk(idx, cnt, cu, cu, geo)
    _assert_equal_to_host(out, sel, cu, cu, geo)
    out_all = build_from_topk(idx, None, cu, cu, geo)
    sel_all = np.zeros_like(sel)
    for b, h, m in np.ndindex(B, H, mb):
        if m < nblk[b]:
            sel_all[b, h, m, idx[b, h, m]] = True
    _assert_equal_to_host(out_all, sel_all, cu, cu, geo)


def _status(out) -> tuple[int, int]:
    return int(out.status[STATUS_ERROR]), int(out.status[STATUS_DETAIL])


def test_errors_go_to_the_status_word():
    cu = _cu([200, 70])
    geo = _geometry(2, 2, 2, 2, "per_q_head", 4, 4, 64, 64, 128, 64, cap=3)
    mask = np.zeros((2, 2, 4, 4), bool)
    mask[1, 1, 1, :2] = True
    mask[0, 0, :, 0] = True
    out = build_from_mask(mask, cu, cu, geo)
    assert _status(out) == (ERR_CAPACITY, 6)  # 6 kept blocks > capacity 3: nothing written, never truncated
    assert out.rows.shape[0] == 0 and out.tiles.shape[0] == 0 and out.status[STATUS_NUM_TILES] == 0
    geo_ok = _geometry(2, 2, 2, 2, "per_q_head", 4, 4, 64, 64, 128, 64, cap=6)
    assert build_from_mask(mask, cu, cu, geo_ok).error == ERR_OK
    small = _geometry(2, 2, 2, 2, "per_q_head", 3, 4, 64, 64, 128, 64)  # sequence 0 has 4 query blocks
    assert _status(build_from_mask(mask[:, :, :3], cu, cu, small)) == (ERR_MASK_SHAPE, 0)
    codes = mask.astype(np.int32)
    codes[1, 0, 3, 2] = 7  # a padding cell with a bad code is still an error (as on the host)
    assert _status(build_from_mask(codes, cu, cu, geo_ok)) == (ERR_MASK_VALUE, ((1 * 2 + 0) * 4 + 3) * 4 + 2)
    bad_cu = np.array([0, 200, 150], np.int32)
    assert _status(build_from_mask(mask, bad_cu, bad_cu, geo_ok)) == (ERR_CU_SEQLENS, -1)
    geo_ok = _geometry(2, 2, 2, 2, "per_q_head", 4, 4, 64, 64, 128, 64, cap=64)
    idx = np.zeros((2, 2, 4, 2), np.int32)
    idx[1, 0, 1, 1] = 2  # sequence 1 has 2 key blocks
    assert _status(build_from_topk(idx, None, cu, cu, geo_ok)) == (ERR_INDEX, ((1 * 2 + 0) * 4 + 1) * 2 + 1)
    idx[1, 0, 1, 1] = 0
    idx[1, 0, 3, 0] = 9  # row 3 of sequence 1 is beyond its query blocks: ignored
    assert build_from_topk(idx, None, cu, cu, geo_ok).error == ERR_OK
    cnt = np.ones((2, 2, 4), np.int32)
    cnt[0, 1, 2] = 3  # count above K = 2
    assert _status(build_from_topk(idx, cnt, cu, cu, geo_ok)) == (ERR_INDEX, ((0 * 2 + 1) * 4 + 2) * 2)


def test_bad_scalars_raise():
    cu = _cu([100])
    mask = np.ones((1, 2, 1, 1), bool)
    cases = (
        (_geometry(1, 1, 2, 2, "per_q_head", 1, 1, 128, 128, 128, 64), {"head_mode": "rows"}, "head_mode"),
        (_geometry(1, 1, 2, 2, "per_q_head", 1, 1, 128, 128, 128, 64), {"head_mode": "per_kv_head",
                                                                        "num_heads_kv": 1}, "needs 1 layout heads"),
        (_geometry(1, 1, 2, 2, "per_q_head", 1, 1, 128, 128, 128, 64), {"pack_gqa": 2}, "pack_gqa"),
        (_geometry(1, 1, 2, 2, "per_q_head", 1, 1, 128, 128, 128, 64), {"mask_batch": 3}, "mask: dim 0"),
        (_geometry(1, 1, 2, 2, "per_q_head", 1, 1, 128, 128, 128, 64), {"tile_n": 0}, "tile_n"),
        (_geometry(1, 1, 2, 2, "per_q_head", 1, 1, 128, 128, 128, 64), {"num_heads_q": 3}, "num_heads_q"),
    )
    for geo, change, match in cases:
        with pytest.raises(ValueError, match=match):
            build_from_mask(mask, cu, cu, dataclasses.replace(geo, **change))


def _random_lists(rng, B, H, mb, nblk, width, pad_beyond=False, bs=64):
    """FA4 / Flex style lists: per row a random set of partial and (disjoint) full blocks, ascending, zero padded;
    rows beyond a sequence empty. ``pad_beyond`` also lists blocks in [N_b, width) (a padded batch, Flex)."""
    cnt = {k: np.zeros((B, H, mb), np.int32) for k in ("p", "f")}
    idx = {k: np.zeros((B, H, mb, width), np.int32) for k in ("p", "f")}
    for b, h, m in np.ndindex(B, H, mb):
        if m * bs >= int(nblk[b][0]):
            continue
        lim = width if pad_beyond else int(nblk[b][1])
        cls = rng.integers(0, 3, size=lim) * (rng.random(lim) < 0.5)
        for k, code in (("p", 1), ("f", 2)):
            sel = np.flatnonzero(cls == code)
            cnt[k][b, h, m] = sel.size
            idx[k][b, h, m, :sel.size] = sel
    return cnt, idx


@pytest.mark.parametrize("seed", range(20))
def test_fa4_and_flex_lists_equal_host_importers(seed):
    from varblock.device_layout.model import build_from_lists
    from varblock.layout import from_fa4, from_flex

    rng = np.random.default_rng(300 + seed)
    B, H, bs = int(rng.integers(1, 4)), 2, 64
    lens = rng.integers(1, 600, size=B)
    cu = _cu(lens)
    nb_k = -(-lens // bs)
    mb = int(nb_k.max()) + int(rng.integers(0, 2))
    width = mb
    nblk = [(int(lens[b]), int(nb_k[b])) for b in range(B)]
    with_full = bool(rng.random() < 0.7)
    geo = _geometry(B, B, H, H, "per_q_head", mb, width, bs, bs, 128, 64, wr=int(rng.choice([-1, 0])))
    cnt, idx = _random_lists(rng, B, H, mb, nblk, width)
    full = (cnt["f"], idx["f"]) if with_full else None
    out = build_from_lists((cnt["p"], idx["p"]), full, cu, cu, geo, pad_ok=False)
    bst = {"mask_block_cnt": cnt["p"], "mask_block_idx": idx["p"]}
    if with_full:
        bst.update(full_block_cnt=cnt["f"], full_block_idx=idx["f"])
    lay = from_fa4(bst, cu, cu, block_size=(bs, bs), causal=geo.window_right == 0)
    codes = np.zeros((B, H, mb, width), np.int32)  # the same cells as codes, through the host block-mask builder
    for b, h, m in np.ndindex(B, H, mb):
        codes[b, h, m, idx["p"][b, h, m, :cnt["p"][b, h, m]]] = 1
        if with_full:
            codes[b, h, m, idx["f"][b, h, m, :cnt["f"][b, h, m]]] = 2
    assert lay.equals(from_block_mask(codes, cu, cu, block_q=bs, block_k=bs, causal=geo.window_right == 0))
    _assert_equal_to_host(out, codes, cu, cu, geo)
    # FlexAttention: blocks beyond a sequence are padding (dropped), like from_flex's padding='ignore'
    cnt2, idx2 = _random_lists(rng, B, H, mb, nblk, width, pad_beyond=True)
    full2 = (cnt2["f"], idx2["f"]) if with_full else None
    out2 = build_from_lists((cnt2["p"], idx2["p"]), full2, cu, cu, geo, pad_ok=True)
    kw = dict(full_kv_num_blocks=cnt2["f"], full_kv_indices=idx2["f"]) if with_full else {}
    lay2 = from_flex(None, cu, cu, kv_num_blocks=cnt2["p"], kv_indices=idx2["p"], BLOCK_SIZE=(bs, bs), **kw)
    codes2 = np.zeros_like(codes)
    for b, h, m in np.ndindex(B, H, mb):
        codes2[b, h, m, idx2["p"][b, h, m, :cnt2["p"][b, h, m]]] = 1
        if with_full:
            codes2[b, h, m, idx2["f"][b, h, m, :cnt2["f"][b, h, m]]] = 2
    codes2 *= (np.arange(width)[None, None, None, :] < nb_k[:, None, None, None])
    assert lay2.equals(from_block_mask(codes2, cu, cu, block_q=bs, block_k=bs), check_mask=False)
    _assert_equal_to_host(out2, codes2, cu, cu, geo)


def test_list_errors():
    from varblock.device_layout.model import build_from_lists

    cu = _cu([200, 70])
    geo = _geometry(2, 2, 2, 2, "per_q_head", 4, 4, 64, 64, 128, 64)
    cnt = np.zeros((2, 2, 4), np.int32)
    idx = np.zeros((2, 2, 4, 4), np.int32)
    cnt[0, 1, 2] = 2
    idx[0, 1, 2, :2] = [3, 1]  # not ascending
    at = ((0 * 2 + 1) * 4 + 2) * 4 + 1
    assert _status(build_from_lists((cnt, idx), None, cu, cu, geo, pad_ok=False)) == (ERR_INDEX, at)
    idx[0, 1, 2, :2] = [1, 3]
    assert build_from_lists((cnt, idx), None, cu, cu, geo, pad_ok=False).error == ERR_OK
    cnt[1, 0, 0], idx[1, 0, 0, 0] = 1, 3  # sequence 1 has 2 key blocks: an error for FA4, padding for Flex
    assert _status(build_from_lists((cnt, idx), None, cu, cu, geo, pad_ok=False))[0] == ERR_INDEX
    assert build_from_lists((cnt, idx), None, cu, cu, geo, pad_ok=True).error == ERR_OK
    fcnt, fidx = np.zeros_like(cnt), np.zeros_like(idx)
    fcnt[0, 1, 2], fidx[0, 1, 2, 0] = 1, 3  # both partial and full
    assert _status(build_from_lists((cnt, idx), (fcnt, fidx), cu, cu, geo, pad_ok=True)) == (
        ERR_INDEX, idx.size + ((0 * 2 + 1) * 4 + 2) * 4)


@pytest.mark.parametrize("seed", range(16))
def test_seer_1d_token_mask_equals_host(seed):
    from varblock.device_layout.model_seer import build_from_token_mask
    from varblock.layout import from_seer_1d

    rng = np.random.default_rng(900 + seed)
    B = int(rng.integers(1, 4))
    lens = rng.integers(0, 400, size=B)
    cu = _cu(lens)
    bs = int(rng.choice([16, 32, 64]))
    bq = int(rng.choice([bs, 2 * bs]))
    hkv = int(rng.choice([1, 2]))
    hq = hkv * 2
    T = int(lens.max(initial=0)) + int(rng.integers(0, 5))
    NB = int(np.max(-(-lens // bs), initial=0)) + int(rng.integers(0, 2))
    Bm = B if rng.random() < 0.8 else 1
    tm = rng.random((Bm, hkv, T, NB)) < float(rng.choice([0.05, 0.5, 0.95]))
    causal = bool(rng.random() < 0.6)
    geo = Geometry(batch=B, mask_batch=Bm, num_layout_heads=hkv, mb=-(-T // bq), nb=NB, block_q=bq, block_k=bs,
                   tile_m=128, tile_n=int(rng.choice([16, 64])), num_heads_q=hq, num_heads_kv=hkv,
                   head_mode="per_kv_head", pack_gqa=1, window_left=-1, window_right=0 if causal else -1,
                   max_entries=10**6, q_tokens=T)
    out, packed = build_from_token_mask(tm, cu, cu, geo)
    lay = from_seer_1d(tm, cu, cu, block_size=bs, block_q=bq, causal=causal)
    r = lay.rows()
    rows = np.stack([r.head, r.batch, r.q_start, r.q_len, r.ent_ptr[:-1], r.n_full, np.diff(r.ent_ptr) - r.n_full],
                    axis=1)
    assert out.error == ERR_OK
    np.testing.assert_array_equal(out.rows, rows)
    np.testing.assert_array_equal(out.entries, np.stack([r.k_start, r.k_len], axis=1))
    wl = build_worklist(r, cu, cu, num_heads_q=hq, num_heads_kv=hkv, head_mode="per_kv_head", tile_m=128,
                        tile_n=geo.tile_n, num_layout_heads=hkv)
    np.testing.assert_array_equal(out.tiles, wl.tiles)
    np.testing.assert_array_equal(out.chunks, wl.chunks)
    c = lay.transposed()
    np.testing.assert_array_equal(out.col_entries, np.stack([c.q_start, c.q_len, c.row, c.entry], axis=1))
    host_tm = lay.mask.token_mask  # [H, total_q, maxN]
    total = int(cu[-1])
    np.testing.assert_array_equal(packed[:, :total, :host_tm.shape[2]], host_tm)
    assert not packed[:, :total, host_tm.shape[2]:].any() and not packed[:, total:].any()


def test_seer_1d_too_few_tokens():
    from varblock.device_layout.model_seer import build_from_token_mask

    cu = _cu([100, 40])
    geo = Geometry(batch=2, mask_batch=2, num_layout_heads=1, mb=2, nb=2, block_q=64, block_k=64, tile_m=128,
                   tile_n=64, num_heads_q=1, num_heads_kv=1, head_mode="broadcast", pack_gqa=1, max_entries=99,
                   q_tokens=90)
    out, packed = build_from_token_mask(np.ones((2, 1, 90, 2), bool), cu, cu, geo)
    assert _status(out) == (ERR_MASK_SHAPE, 0)  # 100 tokens > the mask's 90
    assert packed.shape == (1, 180, 2) and packed[0, 100:140, 0].all()  # sequence 1 (1 key block) at token 100
