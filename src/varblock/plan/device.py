"""Device builder: dense / causal / window plans whose work list the ``attention_prepare`` kernel builds on the GPU
from device ``cu_seqlens``, with no host synchronisation (the kernel is launched through ``varblock.runtime``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from varblock.abi import CHUNK_WIDTH, STATUS_WIDTH, TILE_WIDTH
from varblock.dense_worklist import capacities
from varblock.plan.core import Plan
from varblock.plan.host import band
from varblock.runtime.device import stream_for
from varblock.runtime.launch import launch_variant
from varblock.runtime.memory import DeviceBuffer
from varblock.runtime.select import variant_for
from varblock.runtime.tensors import DeviceArray
from varblock.worklist import WorkList

PREPARE_FAMILY = "attention_prepare"


def _capacities(b: int, heads: int, g: int, tile_m: int, tile_n: int, max_seqlen_q: int | None,
                max_seqlen_k: int | None, total_q: int | None, total_k: int | None) -> tuple[int, int]:
    """(max_tiles, max_chunks): the tightest bounds the given sizes allow."""
    caps = []
    if total_q is not None:
        caps.append(capacities(int(total_q), int(total_k if total_k is not None else total_q), b, heads, g,
                               tile_m, tile_n))
    if max_seqlen_q is not None:
        mk = int(max_seqlen_k if max_seqlen_k is not None else max_seqlen_q)
        caps.append((heads * b * -(-int(max_seqlen_q) // (tile_m // g)), b * -(-mk // tile_n)))
    return max(1, min(c[0] for c in caps)), max(1, min(c[1] for c in caps))


def build_device_plan(cq: DeviceArray, ck: DeviceArray, like: Any, *, num_heads_q: int, num_heads_kv: int,
                      head_dim: int, arch: str, family: str, declined: dict[str, str], tile_m: int, tile_n: int,
                      causal: bool, window: tuple[int, int] | None, pack_gqa: bool | None,
                      max_seqlen_q: int | None, max_seqlen_k: int | None, total_q: int | None,
                      total_k: int | None, stream: Any) -> Plan:
    """Snapshot device ``cu_seqlens`` (``cq``, ``ck``: checked int32 [B+1] views) and launch the prepare kernel on
    ``stream`` (default: the current stream of ``like``'s framework). The schedule is not chosen yet."""
    ordinal = cq.device_id
    b = cq.shape[0] - 1
    hq, hkv = num_heads_q, num_heads_kv
    group = hq // hkv
    if pack_gqa and group == 1:
        raise ValueError("pack_gqa: needs GQA (num_heads_q > num_heads_kv)")
    small = max_seqlen_q is not None and int(max_seqlen_q) * group <= tile_m
    g = group if group > 1 and (pack_gqa or (pack_gqa is None and small)) else 1
    heads = hkv if g > 1 else hq
    max_tiles, max_chunks = _capacities(b, heads, g, tile_m, tile_n, max_seqlen_q, max_seqlen_k, total_q, total_k)
    st = stream_for(stream, ordinal, like=like)
    wl, wr = band(causal, window)
    bufs = {
        "cu_seqlens_q": DeviceBuffer.copy_of(ordinal, cq.ptr, 4 * (b + 1), st),
        "cu_seqlens_k": DeviceBuffer.copy_of(ordinal, ck.ptr, 4 * (b + 1), st),
        "tiles": DeviceBuffer(ordinal, 4 * TILE_WIDTH * max_tiles, st),
        "chunks": DeviceBuffer(ordinal, 4 * CHUNK_WIDTH * max_chunks, st),
        "status": DeviceBuffer(ordinal, 4 * STATUS_WIDTH, st),
        "scratch": DeviceBuffer(ordinal, 4 * 2 * (b + 1), st),  # int32 [2 * (B + 1)]
        "tile_counters": Plan.new_tile_counters(ordinal, st),
    }
    values = {name: buf.ptr for name, buf in bufs.items()}
    values.update(batch=b, num_tile_heads=heads, pack_gqa=g, tile_m=tile_m, tile_n=tile_n, window_left=wl,
                  window_right=wr, max_tiles=max_tiles, max_chunks=max_chunks)
    launch_variant(variant_for(PREPARE_FAMILY, ordinal, {}), ordinal, st, values)
    empty = WorkList(tiles=np.zeros((0, TILE_WIDTH), np.int32), chunks=np.zeros((0, CHUNK_WIDTH), np.int32),
                     tile_m=tile_m, tile_n=tile_n, pack_gqa=g)
    tk = total_k if total_k is not None else total_q
    return Plan(cu_seqlens_q=None, cu_seqlens_k=None, num_heads_q=hq, num_heads_kv=hkv, head_dim=head_dim,
                layout=None, device_id=ordinal, arch=arch, family=family, declined=dict(declined), tile_m=tile_m,
                tile_n=tile_n, worklist=empty, window_left=wl, window_right=wr, mask_flags=0, tok_block_k=1,
                tok_head_div=1, buffers=bufs, on_device=True, max_tiles=max_tiles,
                totals=(None if total_q is None else int(total_q), None if tk is None else int(tk)),
                prepare_stream=st, prepare_event=st.record())
