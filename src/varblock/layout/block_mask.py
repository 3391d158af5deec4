"""Dense block masks (bool kept blocks or 0/1/2 codes) over per-sequence fixed blocks."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._common import nonzero_nd, padding_arg, pos_str, seq_blocks
from ._host import check_block_size, to_host
from .build import build_from_cells, check_head_mode, resolve_cu
from .core import BlockSparseLayout
from .mask import ElementMask, resolve_mask
from .partition import fixed_partition


def from_block_mask(mask: Any, cu_seqlens_q: Any, cu_seqlens_k: Any = None, *, block_q: int = 128,
                    block_k: int = 128, head_mode: str | None = None, element_mask: ElementMask | None = None,
                    causal: bool | None = None, window: tuple[int, int] | None = None,
                    padding: str = "error", source: dict | None = None) -> BlockSparseLayout:
    """Layout from a dense block mask over per-sequence blocks of ``block_q`` x ``block_k`` tokens.

    ``mask`` forms (``M_b = ceil(len_q_b / block_q)``, ``N_b = ceil(len_k_b / block_k)``, ``TM = sum M_b``,
    ``TN = sum N_b``):

    * ``[H, TM, TN]`` packed block-diagonal grid (row = global query block, column = global key block; only the
      diagonal sequence blocks may be set), or ``[H, TM, max N_b]`` (column = key block inside the sequence);
    * ``[B, H, max M_b, max N_b]`` padded per sequence (SeerAttention 2D style; ``B`` may be 1 = broadcast);
    * ``[TM, ...]`` 2-D = one head.

    Values: bool (kept blocks, classified against the element mask: full where it allows every pair, dropped where
    it allows none, partial otherwise) or integers 0 = skip, 1 = partial, 2 = full (taken as given).
    ``padding='error'`` rejects set cells outside a sequence's blocks, ``'ignore'`` drops them.
    """
    cu_q, cu_k = resolve_cu(cu_seqlens_q, cu_seqlens_k)
    bq = check_block_size(block_q, "block_q")
    bk = check_block_size(block_k, "block_k")
    ignore = padding_arg(padding)
    emask = resolve_mask(element_mask, causal, window)
    a = to_host(mask, "mask")
    if a.dtype == np.bool_:
        auto = True
    elif np.issubdtype(a.dtype, np.integer):
        auto = False
        bad = (a < 0) | (a > 2)
        if bad.any():
            raise ValueError(f"mask: integer block codes must be 0 (skip), 1 (partial) or 2 (full); found "
                             f"{int(a[bad][0])} at {pos_str(int(np.flatnonzero(bad.ravel())[0]), a.shape)}")
    else:
        raise TypeError(f"mask: expected a bool or integer block mask, got dtype {a.dtype}")
    B = cu_q.shape[0] - 1
    M, cu_m = seq_blocks(cu_q, bq)
    N, cu_n = seq_blocks(cu_k, bk)
    TM, TN = int(cu_m[-1]), int(cu_n[-1])
    maxM = int(M.max()) if B else 0
    maxN = int(N.max()) if B else 0
    if a.ndim == 2:
        a = a[None]
    if a.ndim == 3:
        H, tm_, x = a.shape
        if tm_ != TM or x not in (TN, maxN):
            raise ValueError(f"mask: expected shape [H, {TM}, {TN}] (packed block-diagonal grid) or [H, {TM}, "
                             f"{maxN}] (key blocks per sequence) for these cu_seqlens and block sizes "
                             f"({bq}, {bk}), got {tuple(a.shape)}")
        h, i, j = nonzero_nd(a)
        seq_m = np.repeat(np.arange(B, dtype=np.int64), M)
        b = seq_m[i]
        if x == TN and TN != maxN:
            seq_n = np.repeat(np.arange(B, dtype=np.int64), N)
            bad = seq_n[j] != b
            kb = j - cu_n[b]
            what = "pairs a query block of sequence {} with a key block of sequence {}"
        else:
            bad = j >= N[b]
            kb = j
            what = "is beyond the key blocks of sequence {} ({} blocks)"
        if bad.any():
            if not ignore:
                t = int(np.argmax(bad))
                arg = (int(b[t]), int(seq_n[j[t]])) if (x == TN and TN != maxN) else (int(b[t]), int(N[b[t]]))
                raise ValueError(f"mask: set cell {(int(h[t]), int(i[t]), int(j[t]))} " + what.format(*arg))
            keep = ~bad
            h, i, kb = h[keep], i[keep], kb[keep]
            vals = a[h, i, j[keep]] if not auto else None
        else:
            vals = a[h, i, j] if not auto else None
        row = h.astype(np.int64) * TM + i
    elif a.ndim == 4:
        Bm, H, mb, nb = a.shape
        if Bm not in (1, B) or mb < maxM or nb < maxN:
            raise ValueError(f"mask: expected shape [{B} (or 1), H, >= {maxM}, >= {maxN}] (padded per sequence), "
                             f"got {tuple(a.shape)}")
        a4 = np.broadcast_to(a, (B, H, mb, nb)) if Bm != B else a
        bb, h, m, n = nonzero_nd(a4)
        bad = (m >= M[bb]) | (n >= N[bb])
        if bad.any():
            if not ignore:
                t = int(np.argmax(bad))
                raise ValueError(f"mask: set cell {(int(bb[t]), int(h[t]), int(m[t]), int(n[t]))} is outside "
                                 f"sequence {int(bb[t])} ({int(M[bb[t]])} x {int(N[bb[t]])} blocks); use "
                                 f"padding='ignore' to drop padding cells")
            keep = ~bad
            bb, h, m, n = bb[keep], h[keep], m[keep], n[keep]
        vals = a4[bb, h, m, n] if not auto else None
        row = h.astype(np.int64) * TM + cu_m[bb] + m
        kb = n
    else:
        raise ValueError(f"mask: expected a 2-D, 3-D or 4-D block mask, got shape {tuple(a.shape)}")
    hm = check_head_mode(head_mode, H, "per_q_head")
    qpart = fixed_partition(cu_q, bq, H, "cu_seqlens_q")
    kpart = fixed_partition(cu_k, bk, H, "cu_seqlens_k")
    src = {"format": "block_mask"} if source is None else source
    if auto:
        return build_from_cells(cu_q, cu_k, H, hm, qpart, kpart, row, kb, None, emask, bq, bk, src,
                                auto=np.ones(row.shape[0], dtype=np.bool_))
    return build_from_cells(cu_q, cu_k, H, hm, qpart, kpart, row, kb, vals, emask, bq, bk, src)


__all__ = ["from_block_mask"]
