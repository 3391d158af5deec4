"""Host builders: a layout (or a dense mask) plus cu_seqlens on the host -> work list and mask tables on the device.

Block-sparse layouts go through ``worklist.build_worklist``; dense / causal / window problems through
``dense_worklist`` (the prepare kernel's format: one chunk list per sequence), sorted longest first.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

from varblock.abi import (
    HEAD_MODE_BROADCAST,
    HEAD_MODE_PER_KV_HEAD,
    HEAD_MODE_PER_Q_HEAD,
    MASK_DOC,
    MASK_TOKEN,
    TILE_N_FULL,
    TILE_N_PARTIAL,
)
from varblock.dense_worklist import dense_worklist
from varblock.layout import BlockSparseLayout, generators
from varblock.layout.mask import ElementMask
from varblock.plan.core import Plan
from varblock.runtime.memory import DeviceBuffer
from varblock.tile_pairing import BandMask
from varblock.worklist import WorkList, build_worklist


def band(causal: bool, window: tuple[int, int] | None) -> tuple[int, int]:
    """(window_left, window_right) as the kernels take them: causal folded into the right bound, -1 = unbounded,
    bounded to 2**30 (the kernels' int32 band arithmetic)."""
    wl, wr = (int(window[0]), int(window[1])) if window is not None else (-1, -1)
    if causal:
        wr = 0 if wr < 0 else min(wr, 0)
    return min(wl, 2**30), min(wr, 2**30)


def sink_tokens(mask: ElementMask) -> int:
    """The element mask's token-level sink count (0 when it has none)."""
    return int(mask.num_sink_tokens)


def mask_kinds(mask: ElementMask) -> frozenset[str]:
    """The element-mask kinds a layout's mask needs from a kernel family."""
    kinds = set()
    if mask.causal:
        kinds.add("causal")
    if mask.window_left >= 0 or mask.window_right >= 0:
        kinds.add("window")
    if mask.doc_ids_q is not None:
        kinds.add("doc")
    if mask.token_mask is not None:
        kinds.add("token")
    if sink_tokens(mask):
        kinds.add("sinks")
    return frozenset(kinds)


def resolve_layout(layout: BlockSparseLayout | None, cu_q: np.ndarray, cu_k: np.ndarray, causal: bool,
                   window: tuple[int, int] | None, tile_m: int, tile_n: int) -> BlockSparseLayout:
    """The layout to plan: the caller's (checked against the plan's arguments) or a dense one at the kernel's tile
    sizes with ``causal`` / ``window``."""
    wl, wr = window if window is not None else (-1, -1)
    if layout is None:
        mask = ElementMask(causal=bool(causal), window_left=int(wl), window_right=int(wr))
        return generators.dense(cu_q, cu_k, block_q=tile_m, block_k=tile_n, num_heads=1,
                                head_mode=HEAD_MODE_BROADCAST, element_mask=mask)
    if not (np.array_equal(layout.cu_seqlens_q, cu_q) and np.array_equal(layout.cu_seqlens_k, cu_k)):
        raise ValueError("layout: its cu_seqlens_q/cu_seqlens_k differ from the ones given to the plan")
    m = layout.mask
    if causal and not m.causal:
        raise ValueError("causal: the layout's element mask is not causal; build the layout with its mask (e.g. "
                         "varblock.layout.causal(...) or an importer's causal option) rather than adding it here")
    if window is not None and (int(wl), int(wr)) != (m.window_left, m.window_right):
        raise ValueError(f"window: {window} differs from the layout's element mask window "
                         f"({m.window_left}, {m.window_right})")
    return layout


def choose_pack(lay: BlockSparseLayout, hq: int, hkv: int, tile_m: int, pack_gqa: bool | None) -> int:
    """The pack-GQA factor: the group size when a GQA group's query heads share one tile, else 1."""
    group = hq // hkv
    shareable = group > 1 and lay.head_mode != HEAD_MODE_PER_Q_HEAD and group <= tile_m
    if pack_gqa is None:
        small_q = int(np.diff(lay.cu_seqlens_q).max(initial=0)) * group <= tile_m
        return group if shareable and (lay.mask.token_mask is not None or small_q) else 1
    if pack_gqa and not shareable:
        raise ValueError("pack_gqa: needs GQA (num_heads_q > num_heads_kv) and a layout shared by each group "
                         "(head_mode per_kv_head or broadcast)")
    return group if pack_gqa else 1


def _worklist(lay: BlockSparseLayout, cu_q: np.ndarray, cu_k: np.ndarray, hq: int, hkv: int, tile_m: int,
              tile_n: int, g: int, band_: tuple[int, int], dense: bool, merge: bool = True) -> WorkList:
    m = lay.mask
    if dense and m.doc_ids_q is None and m.token_mask is None and not sink_tokens(m):
        # the prepare kernel's format (per-sequence chunk lists: memory linear in the keys), longest tiles first
        tiles, chunks = dense_worklist(cu_q, cu_k, num_tile_heads=hkv if g > 1 else hq, pack_gqa=g, tile_m=tile_m,
                                       tile_n=tile_n, window_left=band_[0], window_right=band_[1])
        work = tiles[:, TILE_N_FULL].astype(np.int64) + tiles[:, TILE_N_PARTIAL]
        tiles = tiles[np.argsort(-work, kind="stable")]
        return WorkList(tiles=np.ascontiguousarray(tiles, np.int32), chunks=chunks, tile_m=tile_m, tile_n=tile_n,
                        pack_gqa=g)
    return build_worklist(lay.rows(), cu_q, cu_k, num_heads_q=hq, num_heads_kv=hkv, head_mode=lay.head_mode,
                          tile_m=tile_m, tile_n=tile_n, pack_gqa=g, num_layout_heads=lay.num_heads,
                          longest_first=True, merge=band_mask(m) if merge else None)


def band_mask(m: ElementMask) -> BandMask:
    """What tile pairing needs to know of the element mask the kernels apply to partial chunks."""
    wl, wr = band(m.causal, (m.window_left, m.window_right))
    return BandMask(wl, wr, sink_tokens(m), opaque=m.token_mask is not None, doc_ids_q=m.doc_ids_q,
                    doc_ids_k=m.doc_ids_k)


def _mask_tables(m: ElementMask, ordinal: int, hq: int, hkv: int, head_mode: str) -> dict[str, Any]:
    """Device copies of the document ids and the token mask, and the kernel scalars that describe them."""
    out: dict[str, Any] = {"flags": 0, "tok_block_k": 1, "tok_head_div": 1, "tok_strides": (0, 0, 0), "buffers": {}}
    bufs = out["buffers"]
    if m.doc_ids_q is not None:
        out["flags"] |= MASK_DOC
        bufs["doc_q"] = DeviceBuffer.from_host(ordinal, np.asarray(m.doc_ids_q, np.int32))
        bufs["doc_k"] = DeviceBuffer.from_host(ordinal, np.asarray(m.doc_ids_k, np.int32))
    if m.token_mask is not None:
        out["flags"] |= MASK_TOKEN
        tm = np.ascontiguousarray(np.asarray(m.token_mask).astype(np.uint8))
        bufs["tok_mask"] = DeviceBuffer.from_host(ordinal, tm)
        out["tok_block_k"] = int(m.token_block_k)
        out["tok_strides"] = (tm.shape[1] * tm.shape[2], tm.shape[2], 1)
        group = hq // hkv
        if tm.shape[0] == 1:
            out["tok_head_div"] = hq
        else:
            out["tok_head_div"] = {HEAD_MODE_PER_Q_HEAD: 1, HEAD_MODE_PER_KV_HEAD: group,
                                   HEAD_MODE_BROADCAST: hq}[head_mode]
    return out


def build_host_plan(lay: BlockSparseLayout, cu_q: np.ndarray, cu_k: np.ndarray, *, num_heads_q: int,
                    num_heads_kv: int, head_dim: int, ordinal: int, arch: str, family: str,
                    declined: dict[str, str], tile_m: int, tile_n: int, pack_gqa: bool | None,
                    dense: bool, merge: bool = True) -> Plan:
    """A plan whose work list is built on the host and copied to device ``ordinal`` (schedule not chosen yet).
    ``merge``: layouts of blocks smaller than the tiles share tiles and chunks where exact (``tile_pairing``)."""
    hq, hkv = num_heads_q, num_heads_kv
    g = choose_pack(lay, hq, hkv, tile_m, pack_gqa)
    m = lay.mask
    wl, wr = band(m.causal, (m.window_left, m.window_right))
    worklist = _worklist(lay, cu_q, cu_k, hq, hkv, tile_m, tile_n, g, (wl, wr), dense, merge)
    tables = _mask_tables(m, ordinal, hq, hkv, lay.head_mode)
    bufs = {
        "cu_seqlens_q": DeviceBuffer.from_host(ordinal, cu_q),
        "cu_seqlens_k": DeviceBuffer.from_host(ordinal, cu_k),
        "tiles": DeviceBuffer.from_host(ordinal, worklist.tiles),
        "chunks": DeviceBuffer.from_host(ordinal, worklist.chunks),
        "tile_counters": Plan.new_tile_counters(ordinal),
        **tables["buffers"],
    }
    return Plan(cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, num_heads_q=hq, num_heads_kv=hkv, head_dim=head_dim,
                layout=lay, device_id=ordinal, arch=arch, family=family, declined=dict(declined), tile_m=tile_m,
                tile_n=tile_n, worklist=worklist, window_left=int(wl), window_right=int(wr),
                num_sink_tokens=sink_tokens(m), mask_flags=tables["flags"], tok_block_k=tables["tok_block_k"],
                tok_head_div=tables["tok_head_div"], buffers=bufs, tok_strides=tables["tok_strides"])



#: merged plan -> its unmerged twin (see unmerged_plan)
_unmerged: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def unmerged_plan(plan: Plan) -> Plan:
    """``plan`` itself unless its work list was built with tile pairing; then the same layout planned once more
    for the same family, tiles and schedule with one layout row per tile and one key span per chunk (the pooling
    kernels map every chunk to the pooling blocks of its start). Cached per plan."""
    if not plan.worklist.merged:
        return plan
    twin = _unmerged.get(plan)
    if twin is None:
        from varblock import families  # (imports the runtime's kernel loader)
        from varblock.plan.schedule import choose_schedule

        twin = build_host_plan(plan.layout, plan.cu_seqlens_q, plan.cu_seqlens_k, num_heads_q=plan.num_heads_q,
                               num_heads_kv=plan.num_heads_kv, head_dim=plan.head_dim, ordinal=plan.device_id,
                               arch=plan.arch, family=plan.family, declined=plan.declined, tile_m=plan.tile_m,
                               tile_n=plan.tile_n, pack_gqa=plan.pack_gqa > 1, dense=False, merge=False)
        choose_schedule(twin, families.binding("attention_fwd", plan.family), plan.scheduler)
        _unmerged[plan] = twin
    return twin
