"""FlexAttention ``BlockMask`` tensors: import (per batch or one packed document grid) and export."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._common import block_pair, field, padding_arg, seq_blocks, uniform_cu
from ._host import as_int, cdiv
from ._lists import (
    Grid,
    batched_export,
    batched_geometry,
    fixed_required,
    head_repeat,
    import_lists,
    pick_pad,
    read_lists,
    write_lists,
)
from .build import build_from_cells, check_head_mode, resolve_cu
from .core import BlockSparseLayout
from .mask import ElementMask, resolve_mask
from .packed import aligned_block, packed_build
from .partition import fixed_partition

_FLEX_FIELDS = ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices")
_KV_NAMES = (("kv_num_blocks", "kv_indices"), ("full_kv_num_blocks", "full_kv_indices"))
_Q_NAMES = (("q_num_blocks", "q_indices"), ("full_q_num_blocks", "full_q_indices"))


def _lead4(cnt, idx, cname, iname):
    """Counts / indices with the (batch, head) leading dims made explicit: [B, H, MQ] / [B, H, MQ, W]."""
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
        v = field(block_mask, nm) if block_mask is not None else None
        if v is not None and arg is not None:
            raise ValueError(f"{nm}: given both in block_mask and as a keyword")
        vals[nm] = arg if arg is not None else v
    if vals["kv_num_blocks"] is None or vals["kv_indices"] is None:
        raise ValueError("kv_num_blocks / kv_indices: required (from a BlockMask or as keywords)")
    if (vals["full_kv_num_blocks"] is None) != (vals["full_kv_indices"] is None):
        raise ValueError("full_kv_num_blocks / full_kv_indices: give both or neither")
    bs = BLOCK_SIZE if BLOCK_SIZE is not None else (field(block_mask, "BLOCK_SIZE") or 128)
    bq, bk = block_pair(bs, "BLOCK_SIZE")
    if seq_lengths is None and block_mask is not None:
        seq_lengths = field(block_mask, "seq_lengths")
    ignore = padding_arg(padding)
    emask = resolve_mask(element_mask, causal, window)
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
            cu_q = uniform_cu(Bp, sl_q, "seq_lengths[0]")
            cu_k = uniform_cu(Bp, sl_k, "seq_lengths[1]") if cu_seqlens_k is None else cu_seqlens_k
        else:
            cu_q, cu_k = cu_seqlens_q, cu_seqlens_k
        cu_q, cu_k = resolve_cu(cu_q, cu_k)
        B = cu_q.shape[0] - 1
        N_all, _ = seq_blocks(cu_k, bk)
        nk_grid = max(NKg, W)
        if B and int(N_all.max()) > nk_grid:
            raise ValueError(f"kv_indices: the grid has {nk_grid} key blocks, but a sequence of cu_seqlens_k has "
                             f"{int(N_all.max())} blocks of {bk}")
        grid, qpart, lr_g, N, b_row, _ = batched_geometry(mc.shape, mi.shape, cu_q, cu_k, bq, bk, nk_grid, ignore,
                                                           "kv_num_blocks")
        kpart = fixed_partition(cu_k, bk, Hp, "cu_seqlens_k")
        r, kb, full, kinds = import_lists(lists_raw, grid, lr_g, qpart, kpart, N[b_row], ignore, allow_unsorted,
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
    grid = Grid(np.arange(G, dtype=np.int64) * W, np.full(G, W, dtype=np.int64), np.full(G, nk_grid,
                                                                                          dtype=np.int64))
    cells_h, cells_q, cells_k, cells_f = [], [], [], []
    kinds = {}
    for cnt, idx, is_full, cname, iname in lists_raw:
        g, v, kind = read_lists(cnt, idx, grid, cname, iname, allow_unsorted)
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
    return packed_build(cu_q, cu_k, Hp, hm, q_spans, k_spans, cells, emask, src,
                         aligned_block(cu_q, bq), aligned_block(cu_k, bk))


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
    rep = head_repeat(layout, num_heads_q)
    if rep > 1:
        out = {k: (np.repeat(v, rep, axis=1) if isinstance(v, np.ndarray) else v) for k, v in out.items()}
    return out


def _to_flex(layout, packed, BLOCK_SIZE, pad, include_full, width, seq_lengths, broadcast_batch, transposed):
    """BlockMask tensors for :func:`to_flex` before the query-head expansion."""
    src = layout.source if layout.source.get("format") == "flex" else {}
    packed = src.get("packed", False) if packed is None else bool(packed)
    pads_src = src.get("pad", {}) or {}
    pads = {k: pick_pad(pad, pads_src.get(k), "complement") for k in ("mask", "full")}
    include_full = src.get("has_full", True) if include_full is None else bool(include_full)
    if not packed:
        return _per_batch_export(layout, src, BLOCK_SIZE, pads, include_full, width, seq_lengths, broadcast_batch,
                                 transposed)
    return _packed_export(layout, src, BLOCK_SIZE, pads, include_full, width, seq_lengths, transposed)


def _per_batch_export(layout, src, BLOCK_SIZE, pads, include_full, width, seq_lengths, broadcast_batch, transposed):
    """BlockMask tensors over each sequence's own blocks ([B or 1, H, MQ(, W)])."""
    B = layout.batch_size
    bq, bk = fixed_required(layout, "to_flex (per batch)")
    if BLOCK_SIZE is not None and block_pair(BLOCK_SIZE, "BLOCK_SIZE") != (bq, bk):
        raise ValueError(f"BLOCK_SIZE: a per-batch export uses the layout's blocks ({bq}, {bk})")
    M, _ = seq_blocks(layout.cu_seqlens_q, bq)
    N, _ = seq_blocks(layout.cu_seqlens_k, bk)
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
    kv = batched_export(layout, Bp, MQ, W, nk_grid, "kv", pads, include_full, _KV_NAMES)
    out = dict(zip(("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices"), kv))
    if transposed:
        qd = batched_export(layout, Bp, nk_grid, MQ, MQ, "q", {"mask": "complement", "full": "complement"},
                             include_full, _Q_NAMES)
        out.update(zip(("q_num_blocks", "q_indices", "full_q_num_blocks", "full_q_indices"), qd))
    out["BLOCK_SIZE"] = (bq, bk)
    out["seq_lengths"] = (sl_q, sl_k)
    return out


def _packed_export(layout, src, BLOCK_SIZE, pads, include_full, width, seq_lengths, transposed):
    """BlockMask tensors over one grid of the packed tokens ([1, H, MQ(, W)]): the per-sequence pieces of each packed
    block aggregated back (full only when the block lies in one sequence and that piece is full)."""
    H = layout.num_heads
    if BLOCK_SIZE is None:
        BLOCK_SIZE = src.get("block_size") or (layout.block_q, layout.block_k)
    if BLOCK_SIZE[0] is None:
        raise ValueError("BLOCK_SIZE: required to export a variable-span layout onto a packed grid")
    bq, bk = block_pair(BLOCK_SIZE, "BLOCK_SIZE")
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
    grid = Grid(np.arange(G, dtype=np.int64) * W, np.full(G, W, dtype=np.int64),
                 np.full(G, nk_grid, dtype=np.int64))
    gridT = Grid(np.arange(H * nk_grid, dtype=np.int64) * MQ, np.full(H * nk_grid, MQ, dtype=np.int64),
                  np.full(H * nk_grid, MQ, dtype=np.int64))
    out: dict[str, Any] = {}
    for is_full in (False, True):
        nm = _KV_NAMES[1] if is_full else _KV_NAMES[0]
        qn = _Q_NAMES[1] if is_full else _Q_NAMES[0]
        if is_full and not include_full:
            if cfull.any():
                raise ValueError("include_full: the layout has full blocks; they cannot be dropped from the export")
            out.update({nm[0]: None, nm[1]: None, qn[0]: None, qn[1]: None})
            continue
        sel = cfull if is_full else ~cfull
        cnt, idx = write_lists(grid, (1, H, MQ), (1, H, MQ, W), uh[sel] * MQ + uq[sel], uk[sel],
                                pads["full" if is_full else "mask"], nm[0])
        out[nm[0]], out[nm[1]] = cnt, idx
        if transposed:
            gT = uh[sel] * nk_grid + uk[sel]
            o = np.lexsort((uq[sel], gT))
            cntT, idxT = write_lists(gridT, (1, H, nk_grid), (1, H, nk_grid, MQ), gT[o], uq[sel][o], "complement",
                                      qn[0])
            out[qn[0]], out[qn[1]] = cntT, idxT
    out["BLOCK_SIZE"] = (bq, bk)
    out["seq_lengths"] = (sl_q, sl_k)
    return out


__all__ = ["from_flex", "to_flex"]
