"""Spans of the packed token axis (FlexAttention packed grids, FlashInfer variable blocks) split at
sequence boundaries into per-sequence partitions."""

from __future__ import annotations

import numpy as np

from ._host import exclusive_cumsum, ragged_arange
from .build import build_from_cells
from .partition import spans_partition


def split_spans(cu: np.ndarray, head: np.ndarray, start: np.ndarray, length: np.ndarray, B: int):
    """Split spans of the packed token axis at sequence boundaries.

    Returns pieces (span index, head, b, local start, length), ordered by (head, position) = (head, b, start)."""
    cu64 = cu.astype(np.int64)
    total = int(cu64[-1])
    s = start.astype(np.int64)
    e = np.minimum(s + length.astype(np.int64), total)
    valid = e > s
    b_lo = np.searchsorted(cu64, s, side="right") - 1
    b_hi = np.searchsorted(cu64, np.maximum(e - 1, 0), side="right") - 1
    n = np.where(valid, b_hi - b_lo + 1, 0)
    span, k = ragged_arange(n)
    b = b_lo[span] + k
    ps = np.maximum(s[span], cu64[b])
    pe = np.minimum(e[span], cu64[b + 1])
    keep = pe > ps  # empty sequences in between
    span, b, ps, pe = span[keep], b[keep], ps[keep], pe[keep]
    return span, head[span].astype(np.int64), b, ps - cu64[b], pe - ps


def packed_build(cu_q, cu_k, num_heads, head_mode, q_spans, k_spans, cells, emask, src, block_q=None,
                  block_k=None, auto=False):
    """Layout from per-head spans of the packed axes and kept cells (head, q span id, k span id, full)."""
    B = cu_q.shape[0] - 1
    qh, qs, ql = q_spans
    kh, ks, kl = k_spans
    q_span, q_head, q_b, q_start, q_len = split_spans(cu_q, qh, qs, ql, B)
    k_span, k_head, k_b, k_start, k_len = split_spans(cu_k, kh, ks, kl, B)
    qpart = spans_partition(cu_q, num_heads, q_head * B + q_b, q_start, q_len, "query spans")
    kpart = spans_partition(cu_k, num_heads, k_head * B + k_b, k_start, k_len, "key spans")
    ch, cq, ck, cfull = cells
    # sequences shared by the q span and the k span of each cell (pieces are sorted by span, then sequence)
    qb_lo, qb_hi = span_seq_range(q_span, q_b, qh.shape[0])
    kb_lo, kb_hi = span_seq_range(k_span, k_b, kh.shape[0])
    lo = np.maximum(qb_lo[cq], kb_lo[ck])
    hi = np.minimum(qb_hi[cq], kb_hi[ck])
    n = np.maximum(hi - lo + 1, 0)
    cell, t = ragged_arange(n)
    b = lo[cell] + t
    # piece of (span, b): key span*(B+1)+b is sorted in piece order
    qkey = q_span * (B + 1) + q_b
    kkey = k_span * (B + 1) + k_b
    want_q = cq[cell] * (B + 1) + b
    want_k = ck[cell] * (B + 1) + b
    iq = np.searchsorted(qkey, want_q)
    ik = np.searchsorted(kkey, want_k)
    ok = (iq < qkey.size) & (ik < kkey.size)
    ok[ok] &= (qkey[iq[ok]] == want_q[ok]) & (kkey[ik[ok]] == want_k[ok])
    cell, iq, ik = cell[ok], iq[ok], ik[ok]
    row = iq  # pieces are in qpart order
    kbi = ik - kpart.ptr[:-1][k_head[ik] * B + k_b[ik]]
    if auto:
        return build_from_cells(cu_q, cu_k, num_heads, head_mode, qpart, kpart, row, kbi, None, emask, block_q,
                                block_k, src, auto=np.ones(row.shape[0], dtype=np.bool_))
    return build_from_cells(cu_q, cu_k, num_heads, head_mode, qpart, kpart, row, kbi,
                            np.where(cfull[cell], 2, 1), emask, block_q, block_k, src)


def span_seq_range(span: np.ndarray, b: np.ndarray, nspan: int) -> tuple[np.ndarray, np.ndarray]:
    """First and last sequence each span's pieces fall in (hi < lo: none)."""
    count = np.bincount(span, minlength=nspan) if span.size else np.zeros(nspan, dtype=np.int64)
    first = exclusive_cumsum(count)[:-1]
    lo = np.zeros(nspan, dtype=np.int64)
    hi = np.full(nspan, -1, dtype=np.int64)
    nz = count > 0
    lo[nz] = b[first[nz]]
    hi[nz] = b[first[nz] + count[nz] - 1]
    return lo, hi


def aligned_block(cu: np.ndarray, block: int) -> int | None:
    """``block`` if every sequence starts on a multiple of it (pieces are then the fixed blocks)."""
    return block if (cu.astype(np.int64)[:-1] % block == 0).all() else None
