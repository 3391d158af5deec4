"""SeerAttention masks: 2D block masks and 1D token-level masks (query token x key block)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._common import all_cells, block_pair, padding_arg, seq_blocks
from ._host import as_bool, check_block_size, ragged_arange
from .block_mask import from_block_mask
from .build import build_from_cells, check_head_mode, resolve_cu
from .core import BlockSparseLayout
from .mask import ElementMask, resolve_mask
from .partition import fixed_partition


def from_seer_2d(mask: Any, cu_seqlens_q: Any, cu_seqlens_k: Any = None, *, block_size: Any = 64,
                 head_mode: str | None = None, element_mask: ElementMask | None = None, causal: bool | None = True,
                 window: tuple[int, int] | None = None, padding: str = "ignore") -> BlockSparseLayout:
    """Layout from a SeerAttention 2D block mask ``[B, H, ceil(t/bs), ceil(t/bs)]`` (bool, padded per sequence).

    SeerAttention's kernels are causal (bottom-right), hence ``causal=True`` by default: kept blocks on the
    diagonal become partial, blocks entirely above it are dropped. Padding cells are ignored by default."""
    bq, bk = block_pair(block_size, "block_size")
    a = as_bool(mask, "mask", ndim=4)
    return from_block_mask(a, cu_seqlens_q, cu_seqlens_k, block_q=bq, block_k=bk, head_mode=head_mode,
                           element_mask=element_mask, causal=causal, window=window, padding=padding,
                           source={"format": "seer_2d"})


def from_seer_1d(mask: Any, cu_seqlens_q: Any, cu_seqlens_k: Any = None, *, block_size: int = 64,
                 block_q: int | None = None, head_mode: str | None = None, element_mask: ElementMask | None = None,
                 causal: bool | None = True, window: tuple[int, int] | None = None,
                 padding: str = "ignore") -> BlockSparseLayout:
    """Layout from a SeerAttention 1D token-level mask ``[B, H, t, ceil(t/bs)]`` (bool, padded): query token x key
    block of ``block_size`` tokens. ``H`` heads are KV heads shared by their GQA group by default
    (``head_mode='per_kv_head'``). The mask becomes the element mask's ``token_mask`` (packed
    ``[H, total_q, max_nb]``); a (query block, key block) pair is kept when some query token of the block selects
    the key block, full when every token does (and the rest of the element mask allows every pair)."""
    cu_q, cu_k = resolve_cu(cu_seqlens_q, cu_seqlens_k)
    bk = check_block_size(block_size, "block_size")
    bq = check_block_size(block_q if block_q is not None else block_size, "block_q")
    ignore = padding_arg(padding)
    a = as_bool(mask, "mask", ndim=4)
    B = cu_q.shape[0] - 1
    lq = np.diff(cu_q.astype(np.int64))
    N, _ = seq_blocks(cu_k, bk)
    maxN = int(N.max()) if B else 0
    Bm, H, T, NB = a.shape
    if Bm not in (1, B) or T < (int(lq.max()) if B else 0) or NB < maxN:
        raise ValueError(f"mask: expected shape [{B} (or 1), H, >= {int(lq.max()) if B else 0}, >= {maxN}] "
                         f"(batch, heads, query tokens, key blocks of {bk}), got {tuple(a.shape)}")
    bt, tt = ragged_arange(lq)
    src_b = bt if Bm > 1 else np.zeros_like(bt)
    tm = a[src_b, :, tt, :maxN]  # [total_q, H, maxN]
    valid_col = np.arange(maxN)[None, :] < N[bt][:, None]
    tm = tm & valid_col[:, None, :]
    if not ignore:
        if Bm > 1:
            outside = int(a.sum()) != int(tm.sum())
        else:  # one pattern shared by every sequence: only what no sequence can use is padding
            outside = bool(a[:, :, (int(lq.max()) if B else 0):, :].any() or a[:, :, :, maxN:].any())
        if outside:
            raise ValueError("mask: set entries outside the sequences' query tokens / key blocks (padding); pass "
                             "padding='ignore' to drop them")
    tm = np.ascontiguousarray(np.transpose(tm, (1, 0, 2)))
    emask = resolve_mask(element_mask, causal, window)
    if emask.token_mask is not None:
        raise ValueError("element_mask: from_seer_1d builds the token mask itself; do not pass one")
    from dataclasses import replace

    emask = replace(emask, token_mask=tm, token_block_k=bk)
    hm = check_head_mode(head_mode, H, "per_kv_head")
    qpart = fixed_partition(cu_q, bq, H, "cu_seqlens_q")
    kpart = fixed_partition(cu_k, bk, H, "cu_seqlens_k")
    row, kb, _, _ = all_cells(cu_q, cu_k, bq, bk, H)
    return build_from_cells(cu_q, cu_k, H, hm, qpart, kpart, row, kb, None, emask, bq, bk, {"format": "seer_1d"},
                            auto=np.ones(row.shape[0], dtype=np.bool_))


__all__ = ["from_seer_2d", "from_seer_1d"]
