"""BlockSparseLayout core: the rows() contract, token expansion, transposed index, pair counts, head mapping."""

from __future__ import annotations

import numpy as np
import pytest
from conftest_layout import (
    FakeDeviceTensor,
    FakeDLPack,
    block,
    cdiv,
    cu_of,
    elem_allowed,
    expand_blocks,
    semantic,
    seqlens,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import varblock.layout as vl
from varblock.layout import BlockSparseLayout, ElementMask
from varblock.layout._host import to_host
from varblock.layout.mask import band_count


@st.composite
def random_layout(draw, causal=None):
    lens_q = draw(seqlens)
    cross = draw(st.booleans())
    lens_k = [draw(st.integers(0, 90)) for _ in lens_q] if cross else lens_q
    bq, bk = draw(block), draw(block)
    H = draw(st.integers(1, 3))
    cu_q, cu_k = cu_of(lens_q), cu_of(lens_k)
    M, N = cdiv(lens_q, bq), cdiv(lens_k, bk)
    maxM, maxN = int(max(M.max(), 1)), int(max(N.max(), 1))
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 3, size=(len(lens_q), H, maxM, maxN)).astype(np.int8)
    if causal is None:
        causal = draw(st.booleans())
    wl = draw(st.sampled_from([-1, -1, 0, 5, 40]))
    lay = vl.from_block_mask(codes, cu_q, cu_k, block_q=bq, block_k=bk, causal=causal, window=(wl, -1),
                             padding="ignore")
    return lay, codes, dict(lens_q=lens_q, lens_k=lens_k, bq=bq, bk=bk, H=H, causal=causal, wl=wl)


@settings(max_examples=40, deadline=None)
@given(random_layout())
def test_rows_contract_invariants(arg):
    lay, codes, p = arg
    rs = lay.rows()
    R, E = rs.num_rows, rs.num_entries
    assert rs.head.dtype == rs.batch.dtype == rs.q_start.dtype == rs.q_len.dtype == np.int32
    assert rs.n_full.dtype == rs.k_start.dtype == rs.k_len.dtype == np.int32
    assert rs.ent_ptr.dtype == np.int64 and rs.ent_ptr.shape == (R + 1,) and rs.ent_ptr[0] == 0
    assert rs.ent_ptr[-1] == E and (np.diff(rs.ent_ptr) >= 0).all()
    assert (rs.q_len >= 1).all() and (rs.k_len >= 1).all()
    # rows ordered by (head, batch, q_start) and tiling every sequence
    key = (rs.head.astype(np.int64) * 100 + rs.batch) * 10**6 + rs.q_start
    assert (np.diff(key) > 0).all()
    B = len(p["lens_q"])
    for h in range(p["H"]):
        for b in range(B):
            sel = (rs.head == h) & (rs.batch == b)
            assert rs.q_len[sel].sum() == p["lens_q"][b]
            assert (rs.q_len[sel] == np.minimum(p["bq"], p["lens_q"][b] - rs.q_start[sel])).all()
    # groups sorted by k_start, non-overlapping, inside the sequence
    for r in range(R):
        e0, e1, nf = rs.ent_ptr[r], rs.ent_ptr[r + 1], rs.n_full[r]
        assert 0 <= nf <= e1 - e0
        for g0, g1 in ((e0, e0 + nf), (e0 + nf, e1)):
            ks, kl = rs.k_start[g0:g1], rs.k_len[g0:g1]
            assert (ks[1:] >= ks[:-1] + kl[:-1]).all()
        assert (rs.k_start[e0:e1] + rs.k_len[e0:e1] <= p["lens_k"][rs.batch[r]]).all()
    # read-only
    with pytest.raises(ValueError):
        rs.k_start[...] = 0
    assert lay.rows() is rs  # cached


@settings(max_examples=40, deadline=None)
@given(random_layout())
def test_token_mask_matches_block_codes(arg):
    lay, codes, p = arg
    for b in range(len(p["lens_q"])):
        lq, lk = p["lens_q"][b], p["lens_k"][b]
        allowed = elem_allowed(lq, lk, causal=p["causal"], wl=p["wl"])
        for h in range(p["H"]):
            want = semantic(expand_blocks(codes[b, h], p["bq"], p["bk"], lq, lk), allowed)
            assert np.array_equal(lay.token_mask(b, h), want)


@settings(max_examples=40, deadline=None)
@given(random_layout())
def test_num_pairs_and_density_exact(arg):
    lay, _, p = arg
    per = np.array([sum(int(lay.token_mask(b, h).sum()) for b in range(len(p["lens_q"]))) for h in range(p["H"])])
    assert np.array_equal(lay.num_pairs(per_head=True), per)
    assert lay.num_pairs() == per.sum()
    tot = sum(a * b for a, b in zip(p["lens_q"], p["lens_k"])) * p["H"]
    assert lay.density() == pytest.approx(per.sum() / tot if tot else 0.0)


@settings(max_examples=40, deadline=None)
@given(random_layout())
def test_transposed_is_the_same_pair_set(arg):
    lay, _, p = arg
    rs, cs = lay.rows(), lay.transposed()
    assert cs.ent_ptr[-1] == rs.num_entries
    assert np.array_equal(np.sort(cs.entry), np.arange(rs.num_entries))
    fwd_full = lay.entry_is_full()
    ccount = np.diff(cs.ent_ptr)
    col = np.repeat(np.arange(cs.num_cols), ccount)
    # every transposed entry points back at a forward entry with the same spans
    assert np.array_equal(rs.k_start[cs.entry], cs.k_start[col])
    assert np.array_equal(rs.k_len[cs.entry], cs.k_len[col])
    assert np.array_equal(rs.q_start[cs.row], cs.q_start)
    assert np.array_equal(rs.batch[cs.row], cs.batch[col]) and np.array_equal(rs.head[cs.row], cs.head[col])
    # full first, then partial, each sorted by q_start; n_full consistent
    _, pos = np.unique(col, return_index=True) if col.size else (None, None)
    for c in range(cs.num_cols):
        e0, e1, nf = cs.ent_ptr[c], cs.ent_ptr[c + 1], cs.n_full[c]
        assert fwd_full[cs.entry[e0:e0 + nf]].all() and not fwd_full[cs.entry[e0 + nf:e1]].any()
        for g0, g1 in ((e0, e0 + nf), (e0 + nf, e1)):
            assert (np.diff(cs.q_start[g0:g1]) > 0).all()
    # columns ordered by (head, batch, k_start), all key blocks present
    key = (cs.head.astype(np.int64) * 100 + cs.batch) * 10**6 + cs.k_start
    assert (np.diff(key) > 0).all()
    assert cs.num_cols == p["H"] * int(cdiv(p["lens_k"], p["bk"]).sum())


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 40), st.integers(1, 20), st.integers(0, 40), st.integers(1, 20), st.integers(-30, 30),
       st.one_of(st.none(), st.integers(-25, 25)), st.one_of(st.none(), st.integers(-25, 25)))
def test_band_count_brute_force(qs, ql, ks, kl, off, lo, hi):
    i = np.arange(qs, qs + ql)[:, None]
    j = np.arange(ks, ks + kl)[None, :]
    d = j - i - off
    ok = np.ones_like(d, dtype=bool)
    if lo is not None:
        ok &= d >= lo
    if hi is not None:
        ok &= d <= hi
    assert int(band_count(qs, ql, ks, kl, off, lo, hi)) == int(ok.sum())


@settings(max_examples=30, deadline=None)
@given(random_layout())
def test_from_row_spans_round_trip(arg):
    lay, _, p = arg
    rs = lay.rows()
    back = vl.from_row_spans(rs, lay.cu_seqlens_q, lay.cu_seqlens_k, lay.num_heads, lay.head_mode,
                             block_q=p["bq"], block_k=p["bk"], element_mask=lay.mask)
    assert back.equals(lay)
    # without block sizes the key partition is rebuilt from the entries (+ gaps): same token semantics
    var = vl.from_row_spans(rs, lay.cu_seqlens_q, lay.cu_seqlens_k, lay.num_heads, lay.head_mode,
                            element_mask=lay.mask)
    assert not var.is_fixed
    for b in range(len(p["lens_q"])):
        for h in range(p["H"]):
            assert np.array_equal(var.token_mask(b, h), lay.token_mask(b, h))
    r2 = var.rows()
    assert np.array_equal(r2.k_start, rs.k_start) and np.array_equal(r2.ent_ptr, rs.ent_ptr)


def test_head_map_and_compatibility():
    cu = cu_of([40, 3])
    per_q = vl.dense(cu, block_q=16, block_k=16, num_heads=8, head_mode="per_q_head")
    per_kv = vl.dense(cu, block_q=16, block_k=16, num_heads=2, head_mode="per_kv_head")
    bc = vl.dense(cu, block_q=16, block_k=16)
    assert bc.head_mode == "broadcast" and bc.num_heads == 1
    assert per_q.head_map(8, 2).tolist() == list(range(8))
    assert per_kv.head_map(8, 2).tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert bc.head_map(8, 2).tolist() == [0] * 8
    assert per_kv.check_compatible(8, 2, head_dim=128).tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    with pytest.raises(ValueError, match="num_heads_q"):
        per_q.head_map(4, 2)
    with pytest.raises(ValueError, match="num_heads_kv"):
        per_kv.head_map(8, 4)
    with pytest.raises(ValueError, match="num_heads_q.*multiple"):
        bc.head_map(6, 4)
    with pytest.raises(ValueError, match="num_heads_q"):
        bc.head_map(0, 1)
    # TFLOP/s pair count over query heads
    assert per_kv.num_pairs(8, 2) == 4 * per_kv.num_pairs()
    assert bc.num_pairs(8, 2) == 8 * bc.num_pairs() == 8 * (40 * 40 + 9)


def test_immutability_and_repr():
    lay = vl.causal(cu_of([33, 0, 5]), block_q=16, block_k=16)
    with pytest.raises(TypeError):
        BlockSparseLayout()
    for a in (lay.cu_seqlens_q, lay.entry_key_block, lay.query_partition.start, lay.rows().ent_ptr):
        assert not a.flags.writeable
    assert "causal=True" in repr(lay) and "rows=" in repr(lay)
    assert lay.batch_size == 3 and lay.total_q == 38 and lay.total_k == 38


def test_with_mask_and_equals():
    cu = cu_of([40])
    a = vl.causal(cu, block_q=16, block_k=16)
    b = a.with_mask(ElementMask())
    assert b.equals(a, check_mask=False) and not b.equals(a)
    assert not a.equals("x")
    # partial entries without an element condition compute everything
    assert b.num_pairs() == a.num_pairs() + sum(16 * 16 - 16 * 17 // 2 for _ in range(2)) + (8 * 8 - 8 * 9 // 2)


@pytest.mark.parametrize("wrap", [np.asarray, FakeDLPack, FakeDeviceTensor, list])
def test_inputs_through_dlpack_and_duck_types(wrap):
    cu = cu_of([40, 17])
    mask = np.ones((1, 5, 3), dtype=bool)
    mask[0, 3:, 2] = False  # sequence 1 has 2 key blocks
    x = wrap(mask) if wrap is not list else mask.tolist()
    c = wrap(cu) if wrap is not list else cu.tolist()
    lay = vl.from_block_mask(x, c, block_q=16, block_k=16)
    assert lay.num_pairs() == 40 * 40 + 17 * 17
    assert np.array_equal(to_host(FakeDeviceTensor(cu), "x"), cu)


class FakeGradTensor:
    """Like a CPU tensor that requires grad: no export until .detach()."""

    def __init__(self, a):
        self._a = a

    def __dlpack__(self, *args, **kwargs):
        raise RuntimeError("Can't export tensors that require gradient")

    def __array__(self, *args, **kwargs):
        raise RuntimeError("Can't call numpy() on Tensor that requires grad")

    def detach(self):
        return FakeDLPack(self._a)


def test_to_host_detaches_autograd_tensors():
    a = np.arange(6).reshape(2, 3)
    assert np.array_equal(to_host(FakeGradTensor(a), "x"), a)


def test_to_host_rejects_opaque_objects():
    with pytest.raises(TypeError, match="cu_seqlens_q"):
        vl.from_block_mask(np.ones((1, 1, 1), bool), object(), block_q=16, block_k=16)

    class Get:  # CuPy-style
        def get(self):
            return np.array([0, 5])

    assert to_host(Get(), "x").tolist() == [0, 5]
