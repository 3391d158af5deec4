"""Decode work lists on the CPU: a float64 model of the kernel run over the plan's items and chunks must equal
the independent reference (``varblock.reference_decode``) for paged and contiguous caches, GQA 1/4/8, 0-16 new
tokens, empty caches, every sparsity importer, forced and automatic split-KV; plus the plan's invariants."""

from __future__ import annotations

import numpy as np
import pytest

from tests._decode_model import run_model, simulate_pipeline
from varblock import reference_decode
from varblock.decode_plan import abi
from varblock.decode_plan.cost import MIN_CHUNKS_PER_SPLIT
from varblock.decode_plan.plan import _check_lengths, _tile_m
from varblock.decode_plan.worklist import build_worklist
from varblock.layout import decode as LD


def _case(rng, B, hkv, g, d=16, page_size=16, max_kv=300, max_q=4, causal=True):
    n_q = rng.integers(0, max_q + 1, size=B)
    n_q[0] = max(n_q[0], 1)
    kv = rng.integers(0, max_kv, size=B)
    if causal:
        kv = np.maximum(kv, n_q)
    cu_q = np.concatenate([[0], np.cumsum(n_q)])
    pages_per = (kv + page_size - 1) // page_size
    num_pages = int(pages_per.sum()) + 3
    perm = rng.permutation(num_pages)
    pt = np.zeros((B, int(pages_per.max(initial=0)) + 1), dtype=np.int64)
    off = 0
    for b in range(B):
        pt[b, :pages_per[b]] = perm[off:off + pages_per[b]]
        off += pages_per[b]
    hq = hkv * g
    q = rng.standard_normal((int(cu_q[-1]), hq, d))
    kc = rng.standard_normal((num_pages, page_size, hkv, d))
    vc = rng.standard_normal((num_pages, page_size, hkv, d))
    return cu_q, kv, pt, q, kc, vc


def _layout(kind, rng, kv, hkv, hq, bs):
    if kind == "dense":
        return None
    if kind == "dense_layout":
        return LD.dense_decode(kv, block_size=bs, num_heads=hkv)
    nb = int(LD.num_blocks(kv, bs).max(initial=0)) + 1
    valid = np.arange(nb)[None, :] < LD.num_blocks(kv, bs)[:, None]
    if kind in ("seer_kv", "seer_q"):
        heads = hkv if kind == "seer_kv" else hq
        m = (rng.random((kv.shape[0], heads, nb)) < 0.4) & valid[:, None, :]
        return LD.from_seer_decode_mask(m, kv_lens=kv, block_size=bs,
                                        head_mode="per_kv_head" if kind == "seer_kv" else "per_q_head")
    if kind == "topk":
        k = 3
        idx = np.full((kv.shape[0], hkv, k), -1)
        cnt = np.zeros((kv.shape[0], hkv), dtype=np.int64)
        for b in range(kv.shape[0]):
            n = int(LD.num_blocks(kv, bs)[b])
            for h in range(hkv):
                sel = rng.permutation(n)[:k]
                idx[b, h, :sel.size] = sel
                cnt[b, h] = rng.integers(0, sel.size + 1)
        return LD.from_topk_indices(idx, kv_lens=kv, block_size=bs, counts=cnt)
    if kind == "window":
        return LD.window_sinks(kv, block_size=bs, window=70, sinks=5, num_heads=hkv)
    if kind == "empty":
        return LD.from_block_lists([], [], kv_lens=kv, block_size=bs, num_heads=hkv)
    raise AssertionError(kind)


KINDS = ["dense", "dense_layout", "seer_kv", "seer_q", "topk", "window", "empty"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("g", [1, 4, 8])
@pytest.mark.parametrize("paged", [True, False])
@pytest.mark.parametrize("splits", [None, 1, 3])
def test_model_matches_reference(kind, g, paged, splits):
    rng = np.random.default_rng(hash((kind, g, paged, splits)) % 2**32)
    B, hkv, bs = 5, 2, 32
    cu_q, kv, pt, q, kc, vc = _case(rng, B, hkv, g, max_q=16 if g == 1 else 4)
    hq = hkv * g
    lay = _layout(kind, rng, kv, hkv, hq, bs)
    if paged:
        ps = kc.shape[1]

        def rows(cache):
            return lambda b, j: cache[pt[b, j // ps], j % ps]
        k_rows, v_rows = rows(kc), rows(vc)
        ref = reference_decode.decode(q, kc, vc, cu_seqlens_q=cu_q, kv_lens=kv, page_table=pt, layout=lay)
    else:
        cu_k = np.concatenate([[0], np.cumsum(kv)])
        kflat = rng.standard_normal((int(cu_k[-1]) + 5, hkv, q.shape[2]))
        vflat = rng.standard_normal(kflat.shape)

        def rows_c(cache):
            return lambda b, j: cache[cu_k[b] + j]
        k_rows, v_rows = rows_c(kflat), rows_c(vflat)
        ref = reference_decode.decode(q, kflat, vflat, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, layout=lay)
    tm = _tile_m(cu_q, g)
    wl = build_worklist(cu_q, kv, num_heads_q=hq, num_heads_kv=hkv, tile_m=tm, tile_n=32, layout=lay, num_sms=2,
                        num_splits=splits, persistent=True if splits == 3 else None)  # forced: 2-CTA grid
    out, lse = run_model(wl, q, k_rows, v_rows, cu_q, num_heads_kv=hkv, causal=True)
    np.testing.assert_allclose(out, ref[0], rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(np.isinf(lse), np.isinf(ref[1]))
    fin = np.isfinite(ref[1])
    np.testing.assert_allclose(lse[fin], ref[1][fin], rtol=1e-10)


def test_worklist_invariants():
    from varblock.decode_plan.cost import snake_order

    rng = np.random.default_rng(7)
    B, hkv, g, bs = 9, 4, 4, 16
    cu_q, kv, _pt, _q, _kc, _vc = _case(rng, B, hkv, g, max_kv=4000, max_q=8)
    lay = _layout("seer_q", rng, kv, hkv, hkv * g, bs)
    wl = build_worklist(cu_q, kv, num_heads_q=hkv * g, num_heads_kv=hkv, tile_m=64, tile_n=64, layout=lay,
                        num_sms=4)
    it, ch = wl.items, wl.chunks
    assert it.dtype == np.int32 and ch.dtype == np.int32 and it.shape[1] == abi.ITEM_WIDTH
    assert (ch[:, abi.CHUNK_K_LEN] >= 1).all() and (ch[:, abi.CHUNK_K_LEN] <= 64).all()
    launch = it if wl.grid == wl.num_items else it[snake_order(wl.num_items, wl.grid)]
    assert (np.diff(launch[:, abi.ITEM_N_CHUNKS]) <= 0).all(), "items longest first (persistent: in snake order)"
    split = it[it[:, abi.ITEM_NUM_SPLITS] > 1]
    assert np.unique(split[:, abi.ITEM_SLOT]).size == split.shape[0] == wl.num_slots
    for b in range(B):  # chunks of one item lie in one sequence and do not overlap
        for row in it[it[:, abi.ITEM_BATCH] == b]:
            c = ch[row[abi.ITEM_CHUNK_BEGIN]:row[abi.ITEM_CHUNK_BEGIN] + row[abi.ITEM_N_CHUNKS]]
            assert (c[:, 0] + c[:, 1] <= kv[b]).all()
            assert (c[1:, 0] >= c[:-1, 0] + c[:-1, 1]).all()
            if row[abi.ITEM_NUM_SPLITS] > 1:
                assert row[abi.ITEM_N_CHUNKS] >= 1


def test_split_heuristic_fills_the_gpu():
    """batch 1 x 128k, 256 x 2k and 64 x 32k (Hkv 8, 64-key chunks) all give at least a wave on 132 SMs x 2, with
    balanced items; 1 x 128k is cut into exactly one wave (33 splits of 62-63 chunks)."""
    for B, L in ((1, 131072), (256, 2048), (64, 32768)):
        cu_q = np.arange(B + 1)
        kv = np.full(B, L)
        wl = build_worklist(cu_q, kv, num_heads_q=64, num_heads_kv=8, tile_m=16, tile_n=64, layout=None,
                            num_sms=132, ctas_per_sm=2)
        assert wl.num_items >= 264, (B, L, wl.num_items)
        n = wl.items[:, abi.ITEM_N_CHUNKS]
        assert n.min() >= min(MIN_CHUNKS_PER_SPLIT, L // 64) and n.max() <= n.min() + 1
        if B == 1:
            assert wl.num_items == 264 and (wl.items[:, abi.ITEM_NUM_SPLITS] == 33).all()
        else:
            assert (wl.items[:, abi.ITEM_NUM_SPLITS] == 1).all()


def test_split_heuristic_sparse_long_sequence_uses_kept_chunks():
    """1 x 128k at density 0.25 (random kept 64-key blocks): splits follow the 512 kept chunks per KV head, not
    the 2048 chunks of the length, so the GPU still gets about one wave of CTAs."""
    rng = np.random.default_rng(3)
    L, bs = 131072, 64
    nb = L // bs
    rows = np.repeat(np.arange(8), nb // 4)
    blocks = np.concatenate([rng.permutation(nb)[:nb // 4] for _ in range(8)])
    lay = LD.from_block_lists(rows, blocks, kv_lens=np.array([L]), block_size=bs, num_heads=8)
    wl = build_worklist(np.arange(2), np.array([L]), num_heads_q=64, num_heads_kv=8, tile_m=16, tile_n=64,
                        layout=lay, num_sms=132, ctas_per_sm=2)
    assert int(wl.items[:, abi.ITEM_N_CHUNKS].sum()) == 8 * (nb // 4)
    assert 240 <= wl.num_items <= 264
    assert wl.items[:, abi.ITEM_N_CHUNKS].max() <= 17


def test_per_q_head_masks_union():
    kv = np.array([256])
    m = np.zeros((1, 4, 4), dtype=bool)
    m[0, 0, [0, 1]] = True
    m[0, 1, [1]] = True
    m[0, 2, [0, 1, 3]] = True
    m[0, 3, [0, 1]] = True
    lay = LD.from_seer_decode_mask(m, kv_lens=kv, block_size=64, head_mode="per_q_head")
    wl = build_worklist(np.array([0, 1]), kv, num_heads_q=4, num_heads_kv=1, tile_m=16, tile_n=128, layout=lay,
                        num_sms=1, num_splits=1)
    got = [tuple(int(x) for x in c) for c in wl.chunks]
    assert got == [(0, 64, 0b1101), (64, 64, -1), (192, 64, 0b0100)]


def test_check_lengths_errors():
    with pytest.raises(ValueError, match="at most 16 new tokens"):
        _check_lengths(np.array([0, 17]), np.array([20]), True)
    with pytest.raises(ValueError, match="kv_len 2 < 3 new tokens"):
        _check_lengths(np.array([0, 3]), np.array([2]), True)
    with pytest.raises(ValueError, match="cu_seqlens_q"):
        _check_lengths(np.array([0, 3, 2]), np.array([4, 4]), True)
    with pytest.raises(ValueError, match="kv_lens"):
        _check_lengths(np.array([0, 1]), np.array([4, 4]), True)


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("g", [1, 8])
@pytest.mark.parametrize("splits", [1, 4])
def test_fixed_worklist_matches_reference(sparse, g, splits):
    """The twin of the device builder (fixed capacity) gives the reference result through the kernel model."""
    from varblock.decode_plan.fixed import ERR_OK, fixed_worklist
    from varblock.decode_plan.worklist import WorkList

    rng = np.random.default_rng(hash((sparse, g, splits)) % 2**32)
    B, hkv, tn, bs = 4, 2, 32, 64
    cu_q, kv, pt, q, kc, vc = _case(rng, B, hkv, g, max_kv=700, max_q=16 if g == 1 else 2)
    tm = _tile_m(cu_q, g)
    max_q = int(np.diff(cu_q).max())
    rt = -(-max_q * g // tm) + 1  # one spare row tile: it must read and write nothing
    lay, idx, cnt = None, None, None
    if sparse:
        k = 5
        nb = LD.num_blocks(kv, bs)
        idx = np.full((B, hkv, k), -1)
        cnt = np.zeros((B, hkv), np.int64)
        for b in range(B):
            for h in range(hkv):
                sel = rng.permutation(int(nb[b]))[:k]
                idx[b, h, :sel.size] = sel
                cnt[b, h] = rng.integers(0, k + 1)
        lay = LD.from_topk_indices(idx, kv_lens=kv, block_size=bs, counts=np.minimum(cnt, k))
        cap = k * -(-bs // tn)
    else:
        cap = -(-int(kv.max()) // tn)
    items, chunks, status = fixed_worklist(cu_q, kv, num_heads_kv=hkv, group_size=g, tile_m=tm, tile_n=tn,
                                           row_tiles=rt, splits=splits, chunk_cap=cap, block_size=bs,
                                           block_idx=idx, block_cnt=cnt)
    assert status.tolist() == [items.shape[0], ERR_OK]
    wl = WorkList(items, chunks, items.shape[0] if splits > 1 else 0, tm, tn)
    ps = kc.shape[1]

    def rows(cache):
        return lambda b, j: cache[pt[b, j // ps], j % ps]
    out, lse = run_model(wl, q, rows(kc), rows(vc), cu_q, num_heads_kv=hkv, causal=True)
    ref = reference_decode.decode(q, kc, vc, cu_seqlens_q=cu_q, kv_lens=kv, page_table=pt, layout=lay)
    np.testing.assert_allclose(out, ref[0], rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(np.isinf(lse), np.isinf(ref[1]))


def test_fixed_worklist_flags_capacity():
    from varblock.decode_plan.fixed import ERR_CAPACITY, fixed_worklist

    _, _, status = fixed_worklist(np.array([0, 1]), np.array([1000]), num_heads_kv=1, group_size=1, tile_m=16,
                                  tile_n=64, row_tiles=1, splits=1, chunk_cap=4)
    assert status[1] == ERR_CAPACITY


@pytest.mark.parametrize("clamped", [False, True])
def test_device_plan_reads_page_table_only_within_actual_lengths(clamped):
    """Device-plan page-table contract: with a capacity far above the actual lengths, the fixed work list reads
    ``page_table[b, j // page_size]`` only for ``j < kv_lens[b]``, so a table exactly as wide as the longest actual
    sequence needs suffices (also when a length past the capacity is clamped); the result is the reference's."""
    from varblock.decode_plan.fixed import ERR_CAPACITY, ERR_OK, fixed_worklist
    from varblock.decode_plan.worklist import WorkList

    rng = np.random.default_rng(31 + clamped)
    B, hkv, g, tn, ps = 5, 2, 4, 64, 16
    cu_q, kv, pt, q, kc, vc = _case(rng, B, hkv, g, page_size=ps, max_kv=700, max_q=2)
    width = int(-(-kv.max() // ps))
    pt = pt[:, :width]  # as wide as the actual lengths need, far below the capacity's pages
    cap = -(-3000 // tn) if not clamped else -(-int(kv.max()) // tn) - 1
    tm = _tile_m(cu_q, g)
    rt = -(-int(np.diff(cu_q).max()) * g // tm)
    items, chunks, status = fixed_worklist(cu_q, kv, num_heads_kv=hkv, group_size=g, tile_m=tm, tile_n=tn,
                                           row_tiles=rt, splits=3, chunk_cap=cap)
    assert status[1] == (ERR_CAPACITY if clamped else ERR_OK)
    b_of = np.repeat(np.arange(B), hkv * cap)
    assert (chunks[:, 0] + chunks[:, 1] <= kv[b_of]).all()  # every chunk inside its sequence's keys

    def rows(cache):
        def read(b, j):
            assert (j < kv[b]).all()
            return cache[pt[b, j // ps], j % ps]  # IndexError past the table's width
        return read
    wl = WorkList(items, chunks, items.shape[0], tm, tn)
    out, _ = run_model(wl, q, rows(kc), rows(vc), cu_q, num_heads_kv=hkv, causal=True)
    if not clamped:
        ref = reference_decode.decode(q, kc, vc, cu_seqlens_q=cu_q, kv_lens=kv, page_table=pt)
        np.testing.assert_allclose(out, ref[0], rtol=1e-10, atol=1e-12)


def test_pages_needed_strict_for_host_plans_one_column_for_device_plans():
    from varblock.decode_plan.plan import DecodePlan, pages_needed

    def plan(kv):
        return DecodePlan(0, 8, 2, 128, 2, 2, True, 16, True, 16, 64, None, kv)
    assert pages_needed(plan(np.array([17, 300]))) == 19  # host plan: the longest sequence's pages
    assert pages_needed(plan(np.array([0, 0]))) == 0
    assert pages_needed(plan(None)) == 1  # device plan: lengths unknown on the host, the caller's contract


def test_device_plan_arguments_checked_before_any_gpu_work():
    import varblock

    kw = dict(num_heads_q=8, num_heads_kv=2, head_dim=128, kv_lens=[5], page_table=[[0]], page_size=16,
              max_kv_len=4096)
    with pytest.raises(TypeError, match="total_q"):
        varblock.plan_decode([0, 1], **kw)
    with pytest.raises(TypeError, match="layout"):
        varblock.plan_decode([0, 1], total_q=1, layout=LD.dense_decode([5], block_size=16, num_heads=2), **kw)
    with pytest.raises(TypeError, match="block_indices"):
        varblock.plan_decode([0, 1], kv_lens=[5], page_table=[[0]], page_size=16, num_heads_q=8, num_heads_kv=2,
                             head_dim=128, block_indices=np.zeros((1, 2, 1), np.int32))
    with pytest.raises(ValueError, match="persistent: device-built plans"):
        varblock.plan_decode([0, 1], total_q=1, persistent=True, **kw)
    with pytest.raises(TypeError, match="persistent: expected"):
        varblock.plan_decode([0, 1], total_q=1, persistent=1, **kw)
    with pytest.raises(ValueError, match="head_dim"):
        varblock.plan_decode([0, 1], total_q=1, **{**kw, "head_dim": 80})


def test_choose_splits():
    from varblock.decode_plan.device import choose_splits

    assert choose_splits(8, 1, 2048, 132, 2) == 33  # batch 1 x 128k: one wave of 264 CTAs
    assert choose_splits(2048, 1, 32, 132, 2) == 1  # batch 256 x 2k: no split
    assert choose_splits(512, 1, 512, 132, 2) == 1  # batch 64 x 32k: two waves without splits
    assert choose_splits(8, 1, 16, 132, 2) == 16 // MIN_CHUNKS_PER_SPLIT  # short capacity: fewest chunks a split
    assert choose_splits(0, 1, 16, 132, 2) == 1


@pytest.mark.parametrize("cross", [True, False])
@pytest.mark.parametrize("stages", [2, 3, 4])
def test_persistent_pipeline_protocol(cross, stages):
    """The kernel's loader / consumer protocol over random item lists (empty items included) and grids: every
    chunk of every item is consumed once, in order, by the CTA that owns the item, with the stage invariants."""
    rng = np.random.default_rng(stages + 10 * cross)
    for _ in range(40):
        w = int(rng.integers(1, 30))
        n = rng.integers(0, 7, size=w) * (rng.random(w) < 0.8)
        grid = int(rng.integers(1, w + 2))
        seqs = simulate_pipeline(n, grid, stages, cross)
        for c in range(grid):
            assert seqs[c] == [(i, k) for i in range(c, w, grid) for k in range(int(n[i]))]


def test_persistent_grid_choice():
    """Many equal short items (256 x 2k at density 0.25): one CTA per item by the model (the H200 measured no gain
    from the persistent grid), a persistent grid of one CTA per slot in snake order when forced; one wave or fewer
    keeps one CTA per item; the model of the kernel over a forced persistent grid still matches the reference."""
    from varblock.decode_plan.cost import choose_grid, snake_order

    eight, one = np.full(2048, 8), np.ones(2048, np.int64)
    assert choose_grid(eight, one, 264)[0] == 2048
    assert choose_grid(eight, one, 264, persistent=False)[0] == 2048
    grid, order = choose_grid(eight, one, 264, persistent=True)
    assert grid == 264 and sorted(order.tolist()) == list(range(2048))
    assert choose_grid(np.full(200, 8), np.ones(200, np.int64), 264)[0] == 200
    assert choose_grid(np.full(200, 8), np.ones(200, np.int64), 264, persistent=True)[0] == 200
    with pytest.raises(TypeError, match="persistent"):
        choose_grid(eight, one, 264, persistent="yes")
    assert snake_order(7, 3).tolist() == [0, 1, 2, 5, 4, 3, 6]
    rng = np.random.default_rng(5)
    cu_q, kv, pt, q, kc, vc = _case(rng, 40, 2, 4, max_kv=400, max_q=2)
    wl = build_worklist(cu_q, kv, num_heads_q=8, num_heads_kv=2, tile_m=16, tile_n=16, layout=None, num_sms=2,
                        ctas_per_sm=2, num_splits=2, persistent=True)
    assert 4 == wl.grid < wl.num_items

    def rows(cache):
        return lambda b, j: cache[pt[b, j // 16], j % 16]

    out, lse = run_model(wl, q, rows(kc), rows(vc), cu_q, num_heads_kv=2, causal=True)
    ref = reference_decode.decode(q, kc, vc, cu_seqlens_q=cu_q, kv_lens=kv, page_table=pt)
    np.testing.assert_allclose(out, ref[0], rtol=1e-10, atol=1e-12)
    simulate_pipeline(wl.items[:, abi.ITEM_N_CHUNKS], wl.grid, 3, True)


def test_cost_model_pieces():
    """Makespan of equal items is waves x cost; balanced splits cover every chunk once; the split choice honours
    max_splits and the fewest chunks per split, and does not split when there is nothing to gain."""
    from varblock.decode_plan import cost

    assert cost.makespan(np.full(529, 3.0), 264) == 9.0  # 3 waves (the last has one item)
    assert cost.makespan(np.array([10.0, 1.0, 1.0]), 2) == 11.0
    with pytest.raises(ValueError, match="slots"):
        cost.makespan(np.ones(3), 0)
    n, s = cost.split_items(np.array([10, 0, 7]), np.array([1, 2, 1]), np.array([3, 1, 2]))
    assert n.tolist() == [3, 3, 4, 0, 0, 3, 4] and s.tolist() == [3, 3, 3, 1, 1, 2, 2]
    assert cost.item_costs(np.array([5]), np.array([1]))[0] == 5 + cost.RAMP_CHUNKS
    g = np.full(8, 2048)
    t = np.ones(8, np.int64)
    assert cost.choose_chunks_per_split(g, t, 264, max_splits=8) == 256
    assert cost.choose_chunks_per_split(np.full(8, 6), t, 264) == cost.MIN_CHUNKS_PER_SPLIT
    assert cost.choose_chunks_per_split(np.zeros(8, np.int64), t, 264) == cost.MIN_CHUNKS_PER_SPLIT
    assert cost.choose_chunks_per_split(np.full(2048, 32), np.ones(2048, np.int64), 264) == 32
    p = cost.persistent_makespan(np.full(6, 4.0), 3)
    assert p == 2 * (4 + cost.STEP_CHUNKS) + cost.RAMP_CHUNKS


def test_min_waves_asks_for_more_items(monkeypatch):
    """MIN_WAVES = 1.9 gives 1 x 128k the old plan's 64 splits (dense: 32 chunks each; density 0.25: 8) and leaves
    64 x 32k (512 items, 1.94 waves) and 256 x 2k alone; lists that cannot reach it keep the estimate's choice."""
    from varblock.decode_plan import cost

    t8 = np.ones(8, np.int64)
    assert cost.choose_chunks_per_split(np.full(8, 2048), t8, 264) == 63  # default: one wave of 33 splits
    monkeypatch.setattr(cost, "MIN_WAVES", 1.9)
    assert cost.choose_chunks_per_split(np.full(8, 2048), t8, 264) == 32
    assert cost.choose_chunks_per_split(np.full(8, 512), t8, 264) == 8
    assert cost.choose_chunks_per_split(np.full(512, 512), np.ones(512, np.int64), 264) == 512
    assert cost.choose_chunks_per_split(np.full(2048, 8), np.ones(2048, np.int64), 264) == 8
    assert cost.choose_chunks_per_split(np.full(2, 6), np.ones(2, np.int64), 264) == cost.MIN_CHUNKS_PER_SPLIT


def test_benchmark_shapes_plans():
    """The work lists of the benchmark shapes on 132 SMs x 2 (the numbers in docs/decode.md)."""
    want = {(64, 32768): (512, 512, 1), (1, 131072): (264, 264, 33), (256, 2048): (2048, 2048, 1)}
    for (B, L), (items, grid, splits) in want.items():
        wl = build_worklist(np.arange(B + 1), np.full(B, L), num_heads_q=64, num_heads_kv=8, tile_m=16, tile_n=64,
                            layout=None, num_sms=132, ctas_per_sm=2)
        assert (wl.num_items, wl.grid, int(wl.items[:, abi.ITEM_NUM_SPLITS].max())) == (items, grid, splits)
