"""Importers and exporters: dense block masks, FA4 ``BlockSparseTensorsTorch``, FlexAttention ``BlockMask``,
SeerAttention 2D / 1D masks, FlashInfer variable blocks, and the canonical ``RowSpans`` themselves.

Every importer validates its input (clear ``ValueError``/``TypeError`` naming the argument) and is vectorised: no
Python loop per block or per token. Formats are described in docs/layout.md.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ._host import (
    INT32_MAX,
    as_bool,
    as_int,
    cdiv,
    check_block_size,
    check_int32,
    exclusive_cumsum,
    ragged_arange,
    to_host,
)
from .core import (
    BlockSparseLayout,
    RowSpans,
    build_from_cells,
    check_head_mode,
    fixed_partition,
    resolve_cu,
    spans_partition,
)
from .mask import ElementMask, resolve_mask

# ---------------------------------------------------------------------------------------------------------------
# small helpers


def _block_pair(block_size: Any, name: str) -> tuple[int, int]:
    if isinstance(block_size, (tuple, list)):
        if len(block_size) != 2:
            raise ValueError(f"{name}: expected an int or a (block_q, block_k) pair, got {block_size!r}")
        return check_block_size(block_size[0], f"{name}[0]"), check_block_size(block_size[1], f"{name}[1]")
    v = check_block_size(block_size, name)
    return v, v


def _padding_arg(padding: str) -> bool:
    if padding not in ("error", "ignore"):
        raise ValueError(f"padding: expected 'error' or 'ignore', got {padding!r}")
    return padding == "ignore"


def _field(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)


def _pos_str(flat: int, shape: tuple) -> str:
    return str(tuple(int(i) for i in np.unravel_index(int(flat), shape))) if len(shape) else "()"


def _nonzero(a: np.ndarray) -> tuple[np.ndarray, ...]:
    """``np.nonzero`` for N-D arrays via one flat scan (an order of magnitude faster than N-D nonzero)."""
    if not a.flags.c_contiguous:
        a = np.ascontiguousarray(a)
    flat = np.flatnonzero(a)
    return np.unravel_index(flat, a.shape)


def _seq_blocks(cu: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    n = cdiv(np.diff(cu.astype(np.int64)), block)
    return n, exclusive_cumsum(n)


def _uniform_cu(batch: int, seqlen: int, name: str) -> np.ndarray:
    if isinstance(seqlen, (bool, np.bool_)) or not isinstance(seqlen, (int, np.integer)) or seqlen < 0:
        raise ValueError(f"{name}: expected a non-negative int, got {seqlen!r}")
    total = batch * int(seqlen)
    check_int32(total, name, "total tokens (batch * seqlen)")
    return (np.arange(batch + 1, dtype=np.int64) * int(seqlen)).astype(np.int32)


def _mask_kw(element_mask, causal, window) -> ElementMask:
    return resolve_mask(element_mask, causal, window)


# ---------------------------------------------------------------------------------------------------------------
# dense block masks


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
    ignore = _padding_arg(padding)
    emask = _mask_kw(element_mask, causal, window)
    a = to_host(mask, "mask")
    if a.dtype == np.bool_:
        auto = True
    elif np.issubdtype(a.dtype, np.integer):
        auto = False
        bad = (a < 0) | (a > 2)
        if bad.any():
            raise ValueError(f"mask: integer block codes must be 0 (skip), 1 (partial) or 2 (full); found "
                             f"{int(a[bad][0])} at {_pos_str(int(np.flatnonzero(bad.ravel())[0]), a.shape)}")
    else:
        raise TypeError(f"mask: expected a bool or integer block mask, got dtype {a.dtype}")
    B = cu_q.shape[0] - 1
    M, cu_m = _seq_blocks(cu_q, bq)
    N, cu_n = _seq_blocks(cu_k, bk)
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
        h, i, j = _nonzero(a)
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
        bb, h, m, n = _nonzero(a4)
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


def all_cells(cu_q: np.ndarray, cu_k: np.ndarray, bq: int, bk: int, num_heads: int) -> tuple[np.ndarray, ...]:
    """Every (row, key block) cell of fixed-block partitions, for ``num_heads`` heads: (row, kb, b, m) int64."""
    B = cu_q.shape[0] - 1
    M, cu_m = _seq_blocks(cu_q, bq)
    N, _ = _seq_blocks(cu_k, bk)
    per_seq = M * N
    total = int(per_seq.sum()) * num_heads
    check_int32(total, "cu_seqlens_k", "number of (query block, key block) cells over all heads")
    seg, pos = ragged_arange(np.tile(per_seq, num_heads))
    h = seg // max(B, 1)
    b = seg % max(B, 1)
    Nb = N[b]
    m = pos // np.maximum(Nb, 1)
    kb = pos % np.maximum(Nb, 1)
    row = h * int(cu_m[-1]) + cu_m[b] + m
    return row, kb, b, m


# ---------------------------------------------------------------------------------------------------------------
# ordered lists (FA4 / FlexAttention): reading and writing


class _Grid(NamedTuple):
    slot_base: np.ndarray  # int64 [G] flat position of slot 0 of each list row in the index array
    width: np.ndarray  # int64 [G] slots per row
    nk: np.ndarray  # int64 [G] index bound (number of key blocks of the row); complement padding range


def _complement_fill(grid: _Grid, g: np.ndarray, vals: np.ndarray, size: int) -> np.ndarray:
    """Index array where each row holds its kept indices ascending, then the other indices of [0, nk) ascending,
    truncated to the row width (what FlexAttention's argsort(dense, descending, stable) produces)."""
    offs = exclusive_cumsum(grid.nk)
    member = np.zeros(int(offs[-1]), dtype=np.bool_)
    member[offs[g] + vals] = True
    seg, j = ragged_arange(grid.nk)
    order = np.argsort(seg * 2 + (~member), kind="stable")
    seq = j[order]  # per row: kept first then the rest, both ascending
    _, pos = ragged_arange(grid.nk)
    take = pos < grid.width[seg]
    out = np.zeros(size, dtype=np.int64)
    out[(grid.slot_base[seg] + pos)[take]] = seq[take]
    return out


def _read_lists(cnt: np.ndarray, idx: np.ndarray, grid: _Grid, cnt_name: str, idx_name: str,
                allow_unsorted: bool) -> tuple[np.ndarray, np.ndarray, str | None]:
    """Entries (grid row, index) of a count/index list pair, validated; and the padding convention detected
    ('zeros', 'complement', 'other', or None when no padding slot exists)."""
    c = cnt.reshape(-1)
    flat = idx.reshape(-1)
    if (c < 0).any():
        t = int(np.argmax(c < 0))
        raise ValueError(f"{cnt_name}: negative count {int(c[t])} at {_pos_str(t, cnt.shape)}")
    over = c > np.minimum(grid.width, grid.nk)
    if over.any():
        t = int(np.argmax(over))
        raise ValueError(f"{cnt_name}: count {int(c[t])} at {_pos_str(t, cnt.shape)} exceeds the "
                         f"{int(min(grid.width[t], grid.nk[t]))} key blocks / index slots of that row")
    g, pos = ragged_arange(c)
    p = grid.slot_base[g] + pos
    vals = flat[p]
    bad = (vals < 0) | (vals >= grid.nk[g])
    if bad.any():
        t = int(np.argmax(bad))
        raise ValueError(f"{idx_name}: index {int(vals[t])} at {_pos_str(int(p[t]), idx.shape)} is out of range "
                         f"[0, {int(grid.nk[g[t]])}) (key blocks of that row)")
    if vals.size > 1:
        same = g[1:] == g[:-1]
        d = vals[1:] - vals[:-1]
        unsorted = same & (d < 0)
        if unsorted.any():
            if not allow_unsorted:
                t = int(np.argmax(unsorted)) + 1
                raise ValueError(f"{idx_name}: indices of a row must be sorted ascending (kernels and the "
                                 f"deterministic backward rely on the order); {int(vals[t])} at "
                                 f"{_pos_str(int(p[t]), idx.shape)} follows {int(vals[t - 1])}; pass "
                                 f"allow_unsorted=True to sort them")
            order = np.lexsort((vals, g))
            g, vals, p = g[order], vals[order], p[order]
            same = g[1:] == g[:-1]
            d = vals[1:] - vals[:-1]
        dup = same & (d == 0)
        if dup.any():
            t = int(np.argmax(dup)) + 1
            raise ValueError(f"{idx_name}: duplicate index {int(vals[t])} in row {_pos_str(int(g[t]), cnt.shape)}")
    # padding convention
    ptotal = int((grid.width - c).sum())
    if ptotal == 0:
        kind = None
    else:
        pseg, ppos = ragged_arange(grid.width - c)
        pvals = flat[grid.slot_base[pseg] + c[pseg] + ppos]
        if not pvals.any():
            kind = "zeros"
        else:
            comp = _complement_fill(grid, g, vals, flat.size)
            mask = np.zeros(flat.size, dtype=np.bool_)
            mask[grid.slot_base[pseg] + c[pseg] + ppos] = True
            kind = "complement" if np.array_equal(comp[mask], flat[mask]) else "other"
    return g, vals, kind


def _write_lists(grid: _Grid, G_shape: tuple, idx_shape: tuple, g: np.ndarray, vals: np.ndarray, pad: str,
                 cnt_name: str) -> tuple[np.ndarray, np.ndarray]:
    """Count and index arrays (int32) for entries sorted by (grid row, index)."""
    G = grid.nk.shape[0]
    cnt = np.bincount(g, minlength=G) if g.size else np.zeros(G, dtype=np.int64)
    over = cnt > grid.width
    if over.any():
        t = int(np.argmax(over))
        raise ValueError(f"{cnt_name}: row {_pos_str(t, G_shape)} keeps {int(cnt[t])} blocks but the index width "
                         f"is {int(grid.width[t])}; pass a larger index width")
    size = int(np.prod(idx_shape))
    if pad == "complement":
        flat = _complement_fill(grid, g, vals, size)
    elif pad == "zeros":
        flat = np.zeros(size, dtype=np.int64)
        _, pos = ragged_arange(cnt)
        flat[grid.slot_base[g] + pos] = vals
    else:
        raise ValueError(f"pad: expected 'zeros' or 'complement', got {pad!r}")
    return cnt.astype(np.int32).reshape(G_shape), flat.astype(np.int32).reshape(idx_shape)


def _gather_rows(lr_g: np.ndarray, g: np.ndarray, vals: np.ndarray, G: int) -> tuple[np.ndarray, np.ndarray]:
    """Map grid-row entries onto layout rows (layout row r reads grid row lr_g[r]): (layout row, index)."""
    gcnt = np.bincount(g, minlength=G) if g.size else np.zeros(G, dtype=np.int64)
    gptr = exclusive_cumsum(gcnt)
    seg, pos = ragged_arange(gcnt[lr_g])
    return seg, vals[gptr[lr_g][seg] + pos]


def _norm_lists(cnt_arr, idx_arr, cnt_name, idx_name, ndim_cnt, ndim_idx):
    cnt = as_int(cnt_arr, cnt_name)
    idx = as_int(idx_arr, idx_name)
    if cnt.ndim != ndim_cnt or idx.ndim != ndim_idx:
        raise ValueError(f"{cnt_name} / {idx_name}: expected {ndim_cnt}-D counts and {ndim_idx}-D indices, got "
                         f"shapes {tuple(cnt.shape)} and {tuple(idx.shape)}")
    return cnt, idx


# ---------------------------------------------------------------------------------------------------------------
# FA4 BlockSparseTensorsTorch


class FA4BlockSparse(NamedTuple):
    """Host (NumPy) mirror of FA4's ``BlockSparseTensorsTorch`` fields (``mask_*`` = partial blocks, the
    ``mask_mod`` applies; ``full_*`` = full blocks). Build the torch object with
    ``BlockSparseTensorsTorch(**{k: torch.from_numpy(v).cuda() ...})``."""

    mask_block_cnt: np.ndarray
    mask_block_idx: np.ndarray
    full_block_cnt: np.ndarray | None = None
    full_block_idx: np.ndarray | None = None
    cu_total_m_blocks: np.ndarray | None = None
    cu_block_idx_offsets: np.ndarray | None = None
    block_size: tuple[int, int] | None = None


def _batched_geometry(cnt_shape, idx_shape, cu_q, cu_k, bq, bk, nk_grid, ignore, cnt_name):
    """Grid / layout-row mapping for [B', H', M] counts and [B', H', M, W] indices."""
    Bp, Hp, Mg = cnt_shape
    W = idx_shape[3]
    B = cu_q.shape[0] - 1
    M, cu_m = _seq_blocks(cu_q, bq)
    N, _ = _seq_blocks(cu_k, bk)
    if Bp not in (1, B):
        raise ValueError(f"{cnt_name}: batch dimension {Bp} is neither 1 nor the {B} sequences of cu_seqlens_q")
    if B and int(M.max()) > Mg:
        raise ValueError(f"{cnt_name}: {Mg} query blocks per sequence, but a sequence of cu_seqlens_q has "
                         f"{int(M.max())} blocks of {bq}")
    assert W <= nk_grid and (not B or int(N.max()) <= nk_grid), "internal: grid narrower than the sequences"
    G = Bp * Hp * Mg
    grid = _Grid(np.arange(G, dtype=np.int64) * W, np.full(G, W, dtype=np.int64),
                 np.full(G, nk_grid, dtype=np.int64))
    # layout rows (h, b, m < M_b) -> grid rows
    qpart = fixed_partition(cu_q, bq, Hp, "cu_seqlens_q")
    seg = qpart.seg()
    h = seg // max(B, 1)
    b = seg % max(B, 1)
    m = np.arange(qpart.size, dtype=np.int64) - qpart.ptr[:-1][seg]
    bsrc = b if Bp > 1 else np.zeros_like(b)
    lr_g = (bsrc * Hp + h) * Mg + m
    del cu_m
    return grid, qpart, lr_g, N, b, h


def _import_lists(lists, grid, lr_g, qpart, kpart, N_row_b, ignore, allow_unsorted, G):
    """Read (cnt, idx, full?, names) lists against a grid, map to layout rows, check padding."""
    rows_all, kb_all, full_all, kinds = [], [], [], {}
    referenced = np.zeros(G, dtype=np.bool_)
    referenced[lr_g] = True
    for cnt, idx, is_full, cname, iname in lists:
        g, vals, kind = _read_lists(cnt, idx, grid, cname, iname, allow_unsorted)
        kinds["full" if is_full else "mask"] = kind
        unref = ~referenced[g]
        if unref.any():
            if not ignore:
                t = int(np.argmax(unref))
                raise ValueError(f"{cname}: row {_pos_str(int(g[t]), cnt.shape)} lies beyond its sequence's query "
                                 f"blocks but lists {int(cnt.reshape(-1)[g[t]])} key blocks (padding='ignore' "
                                 f"drops them)")
        r, kb = _gather_rows(lr_g, g, vals, G)
        nb = N_row_b[r]
        beyond = kb >= nb
        if beyond.any():
            if not ignore:
                t = int(np.argmax(beyond))
                raise ValueError(f"{iname}: key block {int(kb[t])} is beyond the {int(nb[t])} key blocks of its "
                                 f"sequence (layout row {int(r[t])}); padding='ignore' drops it")
            r, kb = r[~beyond], kb[~beyond]
        rows_all.append(r)
        kb_all.append(kb)
        full_all.append(np.full(r.shape[0], is_full, dtype=np.bool_))
    return (np.concatenate(rows_all), np.concatenate(kb_all), np.concatenate(full_all), kinds)


def from_fa4(bst: Any, cu_seqlens_q: Any = None, cu_seqlens_k: Any = None, *, block_size: Any = None,
             seqlen_q: int | None = None, seqlen_k: int | None = None, head_mode: str | None = None,
             element_mask: ElementMask | None = None, causal: bool | None = None,
             window: tuple[int, int] | None = None, allow_unsorted: bool = False,
             padding: str = "error") -> BlockSparseLayout:
    """Layout from FA4 ``BlockSparseTensorsTorch`` fields (an object or dict with ``mask_block_cnt``,
    ``mask_block_idx``, optional ``full_block_cnt``/``full_block_idx``, ``cu_total_m_blocks``,
    ``cu_block_idx_offsets``, ``block_size``; tensors may be NumPy or any DLPack tensor).

    Varlen-packed (``cu_total_m_blocks`` set): counts ``[H, total_m_blocks]``, indices ``[H, total_n_blocks]`` with
    per-sequence slots of ``N_b`` entries per query block at ``cu_block_idx_offsets[b] + m * N_b`` (or, without
    offsets, a uniform ``total_n_blocks / total_m_blocks`` slots per query block). Batched: counts ``[B, H, M]``,
    indices ``[B, H, M, W]`` (``B``/``H`` may be 1 = broadcast, ``W`` may be compact). ``mask_*`` blocks become
    partial entries (the element mask applies, as FA4's ``mask_mod``), ``full_*`` blocks full entries.
    """
    mask_cnt, mask_idx = _field(bst, "mask_block_cnt"), _field(bst, "mask_block_idx")
    full_cnt, full_idx = _field(bst, "full_block_cnt"), _field(bst, "full_block_idx")
    if mask_cnt is None or mask_idx is None:
        raise ValueError("bst: mask_block_cnt and mask_block_idx are required")
    if (full_cnt is None) != (full_idx is None):
        raise ValueError("bst: full_block_cnt and full_block_idx must be given together")
    bs_field = _field(bst, "block_size")
    bs = block_size if block_size is not None else bs_field
    if bs is None:
        raise ValueError("block_size: FA4 tensors do not carry their block size here; pass block_size=(bq, bk) "
                         "or set bst.block_size")
    bq, bk = _block_pair(bs, "block_size")
    ignore = _padding_arg(padding)
    emask = _mask_kw(element_mask, causal, window)
    cu_total = _field(bst, "cu_total_m_blocks")
    src: dict[str, Any] = {"format": "fa4", "has_full": full_cnt is not None, "block_size_field": bs_field is not None}
    if cu_total is not None:
        if cu_seqlens_q is None:
            raise ValueError("cu_seqlens_q: required for varlen FA4 block sparsity (cu_total_m_blocks is set)")
        cu_q = resolve_cu(cu_seqlens_q, None)[0]
        B = cu_q.shape[0] - 1
        if cu_seqlens_k is None:
            if seqlen_k is None:
                raise ValueError("cu_seqlens_k: give cu_seqlens_k or seqlen_k for varlen FA4 block sparsity")
            cu_k = _uniform_cu(B, seqlen_k, "seqlen_k")
        else:
            cu_k = cu_seqlens_k
        cu_q, cu_k = resolve_cu(cu_q, cu_k)
        M, cu_m = _seq_blocks(cu_q, bq)
        N, _ = _seq_blocks(cu_k, bk)
        TM = int(cu_m[-1])
        ctm = as_int(cu_total, "cu_total_m_blocks", ndim=1)
        if ctm.shape[0] != B + 1 or not np.array_equal(ctm, cu_m):
            raise ValueError(f"cu_total_m_blocks: expected the cumulative query-block counts {cu_m.tolist()[:8]}"
                             f"{'...' if B > 7 else ''} (block_q = {bq}), got {ctm.tolist()[:8]}")
        mc, mi = _norm_lists(mask_cnt, mask_idx, "mask_block_cnt", "mask_block_idx", 2, 2)
        Hp = mc.shape[0]
        if mc.shape[1] != TM:
            raise ValueError(f"mask_block_cnt: expected shape [H, {TM}] (total_m_blocks), got {tuple(mc.shape)}")
        if mi.shape[0] != Hp:
            raise ValueError(f"mask_block_idx: expected {Hp} heads like mask_block_cnt, got {tuple(mi.shape)}")
        TNp = mi.shape[1]
        offs_field = _field(bst, "cu_block_idx_offsets")
        seq_m = np.repeat(np.arange(B, dtype=np.int64), M)
        mloc = np.arange(TM, dtype=np.int64) - cu_m[seq_m]
        if offs_field is not None:
            expected = exclusive_cumsum(M * N)
            check_int32(int(expected[-1]), "cu_block_idx_offsets", "total_n_blocks (sum of M_b * N_b)")
            offs = as_int(offs_field, "cu_block_idx_offsets", ndim=1)
            if offs.shape[0] != B + 1 or not np.array_equal(offs, expected):
                raise ValueError(f"cu_block_idx_offsets: expected the cumulative M_b * N_b "
                                 f"{expected.tolist()[:8]}, got {offs.tolist()[:8]}")
            if TNp != int(expected[-1]):
                raise ValueError(f"mask_block_idx: expected shape [H, {int(expected[-1])}] (total_n_blocks), got "
                                 f"{tuple(mi.shape)}")
            base = offs[seq_m] + mloc * N[seq_m]
            width = N[seq_m]
            src["uniform_k"] = False
        else:
            if TM == 0:
                W = 0
            elif TNp % TM:
                raise ValueError(f"mask_block_idx: without cu_block_idx_offsets the index width {TNp} must be a "
                                 f"multiple of total_m_blocks = {TM}")
            else:
                W = TNp // TM
            if TM and int(N[M > 0].max()) > W:
                raise ValueError(f"mask_block_idx: {W} index slots per query block, but a sequence has "
                                 f"{int(N.max())} key blocks; pass cu_block_idx_offsets")
            base = np.arange(TM, dtype=np.int64) * W
            width = np.full(TM, W, dtype=np.int64)
            src["uniform_k"] = True
            src["width"] = W
        G = Hp * TM
        grid = _Grid((np.arange(Hp, dtype=np.int64)[:, None] * TNp + base[None, :]).reshape(-1),
                     np.tile(width, Hp), np.tile(width, Hp))
        lists = [(mc, mi, False, "mask_block_cnt", "mask_block_idx")]
        if full_cnt is not None:
            fc, fi = _norm_lists(full_cnt, full_idx, "full_block_cnt", "full_block_idx", 2, 2)
            if fc.shape != mc.shape or fi.shape != mi.shape:
                raise ValueError(f"full_block_cnt / full_block_idx: expected shapes {tuple(mc.shape)} / "
                                 f"{tuple(mi.shape)} like the mask_* tensors, got {tuple(fc.shape)} / "
                                 f"{tuple(fi.shape)}")
            lists.append((fc, fi, True, "full_block_cnt", "full_block_idx"))
        qpart = fixed_partition(cu_q, bq, Hp, "cu_seqlens_q")
        kpart = fixed_partition(cu_k, bk, Hp, "cu_seqlens_k")
        lr_g = np.arange(G, dtype=np.int64)
        N_row = np.tile(N[seq_m], Hp)
        r, kb, full, kinds = _import_lists(lists, grid, lr_g, qpart, kpart, N_row, ignore, allow_unsorted, G)
        src.update(varlen=True, pad=kinds)
    else:
        mc, mi = _norm_lists(mask_cnt, mask_idx, "mask_block_cnt", "mask_block_idx", 3, 4)
        Bp, Hp, Mg = mc.shape
        if mi.shape[:3] != mc.shape:
            raise ValueError(f"mask_block_idx: expected shape [{Bp}, {Hp}, {Mg}, W] like mask_block_cnt, got "
                             f"{tuple(mi.shape)}")
        W = mi.shape[3]
        if cu_seqlens_q is None:
            cu_q = _uniform_cu(Bp, Mg * bq if seqlen_q is None else seqlen_q, "seqlen_q")
        else:
            cu_q = cu_seqlens_q
        B = np.asarray(to_host(cu_q, "cu_seqlens_q")).shape[0] - 1
        if cu_seqlens_k is None:
            if seqlen_k is not None:
                cu_k = _uniform_cu(B, seqlen_k, "seqlen_k")
            elif cu_seqlens_q is not None:
                cu_k = None
            else:
                cu_k = _uniform_cu(B, W * bk, "seqlen_k")
        else:
            cu_k = cu_seqlens_k
        cu_q, cu_k = resolve_cu(cu_q, cu_k)
        N_all, _ = _seq_blocks(cu_k, bk)
        nk_grid = max(int(N_all.max()) if B else 0, W)
        grid, qpart, lr_g, N, b_row, _ = _batched_geometry(mc.shape, mi.shape, cu_q, cu_k, bq, bk, nk_grid, ignore,
                                                           "mask_block_cnt")
        lists = [(mc, mi, False, "mask_block_cnt", "mask_block_idx")]
        if full_cnt is not None:
            fc, fi = _norm_lists(full_cnt, full_idx, "full_block_cnt", "full_block_idx", 3, 4)
            if fc.shape != mc.shape or fi.shape != mi.shape:
                raise ValueError(f"full_block_cnt / full_block_idx: expected shapes {tuple(mc.shape)} / "
                                 f"{tuple(mi.shape)} like the mask_* tensors, got {tuple(fc.shape)} / "
                                 f"{tuple(fi.shape)}")
            lists.append((fc, fi, True, "full_block_cnt", "full_block_idx"))
        kpart = fixed_partition(cu_k, bk, Hp, "cu_seqlens_k")
        r, kb, full, kinds = _import_lists(lists, grid, lr_g, qpart, kpart, N[b_row], ignore, allow_unsorted,
                                           grid.nk.shape[0])
        src.update(varlen=False, pad=kinds, grid_m=Mg, width=W, nk=nk_grid, broadcast_batch=(Bp == 1 and B != 1))
    hm = check_head_mode(head_mode, Hp, "per_q_head")
    return build_from_cells(cu_q, cu_k, Hp, hm, qpart, kpart, r, kb, np.where(full, 2, 1), emask, bq, bk, src)


def _fixed_required(layout: BlockSparseLayout, what: str) -> tuple[int, int]:
    if not layout.is_fixed:
        raise ValueError(f"layout: {what} needs fixed block sizes (block_q/block_k); this layout has variable spans")
    return layout.block_q, layout.block_k


def _pick_pad(pad, source_pad, default):
    if pad is not None:
        return pad
    if isinstance(source_pad, str) and source_pad in ("zeros", "complement"):
        return source_pad
    return default


def _per_batch_cells(layout: BlockSparseLayout):
    """Entries as (b, h, m, n, full), in (h, b, m) row order."""
    rs = layout.rows()
    counts = np.diff(rs.ent_ptr)
    e_row = np.repeat(np.arange(rs.num_rows, dtype=np.int64), counts)
    qp = layout.query_partition
    seg = qp.seg()
    mloc = np.arange(qp.size, dtype=np.int64) - qp.ptr[:-1][seg]
    return (rs.batch[e_row].astype(np.int64), rs.head[e_row].astype(np.int64), mloc[e_row],
            layout.entry_key_block.astype(np.int64), layout.entry_is_full())


def _batched_export(layout, Bp, M_grid, W, nk_grid, direction, pads, include_full, names):
    """Counts/indices [B', H, rows, W] for the forward (kv) or transposed (q) direction."""
    B, H = layout.batch_size, layout.num_heads
    b, h, m, n, full = _per_batch_cells(layout)
    if direction == "q":
        m, n = n, m
    if Bp == 1 and B > 1:
        bq, bk = layout.block_q, layout.block_k
        M, _ = _seq_blocks(layout.cu_seqlens_q, bq)
        N, _ = _seq_blocks(layout.cu_seqlens_k, bk)
        if (M != M[0]).any() or (N != N[0]).any():
            raise ValueError("broadcast_batch: a batch-broadcast export needs sequences of equal lengths")
        sel0 = b == 0
        ref = np.stack([h[sel0], m[sel0], n[sel0], full[sel0]])
        for bb in range(1, B):  # per sequence (not per block): compare whole arrays
            sel = b == bb
            if not np.array_equal(np.stack([h[sel], m[sel], n[sel], full[sel]]), ref):
                raise ValueError(f"broadcast_batch: sequence {bb} has a different pattern than sequence 0; export "
                                 f"per batch (broadcast_batch=False)")
        b, h, m, n, full = b[sel0], h[sel0], m[sel0], n[sel0], full[sel0]
    G = Bp * H * M_grid
    grid = _Grid(np.arange(G, dtype=np.int64) * W, np.full(G, W, dtype=np.int64),
                 np.full(G, nk_grid, dtype=np.int64))
    g = (b * H + h) * M_grid + m
    out = []
    for is_full, (cname, _iname) in ((False, names[0]), (True, names[1])):
        if is_full and not include_full:
            if full.any():
                raise ValueError("include_full: the layout has full blocks; they cannot be dropped from the export")
            out += [None, None]
            continue
        sel = full if is_full else ~full
        gg, nn = g[sel], n[sel]
        order = np.lexsort((nn, gg))
        cnt, idx = _write_lists(grid, (Bp, H, M_grid), (Bp, H, M_grid, W), gg[order], nn[order],
                                pads["full" if is_full else "mask"], cname)
        out += [cnt, idx]
    return out


def to_fa4(layout: BlockSparseLayout, *, varlen: bool | None = None, pad: str | None = None,
           include_full: bool | None = None, width: int | None = None, uniform_k: bool | None = None,
           broadcast_batch: bool | None = None, num_m_blocks: int | None = None,
           num_heads_q: int | None = None) -> FA4BlockSparse:
    """Export as FA4 ``BlockSparseTensorsTorch`` fields (NumPy int32). Defaults reproduce the source format of a
    layout imported with :func:`from_fa4` bit for bit (varlen or batched, padding convention, broadcast, width);
    otherwise varlen-packed, zero padding, full blocks included. FA4 indexes query heads: ``num_heads_q`` repeats
    the heads of a ``per_kv_head`` layout over their GQA groups (a broadcast layout stays 1 head)."""
    out = _to_fa4(layout, varlen, pad, include_full, width, uniform_k, broadcast_batch, num_m_blocks)
    rep = _head_repeat(layout, num_heads_q)
    if rep == 1:
        return out
    ax = 0 if out.cu_total_m_blocks is not None else 1
    return out._replace(**{f: np.repeat(getattr(out, f), rep, axis=ax) for f in
                           ("mask_block_cnt", "mask_block_idx", "full_block_cnt", "full_block_idx")
                           if getattr(out, f) is not None})


def _head_repeat(layout: BlockSparseLayout, num_heads_q: int | None) -> int:
    if num_heads_q is None or layout.head_mode == "broadcast":
        return 1
    if isinstance(num_heads_q, (bool, np.bool_)) or not isinstance(num_heads_q, (int, np.integer)) \
            or num_heads_q < 1 or num_heads_q % layout.num_heads:
        raise ValueError(f"num_heads_q: expected a positive multiple of the layout's {layout.num_heads} heads, got "
                         f"{num_heads_q!r}")
    if layout.head_mode == "per_q_head" and num_heads_q != layout.num_heads:
        raise ValueError(f"num_heads_q: the layout has {layout.num_heads} per-query-head patterns, got "
                         f"{num_heads_q}")
    return int(num_heads_q) // layout.num_heads


def _to_fa4(layout, varlen, pad, include_full, width, uniform_k, broadcast_batch, num_m_blocks):
    bq, bk = _fixed_required(layout, "to_fa4")
    src = layout.source if layout.source.get("format") == "fa4" else {}
    varlen = src.get("varlen", True) if varlen is None else bool(varlen)
    pads_src = src.get("pad", {}) or {}
    pads = {k: _pick_pad(pad, pads_src.get(k), "zeros") for k in ("mask", "full")}
    include_full = src.get("has_full", True) if include_full is None else bool(include_full)
    B, H = layout.batch_size, layout.num_heads
    M, cu_m = _seq_blocks(layout.cu_seqlens_q, bq)
    N, _ = _seq_blocks(layout.cu_seqlens_k, bk)
    block_size = (bq, bk) if src.get("block_size_field", True) else None
    if varlen:
        TM = int(cu_m[-1])
        uniform = src.get("uniform_k", False) if uniform_k is None else bool(uniform_k)
        seq_m = np.repeat(np.arange(B, dtype=np.int64), M)
        mloc = np.arange(TM, dtype=np.int64) - cu_m[seq_m]
        if uniform:
            W = width if width is not None else src.get("width", int(N[M > 0].max()) if TM else 0)
            if TM and int(N[M > 0].max()) > W:
                raise ValueError(f"width: {W} slots per query block cannot hold a sequence of "
                                 f"{int(N[M > 0].max())} key blocks")
            TN = TM * W
            check_int32(TN * max(H, 1), "mask_block_idx", "total index slots")
            base = np.arange(TM, dtype=np.int64) * W
            wid = np.full(TM, W, dtype=np.int64)
            offs_out = None
        else:
            offs = exclusive_cumsum(M * N)
            check_int32(int(offs[-1]), "cu_block_idx_offsets", "total_n_blocks (sum of M_b * N_b)")
            TN = int(offs[-1])
            base = offs[seq_m] + mloc * N[seq_m]
            wid = N[seq_m]
            offs_out = offs.astype(np.int32)
        grid = _Grid((np.arange(H, dtype=np.int64)[:, None] * TN + base[None, :]).reshape(-1), np.tile(wid, H),
                     np.tile(wid, H))
        rs = layout.rows()
        counts = np.diff(rs.ent_ptr)
        e_row = np.repeat(np.arange(rs.num_rows, dtype=np.int64), counts)
        full = layout.entry_is_full()
        kb = layout.entry_key_block.astype(np.int64)
        out = []
        for is_full, cname in ((False, "mask_block_cnt"), (True, "full_block_cnt")):
            if is_full and not include_full:
                if full.any():
                    raise ValueError("include_full: the layout has full blocks; they cannot be dropped from the "
                                     "export")
                out += [None, None]
                continue
            sel = full if is_full else ~full
            cnt, idx = _write_lists(grid, (H, TM), (H, TN), e_row[sel], kb[sel],
                                    pads["full" if is_full else "mask"], cname)
            out += [cnt, idx]
        return FA4BlockSparse(out[0], out[1], out[2], out[3], cu_m.astype(np.int32), offs_out, block_size)
    maxM = int(M.max()) if B else 0
    Mg = num_m_blocks if num_m_blocks is not None else src.get("grid_m", maxM)
    nk_grid = max(src.get("nk", 0), int(N.max()) if B else 0)
    W = width if width is not None else src.get("width", nk_grid)
    if Mg < maxM:
        raise ValueError(f"num_m_blocks: {Mg} is less than the {maxM} query blocks of the longest sequence")
    if W > nk_grid:
        nk_grid = W
    Bp = 1 if (src.get("broadcast_batch", False) if broadcast_batch is None else broadcast_batch) else B
    out = _batched_export(layout, Bp, Mg, W, nk_grid, "kv", pads, include_full,
                          (("mask_block_cnt", "mask_block_idx"), ("full_block_cnt", "full_block_idx")))
    return FA4BlockSparse(out[0], out[1], out[2], out[3], None, None, block_size)


# ---------------------------------------------------------------------------------------------------------------
# packed-axis spans split at sequence boundaries (FlexAttention packed grid, FlashInfer variable blocks)


def _split_spans(cu: np.ndarray, head: np.ndarray, start: np.ndarray, length: np.ndarray, B: int):
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


def _packed_build(cu_q, cu_k, num_heads, head_mode, q_spans, k_spans, cells, emask, src, block_q=None,
                  block_k=None, auto=False):
    """Layout from per-head spans of the packed axes and kept cells (head, q span id, k span id, full)."""
    B = cu_q.shape[0] - 1
    qh, qs, ql = q_spans
    kh, ks, kl = k_spans
    q_span, q_head, q_b, q_start, q_len = _split_spans(cu_q, qh, qs, ql, B)
    k_span, k_head, k_b, k_start, k_len = _split_spans(cu_k, kh, ks, kl, B)
    qpart = spans_partition(cu_q, num_heads, q_head * B + q_b, q_start, q_len, "query spans")
    kpart = spans_partition(cu_k, num_heads, k_head * B + k_b, k_start, k_len, "key spans")
    ch, cq, ck, cfull = cells
    # sequences shared by the q span and the k span of each cell (pieces are sorted by span, then sequence)
    qb_lo, qb_hi = _span_seq_range(q_span, q_b, qh.shape[0])
    kb_lo, kb_hi = _span_seq_range(k_span, k_b, kh.shape[0])
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


def _span_seq_range(span: np.ndarray, b: np.ndarray, nspan: int) -> tuple[np.ndarray, np.ndarray]:
    count = np.bincount(span, minlength=nspan) if span.size else np.zeros(nspan, dtype=np.int64)
    first = exclusive_cumsum(count)[:-1]
    lo = np.zeros(nspan, dtype=np.int64)
    hi = np.full(nspan, -1, dtype=np.int64)
    nz = count > 0
    lo[nz] = b[first[nz]]
    hi[nz] = b[first[nz] + count[nz] - 1]
    return lo, hi


def _aligned_block(cu: np.ndarray, block: int) -> int | None:
    """``block`` if every sequence starts on a multiple of it (pieces are then the fixed blocks)."""
    return block if (cu.astype(np.int64)[:-1] % block == 0).all() else None


# ---------------------------------------------------------------------------------------------------------------
# FlexAttention BlockMask

_FLEX_FIELDS = ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices")


def _lead4(cnt, idx, cname, iname):
    cnt = as_int(cnt, cname)
    idx = as_int(idx, iname)
    if idx.ndim < 2 or idx.ndim > 4 or cnt.ndim != idx.ndim - 1:
        raise ValueError(f"{cname} / {iname}: expected [..., num_q_blocks] counts and [..., num_q_blocks, W] "
                         f"indices with at most 2 leading (batch, head) dims, got {tuple(cnt.shape)} / "
                         f"{tuple(idx.shape)}")
    while idx.ndim < 4:
        idx = idx[None]
        cnt = cnt[None]
    if idx.shape[:3] != cnt.shape:
        raise ValueError(f"{iname}: expected shape {tuple(cnt.shape)} + (W,) like {cname}, got {tuple(idx.shape)}")
    return cnt, idx


def from_flex(block_mask: Any = None, cu_seqlens_q: Any = None, cu_seqlens_k: Any = None, *,
              kv_num_blocks: Any = None, kv_indices: Any = None, full_kv_num_blocks: Any = None,
              full_kv_indices: Any = None, BLOCK_SIZE: Any = None, seq_lengths: tuple[int, int] | None = None,
              packed: bool = False, head_mode: str | None = None, element_mask: ElementMask | None = None,
              causal: bool | None = None, window: tuple[int, int] | None = None,
              allow_unsorted: bool = False, padding: str = "ignore") -> BlockSparseLayout:
    """Layout from FlexAttention ``BlockMask`` tensors (a BlockMask-like object or the tensors as keywords).

    ``kv_num_blocks [B, H, MQ]`` / ``kv_indices [B, H, MQ, NK]`` are the blocks on which ``mask_mod`` is applied
    (partial entries; the element mask stands in for ``mask_mod``), ``full_kv_*`` the full blocks; ``BLOCK_SIZE`` is
    ``(Q_BLOCK, KV_BLOCK)`` or an int. Two geometries:

    * per batch (default): grid of each sequence's own blocks, ``B`` = sequences (or 1 = broadcast); without
      ``cu_seqlens_*`` the batch has ``B`` sequences of ``seq_lengths`` (default ``(MQ*Q_BLOCK, NK*KV_BLOCK)``).
      ``padding='ignore'`` (default) drops blocks beyond a sequence's length (a padded batch).
    * ``packed=True``: one grid over the packed tokens of a document-masked batch (``B = 1``); blocks are split at
      the ``cu_seqlens`` boundaries, cross-sequence parts are dropped (document masking forbids them).
    """
    vals = {}
    for nm, arg in zip(_FLEX_FIELDS, (kv_num_blocks, kv_indices, full_kv_num_blocks, full_kv_indices)):
        v = _field(block_mask, nm) if block_mask is not None else None
        if v is not None and arg is not None:
            raise ValueError(f"{nm}: given both in block_mask and as a keyword")
        vals[nm] = arg if arg is not None else v
    if vals["kv_num_blocks"] is None or vals["kv_indices"] is None:
        raise ValueError("kv_num_blocks / kv_indices: required (from a BlockMask or as keywords)")
    if (vals["full_kv_num_blocks"] is None) != (vals["full_kv_indices"] is None):
        raise ValueError("full_kv_num_blocks / full_kv_indices: give both or neither")
    bs = BLOCK_SIZE if BLOCK_SIZE is not None else (_field(block_mask, "BLOCK_SIZE") or 128)
    bq, bk = _block_pair(bs, "BLOCK_SIZE")
    if seq_lengths is None and block_mask is not None:
        seq_lengths = _field(block_mask, "seq_lengths")
    ignore = _padding_arg(padding)
    emask = _mask_kw(element_mask, causal, window)
    mc, mi = _lead4(vals["kv_num_blocks"], vals["kv_indices"], "kv_num_blocks", "kv_indices")
    lists_raw = [(mc, mi, False, "kv_num_blocks", "kv_indices")]
    has_full = vals["full_kv_num_blocks"] is not None
    if has_full:
        fc, fi = _lead4(vals["full_kv_num_blocks"], vals["full_kv_indices"], "full_kv_num_blocks",
                        "full_kv_indices")
        if fc.shape != mc.shape or fi.shape != mi.shape:
            raise ValueError(f"full_kv_num_blocks / full_kv_indices: expected shapes {tuple(mc.shape)} / "
                             f"{tuple(mi.shape)} like kv_*, got {tuple(fc.shape)} / {tuple(fi.shape)}")
        lists_raw.append((fc, fi, True, "full_kv_num_blocks", "full_kv_indices"))
    Bp, Hp, MQ = mc.shape
    W = mi.shape[3]
    if seq_lengths is not None:
        try:
            sl_q, sl_k = (int(x) for x in seq_lengths)
        except (TypeError, ValueError):
            raise TypeError(f"seq_lengths: expected a (q_len, kv_len) pair, got {seq_lengths!r}") from None
    else:
        sl_q, sl_k = MQ * bq, W * bk
    if cdiv(sl_q, bq) != MQ:
        raise ValueError(f"kv_num_blocks: {MQ} query blocks do not match seq_lengths[0] = {sl_q} with "
                         f"Q_BLOCK = {bq}")
    NKg = cdiv(sl_k, bk)
    src: dict[str, Any] = {"format": "flex", "has_full": has_full, "packed": bool(packed),
                           "seq_lengths": (sl_q, sl_k), "width": W, "grid_m": MQ, "nk": NKg,
                           "block_size": (bq, bk)}
    if not packed:
        if cu_seqlens_q is None:
            cu_q = _uniform_cu(Bp, sl_q, "seq_lengths[0]")
            cu_k = _uniform_cu(Bp, sl_k, "seq_lengths[1]") if cu_seqlens_k is None else cu_seqlens_k
        else:
            cu_q, cu_k = cu_seqlens_q, cu_seqlens_k
        cu_q, cu_k = resolve_cu(cu_q, cu_k)
        B = cu_q.shape[0] - 1
        N_all, _ = _seq_blocks(cu_k, bk)
        nk_grid = max(NKg, W)
        if B and int(N_all.max()) > nk_grid:
            raise ValueError(f"kv_indices: the grid has {nk_grid} key blocks, but a sequence of cu_seqlens_k has "
                             f"{int(N_all.max())} blocks of {bk}")
        grid, qpart, lr_g, N, b_row, _ = _batched_geometry(mc.shape, mi.shape, cu_q, cu_k, bq, bk, nk_grid, ignore,
                                                           "kv_num_blocks")
        kpart = fixed_partition(cu_k, bk, Hp, "cu_seqlens_k")
        r, kb, full, kinds = _import_lists(lists_raw, grid, lr_g, qpart, kpart, N[b_row], ignore, allow_unsorted,
                                           grid.nk.shape[0])
        src.update(pad=kinds, nk=nk_grid, broadcast_batch=(Bp == 1 and B != 1))
        hm = check_head_mode(head_mode, Hp, "per_q_head")
        return build_from_cells(cu_q, cu_k, Hp, hm, qpart, kpart, r, kb, np.where(full, 2, 1), emask, bq, bk, src)
    # packed document grid
    if cu_seqlens_q is None:
        raise ValueError("cu_seqlens_q: required with packed=True (the document boundaries of the packed grid)")
    cu_q, cu_k = resolve_cu(cu_seqlens_q, cu_seqlens_k)
    if Bp != 1:
        raise ValueError(f"kv_num_blocks: a packed grid has batch dimension 1, got {Bp}")
    if sl_q < int(cu_q[-1]) or NKg * bk < int(cu_k[-1]):
        raise ValueError(f"seq_lengths: the packed grid ({sl_q}, {sl_k}) does not cover the {int(cu_q[-1])} query "
                         f"/ {int(cu_k[-1])} key tokens of cu_seqlens")
    nk_grid = max(NKg, W)
    G = Hp * MQ
    grid = _Grid(np.arange(G, dtype=np.int64) * W, np.full(G, W, dtype=np.int64), np.full(G, nk_grid,
                                                                                          dtype=np.int64))
    cells_h, cells_q, cells_k, cells_f = [], [], [], []
    kinds = {}
    for cnt, idx, is_full, cname, iname in lists_raw:
        g, v, kind = _read_lists(cnt, idx, grid, cname, iname, allow_unsorted)
        kinds["full" if is_full else "mask"] = kind
        h = g // MQ
        cells_h.append(h)
        cells_q.append(h * MQ + g % MQ)
        cells_k.append(h * nk_grid + v)
        cells_f.append(np.full(g.shape[0], is_full, dtype=np.bool_))
    src.update(pad=kinds, nk=nk_grid)
    hs = np.repeat(np.arange(Hp, dtype=np.int64), MQ)
    q_spans = (hs, np.tile(np.arange(MQ, dtype=np.int64) * bq, Hp), np.full(Hp * MQ, bq, dtype=np.int64))
    hk = np.repeat(np.arange(Hp, dtype=np.int64), nk_grid)
    k_spans = (hk, np.tile(np.arange(nk_grid, dtype=np.int64) * bk, Hp), np.full(Hp * nk_grid, bk, dtype=np.int64))
    cells = (np.concatenate(cells_h), np.concatenate(cells_q), np.concatenate(cells_k), np.concatenate(cells_f))
    hm = check_head_mode(head_mode, Hp, "per_q_head")
    return _packed_build(cu_q, cu_k, Hp, hm, q_spans, k_spans, cells, emask, src,
                         _aligned_block(cu_q, bq), _aligned_block(cu_k, bk))


def to_flex(layout: BlockSparseLayout, *, packed: bool | None = None, BLOCK_SIZE: Any = None, pad: str | None = None,
            include_full: bool | None = None, width: int | None = None, seq_lengths: tuple[int, int] | None = None,
            broadcast_batch: bool | None = None, transposed: bool = True,
            num_heads_q: int | None = None) -> dict[str, Any]:
    """Export as FlexAttention ``BlockMask`` tensors (dict of NumPy int32 arrays + ``BLOCK_SIZE``/``seq_lengths``),
    including the transposed ``q_num_blocks``/``q_indices`` (and ``full_q_*``) FlexAttention's backward uses.
    Feed them to ``BlockMask.from_kv_blocks`` (or construct ``BlockMask`` directly). Default padding beyond the
    counts is FlexAttention's own (the remaining block indices ascending). Defaults reproduce a layout imported with
    :func:`from_flex` exactly. ``num_heads_q`` repeats the heads of a ``per_kv_head`` layout over their GQA
    groups (BlockMask's head dimension is the query heads')."""
    out = _to_flex(layout, packed, BLOCK_SIZE, pad, include_full, width, seq_lengths, broadcast_batch, transposed)
    rep = _head_repeat(layout, num_heads_q)
    if rep > 1:
        out = {k: (np.repeat(v, rep, axis=1) if isinstance(v, np.ndarray) else v) for k, v in out.items()}
    return out


def _to_flex(layout, packed, BLOCK_SIZE, pad, include_full, width, seq_lengths, broadcast_batch, transposed):
    src = layout.source if layout.source.get("format") == "flex" else {}
    packed = src.get("packed", False) if packed is None else bool(packed)
    pads_src = src.get("pad", {}) or {}
    pads = {k: _pick_pad(pad, pads_src.get(k), "complement") for k in ("mask", "full")}
    include_full = src.get("has_full", True) if include_full is None else bool(include_full)
    names = (("kv_num_blocks", "kv_indices"), ("full_kv_num_blocks", "full_kv_indices"))
    qnames = (("q_num_blocks", "q_indices"), ("full_q_num_blocks", "full_q_indices"))
    H, B = layout.num_heads, layout.batch_size
    if not packed:
        bq, bk = _fixed_required(layout, "to_flex (per batch)")
        if BLOCK_SIZE is not None and _block_pair(BLOCK_SIZE, "BLOCK_SIZE") != (bq, bk):
            raise ValueError(f"BLOCK_SIZE: a per-batch export uses the layout's blocks ({bq}, {bk})")
        M, _ = _seq_blocks(layout.cu_seqlens_q, bq)
        N, _ = _seq_blocks(layout.cu_seqlens_k, bk)
        if seq_lengths is None:
            seq_lengths = src.get("seq_lengths") or (int(layout.seqlens_q.max()) if B else 0,
                                                     int(layout.seqlens_k.max()) if B else 0)
        sl_q, sl_k = (int(x) for x in seq_lengths)
        MQ = cdiv(sl_q, bq)
        NKg = max(cdiv(sl_k, bk), src.get("nk", 0))
        if B and (int(M.max()) > MQ or int(N.max()) > NKg):
            raise ValueError(f"seq_lengths: {seq_lengths} is shorter than the longest sequence")
        W = width if width is not None else src.get("width", NKg)
        nk_grid = max(NKg, W)
        Bp = 1 if (src.get("broadcast_batch", False) if broadcast_batch is None else broadcast_batch) else B
        kv = _batched_export(layout, Bp, MQ, W, nk_grid, "kv", pads, include_full, names)
        out = dict(zip(("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices"), kv))
        if transposed:
            qd = _batched_export(layout, Bp, nk_grid, MQ, MQ, "q", {"mask": "complement", "full": "complement"},
                                 include_full, qnames)
            out.update(zip(("q_num_blocks", "q_indices", "full_q_num_blocks", "full_q_indices"), qd))
        out["BLOCK_SIZE"] = (bq, bk)
        out["seq_lengths"] = (sl_q, sl_k)
        return out
    # packed grid: aggregate the per-sequence pieces back onto the packed blocks
    if BLOCK_SIZE is None:
        BLOCK_SIZE = src.get("block_size") or (layout.block_q, layout.block_k)
    if BLOCK_SIZE[0] is None:
        raise ValueError("BLOCK_SIZE: required to export a variable-span layout onto a packed grid")
    bq, bk = _block_pair(BLOCK_SIZE, "BLOCK_SIZE")
    total_q, total_k = layout.total_q, layout.total_k
    if seq_lengths is None:
        seq_lengths = src.get("seq_lengths") or (total_q, total_k)
    sl_q, sl_k = (int(x) for x in seq_lengths)
    MQ = cdiv(sl_q, bq)
    NKg = max(cdiv(sl_k, bk), src.get("nk", 0))
    W = width if width is not None else src.get("width", NKg)
    nk_grid = max(NKg, W)
    rs = layout.rows()
    counts = np.diff(rs.ent_ptr)
    e_row = np.repeat(np.arange(rs.num_rows, dtype=np.int64), counts)
    cuq = layout.cu_seqlens_q.astype(np.int64)
    cuk = layout.cu_seqlens_k.astype(np.int64)
    gq0 = cuq[rs.batch] + rs.q_start
    gq1 = gq0 + rs.q_len - 1
    if ((gq0 // bq) != (gq1 // bq)).any():
        raise ValueError(f"BLOCK_SIZE: a query span of the layout crosses a packed block of {bq} tokens")
    eb = rs.batch[e_row].astype(np.int64)
    gk0 = cuk[eb] + rs.k_start
    gk1 = gk0 + rs.k_len - 1
    if ((gk0 // bk) != (gk1 // bk)).any():
        raise ValueError(f"BLOCK_SIZE: a key span of the layout crosses a packed block of {bk} tokens")
    h = rs.head[e_row].astype(np.int64)
    Gq = (gq0 // bq)[e_row]
    Gk = gk0 // bk
    full = layout.entry_is_full()
    # a packed block is full iff it lies in one sequence (queries and keys) and that single piece is full
    key = (h * MQ + Gq) * nk_grid + Gk
    order = np.argsort(key, kind="stable")
    key_s = key[order]
    uniq, first, npieces = np.unique(key_s, return_index=True, return_counts=True)
    allfull = np.logical_and.reduceat(full[order], first) if key_s.size else np.zeros(0, dtype=np.bool_)
    uq = (uniq // nk_grid) % MQ
    uk = uniq % nk_grid
    uh = uniq // (nk_grid * MQ)

    def single_seq(G, bs, cu):
        s0 = G * bs
        s1 = np.minimum((G + 1) * bs, int(cu[-1])) - 1
        return (np.searchsorted(cu, s0, side="right") == np.searchsorted(cu, s1, side="right")) & (s1 >= s0)

    sq = single_seq(uq, bq, cuq)
    sk = single_seq(uk, bk, cuk)
    same = np.searchsorted(cuq, uq * bq, side="right") == np.searchsorted(cuk, uk * bk, side="right")
    cfull = (npieces == 1) & allfull & sq & sk & same
    G = H * MQ
    grid = _Grid(np.arange(G, dtype=np.int64) * W, np.full(G, W, dtype=np.int64),
                 np.full(G, nk_grid, dtype=np.int64))
    gridT = _Grid(np.arange(H * nk_grid, dtype=np.int64) * MQ, np.full(H * nk_grid, MQ, dtype=np.int64),
                  np.full(H * nk_grid, MQ, dtype=np.int64))
    out: dict[str, Any] = {}
    for is_full in (False, True):
        nm = names[1] if is_full else names[0]
        qn = qnames[1] if is_full else qnames[0]
        if is_full and not include_full:
            if cfull.any():
                raise ValueError("include_full: the layout has full blocks; they cannot be dropped from the export")
            out.update({nm[0]: None, nm[1]: None, qn[0]: None, qn[1]: None})
            continue
        sel = cfull if is_full else ~cfull
        cnt, idx = _write_lists(grid, (1, H, MQ), (1, H, MQ, W), uh[sel] * MQ + uq[sel], uk[sel],
                                pads["full" if is_full else "mask"], nm[0])
        out[nm[0]], out[nm[1]] = cnt, idx
        if transposed:
            gT = uh[sel] * nk_grid + uk[sel]
            o = np.lexsort((uq[sel], gT))
            cntT, idxT = _write_lists(gridT, (1, H, nk_grid), (1, H, nk_grid, MQ), gT[o], uq[sel][o], "complement",
                                      qn[0])
            out[qn[0]], out[qn[1]] = cntT, idxT
    out["BLOCK_SIZE"] = (bq, bk)
    out["seq_lengths"] = (sl_q, sl_k)
    return out


# ---------------------------------------------------------------------------------------------------------------
# SeerAttention


def from_seer_2d(mask: Any, cu_seqlens_q: Any, cu_seqlens_k: Any = None, *, block_size: Any = 64,
                 head_mode: str | None = None, element_mask: ElementMask | None = None, causal: bool | None = True,
                 window: tuple[int, int] | None = None, padding: str = "ignore") -> BlockSparseLayout:
    """Layout from a SeerAttention 2D block mask ``[B, H, ceil(t/bs), ceil(t/bs)]`` (bool, padded per sequence).

    SeerAttention's kernels are causal (bottom-right), hence ``causal=True`` by default: kept blocks on the
    diagonal become partial, blocks entirely above it are dropped. Padding cells are ignored by default."""
    bq, bk = _block_pair(block_size, "block_size")
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
    ignore = _padding_arg(padding)
    a = as_bool(mask, "mask", ndim=4)
    B = cu_q.shape[0] - 1
    lq = np.diff(cu_q.astype(np.int64))
    N, _ = _seq_blocks(cu_k, bk)
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
    emask = _mask_kw(element_mask, causal, window)
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


# ---------------------------------------------------------------------------------------------------------------
# FlashInfer variable blocks


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
            raise ValueError(f"{nm}: block sizes must be positive, got {int(s.ravel()[t])} at {_pos_str(t, s.shape)}")
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
    emask = _mask_kw(element_mask, causal, window)
    hq = np.repeat(np.arange(H, dtype=np.int64), MB)
    qs = (np.cumsum(rsz, axis=1) - rsz).reshape(-1)
    hk = np.repeat(np.arange(H, dtype=np.int64), NB)
    ks = (np.cumsum(csz, axis=1) - csz).reshape(-1)
    h, i, j = _nonzero(m)
    cells = (h.astype(np.int64), h * MB + i, h * NB + j, np.ones(h.shape[0], dtype=np.bool_))
    hm = check_head_mode(head_mode, H, "per_kv_head")
    return _packed_build(cu_q, cu_k, H, hm, (hq, qs, rsz.reshape(-1)), (hk, ks, csz.reshape(-1)), cells, emask,
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


# ---------------------------------------------------------------------------------------------------------------
# the canonical RowSpans themselves


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
    emask = _mask_kw(element_mask, causal, window)
    hm = check_head_mode(head_mode, H, "per_q_head")
    return build_from_cells(cu_q, cu_k, H, hm, qpart, kpart, e_row, kb, np.where(full, 2, 1), emask, bq, bk,
                            {"format": "row_spans"})


__all__ = [
    "FA4BlockSparse", "from_block_mask", "from_fa4", "to_fa4", "from_flex", "to_flex", "from_seer_2d",
    "from_seer_1d", "from_flashinfer", "to_flashinfer", "from_row_spans", "all_cells",
]
