"""A float64 model of the backward kernels (``varblock.bwd_worklist`` work list + the main kernel's per-tile, per-chunk
arithmetic and element-mask formulas, written out as the kernel evaluates them) against the float64 reference
``varblock.reference.attention_backward``, on the CPU. It checks the work list and the mask formulas, not the GPU
code generation: windows with sinks, causal with len_q != len_k, document and token masks, GQA groups per tile or
per query head, block sizes different from the tile."""

from __future__ import annotations

import numpy as np
import pytest

from varblock import layout as L
from varblock import reference
from varblock.bwd_worklist import build_bwd_worklist

_NEG_BIG = -(1 << 30)


def _cu(lens):
    return np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)


def _partial_mask(lay, b, hq, hpt_head_div, q_start, k_start, k_len, tile_m, tile_n, num_sink_tokens):
    """bool [tile_m, tile_n]: the kernel's partial-chunk mask (True = S stays), as in ``_attn_bwd_mma_impl``."""
    m = lay.mask
    cu_q, cu_k = lay.cu_seqlens_q.astype(np.int64), lay.cu_seqlens_k.astype(np.int64)
    len_q, len_k = cu_q[b + 1] - cu_q[b], cu_k[b + 1] - cu_k[b]
    wl = m.window_left
    wr = 0 if m.causal and m.window_right < 0 else (min(m.window_right, 0) if m.causal else m.window_right)
    r = np.arange(tile_m)[:, None]
    cl = np.arange(tile_n)[None, :]  # col0 = 0 in the model: every column is absolute within the tile
    a = q_start + r + (len_k - len_q)
    lo = a - wl - k_start if wl >= 0 else np.full_like(a, _NEG_BIG)
    hi = np.minimum(a + wr + 1 - k_start, k_len) if wr >= 0 else np.full_like(a, k_len)
    sink_hi = num_sink_tokens - k_start
    keep = ~((cl < lo) & (cl >= sink_hi)) & ~(cl >= hi)
    if m.doc_ids_q is not None:
        rows = np.minimum(q_start + np.arange(tile_m), len_q - 1)
        cols = np.minimum(k_start + np.arange(tile_n), len_k - 1)
        keep &= m.doc_ids_q[cu_q[b] + rows][:, None] == m.doc_ids_k[cu_k[b] + cols][None, :]
    if m.token_mask is not None:
        rows = np.minimum(q_start + np.arange(tile_m), len_q - 1)
        cols = np.minimum(k_start + np.arange(tile_n), len_k - 1)
        tm = np.asarray(m.token_mask)
        hm = 0 if tm.shape[0] == 1 else hq // hpt_head_div
        keep &= tm[hm, cu_q[b] + rows][:, cols // m.token_block_k]
    return keep


def model_backward(lay, q, k, v, dout, out, lse, *, tile_m, tile_n, heads_per_tile, num_sink_tokens=0,
                   chunk_order="ascending"):
    """dq, dk, dv computed the way the kernels do (float64); ``chunk_order``: the work list's walk (the default
    mode's "ascending", the deterministic mode's "descending")."""
    total_q, hq_n, d = q.shape
    hkv_n = k.shape[1]
    group = hq_n // hkv_n
    scale = 1.0 / np.sqrt(d)
    wl_ = build_bwd_worklist(lay.transposed(), lay.cu_seqlens_q, lay.cu_seqlens_k, num_heads_q=hq_n,
                             num_heads_kv=hkv_n, head_mode=lay.head_mode, num_layout_heads=lay.num_heads,
                             tile_m=tile_m, tile_n=tile_n, heads_per_tile=heads_per_tile, band=lay.mask.band,
                             num_sink_tokens=num_sink_tokens, chunk_order=chunk_order,
                             opaque_mask=lay.mask.doc_ids_q is not None or lay.mask.token_mask is not None)
    tok_div = {"per_q_head": 1, "per_kv_head": group, "broadcast": hq_n}[lay.head_mode]
    cu_q, cu_k = lay.cu_seqlens_q.astype(np.int64), lay.cu_seqlens_k.astype(np.int64)
    lse_log = np.where(np.isinf(lse), np.inf, lse)  # preprocess: -inf rows -> +inf (P = 0)
    dpsum = np.einsum("thd,thd->ht", dout, out)
    dq = np.zeros_like(q)
    dk_acc = np.zeros((k.shape[0], wl_.num_tile_heads, d))
    dv_acc = np.zeros_like(dk_acc)
    for b_, head, ks, kl, cb, nf, npart, nleft in wl_.tiles.astype(np.int64):
        hkv = head * heads_per_tile // group
        kt = cu_k[b_] + ks + np.arange(tile_n)
        kvalid = np.arange(tile_n) < kl
        kk = np.where(kvalid[:, None], k[np.minimum(kt, k.shape[0] - 1), hkv], 0.0)
        vv = np.where(kvalid[:, None], v[np.minimum(kt, k.shape[0] - 1), hkv], 0.0)
        dk_t = np.zeros((tile_n, d))
        dv_t = np.zeros((tile_n, d))
        for ci in range(nf + npart):
            qs, ql = (int(x) for x in wl_.chunks[cb + ci])
            partial = ci < nleft or ci >= nleft + nf
            qt = cu_q[b_] + qs + np.arange(tile_m)
            qvalid = np.arange(tile_m) < ql
            qi = np.minimum(qt, total_q - 1)
            for g in range(heads_per_tile):
                hq = head * heads_per_tile + g
                qq = np.where(qvalid[:, None], q[qi, hq], 0.0)
                do = np.where(qvalid[:, None], dout[qi, hq], 0.0)
                s = qq @ kk.T
                keep = _partial_mask(lay, b_, hq, tok_div, qs, ks, kl, tile_m, tile_n, num_sink_tokens) if partial \
                    else np.broadcast_to(np.arange(tile_n)[None, :] < kl, (tile_m, tile_n))
                s = np.where(keep, s, -np.inf)
                lrow = np.where(qvalid, lse_log[hq, qi], np.inf)
                p = np.exp(s * scale - lrow[:, None])
                ds = p * (do @ vv.T - np.where(qvalid, dpsum[hq, qi], 0.0)[:, None])
                dv_t += p.T @ do
                dk_t += ds.T @ qq
                np.add.at(dq, (qt[qvalid], hq), (ds @ kk)[qvalid] * scale)
        dk_acc[kt[kvalid], head] = dk_t[kvalid]
        dv_acc[kt[kvalid], head] = dv_t[kvalid]
    gs = wl_.num_tile_heads // hkv_n
    dk = scale * dk_acc.reshape(k.shape[0], hkv_n, gs, d).sum(axis=2)
    dv = dv_acc.reshape(k.shape[0], hkv_n, gs, d).sum(axis=2)
    return dq, dk, dv


def _check(lay, hq, hkv, d, *, tile_m, tile_n, hpt, seed, num_sink_tokens=0, chunk_order="ascending"):
    rng = np.random.default_rng(seed)
    tq, tk = int(lay.cu_seqlens_q[-1]), int(lay.cu_seqlens_k[-1])
    q, dout = rng.standard_normal((tq, hq, d)), rng.standard_normal((tq, hq, d))
    k, v = rng.standard_normal((tk, hkv, d)), rng.standard_normal((tk, hkv, d))
    out, lse = reference.attention_forward(q, k, v, lay)
    ref = reference.attention_backward(dout, q, k, v, out, lse, lay)
    got = model_backward(lay, q, k, v, dout, out, lse, tile_m=tile_m, tile_n=tile_n, heads_per_tile=hpt,
                         num_sink_tokens=num_sink_tokens, chunk_order=chunk_order)
    for name, g, r in zip(("dq", "dk", "dv"), got, ref):
        np.testing.assert_allclose(g, r, rtol=1e-9, atol=1e-9, err_msg=name)


@pytest.mark.parametrize("chunk_order", ["ascending", "descending"])
def test_window_with_sinks(chunk_order):
    cu = _cu([300, 1, 130])
    lay = L.sliding_window(cu, cu, window_left=50, window_right=0, num_sink_tokens=5, block_q=16, block_k=16,
                           num_heads=1)
    _check(lay, 4, 1, 8, tile_m=16, tile_n=32, hpt=1, seed=0, num_sink_tokens=5, chunk_order=chunk_order)
    _check(lay, 4, 1, 8, tile_m=16, tile_n=32, hpt=4, seed=1, num_sink_tokens=5, chunk_order=chunk_order)


def test_two_sided_window_seqlen_q_ne_k():
    lay = L.sliding_window(_cu([40, 100]), _cu([90, 60]), window_left=20, window_right=7, block_q=16, block_k=16,
                           num_heads=1)
    _check(lay, 2, 2, 8, tile_m=16, tile_n=16, hpt=1, seed=2)


@pytest.mark.parametrize("chunk_order", ["ascending", "descending"])
@pytest.mark.parametrize("causal", [False, True])
def test_document_and_random(causal, chunk_order):
    lens = [70, 33]
    cu = _cu(lens)
    rng = np.random.default_rng(4)
    doc = np.concatenate([np.repeat(np.arange(3), rng.multinomial(n, [0.3, 0.3, 0.4])) for n in lens]).astype(np.int32)
    lay = L.document(cu, cu, doc_ids_q=doc, causal=causal, num_heads=1, block_q=16, block_k=16)
    _check(lay, 2, 1, 8, tile_m=16, tile_n=32, hpt=2, seed=3, chunk_order=chunk_order)
    lay = L.random_blocks(cu, cu, density=0.5, num_heads=2, head_mode="per_q_head", causal=causal, seed=5,
                          block_q=16, block_k=16)
    _check(lay, 2, 1, 8, tile_m=8, tile_n=32, hpt=1, seed=6, chunk_order=chunk_order)


def test_token_mask():
    lens = [40, 17]
    cu = _cu(lens)
    rng = np.random.default_rng(8)
    m1d = rng.random((2, 1, 40, 3)) < 0.4
    lay = L.from_seer_1d(m1d, cu, cu, block_size=16, head_mode="per_kv_head")
    _check(lay, 2, 1, 8, tile_m=16, tile_n=16, hpt=2, seed=9)


@pytest.mark.parametrize("kind", ["causal", "causal_q_ne_k", "window_sinks", "document", "random", "dense"])
def test_64_blocks_key_groups(kind):
    """64x64 blocks on the 64x128 tile: adjacent 64-key columns grouped into one tile where exact (dense, causal,
    window with sinks; documents only where both keep a block full), the rest alone; dq, dk, dv as the reference."""
    lq = [300, 1, 0, 133, 64]
    lk = [350, 70, 5, 133, 64] if kind == "causal_q_ne_k" else lq
    cu, ck = _cu(lq), _cu(lk)
    sinks = 0
    if kind in ("causal", "causal_q_ne_k"):
        lay = L.causal(cu, ck, num_heads=1, block_q=64, block_k=64)
    elif kind == "dense":
        lay = L.dense(cu, ck, num_heads=1, block_q=64, block_k=64)
    elif kind == "window_sinks":
        sinks = 3
        lay = L.sliding_window(cu, ck, window_left=90, window_right=0, num_sink_tokens=sinks, block_q=64,
                               block_k=64, num_heads=1)
    elif kind == "document":
        rng = np.random.default_rng(6)
        doc = np.concatenate([np.repeat(np.arange(3), rng.multinomial(n, [0.2, 0.5, 0.3])) for n in lq])
        lay = L.document(cu, ck, doc_ids_q=doc.astype(np.int32), causal=True, num_heads=1, block_q=64, block_k=64)
    else:
        lay = L.random_blocks(cu, ck, density=0.5, num_heads=2, head_mode="per_kv_head", causal=True, seed=2,
                              block_q=64, block_k=64)
    hkv = 2 if kind == "random" else 1
    _check(lay, 2, hkv, 8, tile_m=64, tile_n=128, hpt=1, seed=11, num_sink_tokens=sinks)
    if kind in ("causal", "causal_q_ne_k", "dense", "window_sinks"):
        wl = build_bwd_worklist(lay.transposed(), cu, ck, num_heads_q=2, num_heads_kv=1, head_mode=lay.head_mode,
                                num_layout_heads=lay.num_heads, tile_m=64, tile_n=128, band=lay.mask.band,
                                num_sink_tokens=sinks, opaque_mask=False)
        assert (wl.tiles[:, 3] > 64).any(), "no 64-key columns were grouped"


@pytest.mark.parametrize("chunk_order", ["ascending", "descending"])
@pytest.mark.parametrize("kind", ["random_causal", "random_gqa_q_ne_k", "random_per_q_head", "causal"])
def test_64_key_tiles(kind, chunk_order):
    """The narrow 64 x 64 main variant's work list (tile_n = 64: one 64-key column per tile, no pairing) on 64x64
    blocks: random causal layouts with odd lengths, GQA groups per tile, len_q != len_k, per-query-head layouts."""
    lq = [300, 1, 0, 133, 64, 257]
    lk = [350, 70, 5, 133, 64, 200] if kind == "random_gqa_q_ne_k" else lq
    cu, ck = _cu(lq), _cu(lk)
    if kind == "causal":
        lay, hq, hkv, hpt = L.causal(cu, ck, num_heads=1, block_q=64, block_k=64), 2, 1, 1
    elif kind == "random_per_q_head":
        lay = L.random_blocks(cu, ck, density=0.5, num_heads=4, head_mode="per_q_head", causal=True, seed=3,
                              block_q=64, block_k=64)
        hq, hkv, hpt = 4, 2, 1
    else:
        lay = L.random_blocks(cu, ck, density=0.5, num_heads=2, head_mode="per_kv_head", causal=True, seed=2,
                              block_q=64, block_k=64)
        hq, hkv, hpt = (4, 2, 2) if kind == "random_gqa_q_ne_k" else (2, 2, 1)
    _check(lay, hq, hkv, 8, tile_m=64, tile_n=64, hpt=hpt, seed=12, chunk_order=chunk_order)
