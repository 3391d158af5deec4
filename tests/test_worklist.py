"""CPU tests of varblock.worklist: the work list covers exactly the layout's (query, key) pairs, with the mask.

Layouts are built by hand as RowSpans-like objects (random query partitions, possibly with rows left out, random
non-overlapping key spans split into a full and a partial group). A brute-force model lists the pairs the layout
computes; the work list's pairs (full chunks unmasked, partial chunks through the element mask) must be the same
set, every (query head, token) must be in exactly one tile, and a float64 model of the kernel's online softmax run
over the work list must match a dense masked softmax.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from varblock.abi import CHUNK_K_LEN_MASK, TILE_FIELDS
from varblock.tile_pairing import BandMask
from varblock.worklist import WorkList, build_worklist, dropped, tile_pairs


@dataclass
class Rows:
    head: np.ndarray
    batch: np.ndarray
    q_start: np.ndarray
    q_len: np.ndarray
    ent_ptr: np.ndarray
    n_full: np.ndarray
    k_start: np.ndarray
    k_len: np.ndarray


@dataclass
class Mask:
    wl: int = -1
    wr: int = -1
    doc_q: np.ndarray | None = None
    doc_k: np.ndarray | None = None
    tok: np.ndarray | None = None  # bool [Hm, total_q, max_nb]
    tok_bk: int = 1
    tok_head_div: int = 1

    def allowed(self, hq, tq, tk, cu_q, cu_k, batch_of_q):
        """Element mask for arrays of (query head, packed query token, packed key token)."""
        b = batch_of_q[tq]
        i = tq - cu_q[b]
        j = tk - cu_k[b]
        off = (cu_k[b + 1] - cu_k[b]) - (cu_q[b + 1] - cu_q[b])
        ok = np.ones(tq.shape, dtype=bool)
        if self.wl >= 0:
            ok &= j >= i + off - self.wl
        if self.wr >= 0:
            ok &= j <= i + off + self.wr
        if self.doc_q is not None:
            ok &= self.doc_q[tq] == self.doc_k[tk]
        if self.tok is not None:
            ok &= self.tok[hq // self.tok_head_div, tq, j // self.tok_bk]
        return ok

    def band(self) -> BandMask:
        """What ``build_worklist(merge=...)`` is told about this mask."""
        return BandMask(self.wl, self.wr, 0, opaque=self.tok is not None, doc_ids_q=self.doc_q, doc_ids_k=self.doc_k)


def random_case(rng: np.random.Generator, hq: int, hkv: int, head_mode: str, nb: int, drop_rows: bool):
    len_q = rng.integers(0, 70, size=nb)
    len_k = rng.integers(0, 90, size=nb)
    len_k[len_q > 0] = np.maximum(len_k[len_q > 0], 1)
    cu_q = np.concatenate([[0], np.cumsum(len_q)]).astype(np.int32)
    cu_k = np.concatenate([[0], np.cumsum(len_k)]).astype(np.int32)
    hl_n = {"per_q_head": hq, "per_kv_head": hkv, "broadcast": 1}[head_mode]
    head, batch, qs, ql, nfull, ks, kl, ent_ptr = [], [], [], [], [], [], [], [0]
    for h in range(hl_n):
        for b in range(nb):
            pos = 0
            while pos < len_q[b]:
                n = int(rng.integers(1, 40))
                n = min(n, int(len_q[b]) - pos)
                if not (drop_rows and rng.random() < 0.2):
                    # key spans: a random sorted set of non-overlapping spans, split into full + partial
                    spans, kpos = [], 0
                    while kpos < len_k[b]:
                        gap = int(rng.integers(0, 20))
                        ln = int(rng.integers(1, 50))
                        s = kpos + gap
                        if s >= len_k[b]:
                            break
                        ln = min(ln, int(len_k[b]) - s)
                        if rng.random() < 0.6:
                            spans.append((s, ln))
                        kpos = s + ln
                    is_full = rng.random(len(spans)) < 0.5
                    full = [sp for sp, f in zip(spans, is_full) if f]
                    part = [sp for sp, f in zip(spans, is_full) if not f]
                    head.append(h)
                    batch.append(b)
                    qs.append(pos)
                    ql.append(n)
                    nfull.append(len(full))
                    for s, ln in full + part:
                        ks.append(s)
                        kl.append(ln)
                    ent_ptr.append(len(ks))
                pos += n
    rows = Rows(*(np.asarray(x, dtype=np.int32) for x in (head, batch, qs, ql)),
                np.asarray(ent_ptr, dtype=np.int64), np.asarray(nfull, dtype=np.int32),
                np.asarray(ks, dtype=np.int32), np.asarray(kl, dtype=np.int32))
    return rows, cu_q, cu_k


def random_mask(rng, cu_q, cu_k, hq, hkv, head_mode):
    tq, tk = int(cu_q[-1]), int(cu_k[-1])
    m = Mask()
    if rng.random() < 0.5:
        m.wr = int(rng.choice([0, 0, 3, 17]))
        m.wl = int(rng.choice([-1, -1, 5, 40]))
    if rng.random() < 0.4:
        m.doc_q = rng.integers(0, 3, size=tq).astype(np.int32)
        m.doc_k = rng.integers(0, 3, size=tk).astype(np.int32)
    if rng.random() < 0.4:
        m.tok_bk = int(rng.choice([1, 7, 16]))
        max_nb = int(np.max(np.diff(cu_k), initial=0)) // m.tok_bk + 1
        hm = {"per_q_head": hq, "per_kv_head": hkv, "broadcast": 1}[head_mode]
        m.tok_head_div = {"per_q_head": 1, "per_kv_head": hq // hkv, "broadcast": hq}[head_mode]
        m.tok = rng.random((hm, max(tq, 1), max_nb)) < 0.6
    return m


def layout_pairs(rows, cu_q, cu_k, hq, hkv, head_mode, mask):
    """Brute force: the set of (hq, query token, key token) the layout computes."""
    group = hq // hkv
    out = set()
    for r in range(len(rows.head)):
        hl, b = int(rows.head[r]), int(rows.batch[r])
        heads = {"per_q_head": [hl], "per_kv_head": list(range(hl * group, hl * group + group)),
                 "broadcast": list(range(hq))}[head_mode]
        e0, e1 = int(rows.ent_ptr[r]), int(rows.ent_ptr[r + 1])
        for e in range(e0, e1):
            full = e - e0 < rows.n_full[r]
            for h in heads:
                for i in range(int(rows.q_start[r]), int(rows.q_start[r] + rows.q_len[r])):
                    tq = int(cu_q[b]) + i
                    tks = np.arange(rows.k_start[e], rows.k_start[e] + rows.k_len[e]) + int(cu_k[b])
                    if not full:
                        batch_of_q = np.repeat(np.arange(len(cu_q) - 1), np.diff(cu_q))
                        ok = mask.allowed(np.full(tks.shape, h), np.full(tks.shape, tq), tks, cu_q, cu_k,
                                          batch_of_q)
                        tks = tks[ok]
                    out.update((h, tq, int(t)) for t in tks)
    return out


def worklist_pairs(wl, cu_q, cu_k, hq, hkv, mask):
    h, tq, tk, part = tile_pairs(wl, cu_q, cu_k, num_heads_q=hq, num_heads_kv=hkv)
    batch_of_q = np.repeat(np.arange(len(cu_q) - 1), np.diff(cu_q))
    keep = ~part
    if part.any():
        keep[part] = mask.allowed(h[part], tq[part], tk[part], cu_q, cu_k, batch_of_q)
    return set(zip(h[keep].tolist(), tq[keep].tolist(), tk[keep].tolist())), h, tq, tk


def with_left_partials(wl: WorkList, rng: np.random.Generator) -> WorkList:
    """The same work as ``wl``, with each tile's chunks copied to a list of its own in the kernel's general order:
    ``n_left`` (random) of its partial chunks first, then its full chunks, then the other partial chunks."""
    t = wl.tiles.astype(np.int64).copy()
    out_chunks, pos = [], 0
    for ti in range(t.shape[0]):  # small cases only
        cb, nf, npart = (int(x) for x in t[ti, 4:7])
        full = wl.chunks[cb:cb + nf]
        part = wl.chunks[cb + nf:cb + nf + npart]
        nl = int(rng.integers(0, npart + 1))
        out_chunks += [part[:nl], full, part[nl:]]
        t[ti, 4], t[ti, 7] = pos, nl
        pos += nf + npart
    chunks = np.concatenate(out_chunks) if out_chunks else np.zeros((0, 2), np.int32)
    return WorkList(tiles=t.astype(np.int32), chunks=chunks.astype(np.int32).reshape(-1, 2), tile_m=wl.tile_m,
                    tile_n=wl.tile_n, pack_gqa=wl.pack_gqa)


def check_structure(wl, cu_q, hq, rows, tile_m, tile_n, merged=False):
    t, c = wl.tiles, wl.chunks
    g = wl.pack_gqa
    assert t.dtype == np.int32 and c.dtype == np.int32 and t.shape[1] == 8 and c.shape[1] == 2
    assert (t[:, 3] >= 1).all() and (t[:, 3] * g <= tile_m).all()
    k_len = c[:, 1] & CHUNK_K_LEN_MASK  # merged lists: drop bits above
    assert ((k_len >= 1) & (k_len <= tile_n)).all()
    assert merged or (c[:, 1] == k_len).all()
    assert (t[:, 4] + t[:, 5] + t[:, 6] <= c.shape[0]).all()
    assert TILE_FIELDS[7] == "n_left" and (t[:, 7] == 0).all()  # the builder puts full chunks first
    # chunk lists are shared, not copied: exactly one chunk per tile_n piece of every entry (merged: at most that
    # per window of tile_m // G query tokens the entry's row touches, as rows may be cut at window edges)
    e_pieces = (rows.k_len.astype(np.int64) + tile_n - 1) // tile_n
    pieces = int(e_pieces.sum())
    if merged:
        tpt = tile_m // g
        q0, q1 = rows.q_start.astype(np.int64), rows.q_start.astype(np.int64) + rows.q_len - 1
        row_pieces = np.add.reduceat(np.append(e_pieces, 0), rows.ent_ptr[:-1]) * (np.diff(rows.ent_ptr) > 0)
        assert c.shape[0] <= int((row_pieces * (q1 // tpt - q0 // tpt + 1)).sum())
    else:
        assert c.shape[0] == pieces
    # every (query head, token) is in exactly one tile
    n_rows = t[:, 3].astype(np.int64) * g
    cover = np.zeros((hq, int(cu_q[-1])), dtype=np.int64)
    for ti in range(t.shape[0]):  # small cases only
        b, h, qs, ql = (int(x) for x in t[ti, :4])
        r = np.arange(n_rows[ti])
        tok = int(cu_q[b]) + qs + r // g
        hh = h * g + r % g if g > 1 else np.full(r.shape, h)
        np.add.at(cover, (hh, tok), 1)
    assert (cover == 1).all()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31 - 1),
    heads=st.sampled_from([(1, 1), (2, 1), (4, 2), (3, 3), (6, 2)]),
    head_mode=st.sampled_from(["per_q_head", "per_kv_head", "broadcast"]),
    nb=st.integers(0, 4),
    tiles=st.sampled_from([(16, 16), (32, 8), (64, 32), (8, 64), (128, 64)]),
    pack=st.booleans(),
    drop_rows=st.booleans(),
    longest_first=st.booleans(),
    merge=st.booleans(),
)
def test_pairs_equal_layout(seed, heads, head_mode, nb, tiles, pack, drop_rows, longest_first, merge):
    rng = np.random.default_rng(seed)
    hq, hkv = heads
    tile_m, tile_n = tiles
    pack = pack and head_mode != "per_q_head" and hq // hkv <= tile_m
    rows, cu_q, cu_k = random_case(rng, hq, hkv, head_mode, nb, drop_rows)
    mask = random_mask(rng, cu_q, cu_k, hq, hkv, head_mode)
    wl = build_worklist(rows, cu_q, cu_k, num_heads_q=hq, num_heads_kv=hkv, head_mode=head_mode, tile_m=tile_m,
                        tile_n=tile_n, pack_gqa=pack, longest_first=longest_first,
                        merge=mask.band() if merge else None)
    check_structure(wl, cu_q, hq, rows, tile_m, tile_n, merge)
    expected = layout_pairs(rows, cu_q, cu_k, hq, hkv, head_mode, mask)
    for w in (wl, with_left_partials(wl, rng)):  # n_left = 0 (the builder), random n_left (general order)
        got, h, tq, tk = worklist_pairs(w, cu_q, cu_k, hq, hkv, mask)
        # no pair is computed twice
        key = (h * (int(cu_q[-1]) + 1) + tq) * (int(cu_k[-1]) + 1) + tk
        assert np.unique(key).shape[0] == key.shape[0]
        assert got == expected


def kernel_model(wl, q, k, v, cu_q, cu_k, hq, hkv, mask, scale, tile_n):
    """float64 model of attention_fwd_mma: per tile, per chunk (full: tail only; partial, i.e. chunk ``ci < n_left``
    or ``ci >= n_left + n_full``: element mask), online softmax with the check_inf rule; O = 0 / LSE = -inf for rows
    without any allowed key."""
    group = hq // hkv
    g = wl.pack_gqa
    tq_n = q.shape[0]
    o = np.full((tq_n, hq, q.shape[2]), np.nan)
    lse = np.full((hq, tq_n), np.nan)
    batch_of_q = np.repeat(np.arange(len(cu_q) - 1), np.diff(cu_q))
    for t in wl.tiles:
        b, head, qs, ql, cb, nf, npart, nl = (int(x) for x in t[:8])
        r = np.arange(ql * g)
        tok = int(cu_q[b]) + qs + r // g
        hqs = head * g + r % g if g > 1 else np.full(r.shape, head)
        hk = (head * g) // group
        qq = q[tok, hqs]  # [rows, D]
        m = np.full(r.shape, -np.inf)
        s_ = np.zeros(r.shape)
        acc = np.zeros(qq.shape)
        for ci in range(nf + npart):
            ks, word = (int(x) for x in wl.chunks[cb + ci])
            kl = word & CHUNK_K_LEN_MASK
            assert 1 <= kl <= tile_n
            kt = int(cu_k[b]) + ks + np.arange(kl)
            s = qq @ k[kt, hk].T
            if ci < nl or ci >= nl + nf:  # partial chunk
                ok = mask.allowed(np.repeat(hqs, kl), np.repeat(tok, kl), np.tile(kt, len(r)), cu_q, cu_k,
                                  batch_of_q).reshape(len(r), kl)
                ok &= ~dropped(word, r[:, None], np.arange(kl)[None, :], wl.tile_m, tile_n)  # drop bits
                s = np.where(ok, s, -np.inf)
            else:
                assert word == kl, "row-half drop bits on a full chunk"
            m_new = np.maximum(m, s.max(axis=1))
            m_safe = np.where(m_new == -np.inf, 0.0, m_new)
            p = np.exp((s - m_safe[:, None]) * scale)
            corr = np.exp((m - m_safe) * scale)
            s_ = s_ * corr + p.sum(axis=1)
            acc = acc * corr[:, None] + p @ v[kt, hk]
            m = m_new
        empty = s_ == 0
        o[tok, hqs] = np.where(empty[:, None], 0.0, acc / np.where(empty, 1.0, s_)[:, None])
        lse[hqs, tok] = np.where(empty, -np.inf, m * scale + np.log(np.where(empty, 1.0, s_)))
    return o, lse


def dense_reference(pairs, q, k, v, hq, hkv, scale):
    group = hq // hkv
    tq_n, d = q.shape[0], q.shape[2]
    o = np.zeros((tq_n, hq, d))
    lse = np.full((hq, tq_n), -np.inf)
    allowed = np.zeros((hq, tq_n, k.shape[0]), dtype=bool)
    for h, i, j in pairs:
        allowed[h, i, j] = True
    for h in range(hq):
        s = q[:, h] @ k[:, h // group].T * scale
        s = np.where(allowed[h], s, -np.inf)
        mx = s.max(axis=1, initial=-np.inf)
        ok = mx > -np.inf
        p = np.exp(s - np.where(ok, mx, 0)[:, None])
        den = p.sum(axis=1)
        o[ok, h] = (p @ v[:, h // group])[ok] / den[ok, None]
        lse[h, ok] = mx[ok] + np.log(den[ok])
    return o, lse


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31 - 1),
    heads=st.sampled_from([(1, 1), (4, 2), (6, 2)]),
    head_mode=st.sampled_from(["per_q_head", "per_kv_head", "broadcast"]),
    tiles=st.sampled_from([(16, 16), (32, 8), (128, 64)]),
    pack=st.booleans(),
    merge=st.booleans(),
)
def test_kernel_model_matches_dense(seed, heads, head_mode, tiles, pack, merge):
    rng = np.random.default_rng(seed)
    hq, hkv = heads
    tile_m, tile_n = tiles
    pack = pack and head_mode != "per_q_head"
    rows, cu_q, cu_k = random_case(rng, hq, hkv, head_mode, int(rng.integers(1, 3)), drop_rows=True)
    mask = random_mask(rng, cu_q, cu_k, hq, hkv, head_mode)
    wl = build_worklist(rows, cu_q, cu_k, num_heads_q=hq, num_heads_kv=hkv, head_mode=head_mode, tile_m=tile_m,
                        tile_n=tile_n, pack_gqa=pack, merge=mask.band() if merge else None)
    d = 8
    q = rng.standard_normal((int(cu_q[-1]), hq, d))
    k = rng.standard_normal((int(cu_k[-1]), hkv, d))
    v = rng.standard_normal((int(cu_k[-1]), hkv, d))
    scale = 1 / np.sqrt(d)
    pairs = layout_pairs(rows, cu_q, cu_k, hq, hkv, head_mode, mask)
    o_ref, lse_ref = dense_reference(pairs, q, k, v, hq, hkv, scale)
    for w in (wl, with_left_partials(wl, rng)):
        o, lse = kernel_model(w, q, k, v, cu_q, cu_k, hq, hkv, mask, scale, tile_n)
        assert not np.isnan(o).any() and not np.isnan(lse).any()  # every (token, head) written
        np.testing.assert_allclose(o, o_ref, atol=1e-12, rtol=1e-10)
        np.testing.assert_allclose(lse, lse_ref, atol=1e-12, rtol=1e-10)


def test_split_rows_and_entries_share_chunks():
    # one sequence (300 queries, 500 keys), one layout row of 300 queries: 3 tiles of 128/128/44 tokens per head,
    # all pointing at one chunk list; an entry of 200 keys splits into 64+64+64+8
    rows = Rows(np.array([0], np.int32), np.array([0], np.int32), np.array([0], np.int32), np.array([300], np.int32),
                np.array([0, 2], np.int64), np.array([1], np.int32), np.array([0, 300], np.int32),
                np.array([200, 130], np.int32))
    wl = build_worklist(rows, [0, 300], [0, 500], num_heads_q=2, num_heads_kv=1, head_mode="broadcast", tile_m=128,
                        tile_n=64)
    assert wl.chunks.tolist() == [[0, 64], [64, 64], [128, 64], [192, 8], [300, 64], [364, 64], [428, 2]]
    assert wl.tiles.tolist() == [
        [0, 0, 0, 128, 0, 4, 3, 0], [0, 1, 0, 128, 0, 4, 3, 0],
        [0, 0, 128, 128, 0, 4, 3, 0], [0, 1, 128, 128, 0, 4, 3, 0],
        [0, 0, 256, 44, 0, 4, 3, 0], [0, 1, 256, 44, 0, 4, 3, 0],
    ]
    # pack-GQA: G = 2 rows per token, 64 tokens per tile, tile head = KV head 0
    wl = build_worklist(rows, [0, 300], [0, 500], num_heads_q=2, num_heads_kv=1, head_mode="broadcast", tile_m=128,
                        tile_n=64, pack_gqa=True)
    assert wl.pack_gqa == 2
    assert wl.tiles[:, :4].tolist() == [[0, 0, 0, 64], [0, 0, 64, 64], [0, 0, 128, 64], [0, 0, 192, 64],
                                        [0, 0, 256, 44]]


def test_n_left_partial_classification():
    # one tile, chunks [p0, f0, f1, p1, p2]: n_left = 1, n_full = 2, n_partial = 3 -> partial iff i in {0, 3, 4}
    wl = WorkList(tiles=np.array([[0, 0, 0, 1, 0, 2, 3, 1]], np.int32),
                  chunks=np.array([[0, 1], [1, 1], [2, 1], [3, 1], [4, 1]], np.int32), tile_m=16, tile_n=16,
                  pack_gqa=1)
    h, tq, tk, part = tile_pairs(wl, [0, 1], [0, 5], num_heads_q=1, num_heads_kv=1)
    assert tk.tolist() == [0, 1, 2, 3, 4] and part.tolist() == [True, False, False, True, True]


def test_missing_rows_get_empty_tiles():
    # layout covers queries [10, 20) of a 50-token sequence only: [0, 10) and [20, 50) get tiles with no chunk
    rows = Rows(np.array([0], np.int32), np.array([0], np.int32), np.array([10], np.int32), np.array([10], np.int32),
                np.array([0, 1], np.int64), np.array([1], np.int32), np.array([0], np.int32), np.array([5], np.int32))
    wl = build_worklist(rows, [0, 50], [0, 5], num_heads_q=1, num_heads_kv=1, head_mode="per_q_head", tile_m=16,
                        tile_n=16)
    assert wl.tiles[:, [2, 3, 5, 6]].tolist() == [[0, 10, 0, 0], [10, 10, 1, 0], [20, 16, 0, 0], [36, 14, 0, 0]]
    # a sequence with no rows at all, and an empty layout
    empty = Rows(*(np.zeros(0, np.int32) for _ in range(4)), np.zeros(1, np.int64), np.zeros(0, np.int32),
                 np.zeros(0, np.int32), np.zeros(0, np.int32))
    wl = build_worklist(empty, [0, 3, 3], [0, 4, 9], num_heads_q=2, num_heads_kv=2, head_mode="per_kv_head",
                        tile_m=64, tile_n=64)
    assert wl.tiles.tolist() == [[0, 0, 0, 3, 0, 0, 0, 0], [0, 1, 0, 3, 0, 0, 0, 0]]
    assert wl.chunks.shape == (0, 2)


def test_bad_input():
    rows = Rows(np.array([0, 0], np.int32), np.array([0, 0], np.int32), np.array([0, 5], np.int32),
                np.array([8, 8], np.int32), np.array([0, 0, 0], np.int64), np.array([0, 0], np.int32),
                np.zeros(0, np.int32), np.zeros(0, np.int32))
    kw = dict(num_heads_q=1, num_heads_kv=1, head_mode="per_q_head", tile_m=16, tile_n=16)
    with pytest.raises(ValueError, match="overlap"):
        build_worklist(rows, [0, 20], [0, 20], **kw)
    with pytest.raises(ValueError, match="head_mode"):
        build_worklist(rows, [0, 20], [0, 20], **{**kw, "head_mode": "nope"})
    with pytest.raises(ValueError, match="pack_gqa"):
        build_worklist(rows, [0, 20], [0, 20], **{**kw, "pack_gqa": 2})
    with pytest.raises(ValueError, match="inside their sequence"):
        build_worklist(rows, [0, 10], [0, 20], **kw)
    with pytest.raises(ValueError, match="multiple"):
        build_worklist(rows, [0, 20], [0, 20], **{**kw, "num_heads_q": 3, "num_heads_kv": 2})


def test_vectorised_scale():
    # 64k-token sequence, 1k rows x 500 entries, 16 heads: builds quickly (no Python loop per row or entry)
    import time

    nr, per = 512, 256
    rows = Rows(np.zeros(nr, np.int32), np.zeros(nr, np.int32), (np.arange(nr) * 128).astype(np.int32),
                np.full(nr, 128, np.int32), np.arange(nr + 1, dtype=np.int64) * per, np.full(nr, per // 2, np.int32),
                np.tile(np.arange(per) * 256, nr).astype(np.int32), np.full(nr * per, 128, np.int32))
    t0 = time.perf_counter()
    wl = build_worklist(rows, [0, nr * 128], [0, per * 256], num_heads_q=16, num_heads_kv=16,
                        head_mode="broadcast", tile_m=128, tile_n=64)
    assert time.perf_counter() - t0 < 2.0
    assert wl.tiles.shape == (nr * 16, 8) and wl.chunks.shape == (nr * per * 2, 2)
