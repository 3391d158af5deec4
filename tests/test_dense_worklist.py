"""The dense / causal / sliding-window work list (``varblock.dense_worklist``, the model of the device PREPARE kernel
``attention_prepare``): the (query head, query token, key token) pairs it covers, with FULL / PARTIAL as given,
are exactly the allowed pairs of the band, each once; capacities; bad inputs. The GPU test checks that the kernel
writes exactly the model's arrays."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from varblock.abi import ERR_CAPACITY, ERR_CU_SEQLENS, ERR_OK, ERR_PARAMS
from varblock.dense_worklist import capacities, dense_worklist, prepare_status


def _seg(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(group id repeated count times, position inside the group)."""
    counts = np.asarray(counts, dtype=np.int64)
    ids = np.repeat(np.arange(counts.shape[0], dtype=np.int64), counts)
    pos = np.arange(ids.shape[0], dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    return ids, pos


def expand(tiles: np.ndarray, chunks: np.ndarray, g: int):
    """Flat arrays over every (tile row, tile chunk, key) triple: (query head, batch, i, j, partial, tile-chunk id)."""
    t = tiles.astype(np.int64)
    ch = chunks.astype(np.int64)
    n = t[:, 5] + t[:, 6]
    # tile chunks
    tc_tile, tc_pos = _seg(n)
    tc_idx = t[tc_tile, 4] + tc_pos
    nl, nf = t[tc_tile, 7], t[tc_tile, 5]
    tc_partial = (tc_pos < nl) | (tc_pos >= nl + nf)
    # (tile chunk, row) with rows = (token, head in group)
    rows = t[tc_tile, 3] * g
    r_tc, r_pos = _seg(rows)
    # keys of the chunk
    klen = ch[tc_idx[r_tc], 1]
    k_r, k_pos = _seg(klen)
    tc = r_tc[k_r]
    tile = tc_tile[tc]
    i = t[tile, 2] + r_pos[k_r] // g
    hq = t[tile, 1] * g + r_pos[k_r] % g
    j = ch[tc_idx[tc], 0] + k_pos
    return hq, t[tile, 0], i, j, tc_partial[tc], tc


def allowed(i, j, lq, lk, wl, wr):
    off = lk - lq
    ok = np.ones(np.shape(i), dtype=bool)
    if wl >= 0:
        ok &= j >= i + off - wl
    if wr >= 0:
        ok &= j <= i + off + wr
    return ok


def all_allowed_pairs(lq, lk, wl, wr, nh):
    """Every allowed (query head, batch, i, j), as a sorted int64 key array."""
    b_i, i = _seg(lq)
    k_r, j = _seg(lk[b_i])
    b, i = b_i[k_r], i[k_r]
    ok = allowed(i, j, lq[b], lk[b], wl, wr)
    b, i, j = b[ok], i[ok], j[ok]
    keys = [_key(np.full_like(b, h), b, i, j) for h in range(nh)]
    return np.sort(np.concatenate(keys)) if keys else np.zeros(0, np.int64)


def _key(hq, b, i, j):
    return ((hq * 64 + b) * 4096 + i) * 4096 + j


def check_worklist(cu_q, cu_k, nh, g, tile_m, tile_n, wl, wr):
    tiles, chunks = dense_worklist(cu_q, cu_k, num_tile_heads=nh, pack_gqa=g, tile_m=tile_m, tile_n=tile_n,
                                   window_left=wl, window_right=wr)
    assert tiles.dtype == np.int32 and chunks.dtype == np.int32
    assert tiles.shape[1:] == (8,) and chunks.shape[1:] == (2,)
    cu_q, cu_k = np.asarray(cu_q, np.int64), np.asarray(cu_k, np.int64)
    lq, lk = np.diff(cu_q), np.diff(cu_k)
    nb = lq.shape[0]
    tpt = tile_m // g
    t = tiles.astype(np.int64)

    # chunk table: per sequence (j * tile_n, min(tile_n, lk - j * tile_n)), sequences in order
    nch = -(-lk // tile_n)
    cb, cj = _seg(nch)
    assert np.array_equal(chunks[:, 0], cj * tile_n)
    assert np.array_equal(chunks[:, 1], np.minimum(tile_n, lk[cb] - cj * tile_n))
    ch_ofs = np.cumsum(nch) - nch

    # tiles: order (batch asc, q_start desc, head asc), every (tile head, token) exactly once
    nmb = -(-lq // tpt)
    assert t.shape[0] == nh * nmb.sum()
    order = np.lexsort((t[:, 1], -t[:, 2], t[:, 0]))
    assert np.array_equal(order, np.arange(t.shape[0]))
    assert ((t[:, 3] >= 1) & (t[:, 3] <= tpt)).all() and (t[:, 2] % tpt == 0).all()
    assert ((t[:, 1] >= 0) & (t[:, 1] < nh)).all()
    if t.shape[0]:
        assert (t[:, 2] + t[:, 3] <= lq[t[:, 0]]).all()
        assert np.array_equal(np.bincount(t[:, 0] * nh + t[:, 1], weights=t[:, 3], minlength=nb * nh),
                              np.repeat(lq, nh))
    # a tile's chunks lie inside its sequence's list; counts consistent
    n = t[:, 5] + t[:, 6]
    assert (t[:, 5:8] >= 0).all() and (t[:, 7] <= t[:, 6]).all()
    if t.shape[0]:
        assert (t[:, 4] >= ch_ofs[t[:, 0]]).all() and (t[:, 4] + n <= ch_ofs[t[:, 0]] + nch[t[:, 0]]).all()
        assert (np.where(t[:, 5] == 0, t[:, 7] == t[:, 6], True)).all(), "canonical n_left without full chunks"

    # pairs
    hq, b, i, j, partial, tc = expand(tiles, chunks, g)
    ok = allowed(i, j, lq[b], lk[b], wl, wr)
    assert ok[~partial].all(), "FULL chunk with a masked pair"
    # exact classification per (tile, chunk): FULL iff all pairs allowed, PARTIAL iff some, never none
    n_tc = int(n.sum())
    tot = np.bincount(tc, minlength=n_tc)
    good = np.bincount(tc, weights=ok, minlength=n_tc)
    tc_partial = np.zeros(n_tc, bool)
    tc_partial[tc] = partial
    assert (good > 0).all(), "a tile references a chunk with no allowed pair"
    assert np.array_equal(tc_partial, good < tot), "FULL/PARTIAL classification is not exact"
    # each covered pair once; the allowed covered pairs are exactly the band
    keys = _key(hq, b, i, j)
    assert np.unique(keys).shape[0] == keys.shape[0], "a (head, query, key) pair is covered twice"
    assert np.array_equal(np.sort(keys[ok]), all_allowed_pairs(lq, lk, wl, wr, nh * g))

    # capacities and status
    mt, mc = capacities(int(cu_q[-1] - cu_q[0]), int(cu_k[-1] - cu_k[0]), nb, nh, g, tile_m, tile_n)
    assert t.shape[0] <= mt and chunks.shape[0] <= mc
    st_ = prepare_status(cu_q, cu_k, num_tile_heads=nh, pack_gqa=g, tile_m=tile_m, tile_n=tile_n, max_tiles=mt,
                         max_chunks=mc)
    assert st_ == (t.shape[0], ERR_OK)
    return tiles, chunks


lengths = st.lists(st.one_of(st.just(0), st.integers(1, 9), st.integers(1, 140)), min_size=0, max_size=6)


@st.composite
def cases(draw):
    lq = draw(lengths)
    same = draw(st.booleans())
    lk = lq if same else draw(st.lists(st.one_of(st.just(0), st.integers(1, 140)), min_size=len(lq),
                                       max_size=len(lq)))
    base_q = draw(st.sampled_from([0, 0, 5]))
    cu_q = base_q + np.concatenate([[0], np.cumsum(lq)]).astype(np.int64)
    cu_k = np.concatenate([[0], np.cumsum(lk)]).astype(np.int64)
    g = draw(st.sampled_from([1, 1, 2, 4]))
    nh = draw(st.integers(1, 2))
    tile_m = draw(st.sampled_from([4, 8, 16, 32, 64])) * g
    if draw(st.booleans()):
        tile_m += draw(st.integers(0, g - 1))  # tpt = tile_m // g with a remainder
    tile_n = draw(st.sampled_from([1, 3, 8, 16, 32, 64]))
    mode = draw(st.sampled_from(["dense", "causal", "window", "window_lr", "right_only"]))
    wl, wr = {"dense": (-1, -1), "causal": (-1, 0),
              "window": (draw(st.integers(0, 70)), 0),
              "window_lr": (draw(st.integers(0, 70)), draw(st.integers(0, 70))),
              "right_only": (-1, draw(st.integers(0, 40)))}[mode]
    return cu_q, cu_k, nh, g, tile_m, tile_n, wl, wr


@settings(max_examples=150, deadline=None)
@given(cases())
def test_pairs_exact(case):
    check_worklist(*case)


@pytest.mark.parametrize("wl,wr", [(-1, -1), (-1, 0), (3, 0), (0, 0), (5, 2), (-1, 7), (200, 200)])
@pytest.mark.parametrize("g", [1, 3])
def test_fixed_shapes(wl, wr, g):
    cu_q = np.array([0, 0, 1, 130, 193, 200])
    cu_k = np.array([0, 17, 17, 150, 213, 213])
    check_worklist(cu_q, cu_k, 2, g, 16 * g, 16, wl, wr)


def test_small_causal_exact():
    # one sequence, len_q = len_k = 5, tile 2 x 2, causal: m-blocks from last to first
    tiles, chunks = dense_worklist([0, 5], [0, 5], num_tile_heads=1, pack_gqa=1, tile_m=2, tile_n=2,
                                   window_left=-1, window_right=0)
    assert chunks.tolist() == [[0, 2], [2, 2], [4, 1]]
    # row 4 sees keys 0..4: all three chunks full
    assert tiles[0].tolist() == [0, 0, 4, 1, 0, 3, 0, 0]
    # rows 2, 3 see keys 0..2 / 0..3: chunk 0 full, chunk 1 ({2, 3}) partial on the right (n_left = 0)
    assert tiles[1].tolist() == [0, 0, 2, 2, 0, 1, 1, 0]
    # rows 0, 1: chunk 0 ({0, 1}) partial
    assert tiles[2].tolist() == [0, 0, 0, 2, 0, 0, 1, 1]


def test_window_left_partial_first():
    # sliding window: left-edge partial, full middle, right-edge partial
    tiles, chunks = dense_worklist([0, 64], [0, 64], num_tile_heads=1, pack_gqa=1, tile_m=8, tile_n=4,
                                   window_left=20, window_right=0)
    t = {int(r[2]): r for r in tiles}
    # rows 32..39 see keys 12..39: chunks 3, 4 (12..19) left partial, 5..7 (20..31) full, 8, 9 (32..39) right
    assert t[32].tolist() == [0, 0, 32, 8, 3, 3, 4, 2]


def test_zero_lengths():
    tiles, chunks = dense_worklist([0, 0, 0], [0, 0, 0], num_tile_heads=3, pack_gqa=1, tile_m=16, tile_n=16)
    assert tiles.shape == (0, 8) and chunks.shape == (0, 2)
    tiles, chunks = dense_worklist([0, 3], [0, 0], num_tile_heads=2, pack_gqa=1, tile_m=16, tile_n=16)
    assert tiles.tolist() == [[0, 0, 0, 3, 0, 0, 0, 0], [0, 1, 0, 3, 0, 0, 0, 0]] and chunks.shape == (0, 2)
    tiles, chunks = dense_worklist([0], [0], num_tile_heads=1, pack_gqa=1, tile_m=16, tile_n=16)
    assert tiles.shape == (0, 8) and chunks.shape == (0, 2)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 500), min_size=0, max_size=40), st.lists(st.integers(0, 500), min_size=0,
       max_size=40), st.sampled_from([1, 2, 8]), st.sampled_from([1, 4]), st.sampled_from([4, 64, 128]),
       st.sampled_from([1, 7, 64, 128]))
def test_capacities_bound(lq, lk, nh, g, tile_m, tile_n):
    n = min(len(lq), len(lk))
    lq, lk = np.array(lq[:n], np.int64), np.array(lk[:n], np.int64)
    tile_m = max(tile_m, g)
    tpt = tile_m // g
    mt, mc = capacities(int(lq.sum()), int(lk.sum()), n, nh, g, tile_m, tile_n)
    assert nh * int((-(-lq // tpt)).sum()) <= mt
    assert int((-(-lk // tile_n)).sum()) <= mc
    cu_q = np.concatenate([[0], np.cumsum(lq)])
    cu_k = np.concatenate([[0], np.cumsum(lk)])
    tiles, chunks = dense_worklist(cu_q, cu_k, num_tile_heads=nh, pack_gqa=g, tile_m=tile_m, tile_n=tile_n,
                                   window_left=-1, window_right=0)
    assert tiles.shape[0] <= mt and chunks.shape[0] <= mc


def test_bad_inputs():
    kw = dict(num_tile_heads=2, pack_gqa=1, tile_m=16, tile_n=16)
    for cu_q, cu_k in (([0, 5, 3], [0, 1, 2]), ([0, 1, 2], [0, 4, 3]), ([-2, 1, 2], [0, 1, 2]),
                       ([0, 1, 2], [-1, -1, 0])):
        with pytest.raises(ValueError, match="non-decreasing"):
            dense_worklist(cu_q, cu_k, **kw)
        assert prepare_status(cu_q, cu_k, **kw, max_tiles=100, max_chunks=100) == (0, ERR_CU_SEQLENS)
    with pytest.raises(ValueError, match="same length"):
        dense_worklist([0, 1], [0, 1, 2], **kw)
    for bad in (dict(num_tile_heads=0), dict(pack_gqa=0), dict(tile_m=3, pack_gqa=4), dict(tile_n=0)):
        args = {**kw, **bad}
        with pytest.raises(ValueError, match="bad parameters"):
            dense_worklist([0, 4], [0, 4], **args)
        with pytest.raises(ValueError, match="bad parameters"):
            capacities(4, 4, 1, args["num_tile_heads"], args["pack_gqa"], args["tile_m"], args["tile_n"])
        assert prepare_status([0, 4], [0, 4], **args, max_tiles=100, max_chunks=100) == (0, ERR_PARAMS)
    # capacity: 2 heads x 2 m-blocks = 4 tiles, 3 chunks
    cu_q, cu_k = [0, 20], [0, 40]
    assert prepare_status(cu_q, cu_k, **kw, max_tiles=4, max_chunks=3) == (4, ERR_OK)
    assert prepare_status(cu_q, cu_k, **kw, max_tiles=3, max_chunks=3) == (0, ERR_CAPACITY)
    assert prepare_status(cu_q, cu_k, **kw, max_tiles=4, max_chunks=2) == (0, ERR_CAPACITY)


# ------------------------------------------------------------------------------------------------------ GPU


def _run_prepare(torch, cu_q, cu_k, *, nh, g, tile_m, tile_n, wl, wr, max_tiles=None, max_chunks=None):
    """Launch attention_prepare as the runtime would (poisoned outputs); returns (tiles, chunks, status)."""
    from varblock.runtime import device as _device
    from varblock.runtime.launch import launch_variant
    from varblock.runtime.select import variant_for

    cu_q = np.asarray(cu_q, np.int64)
    cu_k = np.asarray(cu_k, np.int64)
    nb = cu_q.shape[0] - 1
    if max_tiles is None:
        max_tiles, max_chunks = capacities(max(int(cu_q[-1] - cu_q[0]), 0), max(int(cu_k[-1] - cu_k[0]), 0), nb,
                                           nh, g, tile_m, tile_n)
    dev = torch.device("cuda")
    d_cq = torch.tensor(cu_q, dtype=torch.int32, device=dev)
    d_ck = torch.tensor(cu_k, dtype=torch.int32, device=dev)
    tiles = torch.full((max(max_tiles, 1), 8), -7, dtype=torch.int32, device=dev)
    chunks = torch.full((max(max_chunks, 1), 2), -7, dtype=torch.int32, device=dev)
    status = torch.full((2,), -7, dtype=torch.int32, device=dev)
    scratch = torch.full((2 * (nb + 1),), -7, dtype=torch.int32, device=dev)
    entry = variant_for("attention_prepare", 0, {})
    values = {"cu_seqlens_q": d_cq.data_ptr(), "cu_seqlens_k": d_ck.data_ptr(), "tiles": tiles.data_ptr(),
              "chunks": chunks.data_ptr(), "status": status.data_ptr(), "scratch": scratch.data_ptr(),
              "batch": nb, "num_tile_heads": nh, "pack_gqa": g, "tile_m": tile_m,
              "tile_n": tile_n, "window_left": wl, "window_right": wr, "max_tiles": max_tiles,
              "max_chunks": max_chunks}
    launch_variant(entry, 0, _device.stream_for(torch.cuda.current_stream(), 0), values)
    torch.cuda.synchronize()
    return tiles.cpu().numpy(), chunks.cpu().numpy(), status.cpu().numpy()


@pytest.mark.gpu
@pytest.mark.parametrize("nb", [0, 1, 5, 511, 512, 513, 3000])
@pytest.mark.parametrize("g,tile_m,tile_n", [(1, 128, 64), (4, 128, 128), (8, 64, 64), (1, 16, 3)])
@pytest.mark.parametrize("wl,wr", [(-1, -1), (-1, 0), (100, 0), (7, 9)])
def test_gpu_kernel_matches_model(torch, nb, g, tile_m, tile_n, wl, wr):
    rng = np.random.default_rng(nb * 7919 + g * 31 + tile_n + (wl + 2) * 1000 + wr)
    hi = 600 if nb < 100 else 60
    lq = rng.integers(0, hi, nb)
    lk = lq if rng.random() < 0.5 else rng.integers(0, hi, nb)
    lq[rng.random(nb) < 0.1] = 0
    cu_q = np.concatenate([[0], np.cumsum(lq)])
    cu_k = np.concatenate([[0], np.cumsum(lk)])
    nh = 3
    tiles, chunks, status = _run_prepare(torch, cu_q, cu_k, nh=nh, g=g, tile_m=tile_m, tile_n=tile_n, wl=wl, wr=wr)
    rt, rc = dense_worklist(cu_q, cu_k, num_tile_heads=nh, pack_gqa=g, tile_m=tile_m, tile_n=tile_n,
                            window_left=wl, window_right=wr)
    assert status.tolist() == [rt.shape[0], ERR_OK]
    assert np.array_equal(tiles[:rt.shape[0]], rt)
    assert np.array_equal(chunks[:rc.shape[0]], rc)
    assert (tiles[rt.shape[0]:] == -7).all() and (chunks[rc.shape[0]:] == -7).all(), "wrote past the work list"


@pytest.mark.gpu
def test_gpu_kernel_errors(torch):
    kw = dict(nh=2, g=1, tile_m=16, tile_n=16, wl=-1, wr=0)
    for cu_q, cu_k in (([0, 5, 3], [0, 1, 2]), ([0, 1, 2], [0, 4, 3]), ([-2, 1, 2], [0, 1, 2])):
        tiles, chunks, status = _run_prepare(torch, cu_q, cu_k, **kw, max_tiles=100, max_chunks=100)
        assert status.tolist() == [0, ERR_CU_SEQLENS]
        assert (tiles == -7).all() and (chunks == -7).all()
    tiles, chunks, status = _run_prepare(torch, [0, 20], [0, 40], **kw, max_tiles=3, max_chunks=3)
    assert status.tolist() == [0, ERR_CAPACITY] and (tiles == -7).all() and (chunks == -7).all()
    tiles, chunks, status = _run_prepare(torch, [0, 20], [0, 40], **kw, max_tiles=4, max_chunks=2)
    assert status.tolist() == [0, ERR_CAPACITY]
    tiles, chunks, status = _run_prepare(torch, [0, 20], [0, 40], **{**kw, "g": 32}, max_tiles=4, max_chunks=4)
    assert status.tolist() == [0, ERR_PARAMS]
    tiles, chunks, status = _run_prepare(torch, [0, 20], [0, 40], **kw, max_tiles=4, max_chunks=3)
    assert status.tolist() == [4, ERR_OK]
