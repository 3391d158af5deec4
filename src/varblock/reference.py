"""Float64 NumPy references of varblock's operations, driven by a :class:`~varblock.layout.BlockSparseLayout`.

They walk the layout the way the kernels do: one row (query span) at a time, gathering only the key spans of its
kept entries, applying the element mask to partial entries only. Loops run per sequence, head and row (never per
token); every inner computation is vectorised. Conventions (docs/contracts.md, DESIGN.md section 6):

* ``q [total_q, Hq, D]``, ``k [total_k, Hkv, D]``, ``v [total_k, Hkv, Dv]``; ``Hq`` a multiple of ``Hkv`` (GQA);
  layout head of query head ``hq`` per ``layout.head_mode``.
* ``lse [Hq, total_q]`` natural log; rows with no attended key: ``out = 0``, ``lse = -inf``.
* ``softmax_scale`` defaults to ``1 / sqrt(D)``.

Only NumPy is imported.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .layout._host import cdiv, ragged_arange, to_host
from .layout.core import BlockSparseLayout

__all__ = ["attention_forward", "attention_backward", "attention_pooling_1d", "attention_pooling_2d", "decode",
           "merge_states"]


def _f64(x: Any, name: str, ndim: int) -> np.ndarray:
    a = to_host(x, name)
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)) or a.dtype == np.bool_:
        raise TypeError(f"{name}: expected a floating-point array, got dtype {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array, got shape {tuple(a.shape)}")
    return a.astype(np.float64)


def _check_qkv(q, k, v, layout: BlockSparseLayout):
    if not isinstance(layout, BlockSparseLayout):
        raise TypeError(f"layout: expected a BlockSparseLayout, got {type(layout).__name__}")
    q = _f64(q, "q", 3)
    k = _f64(k, "k", 3)
    v = _f64(v, "v", 3) if v is not None else k[:, :, :0]
    if q.shape[0] != layout.total_q:
        raise ValueError(f"q: expected {layout.total_q} tokens (cu_seqlens_q[-1]), got shape {tuple(q.shape)}")
    if k.shape[0] != layout.total_k or v.shape[0] != layout.total_k:
        raise ValueError(f"k / v: expected {layout.total_k} tokens (cu_seqlens_k[-1]), got shapes {tuple(k.shape)} / "
                         f"{tuple(v.shape)}")
    if k.shape[1] != v.shape[1]:
        raise ValueError(f"v: expected {k.shape[1]} KV heads like k, got shape {tuple(v.shape)}")
    if q.shape[2] != k.shape[2]:
        raise ValueError(f"k: expected head dim {q.shape[2]} like q, got shape {tuple(k.shape)}")
    hmap = layout.check_compatible(q.shape[1], k.shape[1])
    return q, k, v, hmap


def _scale(softmax_scale, D):
    if softmax_scale is None:
        return 1.0 / np.sqrt(D)
    return float(softmax_scale)


def _row_plan(layout: BlockSparseLayout):
    """Yield (b, hl, q0, q_len, key token indices (sequence-relative), allowed [q_len, n_keys]) per row with
    entries. Vectorised inside the row."""
    rs = layout.rows()
    cu_q, cu_k = layout.cu_seqlens_q.astype(np.int64), layout.cu_seqlens_k.astype(np.int64)
    lq_all, lk_all = layout.seqlens_q, layout.seqlens_k
    for r in range(rs.num_rows):
        e0, e1 = int(rs.ent_ptr[r]), int(rs.ent_ptr[r + 1])
        if e0 == e1:
            continue
        b, hl = int(rs.batch[r]), int(rs.head[r])
        qs, ql = int(rs.q_start[r]), int(rs.q_len[r])
        ks = rs.k_start[e0:e1].astype(np.int64)
        kl = rs.k_len[e0:e1].astype(np.int64)
        seg, pos = ragged_arange(kl)
        keys = ks[seg] + pos
        is_full = seg < int(rs.n_full[r])
        qi = np.arange(qs, qs + ql)
        allowed = np.broadcast_to(is_full[None, :], (ql, keys.size)).copy()
        if not is_full.all():
            part = ~is_full
            allowed[:, part] = layout.mask.evaluate(qi[:, None], keys[part][None, :], head=hl,
                                                    len_q=int(lq_all[b]), len_k=int(lk_all[b]), q0=int(cu_q[b]),
                                                    k0=int(cu_k[b]))
        yield b, hl, int(cu_q[b]) + qs, ql, int(cu_k[b]) + keys, allowed


def _probs(qr, kr, allowed, scale, lse=None):
    """qr [ql, nh, D], kr [nk, nh, D] -> (P [nh, ql, nk], lse [nh, ql]) with masked entries 0."""
    s = np.einsum("qhd,khd->hqk", qr, kr) * scale
    s = np.where(allowed[None], s, -np.inf)
    if lse is None:
        m = s.max(axis=2, keepdims=True)
        m_safe = np.where(np.isfinite(m), m, 0.0)
        ssum = np.exp(s - m_safe).sum(axis=2, keepdims=True)
        with np.errstate(divide="ignore"):
            lse = (np.log(ssum) + m_safe)[..., 0]
        lse = np.where(np.isfinite(m[..., 0]), lse, -np.inf)
    lse_safe = np.where(np.isfinite(lse), lse, 0.0)
    p = np.where(allowed[None] & np.isfinite(lse)[..., None], np.exp(s - lse_safe[..., None]), 0.0)
    return p, lse


def _heads(hmap: np.ndarray, Hq: int, Hkv: int):
    groups = {}
    for hq in range(Hq):  # per head (not per token)
        groups.setdefault(int(hmap[hq]), []).append(hq)
    ratio = Hq // Hkv
    return {hl: (np.array(hs), np.array(hs) // ratio) for hl, hs in groups.items()}


def attention_forward(q: Any, k: Any, v: Any, layout: BlockSparseLayout, *,
                      softmax_scale: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Varlen block-sparse attention forward: ``(out [total_q, Hq, Dv], lse [Hq, total_q])`` in float64."""
    q, k, v, hmap = _check_qkv(q, k, v, layout)
    Hq, Hkv, D, Dv = q.shape[1], k.shape[1], q.shape[2], v.shape[2]
    scale = _scale(softmax_scale, D)
    out = np.zeros((q.shape[0], Hq, Dv), dtype=np.float64)
    lse = np.full((Hq, q.shape[0]), -np.inf, dtype=np.float64)
    heads = _heads(hmap, Hq, Hkv)
    for _, hl, gq0, ql, keys, allowed in _row_plan(layout):
        if hl not in heads:
            continue
        hqs, kvh = heads[hl]
        qr = q[gq0:gq0 + ql][:, hqs]
        kr = k[keys][:, kvh]
        vr = v[keys][:, kvh]
        p, l_ = _probs(qr, kr, allowed, scale)
        out[gq0:gq0 + ql, hqs] = np.einsum("hqk,khd->qhd", p, vr)
        lse[hqs, gq0:gq0 + ql] = l_
    return out, lse


def attention_backward(dout: Any, q: Any, k: Any, v: Any, out: Any, lse: Any, layout: BlockSparseLayout, *,
                       softmax_scale: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients ``(dq [total_q, Hq, D], dk [total_k, Hkv, D], dv [total_k, Hkv, Dv])`` given the forward's
    ``out`` and ``lse`` (as the kernels do: P is recomputed from ``lse``; rows with ``lse = -inf`` contribute 0).
    GQA: ``dk``/``dv`` sum over the query heads of each group."""
    q, k, v, hmap = _check_qkv(q, k, v, layout)
    Hq, Hkv, D, Dv = q.shape[1], k.shape[1], q.shape[2], v.shape[2]
    do = _f64(dout, "dout", 3)
    o = _f64(out, "out", 3)
    if do.shape != (q.shape[0], Hq, Dv) or o.shape != do.shape:
        raise ValueError(f"dout / out: expected shape {(q.shape[0], Hq, Dv)}, got {tuple(do.shape)} / "
                         f"{tuple(o.shape)}")
    ls = _f64(lse, "lse", 2)
    if ls.shape != (Hq, q.shape[0]):
        raise ValueError(f"lse: expected shape {(Hq, q.shape[0])}, got {tuple(ls.shape)}")
    scale = _scale(softmax_scale, D)
    delta = np.einsum("thd,thd->ht", do, o)  # [Hq, total_q]
    dq = np.zeros_like(q)
    dk = np.zeros_like(k)
    dv = np.zeros_like(v)
    heads = _heads(hmap, Hq, Hkv)
    for _, hl, gq0, ql, keys, allowed in _row_plan(layout):
        if hl not in heads:
            continue
        hqs, kvh = heads[hl]
        sl = slice(gq0, gq0 + ql)
        qr = q[sl][:, hqs]
        kr = k[keys][:, kvh]
        vr = v[keys][:, kvh]
        p, _ = _probs(qr, kr, allowed, scale, lse=ls[hqs, sl])
        dor = do[sl][:, hqs]
        dp = np.einsum("qhd,khd->hqk", dor, vr)
        ds = p * (dp - delta[hqs, sl][..., None])
        dq[sl, hqs] += scale * np.einsum("hqk,khd->qhd", ds, kr)
        np.add.at(dk, (keys[:, None], kvh[None, :]), scale * np.einsum("hqk,qhd->khd", ds, qr))
        np.add.at(dv, (keys[:, None], kvh[None, :]), np.einsum("hqk,qhd->khd", p, dor))
    return dq, dk, dv


def attention_pooling_1d(q: Any, k: Any, layout: BlockSparseLayout, *, block_k: int | None = None,
                         softmax_scale: float | None = None) -> np.ndarray:
    """SeerAttention 1D pooling: for every query token and key block of ``block_k`` tokens (default
    ``layout.block_k``), the largest attention probability of the (sparse) softmax inside that block; not
    renormalised. float64 ``[Hq, total_q, max_nb]``, ``nb_b = ceil(len_k_b / block_k)``; columns beyond a
    sequence's blocks and blocks never attended are 0."""
    q, k, _, hmap = _check_qkv(q, k, None, layout)
    bk = block_k if block_k is not None else layout.block_k
    if bk is None or int(bk) < 1:
        raise ValueError("block_k: required (positive) for a layout with variable key spans")
    bk = int(bk)
    Hq, Hkv, D = q.shape[1], k.shape[1], q.shape[2]
    scale = _scale(softmax_scale, D)
    lk = layout.seqlens_k
    max_nb = int(cdiv(lk, bk).max()) if lk.size else 0
    pool = np.zeros((Hq, q.shape[0], max_nb), dtype=np.float64)
    heads = _heads(hmap, Hq, Hkv)
    cu_k = layout.cu_seqlens_k.astype(np.int64)
    for b, hl, gq0, ql, keys, allowed in _row_plan(layout):
        if hl not in heads:
            continue
        hqs, kvh = heads[hl]
        p, _ = _probs(q[gq0:gq0 + ql][:, hqs], k[keys][:, kvh], allowed, scale)
        local = keys - cu_k[b]
        order = np.argsort(local, kind="stable")
        blk = local[order] // bk
        starts = np.flatnonzero(np.r_[True, blk[1:] != blk[:-1]])
        mx = np.maximum.reduceat(p[:, :, order], starts, axis=2)  # [nh, ql, nblocks touched]
        pool[np.ix_(hqs, np.arange(gq0, gq0 + ql), blk[starts])] = mx  # each (head, token) is in one row
    return pool


def attention_pooling_2d(q: Any, k: Any, layout: BlockSparseLayout, *, block_q: int | None = None,
                         block_k: int | None = None, softmax_scale: float | None = None) -> np.ndarray:
    """SeerAttention 2D pooling: per query block x key block, the largest attention probability, each block row
    then divided by its sum (rows with nothing attended stay 0). float64 ``[B, Hq, max M_b, max N_b]``."""
    bq = block_q if block_q is not None else layout.block_q
    bk = block_k if block_k is not None else layout.block_k
    if bq is None or bk is None or int(bq) < 1 or int(bk) < 1:
        raise ValueError("block_q / block_k: required (positive) for a layout with variable spans")
    bq, bk = int(bq), int(bk)
    p1 = attention_pooling_1d(q, k, layout, block_k=bk, softmax_scale=softmax_scale)
    B = layout.batch_size
    lq, lk = layout.seqlens_q, layout.seqlens_k
    M, N = cdiv(lq, bq), cdiv(lk, bk)
    maxM = int(M.max()) if B else 0
    maxN = int(N.max()) if B else 0
    Hq = p1.shape[0]
    out = np.zeros((B, Hq, maxM, maxN), dtype=np.float64)
    cu_q = layout.cu_seqlens_q.astype(np.int64)
    for b in range(B):  # per sequence
        if lq[b] == 0:
            continue
        tok = p1[:, cu_q[b]:cu_q[b + 1], :maxN]
        starts = np.arange(0, int(lq[b]), bq)
        blk = np.maximum.reduceat(tok, starts, axis=1)  # [Hq, M_b, maxN]
        out[b, :, :blk.shape[1]] = blk
    rowsum = out.sum(axis=3, keepdims=True)
    return np.where(rowsum > 0, out / np.where(rowsum > 0, rowsum, 1.0), 0.0)


def decode(q: Any, k: Any, v: Any, layout: BlockSparseLayout, *,
           softmax_scale: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Block-sparse decode: one query token per sequence (``q [B, Hq, D]``) against a varlen KV
    (``k/v [total_k, Hkv, D]``, ``layout.cu_seqlens_k``); the layout's ``cu_seqlens_q`` must be ``arange(B+1)``.
    Returns ``(out [B, Hq, Dv], lse [Hq, B])``."""
    B = layout.batch_size
    if not np.array_equal(layout.cu_seqlens_q, np.arange(B + 1)):
        raise ValueError("layout: a decode layout has one query token per sequence (cu_seqlens_q = arange(B+1))")
    qq = _f64(q, "q", 3)
    if qq.shape[0] != B:
        raise ValueError(f"q: expected [{B}, Hq, D] (one token per sequence), got shape {tuple(qq.shape)}")
    return attention_forward(qq, k, v, layout, softmax_scale=softmax_scale)


def merge_states(out_parts: Any, lse_parts: Any) -> tuple[np.ndarray, np.ndarray]:
    """Combine split-KV partial results: ``out_parts [S, total_q, H, D]``, ``lse_parts [S, H, total_q]`` ->
    ``(out [total_q, H, D], lse [H, total_q])``. Partials with ``lse = -inf`` contribute nothing (their ``out`` is
    ignored, even NaN); when every partial is ``-inf`` the row gives ``out = 0``, ``lse = -inf``."""
    o = _f64(out_parts, "out_parts", 4)
    ls = _f64(lse_parts, "lse_parts", 3)
    S, T, H, D = o.shape
    if ls.shape != (S, H, T):
        raise ValueError(f"lse_parts: expected shape {(S, H, T)} to match out_parts {tuple(o.shape)}, got "
                         f"{tuple(ls.shape)}")
    if np.isnan(ls).any() or np.isposinf(ls).any():
        raise ValueError("lse_parts: NaN or +inf log-sum-exp values")
    if S == 0:
        return np.zeros((T, H, D)), np.full((H, T), -np.inf)
    m = ls.max(axis=0)  # [H, T]
    fin = np.isfinite(m)
    m_safe = np.where(fin, m, 0.0)
    w = np.where(np.isfinite(ls), np.exp(ls - m_safe[None]), 0.0)  # [S, H, T]
    wsum = w.sum(axis=0)
    with np.errstate(divide="ignore"):
        lse = np.where(fin, np.log(np.where(fin, wsum, 1.0)) + m_safe, -np.inf)
    wn = np.where(fin[None], w / np.where(fin, wsum, 1.0)[None], 0.0)  # [S, H, T]
    wt = np.transpose(wn, (0, 2, 1))[..., None]  # [S, T, H, 1]
    with np.errstate(invalid="ignore"):
        out = np.where(wt > 0, wt * o, 0.0).sum(axis=0)
    return out, lse
