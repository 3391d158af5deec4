"""Device-built decode plans: fixed capacity, no host synchronisation, CUDA-graph capturable.

The capacity (longest KV, most new tokens, top-k) fixes the grid and every buffer; the ``decode_prepare`` kernel
writes the work list from the device arrays (``varblock.decode_plan.fixed`` is its NumPy twin and the rules).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from varblock.decode_plan import abi
from varblock.decode_plan.cost import choose_chunks_per_split

PREPARE_FAMILY = "decode_prepare"


def _device_int32(x: Any, name: str, ndim: int, device: int, shape: tuple | None = None):
    """A device int32 array (used in place) or a host one (uploaded once): ``(DeviceArray-like, keep-alive)``."""
    from varblock.runtime.frameworks import is_device_array, to_host
    from varblock.runtime.memory import DeviceBuffer
    from varblock.runtime.tensors import DeviceArray, as_device_array, check_dtype, check_ndim, compact_strides

    if is_device_array(x):
        a = as_device_array(x, name)
        check_dtype(a, ("int32",))
        check_ndim(a, ndim, f"({ndim}-d)")
        if a.device_id != device:
            raise ValueError(f"{name}: on cuda:{a.device_id}, expected cuda:{device}")
        if a.shape and a.shape[-1] > 1 and a.strides[-1] != 1:
            raise ValueError(f"{name}: the last dimension must be contiguous, got strides {a.strides}")
        keep = x
    else:
        h = np.asarray(to_host(x, name))
        if h.ndim != ndim or not np.issubdtype(h.dtype, np.integer):
            raise ValueError(f"{name}: expected a {ndim}-d integer array, got {h.dtype} of shape {h.shape}")
        keep = DeviceBuffer.from_host(device, h.astype(np.int32))
        a = DeviceArray(name, keep.ptr, tuple(h.shape), compact_strides(tuple(h.shape)), "int32", device, keep)
    if shape is not None and tuple(a.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(a.shape)}")
    return a, keep


def choose_splits(num_groups: int, row_tiles: int, chunk_cap: int, num_sms: int, ctas_per_sm: int) -> int:
    """Splits per row tile with the least estimated time when every sequence is at capacity
    (:func:`varblock.decode_plan.cost.choose_chunks_per_split`)."""
    if num_groups < 1 or row_tiles < 1 or chunk_cap < 1:
        return 1
    cps = choose_chunks_per_split(np.full(num_groups, chunk_cap, np.int64), np.full(num_groups, row_tiles, np.int64),
                                  max(1, num_sms * ctas_per_sm))
    return max(1, -(-chunk_cap // cps))


def plan_decode_device(plan_cls: Any, cu_seqlens_q: Any, *, num_heads_q: int, num_heads_kv: int, head_dim: int,
                       total_q: int, max_kv_len: int, max_q_tokens: int, kv_lens: Any, cu_seqlens_k: Any,
                       page_table: Any, page_size: int | None, block_indices: Any, block_counts: Any,
                       block_size: int | None, causal: bool, num_splits: int | None, device: int,
                       entry_for: Any, occupancy: Any, attach_page_table: Any, stream: Any) -> Any:
    """See :func:`varblock.decode_plan.plan.plan_decode` (``max_kv_len=``). Returns a prepared DecodePlan."""
    from varblock.runtime.launch import PreparedLaunch
    from varblock.runtime.memory import DeviceBuffer
    from varblock.runtime.select import variant_for

    hq, hkv, d = num_heads_q, num_heads_kv, head_dim
    for name, v in (("max_kv_len", max_kv_len), ("max_q_tokens", max_q_tokens), ("total_q", total_q)):
        if not isinstance(v, int) or isinstance(v, bool) or v < (1 if name != "total_q" else 0):
            raise ValueError(f"{name}: expected a positive integer, got {v!r}")
    if max_q_tokens > abi.MAX_QUERY_TOKENS:
        raise ValueError(f"max_q_tokens: at most {abi.MAX_QUERY_TOKENS}, got {max_q_tokens}")
    cq, keep_q = _device_int32(cu_seqlens_q, "cu_seqlens_q", 1, device)
    B = cq.shape[0] - 1
    if B < 0:
        raise ValueError("cu_seqlens_q: expected [B+1]")
    if (kv_lens is None) == (cu_seqlens_k is None):
        raise TypeError("kv_lens / cu_seqlens_k: pass exactly one")
    kl_arr, keep_kv = _device_int32(kv_lens if kv_lens is not None else cu_seqlens_k,
                                    "kv_lens" if kv_lens is not None else "cu_seqlens_k", 1, device,
                                    (B,) if kv_lens is not None else (B + 1,))
    g = hq // hkv
    rows = max_q_tokens * g
    tm = abi.TILE_MS[0] if rows <= abi.TILE_MS[0] else abi.TILE_MS[-1]
    entry = entry_for(variant_for, device, d, tm)
    tn = int(entry["extra"]["tile_n"])
    row_tiles = -(-rows // tm)
    bi = bc = None
    keep: list = [keep_q, keep_kv]
    if block_indices is not None:
        if not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"block_size: expected a positive integer with block_indices, got {block_size!r}")
        bi, k1 = _device_int32(block_indices, "block_indices", 3, device)
        if bi.shape[:2] != (B, hkv):
            raise ValueError(f"block_indices: expected [{B}, {hkv}, topk], got {bi.shape}")
        keep.append(k1)
        if block_counts is not None:
            bc, k2 = _device_int32(block_counts, "block_counts", 2, device, (B, hkv))
            keep.append(k2)
        topk = bi.shape[2]
        chunk_cap = topk * -(-block_size // tn)
    else:
        if block_counts is not None:
            raise TypeError("block_counts: only with block_indices")
        topk, chunk_cap = 0, -(-max_kv_len // tn)
    ng = B * hkv
    sms, per_sm = occupancy(device, entry)
    splits = num_splits if num_splits is not None else choose_splits(ng, row_tiles, chunk_cap, sms, per_sm)
    n_items = ng * row_tiles * splits
    slots = n_items if splits > 1 else 0
    p = plan_cls(device, hq, hkv, d, B, int(total_q), page_table is not None,
                 int(page_size) if page_table is not None else 1, bool(causal), tm, tn, None, None)
    p.fixed_items = n_items
    p.inputs = keep
    p.buffers["cu_seqlens_q"] = cq
    p.buffers["items"] = DeviceBuffer(device, max(1, n_items) * abi.ITEM_WIDTH * 4)
    p.buffers["chunks"] = DeviceBuffer(device, max(1, ng * chunk_cap) * abi.CHUNK_WIDTH * 4)
    p.buffers["status"] = DeviceBuffer.zeros(device, 8)
    if slots:
        p.buffers["part_o"] = DeviceBuffer(device, slots * tm * d * 4)
        p.buffers["part_lse"] = DeviceBuffer(device, slots * tm * 4)
        p.buffers["counters"] = DeviceBuffer.zeros(device, slots * 4)
    if cu_seqlens_k is not None:
        p.buffers["cu_seqlens_k"] = kl_arr
    else:
        attach_page_table(p, page_table, device)  # width checked against actual lengths by the caller
    prep = variant_for(PREPARE_FAMILY, device, {})
    values = prepare_values(cq.ptr, kl_arr.ptr, kv_lens is not None, bi, bc, p.ptr("items"), p.ptr("chunks"),
                            p.ptr("status"), num_groups=ng, num_heads_kv=hkv, group_size=g, tile_m=tm, tile_n=tn,
                            row_tiles=row_tiles, splits=splits, chunk_cap=chunk_cap, block_size=block_size or 0,
                            topk=topk)
    p.prepare_launch = PreparedLaunch(prep, device, values, what="plan_decode")
    p.prepare(stream)
    return p


def prepare_values(cu_q_ptr: int, kv_ptr: int, kv_is_lens: bool, bi: Any, bc: Any, items_ptr: int, chunks_ptr: int,
                   status_ptr: int, **scalars: int) -> dict[str, Any]:
    """The ``decode_prepare`` kernel's parameters (``bi`` / ``bc``: DeviceArrays of the block indices / counts,
    or None); ``scalars``: num_groups, num_heads_kv, group_size, tile_m, tile_n, row_tiles, splits, chunk_cap,
    block_size, topk."""
    return {
        "cu_seqlens_q": cu_q_ptr, "kv_lens": kv_ptr if kv_is_lens else 0, "cu_seqlens_k": 0 if kv_is_lens else kv_ptr,
        "block_idx": bi.ptr if bi is not None else 0, "block_cnt": bc.ptr if bc is not None else 0,
        "items": items_ptr, "chunks": chunks_ptr, "status": status_ptr,
        "bi_stride_b": bi.strides[0] if bi is not None else 0, "bi_stride_h": bi.strides[1] if bi is not None else 0,
        "bc_stride_b": bc.strides[0] if bc is not None else 0, "bc_stride_h": bc.strides[1] if bc is not None else 0,
        **scalars, "num_items": scalars["num_groups"] * scalars["row_tiles"] * scalars["splits"],
    }
