"""FlashAttention-4 ``BlockSparseTensorsTorch``: import (batched and varlen-packed) and bit-exact export."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ._common import block_pair, field, padding_arg, seq_blocks, uniform_cu
from ._host import as_int, check_int32, exclusive_cumsum, to_host
from ._lists import (
    Grid,
    batched_export,
    batched_geometry,
    fixed_required,
    head_repeat,
    import_lists,
    norm_lists,
    pick_pad,
    write_lists,
)
from .build import build_from_cells, check_head_mode, resolve_cu
from .core import BlockSparseLayout
from .mask import ElementMask, resolve_mask
from .partition import Partition, fixed_partition


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
    mask_cnt, mask_idx = field(bst, "mask_block_cnt"), field(bst, "mask_block_idx")
    full_cnt, full_idx = field(bst, "full_block_cnt"), field(bst, "full_block_idx")
    if mask_cnt is None or mask_idx is None:
        raise ValueError("bst: mask_block_cnt and mask_block_idx are required")
    if (full_cnt is None) != (full_idx is None):
        raise ValueError("bst: full_block_cnt and full_block_idx must be given together")
    bs_field = field(bst, "block_size")
    bs = block_size if block_size is not None else bs_field
    if bs is None:
        raise ValueError("block_size: FA4 tensors do not carry their block size here; pass block_size=(bq, bk) "
                         "or set bst.block_size")
    bq, bk = block_pair(bs, "block_size")
    ignore = padding_arg(padding)
    emask = resolve_mask(element_mask, causal, window)
    cu_total = field(bst, "cu_total_m_blocks")
    src: dict[str, Any] = {"format": "fa4", "has_full": full_cnt is not None, "block_size_field": bs_field is not None}
    fields = (mask_cnt, mask_idx, full_cnt, full_idx)
    if cu_total is not None:
        cells = _varlen_cells(bst, fields, cu_seqlens_q, cu_seqlens_k, seqlen_k, bq, bk, ignore, allow_unsorted, src)
    else:
        cells = _batched_cells(fields, cu_seqlens_q, cu_seqlens_k, seqlen_q, seqlen_k, bq, bk, ignore,
                               allow_unsorted, src)
    cu_q, cu_k, Hp, qpart, kpart, r, kb, full = cells
    hm = check_head_mode(head_mode, Hp, "per_q_head")
    return build_from_cells(cu_q, cu_k, Hp, hm, qpart, kpart, r, kb, np.where(full, 2, 1), emask, bq, bk, src)


class _Cells(NamedTuple):
    """Kept cells read from FA4 tensors, with the batch and partitions they index."""

    cu_q: np.ndarray
    cu_k: np.ndarray
    num_heads: int
    qpart: Partition
    kpart: Partition
    row: np.ndarray
    kb: np.ndarray
    full: np.ndarray


def _lists(mc: np.ndarray, mi: np.ndarray, full_cnt: Any, full_idx: Any, ndim_cnt: int, ndim_idx: int) -> list:
    """The (counts, indices, is_full, names) lists to read: the mask_* pair and, when given, the full_* pair."""
    lists = [(mc, mi, False, "mask_block_cnt", "mask_block_idx")]
    if full_cnt is not None:
        fc, fi = norm_lists(full_cnt, full_idx, "full_block_cnt", "full_block_idx", ndim_cnt, ndim_idx)
        if fc.shape != mc.shape or fi.shape != mi.shape:
            raise ValueError(f"full_block_cnt / full_block_idx: expected shapes {tuple(mc.shape)} / "
                             f"{tuple(mi.shape)} like the mask_* tensors, got {tuple(fc.shape)} / "
                             f"{tuple(fi.shape)}")
        lists.append((fc, fi, True, "full_block_cnt", "full_block_idx"))
    return lists


def _varlen_cells(bst: Any, fields: tuple, cu_seqlens_q: Any, cu_seqlens_k: Any, seqlen_k: int | None, bq: int,
                  bk: int, ignore: bool, allow_unsorted: bool, src: dict) -> _Cells:
    """Cells of varlen-packed FA4 tensors (``cu_total_m_blocks`` set)."""
    mask_cnt, mask_idx, full_cnt, full_idx = fields
    cu_total = field(bst, "cu_total_m_blocks")
    if cu_seqlens_q is None:
        raise ValueError("cu_seqlens_q: required for varlen FA4 block sparsity (cu_total_m_blocks is set)")
    cu_q = resolve_cu(cu_seqlens_q, None)[0]
    B = cu_q.shape[0] - 1
    if cu_seqlens_k is None:
        if seqlen_k is None:
            raise ValueError("cu_seqlens_k: give cu_seqlens_k or seqlen_k for varlen FA4 block sparsity")
        cu_k = uniform_cu(B, seqlen_k, "seqlen_k")
    else:
        cu_k = cu_seqlens_k
    cu_q, cu_k = resolve_cu(cu_q, cu_k)
    M, cu_m = seq_blocks(cu_q, bq)
    N, _ = seq_blocks(cu_k, bk)
    TM = int(cu_m[-1])
    ctm = as_int(cu_total, "cu_total_m_blocks", ndim=1)
    if ctm.shape[0] != B + 1 or not np.array_equal(ctm, cu_m):
        raise ValueError(f"cu_total_m_blocks: expected the cumulative query-block counts {cu_m.tolist()[:8]}"
                         f"{'...' if B > 7 else ''} (block_q = {bq}), got {ctm.tolist()[:8]}")
    mc, mi = norm_lists(mask_cnt, mask_idx, "mask_block_cnt", "mask_block_idx", 2, 2)
    Hp = mc.shape[0]
    if mc.shape[1] != TM:
        raise ValueError(f"mask_block_cnt: expected shape [H, {TM}] (total_m_blocks), got {tuple(mc.shape)}")
    if mi.shape[0] != Hp:
        raise ValueError(f"mask_block_idx: expected {Hp} heads like mask_block_cnt, got {tuple(mi.shape)}")
    TNp = mi.shape[1]
    offs_field = field(bst, "cu_block_idx_offsets")
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
    grid = Grid((np.arange(Hp, dtype=np.int64)[:, None] * TNp + base[None, :]).reshape(-1),
                 np.tile(width, Hp), np.tile(width, Hp))
    lists = _lists(mc, mi, full_cnt, full_idx, 2, 2)
    qpart = fixed_partition(cu_q, bq, Hp, "cu_seqlens_q")
    kpart = fixed_partition(cu_k, bk, Hp, "cu_seqlens_k")
    lr_g = np.arange(G, dtype=np.int64)
    N_row = np.tile(N[seq_m], Hp)
    r, kb, full, kinds = import_lists(lists, grid, lr_g, qpart, kpart, N_row, ignore, allow_unsorted, G)
    src.update(varlen=True, pad=kinds)
    return _Cells(cu_q, cu_k, Hp, qpart, kpart, r, kb, full)


def _batched_cells(fields: tuple, cu_seqlens_q: Any, cu_seqlens_k: Any, seqlen_q: int | None,
                   seqlen_k: int | None, bq: int, bk: int, ignore: bool, allow_unsorted: bool, src: dict) -> _Cells:
    """Cells of batched FA4 tensors: counts ``[B, H, M]``, indices ``[B, H, M, W]``."""
    mask_cnt, mask_idx, full_cnt, full_idx = fields
    mc, mi = norm_lists(mask_cnt, mask_idx, "mask_block_cnt", "mask_block_idx", 3, 4)
    Bp, Hp, Mg = mc.shape
    if mi.shape[:3] != mc.shape:
        raise ValueError(f"mask_block_idx: expected shape [{Bp}, {Hp}, {Mg}, W] like mask_block_cnt, got "
                         f"{tuple(mi.shape)}")
    W = mi.shape[3]
    if cu_seqlens_q is None:
        cu_q = uniform_cu(Bp, Mg * bq if seqlen_q is None else seqlen_q, "seqlen_q")
    else:
        cu_q = cu_seqlens_q
    B = np.asarray(to_host(cu_q, "cu_seqlens_q")).shape[0] - 1
    if cu_seqlens_k is None:
        if seqlen_k is not None:
            cu_k = uniform_cu(B, seqlen_k, "seqlen_k")
        elif cu_seqlens_q is not None:
            cu_k = None
        else:
            cu_k = uniform_cu(B, W * bk, "seqlen_k")
    else:
        cu_k = cu_seqlens_k
    cu_q, cu_k = resolve_cu(cu_q, cu_k)
    N_all, _ = seq_blocks(cu_k, bk)
    nk_grid = max(int(N_all.max()) if B else 0, W)
    grid, qpart, lr_g, N, b_row, _ = batched_geometry(mc.shape, mi.shape, cu_q, cu_k, bq, bk, nk_grid, ignore,
                                                       "mask_block_cnt")
    lists = _lists(mc, mi, full_cnt, full_idx, 3, 4)
    kpart = fixed_partition(cu_k, bk, Hp, "cu_seqlens_k")
    r, kb, full, kinds = import_lists(lists, grid, lr_g, qpart, kpart, N[b_row], ignore, allow_unsorted,
                                       grid.nk.shape[0])
    src.update(varlen=False, pad=kinds, grid_m=Mg, width=W, nk=nk_grid, broadcast_batch=(Bp == 1 and B != 1))
    return _Cells(cu_q, cu_k, Hp, qpart, kpart, r, kb, full)


def to_fa4(layout: BlockSparseLayout, *, varlen: bool | None = None, pad: str | None = None,
           include_full: bool | None = None, width: int | None = None, uniform_k: bool | None = None,
           broadcast_batch: bool | None = None, num_m_blocks: int | None = None,
           num_heads_q: int | None = None) -> FA4BlockSparse:
    """Export as FA4 ``BlockSparseTensorsTorch`` fields (NumPy int32). Defaults reproduce the source format of a
    layout imported with :func:`from_fa4` bit for bit (varlen or batched, padding convention, broadcast, width);
    otherwise varlen-packed, zero padding, full blocks included. FA4 indexes query heads: ``num_heads_q`` repeats
    the heads of a ``per_kv_head`` layout over their GQA groups (a broadcast layout stays 1 head)."""
    out = _to_fa4(layout, varlen, pad, include_full, width, uniform_k, broadcast_batch, num_m_blocks)
    rep = head_repeat(layout, num_heads_q)
    if rep == 1:
        return out
    ax = 0 if out.cu_total_m_blocks is not None else 1
    return out._replace(**{f: np.repeat(getattr(out, f), rep, axis=ax) for f in
                           ("mask_block_cnt", "mask_block_idx", "full_block_cnt", "full_block_idx")
                           if getattr(out, f) is not None})


def _to_fa4(layout, varlen, pad, include_full, width, uniform_k, broadcast_batch, num_m_blocks):
    """FA4 fields for :func:`to_fa4` before the query-head expansion."""
    bq, bk = fixed_required(layout, "to_fa4")
    src = layout.source if layout.source.get("format") == "fa4" else {}
    varlen = src.get("varlen", True) if varlen is None else bool(varlen)
    pads_src = src.get("pad", {}) or {}
    pads = {k: pick_pad(pad, pads_src.get(k), "zeros") for k in ("mask", "full")}
    include_full = src.get("has_full", True) if include_full is None else bool(include_full)
    B, H = layout.batch_size, layout.num_heads
    M, cu_m = seq_blocks(layout.cu_seqlens_q, bq)
    N, _ = seq_blocks(layout.cu_seqlens_k, bk)
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
        grid = Grid((np.arange(H, dtype=np.int64)[:, None] * TN + base[None, :]).reshape(-1), np.tile(wid, H),
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
            cnt, idx = write_lists(grid, (H, TM), (H, TN), e_row[sel], kb[sel],
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
    out = batched_export(layout, Bp, Mg, W, nk_grid, "kv", pads, include_full,
                          (("mask_block_cnt", "mask_block_idx"), ("full_block_cnt", "full_block_idx")))
    return FA4BlockSparse(out[0], out[1], out[2], out[3], None, None, block_size)


__all__ = ["FA4BlockSparse", "from_fa4", "to_fa4"]
