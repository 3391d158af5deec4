"""Importers and exporters: each agrees with the token-level mask its input describes; FA4 and FlexAttention round
trips are bit-exact. Inputs are built here independently (plain loops over blocks, fine in tests)."""

from __future__ import annotations

import numpy as np
from conftest_layout import (
    block,
    cdiv,
    cu_of,
    dense_from_ordered,
    elem_allowed,
    expand_blocks,
    ordered_from_dense,
    semantic,
    seqlens,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import varblock.layout as vl
from varblock.layout import ElementMask

# ------------------------------------------------------------------------------------------------ strategies


@st.composite
def batch(draw, cross=True, nonempty=False):
    lens_q = draw(seqlens)
    if nonempty and sum(lens_q) == 0:
        lens_q = lens_q + [5]
    lens_k = [draw(st.integers(0, 90)) for _ in lens_q] if (cross and draw(st.booleans())) else list(lens_q)
    return lens_q, lens_k


def rand_codes(rng, B, H, maxM, maxN, lens_q, lens_k, bq, bk, values=(0, 1, 2)):
    codes = rng.choice(np.array(values, dtype=np.int8), size=(B, H, max(maxM, 1), max(maxN, 1)))
    M, N = cdiv(lens_q, bq), cdiv(lens_k, bk)
    for b in range(B):
        codes[b, :, M[b]:, :] = 0
        codes[b, :, :, N[b]:] = 0
    return codes


def check_tokens(lay, codes, lens_q, lens_k, bq, bk, allowed_fn, head_of=lambda h: h):
    for b in range(len(lens_q)):
        lq, lk = lens_q[b], lens_k[b]
        allowed = allowed_fn(b, lq, lk)
        for h in range(lay.num_heads):
            want = semantic(expand_blocks(codes[b, head_of(h)], bq, bk, lq, lk), allowed)
            got = lay.token_mask(b, h)
            assert np.array_equal(got, want), (b, h)


def pad_row(kept, width, nk, pad):
    rest = [0] * nk if pad == "zeros" else [x for x in range(nk) if x not in kept]
    return (list(kept) + rest)[:width]


# ------------------------------------------------------------------------------------------------ dense block masks


@settings(max_examples=40, deadline=None)
@given(batch(), block, block, st.integers(1, 3), st.sampled_from(["packed", "local", "padded"]),
       st.booleans(), st.booleans(), st.integers(0, 2**31))
def test_from_block_mask_forms_agree_with_tokens(bt, bq, bk, H, form, as_bool, causal, seed):
    lens_q, lens_k = bt
    rng = np.random.default_rng(seed)
    B = len(lens_q)
    M, N = cdiv(lens_q, bq), cdiv(lens_k, bk)
    maxM, maxN = int(M.max()), int(N.max())
    codes = rand_codes(rng, B, H, maxM, maxN, lens_q, lens_k, bq, bk)
    if as_bool:
        codes = (codes > 0).astype(np.int8)  # kept blocks: token semantics = kept & element rule
    cu_q, cu_k = cu_of(lens_q), cu_of(lens_k)
    TM, TN = int(M.sum()), int(N.sum())
    cm, cn = np.r_[0, np.cumsum(M)], np.r_[0, np.cumsum(N)]
    if form == "padded":
        arr = codes
    else:
        arr = np.zeros((H, TM, TN if form == "packed" else max(maxN, 1)), dtype=np.int8)
        for b in range(B):
            for m in range(M[b]):
                col0 = cn[b] if form == "packed" else 0
                arr[:, cm[b] + m, col0:col0 + N[b]] = codes[b, :, m, :N[b]]
        if form == "local" and TN == maxN and TN != arr.shape[2]:
            arr = arr[:, :, :maxN]
    arr = arr > 0 if as_bool else arr
    lay = vl.from_block_mask(arr, cu_q, cu_k, block_q=bq, block_k=bk, causal=causal)
    allowed = lambda b, lq, lk: elem_allowed(lq, lk, causal=causal)
    check_tokens(lay, codes, lens_q, lens_k, bq, bk, allowed)
    if as_bool and causal:
        # classification is exact for a causal band: full iff every pair allowed, nothing dropped wrongly
        rs = lay.rows()
        ks, kl = rs.k_start, rs.k_len
        e_row = np.repeat(np.arange(rs.num_rows), np.diff(rs.ent_ptr))
        qe = rs.q_start[e_row] + rs.q_len[e_row] - 1
        off = (np.asarray(lens_k) - np.asarray(lens_q))[rs.batch[e_row]]
        all_allowed = ks + kl - 1 <= rs.q_start[e_row] + off
        assert np.array_equal(lay.entry_is_full(), all_allowed)
        assert (ks <= qe + off).all()


@settings(max_examples=25, deadline=None)
@given(batch(cross=False, nonempty=True), block, block, st.integers(0, 2**31), st.booleans())
def test_from_block_mask_with_documents_and_token_mask(bt, bq, bk, seed, use_tok):
    lens_q, _ = bt
    rng = np.random.default_rng(seed)
    cu = cu_of(lens_q)
    T = int(cu[-1])
    B = len(lens_q)
    M = cdiv(lens_q, bq)
    N = cdiv(lens_q, bk)
    docs = np.sort(rng.integers(0, 4, size=T)).astype(np.int32)
    kw = {"doc_ids_q": docs, "doc_ids_k": docs}
    tok = None
    if use_tok:
        nb = int(cdiv(lens_q, bk).max())
        tok = rng.random((2, T, max(nb, 1))) < 0.6
        kw.update(token_mask=tok, token_block_k=bk)
    em = ElementMask(causal=True, **kw)
    keep = rng.random((B, 2, max(int(M.max()), 1), max(int(N.max()), 1))) < 0.7
    lay = vl.from_block_mask(keep, cu, block_q=bq, block_k=bk, element_mask=em, padding="ignore")
    for b in range(B):
        lq = lens_q[b]
        sl = slice(cu[b], cu[b + 1])
        for h in range(2):
            allowed = elem_allowed(lq, lq, causal=True, doc_q=docs[sl], doc_k=docs[sl],
                                   tok=tok[h, sl] if use_tok else None, tbk=bk)
            want = expand_blocks(keep[b, h], bq, bk, lq, lq) & allowed
            assert np.array_equal(lay.token_mask(b, h), want)
    # every full entry is fully allowed (soundness of the classifier)
    rs = lay.rows()
    e_row = np.repeat(np.arange(rs.num_rows), np.diff(rs.ent_ptr))
    for e in np.flatnonzero(lay.entry_is_full())[:50]:
        r = e_row[e]
        b, h = rs.batch[r], rs.head[r]
        sub = lay.token_mask(b, h)[rs.q_start[r]:rs.q_start[r] + rs.q_len[r], rs.k_start[e]:rs.k_start[e] + rs.k_len[e]]
        assert sub.all()


# ------------------------------------------------------------------------------------------------ FA4


def fa4_varlen(codes, lens_q, lens_k, bq, bk, pad, uniform, with_full=True):
    B, H = codes.shape[:2]
    M, N = cdiv(lens_q, bq), cdiv(lens_k, bk)
    TM = int(M.sum())
    cm = np.r_[0, np.cumsum(M)]
    offs = np.r_[0, np.cumsum(M * N)]
    W = int(N.max()) if B else 0
    TN = TM * W if uniform else int(offs[-1])
    mc, fc = np.zeros((H, TM), np.int32), np.zeros((H, TM), np.int32)
    mi, fi = np.zeros((H, TN), np.int32), np.zeros((H, TN), np.int32)
    for b in range(B):
        for m in range(M[b]):
            g = cm[b] + m
            base, width = (g * W, W) if uniform else (offs[b] + m * N[b], N[b])
            for h in range(H):
                for val, cnt, idx in ((1, mc, mi), (2, fc, fi)):
                    kept = [n for n in range(N[b]) if codes[b, h, m, n] == val]
                    cnt[h, g] = len(kept)
                    idx[h, base:base + width] = pad_row(kept, width, width, pad)
    out = {"mask_block_cnt": mc, "mask_block_idx": mi, "cu_total_m_blocks": cm.astype(np.int32),
           "cu_block_idx_offsets": None if uniform else offs.astype(np.int32), "block_size": (bq, bk)}
    if with_full:
        out.update(full_block_cnt=fc, full_block_idx=fi)
    return out


@settings(max_examples=40, deadline=None)
@given(batch(), block, block, st.integers(1, 3), st.sampled_from(["zeros", "complement"]), st.booleans(),
       st.booleans(), st.booleans(), st.integers(0, 2**31))
def test_fa4_varlen_tokens_and_exact_round_trip(bt, bq, bk, H, pad, uniform, with_full, causal, seed):
    lens_q, lens_k = bt
    rng = np.random.default_rng(seed)
    B = len(lens_q)
    M, N = cdiv(lens_q, bq), cdiv(lens_k, bk)
    codes = rand_codes(rng, B, H, int(M.max()), int(N.max()), lens_q, lens_k, bq, bk,
                       values=(0, 1, 2) if with_full else (0, 1))
    bst = fa4_varlen(codes, lens_q, lens_k, bq, bk, pad, uniform, with_full)
    cu_q, cu_k = cu_of(lens_q), cu_of(lens_k)
    lay = vl.from_fa4(bst, cu_q, cu_k, causal=causal)
    assert lay.num_heads == H and lay.head_mode == ("broadcast" if H == 1 else "per_q_head")
    check_tokens(lay, codes, lens_q, lens_k, bq, bk, lambda b, lq, lk: elem_allowed(lq, lk, causal=causal))
    back = lay.to_fa4()
    for k in ("mask_block_cnt", "mask_block_idx", "full_block_cnt", "full_block_idx", "cu_total_m_blocks",
              "cu_block_idx_offsets"):
        a, b = bst.get(k), getattr(back, k)
        assert (a is None) == (b is None), k
        if a is not None:
            assert a.dtype == b.dtype == np.int32 and np.array_equal(a, b), k
    assert back.block_size == (bq, bk)
    # and the layout survives a trip through the exporter
    assert vl.from_fa4(back, cu_q, cu_k, causal=causal).equals(lay)


def fa4_batched(codes, bq, bk, nk, W, pad, Mg=None):
    B, H, maxM, _ = codes.shape
    Mg = Mg or maxM
    mc, fc = np.zeros((B, H, Mg), np.int32), np.zeros((B, H, Mg), np.int32)
    mi, fi = np.zeros((B, H, Mg, W), np.int32), np.zeros((B, H, Mg, W), np.int32)
    for b in range(B):
        for h in range(H):
            for m in range(Mg):
                for val, cnt, idx in ((1, mc, mi), (2, fc, fi)):
                    kept = [n for n in range(nk) if m < maxM and codes[b, h, m, n] == val]
                    cnt[b, h, m] = len(kept)
                    idx[b, h, m] = pad_row(kept, W, nk, pad)
    return mc, mi, fc, fi


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 3), st.integers(1, 3), st.sampled_from([1, 3, 16, 40, 113]), st.sampled_from([1, 17, 64, 113]),
       block, block, st.sampled_from(["zeros", "complement"]), st.booleans(), st.booleans(), st.booleans(),
       st.integers(0, 2**31))
def test_fa4_batched_round_trip(B, H, sq, sk, bq, bk, pad, bcast_b, bcast_h, compact, seed):
    rng = np.random.default_rng(seed)
    M, N = int(cdiv(sq, bq)), int(cdiv(sk, bk))
    Bp, Hp = (1 if bcast_b else B), (1 if bcast_h else H)
    codes = rand_codes(rng, Bp, Hp, M, N, [sq] * Bp, [sk] * Bp, bq, bk)
    maxcount = max(int((codes == 1).sum(-1).max()), int((codes == 2).sum(-1).max()), 1)
    W = maxcount if compact else N
    mc, mi, fc, fi = fa4_batched(codes, bq, bk, N, W, pad)
    bst = dict(mask_block_cnt=mc, mask_block_idx=mi, full_block_cnt=fc, full_block_idx=fi)
    lay = vl.from_fa4(bst, cu_of([sq] * B), cu_of([sk] * B), block_size=(bq, bk))
    assert lay.num_heads == Hp
    full_codes = np.broadcast_to(codes, (B, Hp) + codes.shape[2:])
    check_tokens(lay, full_codes, [sq] * B, [sk] * B, bq, bk, lambda b, lq, lk: np.ones((lq, lk), bool))
    back = lay.to_fa4()
    assert back.cu_total_m_blocks is None
    for a, b in ((mc, back.mask_block_cnt), (mi, back.mask_block_idx), (fc, back.full_block_cnt),
                 (fi, back.full_block_idx)):
        assert a.shape == b.shape and np.array_equal(a, b)
    # uniform batch without cu_seqlens: lengths from the grid / seqlen_*
    lay2 = vl.from_fa4(bst, block_size=(bq, bk), seqlen_q=sq, seqlen_k=sk)
    assert lay2.batch_size == Bp


def test_fa4_batched_padded_sequences():
    bq = bk = 16
    lens = [40, 17, 0]
    codes = np.zeros((3, 1, 3, 3), np.int8)
    codes[0, 0] = [[2, 0, 0], [2, 1, 0], [2, 2, 1]]
    codes[1, 0, :2, :2] = [[1, 0], [2, 1]]
    mc, mi, fc, fi = fa4_batched(codes, bq, bk, 3, 3, "zeros")
    bst = dict(mask_block_cnt=mc, mask_block_idx=mi, full_block_cnt=fc, full_block_idx=fi, block_size=(16, 16))
    lay = vl.from_fa4(bst, cu_of(lens), causal=True)
    check_tokens(lay, codes, lens, lens, bq, bk, lambda b, lq, lk: elem_allowed(lq, lk, causal=True))
    back = lay.to_fa4(varlen=False)
    assert np.array_equal(back.mask_block_idx, mi) and np.array_equal(back.full_block_cnt, fc)
    # the same layout as varlen-packed FA4 tensors
    v = lay.to_fa4(varlen=True)
    assert v.mask_block_cnt.shape == (1, 5) and v.cu_total_m_blocks.tolist() == [0, 3, 5, 5]
    assert vl.from_fa4(v, cu_of(lens), cu_of(lens), causal=True).equals(lay)


# ------------------------------------------------------------------------------------------------ FlexAttention


def flex_from_codes(codes):
    cnt, idx = ordered_from_dense(codes == 1)
    fcnt, fidx = ordered_from_dense(codes == 2)
    return dict(kv_num_blocks=cnt, kv_indices=idx, full_kv_num_blocks=fcnt, full_kv_indices=fidx)


def check_flex_transposed(out, codes):
    for pre, val in (("", 1), ("full_", 2)):
        dT = np.swapaxes(codes == val, -1, -2)
        cnt, idx = ordered_from_dense(dT)
        assert np.array_equal(out[pre + "q_num_blocks"], cnt) and np.array_equal(out[pre + "q_indices"], idx)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 3), st.integers(1, 3), st.sampled_from([1, 3, 16, 40, 113]), st.sampled_from([1, 17, 64, 113]),
       block, block, st.booleans(), st.booleans(), st.integers(0, 2**31))
def test_flex_per_batch_tokens_and_exact_round_trip(B, H, sq, sk, bq, bk, causal, bcast_b, seed):
    rng = np.random.default_rng(seed)
    M, N = int(cdiv(sq, bq)), int(cdiv(sk, bk))
    Bp = 1 if bcast_b else B
    codes = rand_codes(rng, Bp, H, M, N, [sq] * Bp, [sk] * Bp, bq, bk)
    bm = flex_from_codes(codes)
    bm.update(BLOCK_SIZE=(bq, bk), seq_lengths=(sq, sk))
    lay = vl.from_flex(bm, causal=causal) if Bp == B else vl.from_flex(bm, cu_of([sq] * B), cu_of([sk] * B),
                                                                       causal=causal)
    full_codes = np.broadcast_to(codes, (B, H) + codes.shape[2:])
    check_tokens(lay, full_codes, [sq] * B, [sk] * B, bq, bk, lambda b, lq, lk: elem_allowed(lq, lk, causal=causal))
    out = lay.to_flex()
    for k in ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices"):
        assert out[k].shape == bm[k].shape and np.array_equal(out[k], bm[k]), k
    assert out["BLOCK_SIZE"] == (bq, bk) and out["seq_lengths"] == (sq, sk)
    check_flex_transposed(out, codes)


class FakeBlockMask:
    """Attribute access like torch.nn.attention.flex_attention.BlockMask."""

    def __init__(self, d):
        self.__dict__.update(d)


@settings(max_examples=30, deadline=None)
@given(batch(cross=False, nonempty=True), block, st.integers(1, 2), st.booleans(), st.integers(0, 2**31))
def test_flex_packed_document_grid(bt, bs, H, no_full, seed):
    """A BlockMask over the packed tokens of a document-masked (causal) batch, as create_block_mask builds it."""
    lens, _ = bt
    rng = np.random.default_rng(seed)
    cu = cu_of(lens)
    T = int(cu[-1])
    doc = np.repeat(np.arange(len(lens)), lens)
    i, j = np.arange(T)[:, None], np.arange(T)[None, :]
    tokm = (doc[:, None] == doc[None, :]) & (j <= i)  # mask_mod = document & causal
    MQ = int(cdiv(T, bs))
    pad = MQ * bs - T
    tp = np.pad(tokm, ((0, pad), (0, pad)))
    blk = tp.reshape(MQ, bs, MQ, bs).swapaxes(1, 2)
    anyb, allb = blk.any(axis=(2, 3)), blk.all(axis=(2, 3))
    keep = anyb & (rng.random((H, MQ, MQ)) < 0.8)  # a subset of the useful blocks, per head
    full = keep & allb[None] & (not no_full)
    part = keep & ~full
    cnt, idx = ordered_from_dense(part[None])
    bm = FakeBlockMask(dict(kv_num_blocks=cnt, kv_indices=idx, BLOCK_SIZE=(bs, bs), seq_lengths=(T, T),
                            full_kv_num_blocks=None, full_kv_indices=None))
    if not no_full:
        bm.full_kv_num_blocks, bm.full_kv_indices = ordered_from_dense(full[None])
    lay = vl.from_flex(bm, cu, packed=True, causal=True)
    # flex semantics over the packed grid: kept block and (full or mask_mod)
    kept_tok = np.repeat(np.repeat(keep, bs, axis=1), bs, axis=2)[:, :T, :T]
    full_tok = np.repeat(np.repeat(full, bs, axis=1), bs, axis=2)[:, :T, :T]
    flex_tok = kept_tok & (full_tok | tokm[None])
    assert not (flex_tok & (doc[:, None] != doc[None, :])[None]).any()  # nothing across documents
    for b in range(len(lens)):
        sl = slice(cu[b], cu[b + 1])
        for h in range(H):
            assert np.array_equal(lay.token_mask(b, h), flex_tok[h, sl, sl])
    if all(c % bs == 0 for c in cu[:-1]):
        assert lay.is_fixed
    out = lay.to_flex()
    for k in ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices"):
        a = getattr(bm, k)
        assert (a is None) == (out[k] is None), k
        if a is not None:
            assert np.array_equal(out[k], a), k
    cnt_t, idx_t = ordered_from_dense(np.swapaxes(part, -1, -2)[None])
    assert np.array_equal(out["q_num_blocks"], cnt_t) and np.array_equal(out["q_indices"], idx_t)


def test_flex_accepts_2d_and_3d_tensors_and_keywords():
    codes = np.array([[1, 0], [2, 1]], dtype=np.int8)
    cnt, idx = ordered_from_dense(codes == 1)
    fcnt, fidx = ordered_from_dense(codes == 2)
    lay = vl.from_flex(kv_num_blocks=cnt, kv_indices=idx, full_kv_num_blocks=fcnt, full_kv_indices=fidx,
                       BLOCK_SIZE=16, causal=True)
    assert lay.batch_size == 1 and lay.total_q == 32 and lay.num_heads == 1
    assert np.array_equal(lay.token_mask(0, 0), np.tril(np.ones((32, 32), bool)))
    out = lay.to_flex()
    assert np.array_equal(out["kv_indices"][0, 0], idx) and np.array_equal(out["full_kv_num_blocks"][0, 0], fcnt)
    assert np.array_equal(dense_from_ordered(out["q_num_blocks"], out["q_indices"], 2)[0, 0], (codes == 1).T)


# ------------------------------------------------------------------------------------------------ SeerAttention


@settings(max_examples=30, deadline=None)
@given(batch(cross=False), st.sampled_from([16, 32, 64]), st.integers(1, 3), st.booleans(), st.integers(0, 2**31))
def test_seer_2d(bt, bs, H, causal, seed):
    lens, _ = bt
    rng = np.random.default_rng(seed)
    B = len(lens)
    nb = max(int(cdiv(lens, bs).max()), 1)
    m = rng.random((B, H, nb + 1, nb + 1)) < 0.5  # padding cells hold junk, ignored
    lay = vl.from_seer_2d(m, cu_of(lens), block_size=bs, causal=causal)
    codes = m.astype(np.int8)  # kept blocks: token semantics = kept & element rule
    check_tokens(lay, codes, lens, lens, bs, bs, lambda b, lq, lk: elem_allowed(lq, lk, causal=causal))


@settings(max_examples=30, deadline=None)
@given(batch(cross=False), st.sampled_from([16, 32]), st.sampled_from([16, 32, 64]), st.integers(1, 3),
       st.booleans(), st.integers(0, 2**31))
def test_seer_1d(bt, bs, bq, H, causal, seed):
    lens, _ = bt
    rng = np.random.default_rng(seed)
    B = len(lens)
    t = max(max(lens), 1)
    nb = max(int(cdiv(lens, bs).max()), 1)
    m = rng.random((B, H, t + 2, nb + 1)) < 0.4
    cu = cu_of(lens)
    lay = vl.from_seer_1d(m, cu, block_size=bs, block_q=bq, causal=causal)
    assert lay.head_mode == ("broadcast" if H == 1 else "per_kv_head")
    assert lay.block_q == bq and lay.block_k == bs and lay.mask.token_block_k == bs
    for b in range(B):
        lq = lens[b]
        for h in range(H):
            want = elem_allowed(lq, lq, causal=causal, tok=m[b, h, :lq], tbk=bs)
            assert np.array_equal(lay.token_mask(b, h), want)
    # kept blocks are exactly those some token selects (and causal allows); full where all tokens do
    rs = lay.rows()
    e_row = np.repeat(np.arange(rs.num_rows), np.diff(rs.ent_ptr))
    full = lay.entry_is_full()
    for e in range(min(rs.num_entries, 60)):
        r = e_row[e]
        b, h, q0, q1 = rs.batch[r], rs.head[r], rs.q_start[r], rs.q_start[r] + rs.q_len[r]
        sel = m[b, h, q0:q1, rs.k_start[e] // bs]
        assert sel.any()
        if full[e]:
            assert sel.all()


# ------------------------------------------------------------------------------------------------ FlashInfer


@st.composite
def flashinfer_case(draw):
    H = draw(st.integers(1, 3))
    MB, NB = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    multi = draw(st.booleans())
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    tq = draw(st.integers(max(MB, 1), 60))
    tk = draw(st.integers(max(NB, 1), 60))

    def sizes(n, total):
        cuts = np.sort(rng.choice(np.arange(1, total), size=n - 1, replace=False)) if n > 1 else np.array([], int)
        return np.diff(np.r_[0, cuts, total])

    rsz = np.stack([sizes(MB, tq) for _ in range(H)])
    csz = np.stack([sizes(NB, tk) for _ in range(H)])
    m = rng.random((H, MB, NB)) < 0.5
    if multi:
        nseq = draw(st.integers(2, 4))
        cq = np.r_[0, np.sort(rng.integers(0, tq + 1, size=nseq - 1)), tq]
        ck = cq.copy() if tq == tk else np.r_[0, np.sort(rng.integers(0, tk + 1, size=nseq - 1)), tk]
    else:
        cq, ck = np.array([0, tq]), np.array([0, tk])
    return m, rsz, csz, cq, ck, draw(st.booleans()) and tq == tk


@settings(max_examples=40, deadline=None)
@given(flashinfer_case())
def test_flashinfer_variable_blocks(case):
    m, rsz, csz, cq, ck, causal = case
    H = m.shape[0]
    multi = cq.shape[0] > 2
    lay = vl.from_flashinfer(m, rsz, csz, cq if multi else None, ck if multi else None, causal=causal)
    assert lay.head_mode == ("broadcast" if H == 1 else "per_kv_head") and not lay.is_fixed
    tq, tk = int(cq[-1]), int(ck[-1])
    for h in range(H):
        rb = np.repeat(np.arange(rsz.shape[1]), rsz[h])
        cb = np.repeat(np.arange(csz.shape[1]), csz[h])
        packed = m[h][rb[:, None], cb[None, :]]
        assert packed.shape == (tq, tk)
        for b in range(cq.shape[0] - 1):
            sub = packed[cq[b]:cq[b + 1], ck[b]:ck[b + 1]]
            want = sub & elem_allowed(sub.shape[0], sub.shape[1], causal=causal)
            assert np.array_equal(lay.token_mask(b, h), want)
    if not multi and not causal:
        out = lay.to_flashinfer()
        assert np.array_equal(out["block_mask_map"], m)
        assert np.array_equal(out["block_row_sz"], rsz) and np.array_equal(out["block_col_sz"], csz)


# ------------------------------------------------------------------------------------------------ generators


def brute_codes(allowed_tok, bq, bk):
    """Block codes from a token mask: 2 where all allowed, 1 where some, 0 where none."""
    lq, lk = allowed_tok.shape
    M, N = int(cdiv(lq, bq)), int(cdiv(lk, bk))
    c = np.zeros((max(M, 1), max(N, 1)), np.int8)
    for m in range(M):
        for n in range(N):
            sub = allowed_tok[m * bq:(m + 1) * bq, n * bk:(n + 1) * bk]
            c[m, n] = 2 if sub.all() else (1 if sub.any() else 0)
    return c


@settings(max_examples=30, deadline=None)
@given(batch(), block, block, st.sampled_from([-1, 0, 7, 40]), st.sampled_from([-1, 0, 5]), st.integers(0, 3),
       st.booleans())
def test_band_generators(bt, bq, bk, wl, wr, sinks, use_causal_gen):
    lens_q, lens_k = bt
    cu_q, cu_k = cu_of(lens_q), cu_of(lens_k)
    if use_causal_gen:
        lay = vl.causal(cu_q, cu_k, block_q=bq, block_k=bk)
        wl, wr, sinks = -1, 0, 0
    elif sinks:
        lay = vl.attention_sinks(cu_q, cu_k, sink_blocks=sinks, window_left=wl, window_right=wr, causal=False,
                                 block_q=bq, block_k=bk)
    else:
        lay = vl.sliding_window(cu_q, cu_k, window_left=wl, window_right=wr, block_q=bq, block_k=bk)
    for b in range(len(lens_q)):
        lq, lk = lens_q[b], lens_k[b]
        band = elem_allowed(lq, lk, wl=wl, wr=wr)
        if sinks:  # sink_blocks=n: keys j < n * bk are exempt from the left bound (token rule, bug 8.3)
            band = band | (elem_allowed(lq, lk, wr=wr) & (np.arange(lk)[None, :] < sinks * bk))
        code = brute_codes(band, bq, bk)
        want = semantic(expand_blocks(code, bq, bk, lq, lk), band)
        assert np.array_equal(lay.token_mask(b, 0), want)
        # block codes are exactly the brute-force classification
        assert np.array_equal(lay.block_codes(b, 0), code[:int(cdiv(lq, bq)), :int(cdiv(lk, bk))])


@settings(max_examples=25, deadline=None)
@given(batch(cross=False, nonempty=True), block, st.booleans(), st.integers(0, 2**31))
def test_document_generator(bt, bs, causal, seed):
    lens, _ = bt
    rng = np.random.default_rng(seed)
    cu = cu_of(lens)
    docs = np.sort(rng.integers(0, 5, size=int(cu[-1])))
    lay = vl.document(cu, doc_ids_q=docs, causal=causal, block_q=bs, block_k=bs, num_heads=2)
    for b in range(len(lens)):
        d = docs[cu[b]:cu[b + 1]]
        allowed = elem_allowed(lens[b], lens[b], causal=causal, doc_q=d, doc_k=d)
        code = brute_codes(allowed, bs, bs)
        for h in range(2):
            assert np.array_equal(lay.token_mask(b, h), allowed)
            assert np.array_equal(lay.block_codes(b, h), code[:int(cdiv(lens[b], bs)), :int(cdiv(lens[b], bs))])


def test_dense_generator_with_token_mask():
    cu = cu_of([40, 3])
    rng = np.random.default_rng(0)
    tok = rng.random((1, 43, 3)) < 0.5
    lay = vl.dense(cu, block_q=16, block_k=16, element_mask=ElementMask(token_mask=tok, token_block_k=16))
    for b, (s, e) in enumerate(((0, 40), (40, 43))):
        assert np.array_equal(lay.token_mask(b, 0), elem_allowed(e - s, e - s, tok=tok[0, s:e], tbk=16))
    full = vl.dense(cu, block_q=16, block_k=16, num_heads=2)
    assert full.num_entries == 2 * (9 + 1) and full.num_full == full.num_entries


def test_random_blocks_density_and_diagonal():
    cu = cu_of([2048, 1000])
    lay = vl.random_blocks(cu, density=0.3, num_heads=2, seed=1, block_q=16, block_k=16)
    cells = 2 * (128 * 128 + 63 * 63)
    frac = lay.num_entries / cells
    assert 0.28 < frac < 0.33 and lay.head_mode == "per_q_head"
    for b in range(2):
        for h in range(2):
            assert np.diag(lay.block_codes(b, h)).all()  # diagonal always kept
    assert lay.num_full == lay.num_entries
    c = vl.random_blocks(cu, density=0.5, causal=True, seed=2, block_q=16, block_k=16)
    for b, n in enumerate((2048, 1000)):
        assert not (c.token_mask(b, 0) & ~np.tril(np.ones((n, n), bool))).any()
    assert vl.random_blocks(cu, density=0.3, seed=1, block_q=16, block_k=16).equals(
        vl.random_blocks(cu, density=0.3, seed=np.random.default_rng(1), block_q=16, block_k=16))


@settings(max_examples=30, deadline=None)
@given(batch(), block, block, st.integers(0, 4), st.integers(1, 2), st.booleans(), st.booleans(),
       st.integers(0, 2**31))
def test_topk_blocks(bt, bq, bk, k, H, causal, padded, seed):
    lens_q, lens_k = bt
    rng = np.random.default_rng(seed)
    cu_q, cu_k = cu_of(lens_q), cu_of(lens_k)
    B = len(lens_q)
    M, N = cdiv(lens_q, bq), cdiv(lens_k, bk)
    maxM, maxN = max(int(M.max()), 1), max(int(N.max()), 1)
    scores = rng.integers(0, 5, size=(B, H, maxM, maxN)).astype(np.float64)  # ties on purpose
    if padded:
        s_in = scores
    else:
        cm = np.r_[0, np.cumsum(M)]
        s_in = np.zeros((H, int(M.sum()), maxN))
        for b in range(B):
            s_in[:, cm[b]:cm[b + 1]] = np.transpose(scores[b, :, :M[b]], (0, 1, 2))
    lay = vl.topk_blocks(s_in, cu_q, cu_k, k=k, block_q=bq, block_k=bk, causal=causal)
    for b in range(B):
        allowed = elem_allowed(lens_q[b], lens_k[b], causal=causal)
        code = brute_codes(allowed, bq, bk)
        for h in range(H):
            got = lay.block_codes(b, h)
            for m in range(M[b]):
                cand = [n for n in range(N[b]) if code[m, n] > 0]
                cand.sort(key=lambda n: (-scores[b, h, m, n], n))
                want = sorted(cand[:k])
                assert np.flatnonzero(got[m]).tolist() == want
                assert all(got[m, n] == code[m, n] for n in want)


def test_export_expands_kv_heads_to_query_heads():
    """FA4 / FlexAttention index query heads: a per-KV-head layout is repeated over each GQA group."""
    cu = cu_of([40, 17, 0])
    lay = vl.random_blocks(cu, density=0.5, num_heads=2, head_mode="per_kv_head", seed=1, block_q=16, block_k=16,
                           causal=True)
    f = lay.to_fa4(num_heads_q=6)
    assert f.mask_block_cnt.shape == (6, 5)
    back = vl.from_fa4(f, cu, cu, causal=True)
    assert back.head_mode == "per_q_head"
    for b in range(3):
        for hq in range(6):
            assert np.array_equal(back.token_mask(b, hq), lay.token_mask(b, hq // 3))
    fx = lay.to_flex(num_heads_q=6)
    assert fx["kv_indices"].shape[1] == 6 and fx["full_q_indices"].shape[1] == 6
    assert np.array_equal(fx["kv_num_blocks"][:, 3], lay.to_flex()["kv_num_blocks"][:, 1])
    bc = vl.causal(cu, block_q=16, block_k=16)
    assert bc.to_fa4(num_heads_q=8).mask_block_cnt.shape[0] == 1  # broadcast stays one head
