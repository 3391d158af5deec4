"""The canonical ``RowSpans`` themselves as an import format (validated)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._host import as_int, check_block_size, ragged_arange
from .build import build_from_cells, check_head_mode, resolve_cu
from .core import BlockSparseLayout, RowSpans
from .mask import ElementMask, resolve_mask
from .partition import fixed_partition, spans_partition


def from_row_spans(rows: RowSpans, cu_seqlens_q: Any, cu_seqlens_k: Any, num_heads: int,
                   head_mode: str | None = None, *, block_q: int | None = None, block_k: int | None = None,
                   element_mask: ElementMask | None = None, causal: bool | None = None,
                   window: tuple[int, int] | None = None) -> BlockSparseLayout:
    """Layout from the contract's ``RowSpans`` (validated: rows must tile every (head, sequence) in order, entries
    sorted by ``k_start`` and non-overlapping inside the full and the partial group, spans inside the sequence).
    With ``block_k`` the key spans must be that fixed partition's blocks; otherwise the key partition is the
    entries' distinct spans plus the gaps between them."""
    cu_q, cu_k = resolve_cu(cu_seqlens_q, cu_seqlens_k)
    if isinstance(num_heads, (bool, np.bool_)) or not isinstance(num_heads, (int, np.integer)) or num_heads < 1:
        raise ValueError(f"num_heads: expected a positive int, got {num_heads!r}")
    H = int(num_heads)
    B = cu_q.shape[0] - 1
    f = {}
    for nm in ("head", "batch", "q_start", "q_len", "ent_ptr", "n_full", "k_start", "k_len"):
        v = getattr(rows, nm, None)
        if v is None:
            raise TypeError(f"rows.{nm}: missing (expected a RowSpans)")
        f[nm] = as_int(v, f"rows.{nm}", ndim=1)
    R = f["head"].shape[0]
    for nm in ("batch", "q_start", "q_len", "n_full"):
        if f[nm].shape[0] != R:
            raise ValueError(f"rows.{nm}: expected {R} rows like rows.head, got {f[nm].shape[0]}")
    ptr = f["ent_ptr"]
    if ptr.shape[0] != R + 1 or (R >= 0 and ptr[0] != 0) or (np.diff(ptr) < 0).any():
        raise ValueError("rows.ent_ptr: expected non-decreasing CSR offsets [R+1] starting at 0")
    E = int(ptr[-1])
    for nm in ("k_start", "k_len"):
        if f[nm].shape[0] != E:
            raise ValueError(f"rows.{nm}: expected {E} entries (rows.ent_ptr[-1]), got {f[nm].shape[0]}")
    counts = np.diff(ptr)
    if (f["n_full"] < 0).any() or (f["n_full"] > counts).any():
        raise ValueError("rows.n_full: must lie in [0, entries of the row]")
    if ((f["head"] < 0) | (f["head"] >= H)).any():
        raise ValueError(f"rows.head: layout heads must lie in [0, {H})")
    if ((f["batch"] < 0) | (f["batch"] >= B)).any():
        raise ValueError(f"rows.batch: sequence indices must lie in [0, {B})")
    seg = f["head"] * B + f["batch"]
    bq = check_block_size(block_q, "block_q") if block_q is not None else None
    bk = check_block_size(block_k, "block_k") if block_k is not None else None
    qpart = spans_partition(cu_q, H, seg, f["q_start"], f["q_len"], "rows (query spans)")
    if bq is not None:
        fp = fixed_partition(cu_q, bq, H, "cu_seqlens_q")
        if not (np.array_equal(fp.start, qpart.start) and np.array_equal(fp.length, qpart.length)):
            raise ValueError(f"block_q: the rows are not the fixed query blocks of {bq} tokens")
    e_row = np.repeat(np.arange(R, dtype=np.int64), counts)
    ks, kl = f["k_start"], f["k_len"]
    lk = np.diff(cu_k.astype(np.int64))
    eb = f["batch"][e_row]
    if (kl < 1).any() or (ks < 0).any() or (ks + kl > lk[eb]).any():
        t = int(np.argmax((kl < 1) | (ks < 0) | (ks + kl > lk[eb])))
        raise ValueError(f"rows.k_start / rows.k_len: entry {t} spans [{int(ks[t])}, {int(ks[t] + kl[t])}) outside "
                         f"its sequence's {int(lk[eb[t]])} keys")
    _, pos = ragged_arange(counts)
    full = pos < np.repeat(f["n_full"], counts)
    if E > 1:
        same = (e_row[1:] == e_row[:-1]) & (full[1:] == full[:-1])
        if (same & (ks[1:] < ks[:-1])).any():
            t = int(np.argmax(same & (ks[1:] < ks[:-1]))) + 1
            raise ValueError(f"rows.k_start: entries of a row's full / partial group must be sorted by k_start; entry "
                             f"{t} ({int(ks[t])}) follows {int(ks[t - 1])}")
        if (same & (ks[1:] < ks[:-1] + kl[:-1])).any():
            t = int(np.argmax(same & (ks[1:] < ks[:-1] + kl[:-1]))) + 1
            raise ValueError(f"rows.k_start: entries {t - 1} and {t} of a row overlap")
    eseg = f["head"][e_row] * B + eb
    if bk is not None:
        kpart = fixed_partition(cu_k, bk, H, "cu_seqlens_k")
        kb = ks // bk
        if ((ks % bk != 0) | (kl != np.minimum(bk, lk[eb] - ks))).any():
            raise ValueError(f"block_k: the entries' key spans are not the fixed key blocks of {bk} tokens")
    else:
        key = (eseg * (int(lk.max()) + 1 if lk.size else 1) + ks)
        u, ui = np.unique(key, return_index=True)
        us, ul, useg = ks[ui], kl[ui], eseg[ui]
        if u.size > 1:
            nxt_same = useg[1:] == useg[:-1]
            if (nxt_same & (us[1:] < us[:-1] + ul[:-1])).any():
                raise ValueError("rows.k_start / rows.k_len: key spans of a (head, sequence) overlap without being "
                                 "identical; they must come from one key partition")
        conflict = kl != ul[np.searchsorted(u, key)]
        if conflict.any():
            raise ValueError("rows.k_len: two entries share a k_start with different lengths")
        # fill gaps: per segment, gaps between consecutive spans and at both ends
        nseg = H * B
        seg_len = np.tile(lk, H)
        end_prev = np.zeros(u.size, dtype=np.int64)
        if u.size:
            end_prev[1:] = np.where(useg[1:] == useg[:-1], us[:-1] + ul[:-1], 0)
        gap_s, gap_l, gap_seg = end_prev, us - end_prev, useg
        last = np.full(nseg, 0, dtype=np.int64)
        if u.size:
            lastidx = np.flatnonzero(np.r_[useg[1:] != useg[:-1], True])
            last[useg[lastidx]] = us[lastidx] + ul[lastidx]
        tail_l = seg_len - last
        all_s = np.concatenate([us, gap_s, last])
        all_l = np.concatenate([ul, gap_l, tail_l])
        all_seg = np.concatenate([useg, gap_seg, np.arange(nseg, dtype=np.int64)])
        keep = all_l > 0
        all_s, all_l, all_seg = all_s[keep], all_l[keep], all_seg[keep]
        o = np.lexsort((all_s, all_seg))
        kpart = spans_partition(cu_k, H, all_seg[o], all_s[o], all_l[o], "key spans")
        gk = np.searchsorted(kpart.seg() * (int(lk.max()) + 1 if lk.size else 1) + kpart.start, key)
        kb = gk - kpart.ptr[:-1][eseg]
    emask = resolve_mask(element_mask, causal, window)
    hm = check_head_mode(head_mode, H, "per_q_head")
    return build_from_cells(cu_q, cu_k, H, hm, qpart, kpart, e_row, kb, np.where(full, 2, 1), emask, bq, bk,
                            {"format": "row_spans"})


__all__ = ["from_row_spans"]
