"""Building a layout from cells: argument resolution shared by importers and generators, and the
classification of (query span, key span) cells against an element mask (full / partial / empty)."""

from __future__ import annotations

import numpy as np

from ..abi import HEAD_MODES
from ._host import check_cu_seqlens, exclusive_cumsum, ragged_arange
from .core import BlockSparseLayout
from .mask import ElementMask, band_classify
from .partition import Partition


def check_head_mode(head_mode: str | None, num_heads: int, default: str) -> str:
    """The head mode to use for ``num_heads`` layout heads (``default`` when None)."""
    if head_mode is None:
        return "broadcast" if num_heads == 1 else default
    if head_mode not in HEAD_MODES:
        raise ValueError(f"head_mode: expected one of {HEAD_MODES}, got {head_mode!r}")
    if head_mode == "broadcast" and num_heads != 1:
        raise ValueError(f"head_mode: 'broadcast' needs exactly 1 layout head, the input has {num_heads}")
    return head_mode


def resolve_cu(cu_seqlens_q, cu_seqlens_k) -> tuple[np.ndarray, np.ndarray]:
    """Validated int32 host cu_seqlens_q / cu_seqlens_k (k defaults to q) of one batch size."""
    cu_q = check_cu_seqlens(cu_seqlens_q, "cu_seqlens_q")
    cu_k = cu_q if cu_seqlens_k is None else check_cu_seqlens(cu_seqlens_k, "cu_seqlens_k")
    if cu_k.shape != cu_q.shape:
        raise ValueError(f"cu_seqlens_k: expected shape {tuple(cu_q.shape)} (same batch as cu_seqlens_q), got "
                         f"{tuple(cu_k.shape)}")
    return cu_q, cu_k


def classify(cu_q: np.ndarray, cu_k: np.ndarray, num_heads: int, qpart: Partition, kpart: Partition,
             mask: ElementMask, c_row: np.ndarray, c_kg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For candidate cells (row index, global key-span index): (every pair allowed, no pair allowed) under
    ``mask`` (validated). 'all' and 'none' are sound; undecidable cells are reported as neither (partial)."""
    B = cu_q.shape[0] - 1
    n = c_row.shape[0]
    all_ = np.ones(n, dtype=np.bool_)
    none = np.zeros(n, dtype=np.bool_)
    if n == 0 or mask.is_empty:
        return all_, none
    row_seg = qpart.seg()
    seg = row_seg[c_row]
    b = seg % B
    qs = qpart.start[c_row].astype(np.int64)
    ql = qpart.length[c_row].astype(np.int64)
    ks = kpart.start[c_kg].astype(np.int64)
    kl = kpart.length[c_kg].astype(np.int64)
    lo, hi = mask.band
    if lo is not None or hi is not None:
        off = (np.diff(cu_k.astype(np.int64)) - np.diff(cu_q.astype(np.int64)))[b]
        a, z = band_classify(qs, ql, ks, kl, off, lo, hi, sinks=mask.num_sink_tokens)
        all_ &= a
        none |= z
    if mask.doc_ids_q is not None or mask.token_mask is not None:
        # per-row reductions over the row's query tokens (rows tile the tokens of each (head, sequence))
        rseg_all = row_seg
        gq_start = cu_q.astype(np.int64)[rseg_all % B] + qpart.start
        gather_q = _span_gather(gq_start, qpart.length.astype(np.int64))
        offs_q = exclusive_cumsum(qpart.length.astype(np.int64))[:-1]
        if mask.doc_ids_q is not None:
            kseg = kpart.seg()
            gk_start = cu_k.astype(np.int64)[kseg % B] + kpart.start
            gather_k = _span_gather(gk_start, kpart.length.astype(np.int64))
            offs_k = exclusive_cumsum(kpart.length.astype(np.int64))[:-1]
            dq = mask.doc_ids_q[gather_q]
            dk = mask.doc_ids_k[gather_k]
            if qpart.size and dq.size:
                qmin, qmax = np.minimum.reduceat(dq, offs_q), np.maximum.reduceat(dq, offs_q)
            else:
                qmin = qmax = np.zeros(qpart.size, dtype=np.int32)
            if kpart.size and dk.size:
                kmin, kmax = np.minimum.reduceat(dk, offs_k), np.maximum.reduceat(dk, offs_k)
            else:
                kmin = kmax = np.zeros(kpart.size, dtype=np.int32)
            a1, a2, b1, b2 = qmin[c_row], qmax[c_row], kmin[c_kg], kmax[c_kg]
            all_ &= (a1 == a2) & (b1 == b2) & (a1 == b1)
            none |= (a2 < b1) | (b2 < a1)
        if mask.token_mask is not None:
            tm = mask.token_mask
            tbk = mask.token_block_k
            hm_row = (rseg_all // B) if tm.shape[0] > 1 else np.zeros(qpart.size, dtype=np.int64)
            rows_needed = np.unique(c_row)
            # reduce only the rows some cell needs
            lens = qpart.length.astype(np.int64)[rows_needed]
            g = _span_gather(gq_start[rows_needed], lens)
            hm_tok = np.repeat(hm_row[rows_needed], lens)
            vals = tm[hm_tok, g]  # [sum lens, max_nb]
            offs = exclusive_cumsum(lens)[:-1]
            anyc = np.logical_or.reduceat(vals, offs, axis=0)
            allc = np.logical_and.reduceat(vals, offs, axis=0)
            pos = np.searchsorted(rows_needed, c_row)
            c0 = ks // tbk
            c1 = (ks + kl - 1) // tbk
            cs_any = np.zeros((anyc.shape[0], anyc.shape[1] + 1), dtype=np.int64)
            cs_all = np.zeros_like(cs_any)
            np.cumsum(anyc, axis=1, out=cs_any[:, 1:])
            np.cumsum(allc, axis=1, out=cs_all[:, 1:])
            n_any = cs_any[pos, c1 + 1] - cs_any[pos, c0]
            n_all = cs_all[pos, c1 + 1] - cs_all[pos, c0]
            all_ &= n_all == (c1 - c0 + 1)
            none |= n_any == 0
    return all_ & ~none, none


def _span_gather(starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Token indices of consecutive spans (start, length), concatenated."""
    seg, pos = ragged_arange(lens)
    return starts[seg] + pos


def build_from_cells(cu_q, cu_k, num_heads, head_mode, qpart, kpart, c_row, c_kb, code, mask, block_q, block_k,
                     source=None, auto=None):
    """Common tail of importers: cells (row, key block index in the row's key partition) with codes
    1 = partial, 2 = full, or (``auto`` = bool array of kept cells) classified against the element mask."""
    mask = mask.validated(cu_q, cu_k, num_heads)
    c_row = np.asarray(c_row, dtype=np.int64)
    c_kb = np.asarray(c_kb, dtype=np.int64)
    if auto is not None:
        if mask.is_empty:
            full = np.ones(c_row.shape[0], dtype=np.bool_)
        else:
            kg = kpart.ptr[:-1][qpart.seg()[c_row]] + c_kb
            all_, none = classify(cu_q, cu_k, num_heads, qpart, kpart, mask, c_row, kg)
            keep = ~none
            if not keep.all():
                c_row, c_kb, all_ = c_row[keep], c_kb[keep], all_[keep]
            full = all_
    else:
        full = np.asarray(code) == 2
    return BlockSparseLayout._build(cu_q, cu_k, num_heads, head_mode, qpart, kpart, c_row, c_kb, full, mask,
                                    block_q, block_k, source, mask_validated=True)
