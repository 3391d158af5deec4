"""float64 references vs the plain dense masked softmax built from the token-level expansion of the same layout."""

from __future__ import annotations

import numpy as np
import pytest
from conftest_layout import cdiv, cu_of, dense_attention, layout_head_of, layouts
from hypothesis import given, settings
from hypothesis import strategies as st

import varblock.layout as vl
import varblock.reference as ref

TOL = dict(rtol=1e-12, atol=1e-12)


def inputs(lay, Hq, Hkv, D=8, Dv=None, seed=0):
    rng = np.random.default_rng(seed)
    Dv = Dv or D
    return (rng.standard_normal((lay.total_q, Hq, D)), rng.standard_normal((lay.total_k, Hkv, D)),
            rng.standard_normal((lay.total_k, Hkv, Dv)))


def dense_all(lay, q, k, v, scale):
    """Per sequence / query head dense masked softmax: out, lse, and the probabilities."""
    Hq, Hkv = q.shape[1], k.shape[1]
    out = np.zeros((q.shape[0], Hq, v.shape[2]))
    lse = np.full((Hq, q.shape[0]), -np.inf)
    probs = {}
    cq, ck = lay.cu_seqlens_q, lay.cu_seqlens_k
    for b in range(lay.batch_size):
        for hq in range(Hq):
            hl = layout_head_of(lay, hq, Hq, Hkv)
            kv = hq // (Hq // Hkv)
            allowed = lay.token_mask(b, hl)
            sq, sk = slice(cq[b], cq[b + 1]), slice(ck[b], ck[b + 1])
            o, l_, p = dense_attention(q[sq, hq], k[sk, kv], v[sk, kv], allowed, scale)
            out[sq, hq], lse[hq, sq], probs[b, hq] = o, l_, p
    return out, lse, probs


@settings(max_examples=60, deadline=None)
@given(layouts(), st.sampled_from([None, 0.3]), st.sampled_from([4, 8]), st.integers(0, 2**31))
def test_forward_matches_dense(arg, scale, Dv, seed):
    lay, Hq, Hkv = arg
    q, k, v = inputs(lay, Hq, Hkv, D=8, Dv=Dv, seed=seed)
    out, lse = ref.attention_forward(q, k, v, lay, softmax_scale=scale)
    s = scale if scale is not None else 1 / np.sqrt(8)
    dout, dlse, _ = dense_all(lay, q, k, v, s)
    assert out.shape == (lay.total_q, Hq, Dv) and lse.shape == (Hq, lay.total_q)
    np.testing.assert_allclose(out, dout, **TOL)
    assert np.array_equal(np.isneginf(lse), np.isneginf(dlse))
    np.testing.assert_allclose(np.where(np.isfinite(lse), lse, 0), np.where(np.isfinite(dlse), dlse, 0), **TOL)
    empty = np.isneginf(lse)
    assert (out.transpose(1, 0, 2)[empty] == 0).all()  # empty rows: O = 0, LSE = -inf


def dense_grads(lay, q, k, v, dout, scale):
    out, lse, probs = dense_all(lay, q, k, v, scale)
    Hq, Hkv = q.shape[1], k.shape[1]
    dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
    cq, ck = lay.cu_seqlens_q, lay.cu_seqlens_k
    for b in range(lay.batch_size):
        sq, sk = slice(cq[b], cq[b + 1]), slice(ck[b], ck[b + 1])
        for hq in range(Hq):
            kv = hq // (Hq // Hkv)
            p = probs[b, hq]
            do = dout[sq, hq]
            dv[sk, kv] += p.T @ do
            dp = do @ v[sk, kv].T
            ds = p * (dp - (do * out[sq, hq]).sum(axis=1, keepdims=True))
            dq[sq, hq] = scale * ds @ k[sk, kv]
            dk[sk, kv] += scale * ds.T @ q[sq, hq]
    return out, lse, dq, dk, dv


@settings(max_examples=50, deadline=None)
@given(layouts(), st.integers(0, 2**31))
def test_backward_matches_dense(arg, seed):
    lay, Hq, Hkv = arg
    q, k, v = inputs(lay, Hq, Hkv, D=4, Dv=6, seed=seed)
    dout = np.random.default_rng(seed + 1).standard_normal((lay.total_q, Hq, 6))
    scale = 0.7
    out, lse = ref.attention_forward(q, k, v, lay, softmax_scale=scale)
    dq, dk, dv = ref.attention_backward(dout, q, k, v, out, lse, lay, softmax_scale=scale)
    _, _, ddq, ddk, ddv = dense_grads(lay, q, k, v, dout, scale)
    np.testing.assert_allclose(dq, ddq, **TOL)
    np.testing.assert_allclose(dk, ddk, **TOL)
    np.testing.assert_allclose(dv, ddv, **TOL)


def test_backward_formula_against_finite_differences():
    """The dense gradient formula itself (used above as the oracle) against central differences."""
    cu_q, cu_k = cu_of([5, 0, 3]), cu_of([7, 2, 3])
    lay = vl.from_block_mask(np.ones((3, 1, 1, 1), bool), cu_q, cu_k, block_q=16, block_k=16, window=(3, 1),
                             padding="ignore")
    q, k, v = inputs(lay, 2, 1, D=3, seed=5)
    dout = np.random.default_rng(6).standard_normal((lay.total_q, 2, 3))
    scale = 0.9
    _, _, dq, dk, dv = dense_grads(lay, q, k, v, dout, scale)

    def loss(q_, k_, v_):
        return float((dense_all(lay, q_, k_, v_, scale)[0] * dout).sum())

    eps = 1e-6
    for x, g in ((q, dq), (k, dk), (v, dv)):
        num = np.zeros_like(x)
        for idx in np.ndindex(x.shape):  # tiny tensors: a loop per element is fine in a test
            xp, xm = x.copy(), x.copy()
            xp[idx] += eps
            xm[idx] -= eps
            args = [xp if a is x else a for a in (q, k, v)]
            argm = [xm if a is x else a for a in (q, k, v)]
            num[idx] = (loss(*args) - loss(*argm)) / (2 * eps)
        np.testing.assert_allclose(g, num, rtol=1e-6, atol=1e-7)
    # and the reference agrees
    out, lse = ref.attention_forward(q, k, v, lay, softmax_scale=scale)
    rq, rk, rv = ref.attention_backward(dout, q, k, v, out, lse, lay, softmax_scale=scale)
    np.testing.assert_allclose(rq, dq, **TOL)
    np.testing.assert_allclose(rk, dk, **TOL)
    np.testing.assert_allclose(rv, dv, **TOL)


@settings(max_examples=40, deadline=None)
@given(layouts(), st.sampled_from([None, 16, 32]), st.integers(0, 2**31))
def test_pooling_1d_matches_dense(arg, bk, seed):
    lay, Hq, Hkv = arg
    q, k, v = inputs(lay, Hq, Hkv, seed=seed)
    pool = ref.attention_pooling_1d(q, k, lay, block_k=bk)
    bk = bk or lay.block_k
    _, _, probs = dense_all(lay, q, k, v, 1 / np.sqrt(8))
    nb = cdiv(lay.seqlens_k, bk)
    assert pool.shape == (Hq, lay.total_q, int(nb.max()) if lay.batch_size else 0)
    want = np.zeros_like(pool)
    cq = lay.cu_seqlens_q
    for (b, hq), p in probs.items():
        for j in range(int(nb[b])):  # per key block
            cols = p[:, j * bk:(j + 1) * bk]
            if cols.shape[0]:
                want[hq, cq[b]:cq[b + 1], j] = cols.max(axis=1)
    np.testing.assert_allclose(pool, want, **TOL)


@settings(max_examples=40, deadline=None)
@given(layouts(), st.integers(0, 2**31))
def test_pooling_2d_matches_dense(arg, seed):
    lay, Hq, Hkv = arg
    q, k, v = inputs(lay, Hq, Hkv, seed=seed)
    pool = ref.attention_pooling_2d(q, k, lay)
    bq, bk = lay.block_q, lay.block_k
    _, _, probs = dense_all(lay, q, k, v, 1 / np.sqrt(8))
    M, N = cdiv(lay.seqlens_q, bq), cdiv(lay.seqlens_k, bk)
    B = lay.batch_size
    want = np.zeros((B, Hq, int(M.max()), int(N.max())))
    for (b, hq), p in probs.items():
        for m in range(int(M[b])):
            for n in range(int(N[b])):
                want[b, hq, m, n] = p[m * bq:(m + 1) * bq, n * bk:(n + 1) * bk].max()
    s = want.sum(axis=3, keepdims=True)
    want = np.where(s > 0, want / np.where(s > 0, s, 1), 0)
    np.testing.assert_allclose(pool, want, **TOL)
    rows = pool.sum(axis=3)
    assert np.allclose(rows[rows > 0], 1.0)


def test_pooling_matches_seer_definition_on_dense_causal():
    """Dense causal attention: 1D pool is the per-block max of the softmax row (SeerAttention's max_pool over the
    probabilities), 2D pool is the block max normalised per block row."""
    cu = cu_of([37])
    lay = vl.causal(cu, block_q=16, block_k=16)
    q, k, v = inputs(lay, 1, 1, seed=3)
    s = q[:, 0] @ k[:, 0].T / np.sqrt(8)
    s = np.where(np.tril(np.ones((37, 37), bool)), s, -np.inf)
    p = np.exp(s - s.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    pad = np.pad(p, ((0, 11), (0, 11)))
    p1 = pad.reshape(48, 3, 16).max(axis=2)[:37]
    np.testing.assert_allclose(ref.attention_pooling_1d(q, k, lay)[0], p1, **TOL)
    p2 = pad.reshape(3, 16, 3, 16).max(axis=(1, 3))
    p2 /= p2.sum(1, keepdims=True)
    np.testing.assert_allclose(ref.attention_pooling_2d(q, k, lay)[0, 0], p2, **TOL)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(st.sampled_from([0, 1, 3, 113]), st.integers(0, 80)), min_size=1, max_size=4),
       st.sampled_from([16, 32]), st.integers(1, 2), st.sampled_from([1, 4]), st.integers(0, 2**31))
def test_decode_matches_dense(lens_k, bk, Hkv, ratio, seed):
    B = len(lens_k)
    cu_q, cu_k = np.arange(B + 1), cu_of(lens_k)
    nb = max(int(cdiv(lens_k, bk).max()), 1)
    rng = np.random.default_rng(seed)
    sel = rng.random((B, Hkv, 1, nb)) < 0.5  # per sequence, per KV head: which KV blocks the query reads
    lay = vl.from_block_mask(sel, cu_q, cu_k, block_q=16, block_k=bk, head_mode="per_kv_head", causal=True,
                             padding="ignore")
    Hq = Hkv * ratio
    q = rng.standard_normal((B, Hq, 8))
    k = rng.standard_normal((int(cu_k[-1]), Hkv, 8))
    v = rng.standard_normal((int(cu_k[-1]), Hkv, 8))
    out, lse = ref.decode(q, k, v, lay)
    for b in range(B):
        for hq in range(Hq):
            kv = hq // ratio
            allowed = np.repeat(sel[b, kv, 0], bk)[None, :lens_k[b]]
            o, l_, _ = dense_attention(q[b:b + 1, hq], k[cu_k[b]:cu_k[b + 1], kv], v[cu_k[b]:cu_k[b + 1], kv],
                                       allowed, 1 / np.sqrt(8))
            np.testing.assert_allclose(out[b, hq], o[0], **TOL)
            assert (np.isneginf(lse[hq, b]) and np.isneginf(l_[0])) or abs(lse[hq, b] - l_[0]) < 1e-12


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4), st.integers(0, 2**31))
def test_merge_states_recovers_full_attention(S, seed):
    """Split each row's keys into S disjoint parts, attend each part, merge: equals attending all keys."""
    rng = np.random.default_rng(seed)
    T, Tk, H, D = 7, 20, 2, 5
    q = rng.standard_normal((T, H, D))
    k = rng.standard_normal((Tk, H, D))
    v = rng.standard_normal((Tk, H, D))
    allowed = rng.random((H, T, Tk)) < 0.5
    allowed[:, 0] = False  # a row with nothing at all
    part = rng.integers(0, S, size=Tk)
    outs = np.full((S, T, H, D), np.nan)  # -inf partials may carry garbage
    lses = np.full((S, H, T), -np.inf)
    full_o, full_l = np.zeros((T, H, D)), np.zeros((H, T))
    for h in range(H):
        full_o[:, h], full_l[h], _ = dense_attention(q[:, h], k[:, h], v[:, h], allowed[h], 0.5)
        for s in range(S):
            o, l_, _ = dense_attention(q[:, h], k[:, h], v[:, h], allowed[h] & (part == s)[None], 0.5)
            outs[s, :, h] = np.where(np.isfinite(l_)[:, None], o, np.nan)
            lses[s, h] = l_
    out, lse = ref.merge_states(outs, lses)
    np.testing.assert_allclose(out, full_o, **TOL)
    assert np.array_equal(np.isneginf(lse), np.isneginf(full_l))
    np.testing.assert_allclose(np.where(np.isfinite(lse), lse, 0), np.where(np.isfinite(full_l), full_l, 0), **TOL)
    assert (out[0] == 0).all() and np.isneginf(lse[:, 0]).all()


def test_merge_states_edge_cases():
    out, lse = ref.merge_states(np.zeros((0, 3, 1, 2)), np.zeros((0, 1, 3)))
    assert (out == 0).all() and np.isneginf(lse).all()
    o = np.array([[[[1.0, 2.0]]], [[[3.0, 4.0]]]])
    out, lse = ref.merge_states(o, np.array([[[0.0]], [[-np.inf]]]))
    assert out.tolist() == [[[1.0, 2.0]]] and lse.tolist() == [[0.0]]
    out, lse = ref.merge_states(o, np.log(np.array([[[1.0]], [[3.0]]])))
    np.testing.assert_allclose(out[0, 0], [2.5, 3.5], **TOL)
    np.testing.assert_allclose(lse, [[np.log(4.0)]], **TOL)


def test_reference_on_variable_block_layout():
    """FlashInfer-style variable spans (a layout the kernels consume without any token gather)."""
    m = np.array([[[1, 0, 1], [0, 1, 1]]], bool)
    lay = vl.from_flashinfer(m, [[13, 20]], [[5, 11, 17]], causal=True)
    q, k, v = inputs(lay, 2, 1, seed=9)
    out, lse = ref.attention_forward(q, k, v, lay)
    dout, dlse, _ = dense_all(lay, q, k, v, 1 / np.sqrt(8))
    np.testing.assert_allclose(out, dout, **TOL)
    with pytest.raises(ValueError):
        ref.attention_pooling_1d(q, k, lay)
    assert ref.attention_pooling_1d(q, k, lay, block_k=11).shape == (2, 33, 3)


# ------------------------------------------------------------------------------------------------ attention sinks


def sink_rule(lq, lk, *, sinks, wl, wr=-1, causal=False):
    """Brute-force token rule (StreamingLLM / FlexAttention): key j is visible to query i iff (j < sinks or
    j >= i + off - wl) and j <= i + off + wr (and causal where asked); bool [lq, lk]."""
    i = np.arange(lq)[:, None]
    j = np.arange(lk)[None, :]
    off = lk - lq
    ok = (j < sinks) | (j >= i + off - wl) if wl >= 0 else np.ones((lq, lk), bool)
    if wr >= 0:
        ok = ok & (j <= i + off + wr)
    if causal:
        ok = ok & (j <= i + off)
    return ok


def brute_block_codes(allowed, bq, bk):
    """2 where every pair of a block is visible, 1 where some are, 0 where none."""
    lq, lk = allowed.shape
    out = np.zeros((int(cdiv(lq, bq)), int(cdiv(lk, bk))), np.int8)
    for m in range(out.shape[0]):
        for n in range(out.shape[1]):
            sub = allowed[m * bq:(m + 1) * bq, n * bk:(n + 1) * bk]
            out[m, n] = 2 if sub.all() else int(sub.any())
    return out


SINK_LENS = ([300, 257, 1, 64], [300, 400, 5, 64])  # (len_q, len_k) per sequence: square and len_k > len_q


@pytest.mark.parametrize("sinks", [1, 4, 64, 100])
@pytest.mark.parametrize("bq,bk", [(64, 64), (32, 48)])
@pytest.mark.parametrize("wl,wr,causal", [(32, -1, True), (32, 0, False), (40, 16, False), (32, -1, False)])
def test_sinks_layout_is_the_token_rule(sinks, bq, bk, wl, wr, causal):
    """attention_sinks: block codes and the token expansion are exactly the token rule, whether or not the block
    size divides the sink count and the window (issue 8.3: sink keys stay visible when a sink block crosses the
    diagonal)."""
    lens_q, lens_k = SINK_LENS
    cu_q, cu_k = cu_of(lens_q), cu_of(lens_k)
    lay = vl.attention_sinks(cu_q, cu_k, num_sink_tokens=sinks, window_left=wl, window_right=wr, causal=causal,
                             block_q=bq, block_k=bk, num_heads=2)
    assert lay.mask.num_sink_tokens == sinks
    total = 0
    for b, (lq, lk) in enumerate(zip(lens_q, lens_k)):
        want = sink_rule(lq, lk, sinks=sinks, wl=wl, wr=wr, causal=causal)
        total += int(want.sum())
        for h in range(2):
            assert np.array_equal(lay.token_mask(b, h), want), (b, h)
            assert np.array_equal(lay.block_codes(b, h), brute_block_codes(want, bq, bk)), (b, h)
    assert lay.num_pairs() == 2 * total


@pytest.mark.parametrize("sinks", [1, 4, 64, 100])
def test_sinks_reference_forward(sinks):
    """The float64 reference on a sinks layout equals dense masked softmax under the brute-force token rule."""
    lens_q, lens_k = SINK_LENS
    cu_q, cu_k = cu_of(lens_q), cu_of(lens_k)
    lay = vl.attention_sinks(cu_q, cu_k, num_sink_tokens=sinks, window_left=32, causal=True, block_q=64,
                             block_k=64, num_heads=1)
    q, k, v = inputs(lay, 4, 2, seed=sinks)
    out, lse = ref.attention_forward(q, k, v, lay)
    for b, (lq, lk) in enumerate(zip(lens_q, lens_k)):
        allowed = sink_rule(lq, lk, sinks=sinks, wl=32, causal=True)
        sq, sk = slice(cu_q[b], cu_q[b + 1]), slice(cu_k[b], cu_k[b + 1])
        for hq in range(4):
            o, l_, _ = dense_attention(q[sq, hq], k[sk, hq // 2], v[sk, hq // 2], allowed, 1 / np.sqrt(8))
            np.testing.assert_allclose(out[sq, hq], o, **TOL)
            np.testing.assert_allclose(lse[hq, sq], l_, **TOL)


def test_sink_blocks_is_shorthand_for_tokens():
    cu = cu_of([200, 77])
    a = vl.sliding_window(cu, cu, window_left=32, sink_blocks=2, block_q=32, block_k=32)
    b = vl.sliding_window(cu, cu, window_left=32, num_sink_tokens=64, block_q=32, block_k=32)
    c = vl.attention_sinks(cu, cu, sink_blocks=2, window_left=32, window_right=0, causal=False, block_q=32,
                           block_k=32)
    for b_ in range(2):
        assert np.array_equal(a.block_codes(b_, 0), b.block_codes(b_, 0))
        assert np.array_equal(a.token_mask(b_, 0), c.token_mask(b_, 0))
    assert a.mask.num_sink_tokens == b.mask.num_sink_tokens == 64
    with pytest.raises(ValueError, match="give one of them"):
        vl.sliding_window(cu, cu, window_left=32, sink_blocks=1, num_sink_tokens=3)
    with pytest.raises(ValueError, match="num_sink_tokens"):
        vl.attention_sinks(cu, cu, num_sink_tokens=-1, window_left=4)
    with pytest.raises(ValueError, match="num_sink_tokens"):
        vl.attention_sinks(cu, cu, window_left=4)
    with pytest.raises(ValueError, match="num_sink_tokens"):
        vl.ElementMask(window_left=4, num_sink_tokens=True).validated(np.array([0, 4]), np.array([0, 4]), 1)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 60), st.integers(0, 30), st.integers(-1, 12), st.integers(0, 12), st.integers(1, 20),
       st.integers(1, 20), st.integers(-10, 10))
def test_band_classify_and_count_with_sinks(qs, ks, lo_, hi_, ql, kl, off):
    """band_classify / band_count with sinks against enumeration of the rectangle's pairs."""
    from varblock.layout.mask import band_classify, band_count

    lo = None if lo_ < 0 else -lo_
    for sinks in (0, 1, ks + kl // 2, ks + kl + 3):
        i = np.arange(qs, qs + ql)[:, None]
        j = np.arange(ks, ks + kl)[None, :]
        d = j - i - off
        ok = (d <= hi_) & (np.ones_like(d, bool) if lo is None else (d >= lo) | (j < sinks))
        a, z = band_classify(np.array([qs]), np.array([ql]), np.array([ks]), np.array([kl]), np.array([off]), lo,
                             hi_, sinks=sinks)
        assert (bool(a[0]), bool(z[0])) == (bool(ok.all()), not ok.any())
        n = band_count(np.array([qs]), np.array([ql]), np.array([ks]), np.array([kl]), np.array([off]), lo, hi_,
                       sinks=sinks)
        assert int(n[0]) == int(ok.sum())
