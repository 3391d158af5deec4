"""CPU tests of varblock.tile_pairing through ``build_worklist(merge=...)`` on real layouts.

For random layouts (64-token and smaller blocks; causal, windows, sinks, documents, SeerAttention token masks;
GQA with every head mode and pack-GQA; varlen odd lengths, len_k != len_q) the pairs a merged work list computes
(full chunks unmasked, partial chunks through the element mask, exactly as the kernels do) must be exactly the
layout's pairs, each once; a float64 model of the kernels walking the work list must match
``varblock.reference.attention_forward``. Dense 64x64 layouts must pair fully; adjacent kept key blocks must share
a chunk, a lone one must not be padded.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_worklist import kernel_model
from varblock import layout as L
from varblock import reference
from varblock.abi import (
    CHUNK_DROP_HI,
    CHUNK_DROP_KEY_HALF,
    CHUNK_DROP_LO,
    CHUNK_DROP_SHIFT,
    CHUNK_K_LEN_MASK,
    TILE_N_FULL,
    TILE_N_PARTIAL,
    TILE_Q_LEN,
)
from varblock.layout import generators as G
from varblock.layout.mask import ElementMask
from varblock.plan.host import band_mask, choose_pack
from varblock.tile_pairing import BandMask
from varblock.worklist import WorkList, build_worklist, tile_pairs


def _cu(lens) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)


class MaskModel:
    """The kernels' element mask of partial chunks (``kernels/common/mask.py``) for a layout's ``ElementMask``."""

    def __init__(self, lay: L.BlockSparseLayout, hq: int, hkv: int):
        self.m: ElementMask = lay.mask
        self.hmap = lay.head_map(hq, hkv)
        self.band = band_mask(lay.mask)

    def allowed(self, h, tq, tk, cu_q, cu_k, batch_of_q):
        m, bm = self.m, self.band
        b = batch_of_q[tq]
        i, j = tq - cu_q[b], tk - cu_k[b]
        off = (cu_k[b + 1] - cu_k[b]) - (cu_q[b + 1] - cu_q[b])
        ok = np.ones(tq.shape, dtype=bool)
        if bm.window_left >= 0:
            ok &= (j < bm.num_sink_tokens) | (j >= i + off - bm.window_left)
        if bm.window_right >= 0:
            ok &= j <= i + off + bm.window_right
        if m.doc_ids_q is not None:
            ok &= m.doc_ids_q[tq] == m.doc_ids_k[tk]
        if m.token_mask is not None:
            hm = self.hmap[h] if m.token_mask.shape[0] > 1 else np.zeros_like(h)
            ok &= m.token_mask[hm, tq, j // m.token_block_k]
        return ok


def expected_mask(lay: L.BlockSparseLayout, hq: int, hkv: int) -> np.ndarray:
    """bool [Hq, total_q, total_k]: the pairs the layout computes."""
    cu_q, cu_k = lay.cu_seqlens_q.astype(np.int64), lay.cu_seqlens_k.astype(np.int64)
    hmap = lay.head_map(hq, hkv)
    out = np.zeros((hq, int(cu_q[-1]), int(cu_k[-1])), dtype=bool)
    for b in range(cu_q.shape[0] - 1):
        for h in range(hq):
            out[h, cu_q[b]:cu_q[b + 1], cu_k[b]:cu_k[b + 1]] = lay.token_mask(b, int(hmap[h]))
    return out


def worklist_for(lay: L.BlockSparseLayout, hq: int, hkv: int, tile_m: int, tile_n: int, pack: bool | None,
                 merge: bool) -> WorkList:
    g = choose_pack(lay, hq, hkv, tile_m, pack)
    return build_worklist(lay.rows(), lay.cu_seqlens_q, lay.cu_seqlens_k, num_heads_q=hq, num_heads_kv=hkv,
                          head_mode=lay.head_mode, tile_m=tile_m, tile_n=tile_n, pack_gqa=g,
                          num_layout_heads=lay.num_heads, longest_first=True,
                          merge=band_mask(lay.mask) if merge else None)


def check_exact(wl: WorkList, lay: L.BlockSparseLayout, hq: int, hkv: int) -> None:
    """Every (head, token) in one tile; the computed pairs (after the kernels' masking) are the layout's, once."""
    cu_q, cu_k = lay.cu_seqlens_q.astype(np.int64), lay.cu_seqlens_k.astype(np.int64)
    tq_n, tk_n = int(cu_q[-1]), int(cu_k[-1])
    t = wl.tiles.astype(np.int64)
    assert (t[:, TILE_Q_LEN] >= 1).all() and (t[:, TILE_Q_LEN] * wl.pack_gqa <= wl.tile_m).all()
    k_len = wl.chunks[:, 1] & CHUNK_K_LEN_MASK
    assert ((k_len >= 1) & (k_len <= wl.tile_n)).all()
    h, tq, tk, part = tile_pairs(wl, cu_q, cu_k, num_heads_q=hq, num_heads_kv=hkv)
    key = (h * tq_n + tq) * max(tk_n, 1) + tk
    assert np.unique(key).shape[0] == key.shape[0], "a pair is computed twice"
    mm = MaskModel(lay, hq, hkv)
    keep = ~part
    keep[part] = mm.allowed(h[part], tq[part], tk[part], cu_q, cu_k, np.repeat(np.arange(cu_q.shape[0] - 1),
                                                                                np.diff(cu_q)))
    got = np.zeros((hq, tq_n, tk_n), dtype=bool)
    got[h[keep], tq[keep], tk[keep]] = True
    np.testing.assert_array_equal(got, expected_mask(lay, hq, hkv))
    # coverage: every (query head, token) exactly once
    g = wl.pack_gqa
    cover = np.zeros((hq, tq_n), dtype=np.int64)
    for b, head, qs, ql in t[:, :4]:
        r = np.arange(ql * g)
        hh = head * g + r % g if g > 1 else np.full(r.shape, head)
        np.add.at(cover, (hh, cu_q[b] + qs + r // g), 1)
    assert (cover == 1).all()


def random_layout(rng: np.random.Generator, kind: str, hq: int, hkv: int, head_mode: str, block: int):
    nb = int(rng.integers(1, 4))
    len_q = rng.integers(0, 5 * block, size=nb)
    len_q[0] = max(len_q[0], 1)
    same = rng.random() < 0.5
    len_k = len_q.copy() if same else rng.integers(1, 5 * block, size=nb)
    cu_q, cu_k = _cu(len_q), _cu(len_k)
    hl = {"per_q_head": hq, "per_kv_head": hkv, "broadcast": 1}[head_mode]
    kw = dict(block_q=block, block_k=block, num_heads=hl, head_mode=head_mode)
    if kind == "causal":
        return G.causal(cu_q, cu_k, **kw)
    if kind == "dense":
        return G.dense(cu_q, cu_k, **kw)
    if kind == "random":
        return G.random_blocks(cu_q, cu_k, density=float(rng.choice([1.0, 0.8, 0.5, 0.2])), seed=rng,
                               causal=bool(rng.random() < 0.6), **kw)
    if kind == "window":
        return G.sliding_window(cu_q, cu_k, window_left=int(rng.integers(0, 3 * block)),
                                window_right=int(rng.choice([0, 0, 5, block])),
                                num_sink_tokens=int(rng.choice([0, 0, 3, block + 7])), **kw)
    if kind == "sinks":
        return G.attention_sinks(cu_q, cu_k, num_sink_tokens=int(rng.integers(1, 2 * block)),
                                 window_left=int(rng.integers(0, 2 * block)), **kw)
    if kind == "document":
        dq = np.sort(rng.integers(0, 3, size=int(cu_q[-1]))).astype(np.int32)
        dk = dq if same else np.sort(rng.integers(0, 3, size=int(cu_k[-1]))).astype(np.int32)
        return G.document(cu_q, cu_k, doc_ids_q=dq, doc_ids_k=dk, causal=bool(rng.random() < 0.5), **kw)
    if kind == "codes":  # block codes taken as given: full blocks the mask cuts, skipped blocks it allows
        mb = int(-(-len_q.max() // block))
        nbk = int(-(-len_k.max() // block))
        codes = rng.choice([0, 0, 1, 2, 2], size=(nb, hl, mb, nbk)).astype(np.int8)
        dq = np.sort(rng.integers(0, 3, size=int(cu_q[-1]))).astype(np.int32)
        dk = dq if same else np.sort(rng.integers(0, 3, size=int(cu_k[-1]))).astype(np.int32)
        em = [ElementMask(causal=True), ElementMask(window_left=int(rng.integers(0, 2 * block)), window_right=3,
                                                    num_sink_tokens=int(rng.integers(0, block))),
              ElementMask(doc_ids_q=dq, doc_ids_k=dk), ElementMask(causal=True, doc_ids_q=dq, doc_ids_k=dk)]
        return L.from_block_mask(codes, cu_q, cu_k, block_q=block, block_k=block, head_mode=head_mode,
                                 element_mask=em[int(rng.integers(0, len(em)))], padding="ignore")
    assert kind == "seer1d"
    hm = hl if head_mode != "broadcast" else 1
    t = int(len_q.max())
    nbk = int(-(-len_k.max() // block))
    m = rng.random((nb, hm, t, nbk)) < 0.6
    return L.from_seer_1d(m, cu_q, cu_k, block_size=block, head_mode=head_mode, causal=bool(rng.random() < 0.5))


KINDS = ["causal", "dense", "random", "window", "sinks", "document", "seer1d", "codes"]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31 - 1),
    kind=st.sampled_from(KINDS),
    heads=st.sampled_from([(1, 1), (4, 2), (4, 1), (3, 3)]),
    head_mode=st.sampled_from(["per_q_head", "per_kv_head", "broadcast"]),
    geometry=st.sampled_from([(64, 128, 128), (64, 128, 64), (64, 64, 64), (16, 64, 32), (32, 128, 128),
                              (48, 128, 128)]),
    pack=st.sampled_from([None, False]),
)
def test_merged_pairs_equal_layout(seed, kind, heads, head_mode, geometry, pack):
    rng = np.random.default_rng(seed)
    hq, hkv = heads
    block, tile_m, tile_n = geometry
    if kind == "seer1d" and head_mode == "per_q_head":
        head_mode = "per_kv_head"
    lay = random_layout(rng, kind, hq, hkv, head_mode, block)
    wl = worklist_for(lay, hq, hkv, tile_m, tile_n, pack, merge=True)
    assert wl.merged
    check_exact(wl, lay, hq, hkv)
    plain = worklist_for(lay, hq, hkv, tile_m, tile_n, pack, merge=False)
    assert wl.num_tiles <= plain.num_tiles


@pytest.mark.parametrize("seed", range(48))
def test_given_block_codes_with_every_mask(seed):
    """Integer block codes taken as given (full blocks the mask cuts, skipped blocks it allows) under causal,
    window + sinks and document masks: the hardest case for the exactness checks (documents decide only where a
    span lies in one document)."""
    rng = np.random.default_rng(seed)
    lay = random_layout(rng, "codes", 4, 2, "per_kv_head", 64)
    for tile_n in (128, 64):
        check_exact(worklist_for(lay, 4, 2, 128, tile_n, False, merge=True), lay, 4, 2)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31 - 1),
    kind=st.sampled_from(KINDS),
    heads=st.sampled_from([(1, 1), (4, 2), (2, 1)]),
    head_mode=st.sampled_from(["per_kv_head", "broadcast"]),
    geometry=st.sampled_from([(64, 128, 128), (64, 128, 64), (16, 64, 32)]),
    merge=st.booleans(),
)
def test_kernel_model_matches_reference(seed, kind, heads, head_mode, geometry, merge):
    """Attention from a float64 model of the kernels walking the (merged or plain) work list = the reference."""
    rng = np.random.default_rng(seed)
    hq, hkv = heads
    block, tile_m, tile_n = geometry
    lay = random_layout(rng, kind, hq, hkv, head_mode, block)
    wl = worklist_for(lay, hq, hkv, tile_m, tile_n, None, merge)
    d = 8
    cu_q, cu_k = lay.cu_seqlens_q.astype(np.int64), lay.cu_seqlens_k.astype(np.int64)
    q = rng.standard_normal((int(cu_q[-1]), hq, d))
    k = rng.standard_normal((int(cu_k[-1]), hkv, d))
    v = rng.standard_normal((int(cu_k[-1]), hkv, d))
    scale = 1 / np.sqrt(d)
    o_ref, lse_ref = reference.attention_forward(q, k, v, lay, softmax_scale=scale)
    o, lse = kernel_model(wl, q, k, v, cu_q, cu_k, hq, hkv, MaskModel(lay, hq, hkv), scale, tile_n)
    assert not np.isnan(o).any() and not np.isnan(lse).any()
    np.testing.assert_allclose(o, o_ref, atol=1e-12, rtol=1e-10)
    np.testing.assert_allclose(lse, lse_ref, atol=1e-12, rtol=1e-10)


LENS_Q_ODD = [1, 70, 113, 250, 129, 300, 64]
LENS_K_ODD = [5, 70, 200, 250, 64, 333, 128]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("mask_kind", ["none", "causal", "window_sinks"])
@pytest.mark.parametrize("heads", [(8, 2, "per_kv_head"), (4, 4, "per_q_head")])
@pytest.mark.parametrize("same_lengths", [True, False])
def test_kernel_model_with_drop_bits(seed, mask_kind, heads, same_lengths):
    """Random 64x64 block masks (odd lengths, GQA): half pairs with drop bits; the float64 kernel model walking the
    merged work list (128x128 as sm90, 128x64 as the portable d128 kernel) equals the reference."""
    rng = np.random.default_rng(seed)
    hq, hkv, mode = heads
    cu_q = _cu(LENS_Q_ODD)
    cu_k = cu_q if same_lengths else _cu(LENS_K_ODD)
    hl = hkv if mode == "per_kv_head" else hq
    nbq, nbk = -(-max(LENS_Q_ODD) // 64), -(-max(max(LENS_K_ODD), max(LENS_Q_ODD)) // 64)
    em = {"none": ElementMask(), "causal": ElementMask(causal=True),
          "window_sinks": ElementMask(window_left=int(rng.integers(40, 200)), window_right=0,
                                      num_sink_tokens=int(rng.integers(1, 80)))}[mask_kind]
    blocks = rng.random((len(LENS_Q_ODD), hl, nbq, nbk)) < float(rng.choice([0.3, 0.5, 0.7]))
    lay = L.from_block_mask(blocks, cu_q, cu_k, block_q=64, block_k=64, head_mode=mode, element_mask=em,
                            padding="ignore")
    d = 8
    q = rng.standard_normal((int(cu_q[-1]), hq, d))
    k = rng.standard_normal((int(cu_k[-1]), hkv, d))
    v = rng.standard_normal((int(cu_k[-1]), hkv, d))
    scale = 1 / np.sqrt(d)
    o_ref, lse_ref = reference.attention_forward(q, k, v, lay, softmax_scale=scale)
    for tile_n in (128, 64):
        wl = worklist_for(lay, hq, hkv, 128, tile_n, False, True)
        assert ((wl.chunks[:, 1] >> CHUNK_DROP_SHIFT) != 0).any(), "no drop bits: the case tests nothing new"
        check_exact(wl, lay, hq, hkv)
        o, lse = kernel_model(wl, q, k, v, cu_q.astype(np.int64), cu_k.astype(np.int64), hq, hkv,
                              MaskModel(lay, hq, hkv), scale, tile_n)
        np.testing.assert_allclose(o, o_ref, atol=1e-12, rtol=1e-10)
        np.testing.assert_allclose(lse, lse_ref, atol=1e-12, rtol=1e-10)


W1 = [512, 1024, 2048, 4096, 8192, 1536, 3072, 6144]


def _mma_stats(wl: WorkList) -> tuple[int, float]:
    """(tiles, MMA area = chunks x tile_m x tile_n summed over tiles)."""
    t = wl.tiles.astype(np.int64)
    return wl.num_tiles, float(((t[:, TILE_N_FULL] + t[:, TILE_N_PARTIAL]) * wl.tile_m * wl.tile_n).sum())


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("tiles", [(128, 128), (128, 64)])
def test_dense_64x64_pairs_fully(causal, tiles):
    """W1 (Hq 32 / Hkv 8) with 64x64 blocks: every tile holds two blocks, and the MMA work is the kept pairs
    (plus the diagonal tiles' masked half when causal) — not 4x (sm90) / 2x (portable) of it."""
    cu = _cu(W1)
    hq, hkv = 32, 8
    lay = G.random_blocks(cu, cu, density=1.0, num_heads=hkv, head_mode="per_kv_head", causal=causal, seed=1,
                          block_q=64, block_k=64)
    tile_m, tile_n = tiles
    merged = worklist_for(lay, hq, hkv, tile_m, tile_n, None, True)
    plain = worklist_for(lay, hq, hkv, tile_m, tile_n, None, False)
    n_tiles = hq * sum(-(-n // tile_m) for n in W1)
    assert merged.num_tiles == n_tiles and plain.num_tiles == 2 * n_tiles
    assert (merged.tiles[:, TILE_Q_LEN] == tile_m).all()
    useful = lay.num_pairs(hq, hkv)
    waste_merged = 1 - useful / _mma_stats(merged)[1]
    waste_plain = 1 - useful / _mma_stats(plain)[1]
    assert waste_merged < (0.025 if causal else 1e-12)
    assert waste_plain > (0.74 if tile_n == 128 else 0.49)
    if causal:  # the diagonal 128 keys of each tile are its only partial chunk(s)
        assert (merged.tiles[:, TILE_N_PARTIAL] == 128 // tile_n).all()
    else:
        assert (merged.tiles[:, TILE_N_PARTIAL] == 0).all()


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("density", [0.5, 0.1])
def test_random_64x64_pairs_with_drop_bits(causal, density):
    """W1 random 64x64 layouts: with the drop bits every two 64-row blocks share a 128-row tile, and the MMA work
    shrinks against the unmerged plan (printed: the wasted-MMA fraction, docs/tile_pairing.md)."""
    cu = _cu(W1)
    hq, hkv = 32, 8
    lay = G.random_blocks(cu, cu, density=density, num_heads=hkv, head_mode="per_kv_head", causal=causal, seed=1,
                          block_q=64, block_k=64)
    useful = lay.num_pairs(hq, hkv)
    n_tiles = hq * sum(-(-n // 128) for n in W1)
    # (density, tile_n) -> wasted-MMA bound; measured 0.433 / 0.350 / 0.693 / 0.526 causal, 0.413 / 0.329 /
    # 0.671 / 0.470 not (unmerged: 0.756 / 0.512 / 0.775 / 0.549 and 0.750 / 0.500 / 0.750 / 0.500)
    bound = {(0.5, 128): 0.44, (0.5, 64): 0.36, (0.1, 128): 0.70, (0.1, 64): 0.53 if causal else 0.48}
    for tile_n in (128, 64):
        merged = worklist_for(lay, hq, hkv, 128, tile_n, None, True)
        plain = worklist_for(lay, hq, hkv, 128, tile_n, None, False)
        waste, waste_plain = (1 - useful / _mma_stats(w)[1] for w in (merged, plain))
        flagged = float(((merged.chunks[:, 1] >> CHUNK_DROP_SHIFT) != 0).mean())
        print(f"W1 64x64 causal={causal} density={density} 128x{tile_n}: tiles {merged.num_tiles} "
              f"(unmerged {plain.num_tiles}), wasted MMA {waste:.3f} (unmerged {waste_plain:.3f}), "
              f"chunks with drop bits {flagged:.2f}")
        assert merged.num_tiles == n_tiles
        assert waste < bound[density, tile_n] and waste < waste_plain - 0.02


@pytest.mark.parametrize("density", [0.5, 0.1])
def test_variable_spans_cut_at_windows(density):
    """FlashInfer-style spans from {64, 128, 192} (per KV head, rows and columns): rows that cross a 128-token
    window are cut at its edges where that computes less, so the tiles are full (128 rows) at density 0.5; the
    pairs stay exact and the MMA work never grows against keeping the rows whole."""
    rng = np.random.default_rng(7)
    hq, hkv = 4, 2
    sizes = np.array([64, 128, 192] * 5 + [128])  # 2048 tokens
    rs, cs = (np.stack([rng.permutation(sizes) for _ in range(hkv)]) for _ in range(2))
    keep = rng.random((hkv, sizes.size, sizes.size)) < density
    lay = L.from_flashinfer(keep, rs, cs)
    merged = worklist_for(lay, hq, hkv, 128, 128, None, True)
    check_exact(merged, lay, hq, hkv)
    cu = lay.cu_seqlens_q
    whole = build_worklist(lay.rows(), cu, cu, num_heads_q=hq, num_heads_kv=hkv, head_mode=lay.head_mode, tile_m=128,
                           tile_n=128, num_layout_heads=lay.num_heads, merge=band_mask(lay.mask), drop_bits=False)
    area, area_whole = _mma_stats(merged)[1], _mma_stats(whole)[1]
    print(f"variable spans density {density}: tiles {merged.num_tiles} (whole rows, exact pairs only "
          f"{whole.num_tiles}), MMA area {area / area_whole:.3f} of it")
    assert area <= area_whole
    if density == 0.5:
        assert (merged.tiles[:, TILE_Q_LEN] == 128).all() and area < area_whole


def test_key_runs_merge_and_lone_blocks_stay_narrow():
    # one sequence of 64 queries, 640 keys, 64-blocks; the row keeps key blocks {0, 1, 2, 4, 6, 7} (full)
    cu_q, cu_k = _cu([64]), _cu([640])
    mask = np.zeros((1, 1, 1, 10), dtype=bool)
    mask[0, 0, 0, [0, 1, 2, 4, 6, 7]] = True
    lay = L.from_block_mask(mask, cu_q, cu_k, block_q=64, block_k=64)
    wl = worklist_for(lay, 1, 1, 128, 128, None, True)
    assert wl.tiles[:, [TILE_N_FULL, TILE_N_PARTIAL]].tolist() == [[4, 0]]
    assert wl.chunks.tolist() == [[0, 128], [128, 64], [256, 64], [384, 128]]
    plain = worklist_for(lay, 1, 1, 128, 128, None, False)
    assert plain.chunks.shape[0] == 6


def _crossed(block: int) -> tuple[np.ndarray, L.BlockSparseLayout]:
    """One sequence of two ``block``-token blocks, non-causal, crossed: block 0 keeps key block 1 only, block 1 key
    block 0 only."""
    cu = _cu([2 * block])
    mask = np.zeros((1, 1, 2, 2), dtype=bool)
    mask[0, 0, 0, 1] = mask[0, 0, 1, 0] = True
    return cu, L.from_block_mask(mask, cu, cu, block_q=block, block_k=block)


def test_pairs_fall_back_where_not_exact():
    # four 32-query blocks, non-causal: block 0 keeps key block 1, block 1 keeps key block 0 -> the union would add
    # an unmasked pair for each and 32-row blocks have no row-half bits, so they stay in separate tiles; with causal
    # the same pattern is exact
    cu, lay = _crossed(32)
    wl = worklist_for(lay, 1, 1, 128, 128, None, True)
    assert sorted(wl.tiles[:, TILE_Q_LEN].tolist()) == [32, 32]
    assert not (wl.chunks[:, 1] >> CHUNK_DROP_SHIFT).any()
    check_exact(wl, lay, 1, 1)
    causal = G.causal(cu, cu, block_q=32, block_k=32)
    wl = worklist_for(causal, 1, 1, 128, 128, None, True)
    assert wl.tiles[:, TILE_Q_LEN].tolist() == [64] and wl.chunks.tolist() == [[0, 64]]
    check_exact(wl, causal, 1, 1)


def test_half_pairs_carry_row_half_drop_bits():
    # two 64-query blocks, non-causal, crossed (block 0 keeps key block 1, block 1 keeps key block 0): one 128-row
    # tile and one 128-key partial chunk; its quarter (rows 0-63, keys 0-63) and (rows 64-127, keys 64-127) are
    # dropped. With 64-key chunks (the portable kernel): two chunks, each dropping one row half
    cu, lay = _crossed(64)
    wl = worklist_for(lay, 1, 1, 128, 128, None, True)
    assert wl.tiles[:, [TILE_Q_LEN, TILE_N_FULL, TILE_N_PARTIAL]].tolist() == [[128, 0, 1]]
    drop = CHUNK_DROP_LO | CHUNK_DROP_HI << CHUNK_DROP_KEY_HALF
    assert wl.chunks.tolist() == [[0, 128 | drop << CHUNK_DROP_SHIFT]]
    check_exact(wl, lay, 1, 1)
    wl = worklist_for(lay, 1, 1, 128, 64, None, True)
    assert wl.tiles[:, [TILE_Q_LEN, TILE_N_FULL, TILE_N_PARTIAL]].tolist() == [[128, 0, 2]]
    lo, hi = (b | b << CHUNK_DROP_KEY_HALF for b in (CHUNK_DROP_LO, CHUNK_DROP_HI))
    assert wl.chunks.tolist() == [[0, 64 | lo << CHUNK_DROP_SHIFT], [64, 64 | hi << CHUNK_DROP_SHIFT]]
    check_exact(wl, lay, 1, 1)
    # both keep key block 0, only block 1 keeps key block 1: one partial chunk dropping (rows 0-63, keys 64-127)
    mask = np.array([[[[True, False], [True, True]]]])
    lay = L.from_block_mask(mask, cu, cu, block_q=64, block_k=64)
    wl = worklist_for(lay, 1, 1, 128, 128, None, True)
    assert wl.tiles[:, [TILE_Q_LEN, TILE_N_FULL, TILE_N_PARTIAL]].tolist() == [[128, 0, 1]]
    assert wl.chunks.tolist() == [[0, 128 | CHUNK_DROP_LO << CHUNK_DROP_KEY_HALF << CHUNK_DROP_SHIFT]]
    check_exact(wl, lay, 1, 1)
    # drop_bits=False: exact pairs only (these two rows stay apart)
    exact = build_worklist(lay.rows(), cu, cu, num_heads_q=1, num_heads_kv=1, head_mode=lay.head_mode, tile_m=128,
                           tile_n=128, merge=band_mask(lay.mask), drop_bits=False)
    assert sorted(exact.tiles[:, TILE_Q_LEN].tolist()) == [64, 64]
    assert not (exact.chunks[:, 1] >> CHUNK_DROP_SHIFT).any()
    check_exact(exact, lay, 1, 1)
    # the unpaired work list (pooling's twin, the backward) never carries drop bits
    assert not (worklist_for(lay, 1, 1, 128, 128, None, False).chunks[:, 1] >> CHUNK_DROP_SHIFT).any()


def test_full_blocks_the_mask_would_cut_are_never_masked():
    # a layout may call a block full although the causal mask would cut it (row 0 keeps key blocks 0 and 1 full):
    # such a block never joins a partial chunk (the kernel would mask it), so rows 0 and 1 do not pair; row 0's
    # full blocks make one full chunk, row 1's full block 0 (all allowed) joins its partial block 1
    cu = _cu([128])
    i32 = np.int32
    rows = L.RowSpans(head=np.zeros(2, i32), batch=np.zeros(2, i32), q_start=np.array([0, 64], i32),
                      q_len=np.array([64, 64], i32), ent_ptr=np.array([0, 2, 4], np.int64),
                      n_full=np.array([2, 1], i32), k_start=np.array([0, 64, 0, 64], i32),
                      k_len=np.full(4, 64, i32))
    lay = L.from_row_spans(rows, cu, cu, 1, block_q=64, block_k=64, causal=True)
    wl = worklist_for(lay, 1, 1, 128, 128, None, True)
    check_exact(wl, lay, 1, 1)
    assert sorted(wl.tiles[:, TILE_Q_LEN].tolist()) == [64, 64]
    t = sorted(wl.tiles[:, 2:7].tolist())
    assert [(qs, nf, npart) for qs, _, _, nf, npart in t] == [(0, 1, 0), (64, 0, 1)]
    assert wl.chunks.tolist() == [[0, 128], [0, 128]]


def test_band_mask_of_layouts():
    def fields(b: BandMask) -> tuple:
        return b.window_left, b.window_right, b.num_sink_tokens, b.opaque, b.doc_ids_q is not None

    assert fields(band_mask(ElementMask(causal=True))) == (-1, 0, 0, False, False)
    assert fields(band_mask(ElementMask(window_left=5, window_right=9, num_sink_tokens=3))) == (5, 9, 3, False, False)
    doc = np.zeros(4, np.int32)
    assert fields(band_mask(ElementMask(doc_ids_q=doc, doc_ids_k=doc))) == (-1, -1, 0, False, True)
    tok = np.ones((1, 4, 1), bool)
    assert band_mask(ElementMask(token_mask=tok, token_block_k=64)).opaque


def test_documents_decide_where_spans_lie_in_one_document():
    # rows [0, 2) and [2, 4) of docs (0 0 | 1 1); keys of docs (0 0 | 1 1 | 1 1 | 2 2)
    b = BandMask(doc_ids_q=np.array([0, 0, 1, 1]), doc_ids_k=np.array([0, 0, 1, 1, 1, 1, 2, 2]))
    qs, ql = np.array([0, 2, 0, 2, 1]), np.array([2, 2, 2, 2, 2])
    ks, kl = np.array([0, 2, 2, 4, 0]), np.array([2, 4, 2, 4, 2])
    all_, none = b.classify(qs, ql, ks, kl, np.zeros(5, np.int64), 0, 0)
    assert all_.tolist() == [True, True, False, False, False]
    assert none.tolist() == [False, False, True, False, False]


class _FakeBuffer:
    """Stands in for runtime.memory.DeviceBuffer on the CPU: keeps the host array."""

    def __init__(self, array: np.ndarray | None = None):
        self.array, self.ptr = array, 0x1000

    @classmethod
    def from_host(cls, ordinal: int, array: np.ndarray) -> _FakeBuffer:
        return cls(np.array(array))

    @classmethod
    def zeros(cls, ordinal: int, nbytes: int, stream=None) -> _FakeBuffer:
        return cls(np.zeros(nbytes, np.uint8))


def test_host_plans_merge_and_pooling_gets_an_unmerged_twin(monkeypatch):
    schedule = importlib.import_module("varblock.plan.schedule")  # (varblock.plan is also the function's name)
    host = importlib.import_module("varblock.plan.host")

    monkeypatch.setattr(host, "DeviceBuffer", _FakeBuffer)
    monkeypatch.setattr(importlib.import_module("varblock.plan.core"), "DeviceBuffer", _FakeBuffer)
    monkeypatch.setattr(schedule, "choose_schedule", lambda p, b, s: setattr(p, "scheduler", s))
    cu = _cu([300, 64, 129])
    lay = G.causal(cu, cu, block_q=64, block_k=64, num_heads=2, head_mode="per_kv_head")
    kw = dict(num_heads_q=8, num_heads_kv=2, head_dim=128, ordinal=0, arch="sm90", family="attention_fwd_sm90",
              declined={}, tile_m=128, tile_n=128, pack_gqa=False, dense=False)
    merged = host.build_host_plan(lay, cu, cu, **kw)
    assert merged.worklist.merged and merged.num_tiles == 8 * (3 + 1 + 2)
    np.testing.assert_array_equal(merged.buffers["tiles"].array, merged.worklist.tiles)
    twin = host.unmerged_plan(merged)
    assert twin is host.unmerged_plan(merged) and host.unmerged_plan(twin) is twin
    assert not twin.worklist.merged and (twin.family, twin.tile_m, twin.tile_n) == (merged.family, 128, 128)
    plain = worklist_for(lay, 8, 2, 128, 128, False, merge=False)
    np.testing.assert_array_equal(twin.worklist.tiles, plain.tiles)
    np.testing.assert_array_equal(twin.worklist.chunks, plain.chunks)
    assert not host.build_host_plan(lay, cu, cu, **kw, merge=False).worklist.merged


def test_bad_merge_arguments():
    cu = _cu([128])
    lay = G.causal(cu, cu, block_q=64, block_k=64)
    kw = dict(num_heads_q=1, num_heads_kv=1, head_mode=lay.head_mode, tile_m=128, tile_n=128)
    with pytest.raises(TypeError, match="merge"):
        build_worklist(lay.rows(), cu, cu, merge=True, **kw)
    with pytest.raises(ValueError, match="doc_ids_k"):
        build_worklist(lay.rows(), cu, cu, merge=BandMask(doc_ids_q=np.zeros(128), doc_ids_k=np.zeros(5)), **kw)
