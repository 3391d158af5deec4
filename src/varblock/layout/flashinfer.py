"""FlashInfer variable block sizes (``VariableBlockSparseAttentionWrapper`` inputs): import and export."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._common import nonzero_nd, pos_str
from ._host import INT32_MAX, as_bool, as_int
from .build import check_head_mode, resolve_cu
from .core import BlockSparseLayout
from .mask import ElementMask, resolve_mask
from .packed import packed_build


def from_flashinfer(block_mask_map: Any, block_row_sz: Any, block_col_sz: Any, cu_seqlens_q: Any = None,
                    cu_seqlens_k: Any = None, *, head_mode: str | None = None,
                    element_mask: ElementMask | None = None, causal: bool | None = None,
                    window: tuple[int, int] | None = None) -> BlockSparseLayout:
    """Layout from FlashInfer ``VariableBlockSparseAttentionWrapper.plan`` inputs: ``block_mask_map`` bool
    ``[Hkv, MB, NB]``, ``block_row_sz [Hkv, MB]`` and ``block_col_sz [Hkv, NB]`` (positive token counts; each
    head's sizes sum to the query / key length). Heads are KV heads (``per_kv_head``). Without ``cu_seqlens_*`` the
    batch is one sequence; with them the spans tile the packed tokens and are split at sequence boundaries.
    Kept blocks are full unless the element mask (``causal=`` etc.) cuts them; note FlashInfer's own ``causal``
    flag has gathered-index semantics, varblock's is position-based (docs/layout.md)."""
    m = as_bool(block_mask_map, "block_mask_map", ndim=3)
    rsz = as_int(block_row_sz, "block_row_sz", ndim=2)
    csz = as_int(block_col_sz, "block_col_sz", ndim=2)
    H, MB, NB = m.shape
    if rsz.shape != (H, MB):
        raise ValueError(f"block_row_sz: expected shape ({H}, {MB}) to match block_mask_map, got {tuple(rsz.shape)}")
    if csz.shape != (H, NB):
        raise ValueError(f"block_col_sz: expected shape ({H}, {NB}) to match block_mask_map, got {tuple(csz.shape)}")
    for nm, s in (("block_row_sz", rsz), ("block_col_sz", csz)):
        if (s < 1).any():
            t = int(np.argmax((s < 1).ravel()))
            raise ValueError(f"{nm}: block sizes must be positive, got {int(s.ravel()[t])} at {pos_str(t, s.shape)}")
    tq = rsz.sum(axis=1)
    tk = csz.sum(axis=1)
    for nm, t in (("block_row_sz", tq), ("block_col_sz", tk)):
        if H and (t != t[0]).any():
            raise ValueError(f"{nm}: every head's sizes must sum to the same length, got {t.tolist()}")
        if H and int(t[0]) > INT32_MAX:
            raise ValueError(f"{nm}: total length {int(t[0])} exceeds the int32 range")
    if cu_seqlens_q is None:
        cu_seqlens_q = [0, int(tq[0]) if H else 0]
        if cu_seqlens_k is None:
            cu_seqlens_k = [0, int(tk[0]) if H else 0]
    cu_q, cu_k = resolve_cu(cu_seqlens_q, cu_seqlens_k)
    if H and (int(cu_q[-1]) != int(tq[0]) or int(cu_k[-1]) != int(tk[0])):
        raise ValueError(f"block_row_sz / block_col_sz: sizes sum to {int(tq[0])} query / {int(tk[0])} key tokens, "
                         f"cu_seqlens hold {int(cu_q[-1])} / {int(cu_k[-1])}")
    emask = resolve_mask(element_mask, causal, window)
    hq = np.repeat(np.arange(H, dtype=np.int64), MB)
    qs = (np.cumsum(rsz, axis=1) - rsz).reshape(-1)
    hk = np.repeat(np.arange(H, dtype=np.int64), NB)
    ks = (np.cumsum(csz, axis=1) - csz).reshape(-1)
    h, i, j = nonzero_nd(m)
    cells = (h.astype(np.int64), h * MB + i, h * NB + j, np.ones(h.shape[0], dtype=np.bool_))
    hm = check_head_mode(head_mode, H, "per_kv_head")
    return packed_build(cu_q, cu_k, H, hm, (hq, qs, rsz.reshape(-1)), (hk, ks, csz.reshape(-1)), cells, emask,
                         {"format": "flashinfer"}, auto=True)


def to_flashinfer(layout: BlockSparseLayout) -> dict[str, np.ndarray]:
    """Export as FlashInfer variable-block inputs over the packed tokens: ``block_mask_map`` bool
    ``[Hl, MB, NB]``, ``block_row_sz [Hl, MB]``, ``block_col_sz [Hl, NB]`` (int32). Every layout head must have the
    same number of query spans and of key spans. FlashInfer has no full/partial distinction: the element mask of
    partial entries is not represented (pass it to FlashInfer separately if it has an equivalent)."""
    H = layout.num_heads
    qp, kp = layout.query_partition, layout.key_partition
    B = layout.batch_size
    qh = qp.seg() // max(B, 1)
    kh = kp.seg() // max(B, 1)
    nq = np.bincount(qh, minlength=H)
    nk = np.bincount(kh, minlength=H)
    if (nq != nq[0]).any() or (nk != nk[0]).any():
        raise ValueError("layout: FlashInfer needs the same number of query spans and of key spans in every head")
    MB, NB = int(nq[0]), int(nk[0])
    rs = layout.rows()
    counts = np.diff(rs.ent_ptr)
    e_row = np.repeat(np.arange(rs.num_rows, dtype=np.int64), counts)
    kg = layout.entry_global_key_index()
    h = rs.head[e_row].astype(np.int64)
    out = np.zeros((H, MB, NB), dtype=np.bool_)
    out[h, e_row - h * MB, kg - h * NB] = True
    return {"block_mask_map": out, "block_row_sz": qp.length.reshape(H, MB).astype(np.int32),
            "block_col_sz": kp.length.reshape(H, NB).astype(np.int32)}


__all__ = ["from_flashinfer", "to_flashinfer"]
