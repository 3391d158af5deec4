"""Helpers shared by the layout / reference tests: independent brute-force token semantics and strategies.

Imported as a plain module (``import conftest_layout``); nothing here uses the code under test's own expansion.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

# odd lengths, empty sequences, multiples of the block, one past a multiple
seqlen = st.one_of(st.sampled_from([0, 1, 3, 16, 17, 40, 113]), st.integers(0, 70))
seqlens = st.lists(seqlen, min_size=1, max_size=4)
block = st.sampled_from([16, 32])


def cu_of(lens) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(np.asarray(lens, dtype=np.int64))]).astype(np.int32)


def cdiv(a, b):
    return -(-np.asarray(a) // b)


def elem_allowed(lq, lk, *, causal=False, wl=-1, wr=-1, doc_q=None, doc_k=None, tok=None, tbk=None):
    """Brute-force element rule for one sequence: bool [lq, lk]. ``doc_q``/``doc_k``: this sequence's ids;
    ``tok``: this sequence's token mask [lq, nb]."""
    i = np.arange(lq)[:, None]
    j = np.arange(lk)[None, :]
    off = lk - lq
    ok = np.ones((lq, lk), dtype=bool)
    if causal:
        ok &= j <= i + off
    if wl >= 0:
        ok &= j >= i + off - wl
    if wr >= 0:
        ok &= j <= i + off + wr
    if doc_q is not None:
        ok &= doc_q[:, None] == doc_k[None, :]
    if tok is not None:
        ok &= tok[np.arange(lq)[:, None], (np.arange(lk) // tbk)[None, :]]
    return ok


def expand_blocks(codes, bq, bk, lq, lk):
    """Fixed-block codes [>= nq, >= nk] -> token codes [lq, lk]."""
    return codes[(np.arange(lq) // bq)[:, None], (np.arange(lk) // bk)[None, :]]


def semantic(tok_codes, allowed):
    return (tok_codes == 2) | ((tok_codes == 1) & allowed)


def dense_attention(q, k, v, allowed, scale):
    """Plain dense masked softmax for one sequence / one head: q [lq, D], k/v [lk, D], allowed [lq, lk]."""
    s = q @ k.T * scale
    s = np.where(allowed, s, -np.inf)
    m = s.max(axis=1, keepdims=True) if s.shape[1] else np.full((s.shape[0], 1), -np.inf)
    has = np.isfinite(m[:, 0])
    m = np.where(np.isfinite(m), m, 0.0)
    e = np.where(allowed, np.exp(s - m), 0.0)
    z = e.sum(axis=1, keepdims=True)
    p = np.where(has[:, None], e / np.where(z > 0, z, 1.0), 0.0)
    with np.errstate(divide="ignore"):
        lse = np.where(has, np.log(np.where(has, z[:, 0], 1.0)) + m[:, 0], -np.inf)
    return p @ v, lse, p


def layout_head_of(layout, hq, Hq, Hkv):
    if layout.head_mode == "per_q_head":
        return hq
    if layout.head_mode == "per_kv_head":
        return hq // (Hq // Hkv)
    return 0


def ordered_from_dense(dense):
    """FlexAttention's _dense_to_ordered in NumPy: counts and argsort(descending, stable) indices."""
    d = dense.astype(np.int32)
    cnt = d.sum(axis=-1).astype(np.int32)
    idx = np.argsort(-d, axis=-1, kind="stable").astype(np.int32)
    return cnt, idx


def dense_from_ordered(cnt, idx, ncols):
    out = np.zeros(idx.shape[:-1] + (ncols,), dtype=bool)
    valid = np.arange(idx.shape[-1]) < cnt[..., None]
    pos = np.nonzero(valid)
    out[pos[:-1] + (idx[pos],)] = True
    return out


class FakeDLPack:
    """A tensor-like object exposing only __dlpack__ / __dlpack_device__ (like a framework tensor)."""

    def __init__(self, a):
        self._a = np.ascontiguousarray(a)

    def __dlpack__(self, *args, **kwargs):
        return self._a.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self):
        return self._a.__dlpack_device__()


class FakeDeviceTensor:
    """A 'device' tensor: DLPack export refuses (not on the CPU), no __array__, but .cpu() gives a host tensor."""

    def __init__(self, a):
        self._a = np.ascontiguousarray(a)

    def __dlpack__(self, *args, **kwargs):
        raise BufferError("device tensor: cannot export to the host")

    def __dlpack_device__(self):
        return (2, 0)

    def cpu(self):
        return FakeDLPack(self._a)


@st.composite
def layouts(draw, max_heads=2):
    """Random varlen layouts over fixed blocks with random full/partial codes, any head mode, GQA ratios and an
    element mask drawn from causal / window / documents / token mask. Returns (layout, Hq, Hkv)."""
    import varblock.layout as vl

    lens_q = draw(seqlens)
    decodeish = draw(st.integers(0, 5)) == 0
    if decodeish:
        lens_q = [1] * len(lens_q)
    cross = decodeish or draw(st.booleans())
    lens_k = [draw(st.integers(0, 90)) for _ in lens_q] if cross else list(lens_q)
    bq, bk = draw(block), draw(block)
    Hkv = draw(st.integers(1, max_heads))
    ratio = draw(st.sampled_from([1, 2, 3]))
    Hq = Hkv * ratio
    mode = draw(st.sampled_from(["per_q_head", "per_kv_head", "broadcast"]))
    H = {"per_q_head": Hq, "per_kv_head": Hkv, "broadcast": 1}[mode]
    cu_q, cu_k = cu_of(lens_q), cu_of(lens_k)
    M, N = cdiv(lens_q, bq), cdiv(lens_k, bk)
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    codes = rng.integers(0, 3, size=(len(lens_q), H, max(int(M.max()), 1), max(int(N.max()), 1))).astype(np.int8)
    kw = {}
    kind = draw(st.sampled_from(["none", "causal", "window", "docs", "token"]))
    if kind == "causal":
        kw["causal"] = True
    elif kind == "window":
        kw.update(window_left=draw(st.sampled_from([0, 5, 20])), window_right=draw(st.sampled_from([-1, 0, 3])))
    elif kind == "docs":
        Tq, Tk = int(cu_q[-1]), int(cu_k[-1])
        kw.update(doc_ids_q=np.sort(rng.integers(0, 3, Tq)), doc_ids_k=np.sort(rng.integers(0, 3, Tk)))
    elif kind == "token":
        nb = max(int(cdiv(lens_k, bk).max()), 1)
        kw.update(token_mask=rng.random((H, int(cu_q[-1]), nb)) < 0.6, token_block_k=bk, causal=True)
    from varblock.layout import ElementMask

    lay = vl.from_block_mask(codes, cu_q, cu_k, block_q=bq, block_k=bk, head_mode=mode,
                             element_mask=ElementMask(**kw), padding="ignore")
    return lay, Hq, Hkv
