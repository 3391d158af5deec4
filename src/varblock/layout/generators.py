"""Layout generators over fixed blocks: dense, causal, sliding window, attention sinks, document masking, random
blocks at a density, top-k blocks from a score tensor. All vectorised (no Python loop per block or token).

Every generator returns a :class:`BlockSparseLayout` whose element mask carries the token-level rule (causal,
window, documents), so that partial blocks are exact at token level.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._common import all_cells
from ._host import as_int, cdiv, check_block_size, check_int32, exclusive_cumsum, ragged_arange, to_host
from .build import build_from_cells, check_head_mode, resolve_cu
from .core import BlockSparseLayout
from .mask import ElementMask, band_classify, resolve_mask
from .partition import fixed_partition


def _setup(cu_seqlens_q, cu_seqlens_k, block_q, block_k, num_heads):
    cu_q, cu_k = resolve_cu(cu_seqlens_q, cu_seqlens_k)
    bq = check_block_size(block_q, "block_q")
    bk = check_block_size(block_k, "block_k")
    if isinstance(num_heads, (bool, np.bool_)) or not isinstance(num_heads, (int, np.integer)) or num_heads < 1:
        raise ValueError(f"num_heads: expected a positive int, got {num_heads!r}")
    return cu_q, cu_k, bq, bk, int(num_heads)


def _geometry(cu_q, cu_k, bq, bk):
    lq = np.diff(cu_q.astype(np.int64))
    lk = np.diff(cu_k.astype(np.int64))
    M = cdiv(lq, bq)
    N = cdiv(lk, bk)
    return lq, lk, M, N, exclusive_cumsum(M)


def _rows_one_head(cu_q, cu_k, bq, bk):
    """Per query block of one head: (b, q_start, q_len, off, len_k)."""
    lq, lk, M, N, cu_m = _geometry(cu_q, cu_k, bq, bk)
    b, m = ragged_arange(M)
    qs = m * bq
    ql = np.minimum(bq, lq[b] - qs)
    return b, qs, ql, (lk - lq)[b], lk[b], N[b], int(cu_m[-1])


def _band_cells(cu_q, cu_k, bq, bk, lo, hi):
    """Cells (row, kb) of one head whose key block meets lo <= j - i - off <= hi for some query of the row."""
    b, qs, ql, off, lk, N, TM = _rows_one_head(cu_q, cu_k, bq, bk)
    jlo = np.zeros_like(qs) if lo is None else np.maximum(qs + off + lo, 0)
    jhi = lk - 1 if hi is None else np.minimum(qs + ql - 1 + off + hi, lk - 1)
    klo = jlo // bk
    khi = np.where(jhi >= jlo, jhi // bk, klo - 1)
    n = np.maximum(khi - klo + 1, 0)
    row, t = ragged_arange(n)
    return row, klo[row] + t, TM


def _classify_band(cu_q, cu_k, bq, bk, row, kb, lo, hi, sinks=0):
    b, qs, ql, off, lk, N, _ = _rows_one_head(cu_q, cu_k, bq, bk)
    ks = kb * bk
    kl = np.minimum(bk, lk[row] - ks)
    return band_classify(qs[row], ql[row], ks, kl, off[row], lo, hi, sinks=sinks)


def _replicate(row, kb, code, TM, num_heads):
    if num_heads == 1:
        return row, kb, code
    h = np.repeat(np.arange(num_heads, dtype=np.int64), row.shape[0])
    return np.tile(row, num_heads) + h * TM, np.tile(kb, num_heads), np.tile(code, num_heads)


def _finish(cu_q, cu_k, bq, bk, num_heads, head_mode, row, kb, code, mask, name):
    hm = check_head_mode(head_mode, num_heads, "per_q_head")
    qpart = fixed_partition(cu_q, bq, num_heads, "cu_seqlens_q")
    kpart = fixed_partition(cu_k, bk, num_heads, "cu_seqlens_k")
    return build_from_cells(cu_q, cu_k, num_heads, hm, qpart, kpart, row, kb, code, mask, bq, bk,
                            {"format": "generator", "generator": name})


def _band_layout(cu_q, cu_k, bq, bk, num_heads, head_mode, mask: ElementMask, name: str):
    """Cells of the causal / window band plus, with a left window, the key blocks holding the mask's sink tokens
    (``ceil(num_sink_tokens / block_k)`` of them), each classified exactly under the token rule (full, partial or
    dropped)."""
    lo, hi = mask.band
    sinks = mask.num_sink_tokens if lo is not None else 0
    row, kb, TM = _band_cells(cu_q, cu_k, bq, bk, lo, hi)
    if sinks:
        # sink key blocks [0, ceil(sinks / bk)) of every row, merged with the band cells (sorted, unique)
        b, qs, ql, off, lk, N, _ = _rows_one_head(cu_q, cu_k, bq, bk)
        srow, skb = ragged_arange(np.minimum(N, cdiv(sinks, bk)))
        KB = int(N.max()) + 1 if N.size else 1
        key = np.unique(np.concatenate([row * KB + kb, srow * KB + skb]))
        row, kb = key // KB, key % KB
    all_, none = _classify_band(cu_q, cu_k, bq, bk, row, kb, lo, hi, sinks)
    row, kb, code = row[~none], kb[~none], np.where(all_[~none], 2, 1)
    row, kb, code = _replicate(row, kb, code, TM, num_heads)
    return _finish(cu_q, cu_k, bq, bk, num_heads, head_mode, row, kb, code, mask, name)


def _check_window(v, name):
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < -1:
        raise ValueError(f"{name}: expected an int >= -1 (-1 = unbounded), got {v!r}")
    return int(v)


def dense(cu_seqlens_q: Any, cu_seqlens_k: Any = None, *, block_q: int = 128, block_k: int = 128,
          num_heads: int = 1, head_mode: str | None = None, element_mask: ElementMask | None = None,
          causal: bool | None = None, window: tuple[int, int] | None = None) -> BlockSparseLayout:
    """Every block of every sequence (dense varlen attention), classified against the element mask."""
    cu_q, cu_k, bq, bk, H = _setup(cu_seqlens_q, cu_seqlens_k, block_q, block_k, num_heads)
    mask = resolve_mask(element_mask, causal, window).validated(cu_q, cu_k, H)
    if mask.doc_ids_q is None and mask.token_mask is None:
        return _band_layout(cu_q, cu_k, bq, bk, H, head_mode, mask, "dense")
    row, kb, _, _ = all_cells(cu_q, cu_k, bq, bk, H)
    hm = check_head_mode(head_mode, H, "per_q_head")
    qpart = fixed_partition(cu_q, bq, H, "cu_seqlens_q")
    kpart = fixed_partition(cu_k, bk, H, "cu_seqlens_k")
    return build_from_cells(cu_q, cu_k, H, hm, qpart, kpart, row, kb, None, mask, bq, bk,
                            {"format": "generator", "generator": "dense"}, auto=np.ones(row.shape[0], np.bool_))


def causal(cu_seqlens_q: Any, cu_seqlens_k: Any = None, *, block_q: int = 128, block_k: int = 128,
           num_heads: int = 1, head_mode: str | None = None) -> BlockSparseLayout:
    """Causal attention (bottom-right aligned): blocks below the diagonal full, diagonal blocks partial."""
    cu_q, cu_k, bq, bk, H = _setup(cu_seqlens_q, cu_seqlens_k, block_q, block_k, num_heads)
    mask = ElementMask(causal=True).validated(cu_q, cu_k, H)
    return _band_layout(cu_q, cu_k, bq, bk, H, head_mode, mask, "causal")


def sliding_window(cu_seqlens_q: Any, cu_seqlens_k: Any = None, *, window_left: int, window_right: int = 0,
                   num_sink_tokens: int | None = None, sink_blocks: int | None = None, block_q: int = 128,
                   block_k: int = 128, num_heads: int = 1, head_mode: str | None = None) -> BlockSparseLayout:
    """Sliding window ``i + off - window_left <= j <= i + off + window_right`` (``-1`` = unbounded;
    ``window_right = 0`` is causal), optionally with attention sinks: the first ``num_sink_tokens`` keys of every
    sequence are exempt from the left bound (see :func:`attention_sinks`; ``sink_blocks=n`` is shorthand for
    ``num_sink_tokens=n * block_k``)."""
    cu_q, cu_k, bq, bk, H = _setup(cu_seqlens_q, cu_seqlens_k, block_q, block_k, num_heads)
    wl = _check_window(window_left, "window_left")
    wr = _check_window(window_right, "window_right")
    sinks = _sink_tokens(num_sink_tokens, sink_blocks, bk, default=0)
    mask = ElementMask(window_left=wl, window_right=wr, num_sink_tokens=sinks).validated(cu_q, cu_k, H)
    return _band_layout(cu_q, cu_k, bq, bk, H, head_mode, mask, "sliding_window")


def _sink_tokens(num_sink_tokens, sink_blocks, block_k: int, default: int | None) -> int:
    """Sink tokens from ``num_sink_tokens`` or the ``sink_blocks`` shorthand (``sink_blocks * block_k``)."""
    for nm, v in (("num_sink_tokens", num_sink_tokens), ("sink_blocks", sink_blocks)):
        if v is not None and (isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < 0):
            raise ValueError(f"{nm}: expected a non-negative int, got {v!r}")
    if num_sink_tokens is not None and sink_blocks is not None:
        raise ValueError("num_sink_tokens / sink_blocks: give one of them (sink_blocks=n means n * block_k tokens)")
    if num_sink_tokens is not None or sink_blocks is not None:
        tokens = int(num_sink_tokens) if num_sink_tokens is not None else int(sink_blocks) * block_k
        check_int32(tokens, "num_sink_tokens" if num_sink_tokens is not None else "sink_blocks", "sink tokens")
        return tokens
    if default is None:
        raise ValueError("num_sink_tokens: required (or the sink_blocks shorthand)")
    return default


def attention_sinks(cu_seqlens_q: Any, cu_seqlens_k: Any = None, *, num_sink_tokens: int | None = None,
                    sink_blocks: int | None = None, window_left: int = -1, window_right: int = -1,
                    causal: bool = True, block_q: int = 128, block_k: int = 128, num_heads: int = 1,
                    head_mode: str | None = None) -> BlockSparseLayout:
    """Attention sinks (StreamingLLM / FlexAttention rule, at token level): key ``j`` is visible to query ``i`` iff
    ``(j < num_sink_tokens or j >= i + off - window_left)`` and ``j <= i + off + window_right`` (and causal where
    asked). The layout keeps the band's blocks and the ``ceil(num_sink_tokens / block_k)`` key blocks holding the
    sinks, each full where every pair is visible, partial where some are (the kernel applies the same rule), dropped
    otherwise, for any block size. ``sink_blocks=n`` is shorthand for ``num_sink_tokens=n * block_k``."""
    cu_q, cu_k, bq, bk, H = _setup(cu_seqlens_q, cu_seqlens_k, block_q, block_k, num_heads)
    wl = _check_window(window_left, "window_left")
    wr = _check_window(window_right, "window_right")
    sinks = _sink_tokens(num_sink_tokens, sink_blocks, bk, default=None)
    if not isinstance(causal, (bool, np.bool_)):
        raise TypeError(f"causal: expected a bool, got {causal!r}")
    mask = ElementMask(causal=bool(causal), window_left=wl, window_right=wr,
                       num_sink_tokens=sinks).validated(cu_q, cu_k, H)
    return _band_layout(cu_q, cu_k, bq, bk, H, head_mode, mask, "attention_sinks")


def document(cu_seqlens_q: Any, cu_seqlens_k: Any = None, *, doc_ids_q: Any, doc_ids_k: Any = None,
             causal: bool = False, window: tuple[int, int] | None = None, block_q: int = 128, block_k: int = 128,
             num_heads: int = 1, head_mode: str | None = None) -> BlockSparseLayout:
    """Document masking inside packed sequences: a pair is allowed iff its query and key carry the same document
    id (``doc_ids_q [total_q]``, ``doc_ids_k [total_k]``, default = ``doc_ids_q``), optionally causal / windowed.
    Blocks with no same-document pair are dropped, single-document blocks are full."""
    cu_q, cu_k, bq, bk, H = _setup(cu_seqlens_q, cu_seqlens_k, block_q, block_k, num_heads)
    dq = as_int(doc_ids_q, "doc_ids_q", ndim=1)
    dk = dq if doc_ids_k is None else as_int(doc_ids_k, "doc_ids_k", ndim=1)
    mask = resolve_mask(ElementMask(doc_ids_q=dq, doc_ids_k=dk), bool(causal), window).validated(cu_q, cu_k, H)
    row, kb, _, _ = all_cells(cu_q, cu_k, bq, bk, H)
    hm = check_head_mode(head_mode, H, "per_q_head")
    qpart = fixed_partition(cu_q, bq, H, "cu_seqlens_q")
    kpart = fixed_partition(cu_k, bk, H, "cu_seqlens_k")
    return build_from_cells(cu_q, cu_k, H, hm, qpart, kpart, row, kb, None, mask, bq, bk,
                            {"format": "generator", "generator": "document"}, auto=np.ones(row.shape[0], np.bool_))


def random_blocks(cu_seqlens_q: Any, cu_seqlens_k: Any = None, *, density: float, num_heads: int = 1,
                  head_mode: str | None = None, seed: Any = 0, keep_diagonal: bool = True, causal: bool = False,
                  block_q: int = 128, block_k: int = 128) -> BlockSparseLayout:
    """Random blocks: each (query block, key block) cell is kept with probability ``density`` (independently per
    head; ``seed`` is an int or a ``numpy.random.Generator``). ``keep_diagonal`` always keeps the blocks the
    (bottom-right) diagonal crosses, so no row is empty. With ``causal`` only cells below / on the diagonal are
    candidates and the diagonal ones are partial; otherwise every kept block is full."""
    cu_q, cu_k, bq, bk, H = _setup(cu_seqlens_q, cu_seqlens_k, block_q, block_k, num_heads)
    try:
        density = float(density)
    except (TypeError, ValueError):
        raise TypeError(f"density: expected a float in [0, 1], got {density!r}") from None
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density: expected a float in [0, 1], got {density}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    mask = ElementMask(causal=bool(causal)).validated(cu_q, cu_k, H)
    lo, hi = mask.band
    row, kb, TM = _band_cells(cu_q, cu_k, bq, bk, lo, hi)  # candidates (all cells when not causal)
    all_, none = _classify_band(cu_q, cu_k, bq, bk, row, kb, lo, hi)
    diag_all, diag_none = _classify_band(cu_q, cu_k, bq, bk, row, kb, 0, 0)
    row, kb, code = _replicate(row, kb, np.where(all_, 2, 1), TM, H)
    diag = np.tile(~diag_none, H)
    keep = rng.random(row.shape[0]) < density
    if keep_diagonal:
        keep |= diag
    hm = head_mode if head_mode is not None else ("broadcast" if H == 1 else "per_q_head")
    return _finish(cu_q, cu_k, bq, bk, H, hm, row[keep], kb[keep], code[keep], mask, "random_blocks")


def topk_blocks(scores: Any, cu_seqlens_q: Any, cu_seqlens_k: Any = None, *, k: int, block_q: int = 128,
                block_k: int = 128, head_mode: str | None = None, causal: bool = False,
                keep_diagonal: bool = False) -> BlockSparseLayout:
    """The ``k`` highest-scoring key blocks of every query block (NSA / MoBA-style selection).

    ``scores``: float ``[H, total_m_blocks, max N_b]`` (rows = global query blocks) or ``[B, H, max M_b, max N_b]``
    (padded per sequence). Padding cells, ``-inf`` scores and (with ``causal``) blocks above the diagonal are never
    selected; ties go to the lower block index. ``keep_diagonal`` adds the diagonal blocks."""
    cu_q, cu_k, bq, bk, _ = _setup(cu_seqlens_q, cu_seqlens_k, block_q, block_k, 1)
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"k: expected a non-negative int, got {k!r}")
    s = to_host(scores, "scores")
    if s.dtype == np.bool_ or not (np.issubdtype(s.dtype, np.floating) or np.issubdtype(s.dtype, np.integer)):
        raise TypeError(f"scores: expected a float array, got dtype {s.dtype}")
    check_int32(int(np.prod(s.shape, dtype=np.int64)), "scores", "number of cells")
    lq, lk, M, N, cu_m = _geometry(cu_q, cu_k, bq, bk)
    B = cu_q.shape[0] - 1
    TM = int(cu_m[-1])
    maxM = int(M.max()) if B else 0
    maxN = int(N.max()) if B else 0
    seq_m = np.repeat(np.arange(B, dtype=np.int64), M)
    if s.ndim == 3:
        H = s.shape[0]
        if s.shape[1] != TM or s.shape[2] < maxN:
            raise ValueError(f"scores: expected shape [H, {TM}, >= {maxN}] (global query blocks x key blocks), got "
                             f"{tuple(s.shape)}")
        grid = s[:, :, :maxN]
    elif s.ndim == 4:
        Bs, H, mb, nb = s.shape
        if Bs not in (1, B) or mb < maxM or nb < maxN:
            raise ValueError(f"scores: expected shape [{B} (or 1), H, >= {maxM}, >= {maxN}], got {tuple(s.shape)}")
        mloc = np.arange(TM, dtype=np.int64) - cu_m[seq_m]
        src_b = seq_m if Bs > 1 else np.zeros_like(seq_m)
        grid = np.transpose(s[src_b, :, mloc, :maxN], (1, 0, 2))
    else:
        raise ValueError(f"scores: expected a 3-D or 4-D score tensor, got shape {tuple(s.shape)}")
    grid = grid.astype(np.float64)
    if np.isnan(grid).any():
        raise ValueError("scores: NaN scores cannot be ranked")
    mask = ElementMask(causal=bool(causal)).validated(cu_q, cu_k, H)
    lo, hi = mask.band
    valid = np.arange(maxN)[None, :] < N[seq_m][:, None]  # [TM, maxN]
    r1, c1 = np.nonzero(valid)
    all_, none = _classify_band(cu_q, cu_k, bq, bk, r1, c1, lo, hi)
    allowed = np.zeros((TM, maxN), dtype=np.bool_)
    allowed[r1[~none], c1[~none]] = True
    g = np.where(allowed[None], grid, -np.inf)
    kk = min(int(k), maxN)
    order = np.argsort(-g, axis=2, kind="stable")[:, :, :kk]
    picked = np.take_along_axis(g, order, axis=2) > -np.inf
    h, r, t = np.nonzero(picked)
    sel = np.zeros((H, TM, maxN), dtype=np.bool_)
    sel[h, r, order[h, r, t]] = True
    if keep_diagonal:
        d_all, d_none = _classify_band(cu_q, cu_k, bq, bk, r1, c1, 0, 0)
        sel[:, r1[~d_none], c1[~d_none]] = True
    full_cell = np.zeros((TM, maxN), dtype=np.bool_)
    full_cell[r1, c1] = all_
    h, r, c = np.nonzero(sel)
    code = np.where(full_cell[r, c], 2, 1)
    return _finish(cu_q, cu_k, bq, bk, H, head_mode, h * TM + r, c, code, mask, "topk_blocks")


__all__ = ["dense", "causal", "sliding_window", "attention_sinks", "document", "random_blocks", "topk_blocks"]
