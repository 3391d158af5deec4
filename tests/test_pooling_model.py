"""The algorithm of the attention pooling kernels (``kernels/attention_pool.py``), modelled in NumPy on the CPU and
checked against ``varblock.reference.attention_pooling_1d/2d`` to 1e-10 on random layouts: the qk kernel walks the
forward's work list (host ``build_worklist`` or dense ``dense_worklist``), takes per tile row and chunk
``exp(max_j S * scale - lse)`` (max of P through the max of S) and max-accumulates it at ``k_start // block_k`` (a
chunk never straddles two pooling blocks); the reduce kernels build the 2D map and GQA group pooling. Also the
op's argument rules (block sizes, output extents) on real host plans with the device stood in."""

from __future__ import annotations

import numpy as np
import pytest

from varblock import layout as L
from varblock import reference
from varblock.dense_worklist import dense_worklist
from varblock.layout.mask import ElementMask
from varblock.worklist import build_worklist


def _cu(lens) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)


def qk_model(q, k, lse, lay, tiles, chunks, g, block_k, max_nb, scale):
    """What the qk kernel writes: pool [Hq, total_q, max_nb] (zero-initialised)."""
    hq, hkv = q.shape[1], k.shape[1]
    hmap = lay.head_map(hq, hkv)
    cu_q, cu_k = lay.cu_seqlens_q.astype(np.int64), lay.cu_seqlens_k.astype(np.int64)
    pool = np.zeros((hq, q.shape[0], max_nb))
    masks: dict[tuple[int, int], np.ndarray] = {}
    for b_, head, qs, ql, cb, nf, npart, _nl in tiles.astype(np.int64):
        rows = [(qs + r // g, head * g + r % g) for r in range(ql * g)] if g > 1 else [(qs + r, head)
                                                                                        for r in range(ql)]
        for tq, h in rows:
            hl = int(hmap[h])
            if (b_, hl) not in masks:
                masks[b_, hl] = lay.token_mask(int(b_), hl)
            tok = cu_q[b_] + tq
            for c in range(cb, cb + nf + npart):
                ks, kl = chunks[c]
                s = k[cu_k[b_] + ks: cu_k[b_] + ks + kl, h // (hq // hkv)] @ q[tok, h] * scale
                s = np.where(masks[b_, hl][tq, ks:ks + kl], s, -np.inf)
                m = s.max()
                p = 0.0 if m == -np.inf or lse[h, tok] == -np.inf else np.exp(m - lse[h, tok])
                assert (ks + kl - 1) // block_k == ks // block_k, "a chunk straddles two pooling blocks"
                pool[h, tok, ks // block_k] = max(pool[h, tok, ks // block_k], p)
    return pool


def reduce_model(pool, cu_q, cu_k, group, block_q, block_k, mb):
    """What the reduce kernels write: (2D [B, Ho, mb, nb] row-normalised, 1D pooled over groups [Ho, T, nb])."""
    hq, total, nb = pool.shape
    g1 = pool.reshape(hq // group, group, total, nb).max(axis=1)
    B = cu_q.shape[0] - 1
    out = np.zeros((B, hq // group, mb, nb))
    for b in range(B):
        nbk = -(-int(cu_k[b + 1] - cu_k[b]) // block_k)
        for m in range(mb):
            t0, t1 = cu_q[b] + m * block_q, min(cu_q[b] + (m + 1) * block_q, cu_q[b + 1])
            if t1 > t0:
                row = g1[:, t0:t1, :nbk].max(axis=1)
                s = row.sum(axis=1, keepdims=True)
                out[b, :, m, :nbk] = np.where(s > 0, row / np.where(s > 0, s, 1.0), 0.0)
    return out, g1


@pytest.mark.parametrize("seed", range(12))
def test_work_list_walk_equals_reference(seed):
    rng = np.random.default_rng(seed)
    lens = rng.integers(0, 300, size=int(rng.integers(1, 4)))
    cu = _cu(lens)
    bs = int(rng.choice([32, 64]))
    hkv = int(rng.choice([1, 2]))
    hq = hkv * int(rng.choice([1, 2, 4]))
    mode = str(rng.choice(["per_q_head", "per_kv_head", "broadcast"]))
    h = {"per_q_head": hq, "per_kv_head": hkv, "broadcast": 1}[mode]
    causal = bool(rng.random() < 0.5)
    lay = L.random_blocks(cu, cu, density=float(rng.choice([0.3, 1.0])), num_heads=h, head_mode=mode,
                          causal=causal, block_q=bs, block_k=bs, seed=seed)
    d = 16
    q, k, v = (rng.standard_normal((int(cu[-1]), n, d)) for n in (hq, hkv, hkv))
    _, lse = reference.attention_forward(q, k, v, lay)
    g = hq // hkv if (mode != "per_q_head" and rng.random() < 0.5) else 1
    tm, tn = int(rng.choice([64, 128])), int(rng.choice([16, 32, 64]))
    wl = build_worklist(lay.rows(), cu, cu, num_heads_q=hq, num_heads_kv=hkv, head_mode=mode, tile_m=tm,
                        tile_n=tn, pack_gqa=g, num_layout_heads=h, longest_first=True)
    max_nb = int(np.max(-(-lens // bs), initial=0))
    pool = qk_model(q, k, lse, lay, wl.tiles, wl.chunks, g, bs, max_nb, d ** -0.5)
    np.testing.assert_allclose(pool, reference.attention_pooling_1d(q, k, lay), rtol=1e-10, atol=1e-15)
    mb = int(np.max(-(-lens // bs), initial=0))
    p2, _ = reduce_model(pool, cu, cu, 1, bs, bs, mb)
    np.testing.assert_allclose(p2, reference.attention_pooling_2d(q, k, lay), rtol=1e-10, atol=1e-15)
    if hq > hkv:  # group pooling: 1D max over the group, 2D from it
        g2, g1 = reduce_model(pool, cu, cu, hq // hkv, bs, bs, mb)
        r1 = reference.attention_pooling_1d(q, k, lay)
        np.testing.assert_allclose(g1, r1.reshape(hkv, hq // hkv, *r1.shape[1:]).max(axis=1), rtol=1e-10)
        assert np.allclose(g2.sum(axis=3)[g2.sum(axis=3) > 0], 1.0)


def test_dense_work_list_walk_equals_reference():
    """Dense causal plans (the prepare kernel's per-sequence chunk lists): pooling blocks a multiple of tile_n."""
    rng = np.random.default_rng(5)
    cu = _cu([130, 7, 64, 250])
    hq, hkv, d, tn = 4, 2, 16, 32
    lay = L.dense(cu, cu, block_q=64, block_k=64, num_heads=1, element_mask=ElementMask(causal=True))
    q, k, v = (rng.standard_normal((int(cu[-1]), n, d)) for n in (hq, hkv, hkv))
    _, lse = reference.attention_forward(q, k, v, lay)
    tiles, chunks = dense_worklist(cu, cu, num_tile_heads=hq, tile_m=64, tile_n=tn, window_right=0)
    pool = qk_model(q, k, lse, lay, tiles, chunks, 1, 64, 4, d ** -0.5)
    np.testing.assert_allclose(pool, reference.attention_pooling_1d(q, k, lay), rtol=1e-10, atol=1e-15)


def _plan_like(lay, tile_m=128, tile_n=64):
    """The members of a host Plan that the pooling op's argument rules read."""
    from types import SimpleNamespace

    return SimpleNamespace(layout=lay, on_device=False, tile_m=tile_m, tile_n=tile_n,
                           cu_seqlens_q=None if lay is None else lay.cu_seqlens_q,
                           cu_seqlens_k=None if lay is None else lay.cu_seqlens_k)


def test_block_size_rules_and_extents():
    from varblock.ops.attention_pooling import _blocks, _extents

    cu = _cu([300, 0, 65])
    lay = L.causal(cu, cu, block_q=64, block_k=64)
    p = _plan_like(lay)
    assert _blocks(p, None, None) == (64, 64)
    assert _blocks(p, 128, 192) == (128, 192)
    with pytest.raises(ValueError, match="block_k: 32 must be a multiple"):
        _blocks(p, None, 32)
    with pytest.raises(ValueError, match="block_q: expected a positive int"):
        _blocks(p, 0, None)
    mb, nb, seqs = _extents(p, 64, 128, None, None)
    assert (mb, nb, seqs) == (5, 3, [(0, 300, 3), (300, 0, 0), (300, 65, 1)])
    dense = _plan_like(None, 128, 64)
    assert _blocks(dense, None, None) == (128, 64)
    with pytest.raises(ValueError, match="multiple of the plan's key block / chunk alignment 64"):
        _blocks(dense, None, 96)
    var = _plan_like(L.from_flashinfer(np.ones((1, 2, 2), bool), np.array([[100, 200]]), np.array([[150, 150]])))
    with pytest.raises(ValueError, match="fixed block sizes"):
        _blocks(var, None, None)
