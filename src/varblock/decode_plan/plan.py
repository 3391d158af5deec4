"""``plan_decode``: the device-side plan of one decode step (work list, split workspace, semaphores)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from varblock.decode_plan import abi
from varblock.decode_plan.worklist import WorkList, build_worklist
from varblock.layout.decode import DecodeLayout
from varblock.runtime.frameworks import to_host

FAMILY = "decode_fwd"


@dataclass
class DecodePlan:
    """What ``varblock.decode`` needs besides q and the caches. Reuse it for every layer of one step (the partial
    workspace and the semaphores are reused; semaphores reset themselves, so one plan may be replayed in a CUDA
    graph). Launches that share a plan must not overlap in time (one stream)."""

    device_id: int
    num_heads_q: int
    num_heads_kv: int
    head_dim: int
    batch_size: int
    total_q: int
    paged: bool
    page_size: int
    causal: bool
    tile_m: int
    tile_n: int
    worklist: WorkList | None  # None for a device-built plan
    kv_lens: np.ndarray | None  # host copy (None for a device-built plan)
    max_pages: int = 0
    buffers: dict[str, Any] = field(default_factory=dict)
    page_table: Any = None  # the caller's device array (kept alive), or a DeviceBuffer of a host table
    page_table_ptr: int = 0
    pt_stride: int = 0
    pt_max_page: int | None = None  # largest page index when the table came from the host
    launch_cache: dict = field(default_factory=dict)
    fixed_items: int = 0  # item count (grid) of a device-built plan
    prepare_launch: Any = None  # a device-built plan: the decode_prepare launch that rewrites items / chunks
    inputs: list = field(default_factory=list)  # device arrays a device-built plan reads (kept alive)

    @property
    def num_items(self) -> int:
        return self.worklist.num_items if self.worklist is not None else self.fixed_items

    @property
    def num_ctas(self) -> int:
        """The kernel's grid: a persistent grid runs items ``c, c + num_ctas, ...`` on CTA ``c``."""
        return self.worklist.grid if self.worklist is not None else self.fixed_items

    @property
    def on_device(self) -> bool:
        return self.prepare_launch is not None

    def prepare(self, stream: Any = None) -> None:
        """Device-built plans: rebuild the work list on the GPU from the current contents of the device arrays
        the plan was made from (lengths, cu_seqlens_q, block indices), stream-ordered, with no host
        synchronisation; call it after updating them in place (or capture it in a CUDA graph with ``decode``)."""
        if self.prepare_launch is None:
            raise ValueError("plan: a host-built plan has no device builder (pass max_kv_len= to plan_decode)")
        from varblock.runtime.device import stream_for

        self.prepare_launch(stream_for(stream, self.device_id, like=self.inputs[0] if self.inputs else None), ())

    def status(self) -> tuple[int, int]:
        """``(num_items, error)`` written by the device builder (synchronises; for tests and debugging)."""
        st = self.buffers["status"].to_host(np.int32, 2)
        return int(st[0]), int(st[1])

    def ptr(self, name: str) -> int:
        b = self.buffers.get(name)
        return 0 if b is None else int(b.ptr)


def _ints(x: Any, name: str, ndim: int = 1) -> np.ndarray:
    a = np.asarray(to_host(x, name))
    if a.ndim != ndim or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name}: expected a {ndim}-d integer array, got {a.dtype} of shape {a.shape}")
    return a.astype(np.int64)


def _pos_int(v: Any, name: str) -> int:
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{name}: expected a positive integer, got {v!r}")
    return int(v)


def _check_lengths(cu_q: np.ndarray, kv: np.ndarray, causal: bool) -> None:
    if cu_q.shape[0] < 1 or cu_q[0] != 0 or (np.diff(cu_q) < 0).any():
        raise ValueError("cu_seqlens_q: expected [B+1] starting at 0 and non-decreasing")
    n_q = np.diff(cu_q)
    if (n_q > abi.MAX_QUERY_TOKENS).any():
        raise ValueError(f"cu_seqlens_q: at most {abi.MAX_QUERY_TOKENS} new tokens per sequence, got {int(n_q.max())}")
    if kv.shape[0] != n_q.shape[0]:
        raise ValueError(f"kv_lens: {kv.shape[0]} sequences, cu_seqlens_q has {n_q.shape[0]}")
    if (kv < 0).any() or (kv > 2**31 - 1).any():
        raise ValueError("kv_lens: lengths must lie in [0, 2**31 - 1]")
    if causal and (kv < n_q).any():
        b = int(np.flatnonzero(kv < n_q)[0])
        raise ValueError(f"kv_lens: with causal=True the cache must hold the new tokens (sequence {b}: kv_len "
                         f"{int(kv[b])} < {int(n_q[b])} new tokens)")


def _check_layout(layout: DecodeLayout, kv: np.ndarray, hq: int, hkv: int) -> None:
    if not isinstance(layout, DecodeLayout):
        raise TypeError(f"layout: expected a varblock.layout.decode.DecodeLayout, got {type(layout).__name__}")
    want = hkv if layout.head_mode == "per_kv_head" else hq
    if layout.num_heads != want:
        raise ValueError(f"layout: {layout.head_mode} layout must have {want} heads, got {layout.num_heads}")
    if layout.head_mode == "per_q_head" and hq // hkv > abi.MAX_GROUP_PER_Q_HEAD:
        raise ValueError(f"layout: per_q_head sparsity supports GQA groups of at most {abi.MAX_GROUP_PER_Q_HEAD} "
                         f"query heads, got {hq // hkv}")
    if not np.array_equal(layout.kv_lens, kv):
        raise ValueError("layout: its kv_lens differ from the plan's KV lengths")


def _tile_m(cu_q: np.ndarray, group: int) -> int:
    rows = int(np.diff(cu_q).max(initial=0)) * group
    return abi.TILE_MS[0] if rows <= abi.TILE_MS[0] else abi.TILE_MS[-1]


def plan_decode(cu_seqlens_q: Any, *, num_heads_q: int, num_heads_kv: int, head_dim: int, kv_lens: Any = None,
                cu_seqlens_k: Any = None, page_table: Any = None, page_size: int | None = None,
                layout: DecodeLayout | None = None, causal: bool = True, num_splits: int | None = None,
                device: int | None = None, num_sms: int | None = None, max_kv_len: int | None = None,
                max_q_tokens: int = 1, total_q: int | None = None, block_indices: Any = None,
                block_counts: Any = None, block_size: int | None = None, stream: Any = None,
                persistent: bool | None = None) -> DecodePlan:
    """Plan one decode step. Host builder by default (lengths and layouts are read on the host once); with
    ``max_kv_len`` the device builder (below).

    Args:
        cu_seqlens_q: int32 ``[B+1]``: new tokens per sequence (0..16 each), packed in q.
        num_heads_q, num_heads_kv, head_dim: the attention shape (``num_heads_q % num_heads_kv == 0``).
        kv_lens: int ``[B]`` KV lengths (with a paged cache; the new tokens are included).
        cu_seqlens_k: int32 ``[B+1]``: a contiguous varlen cache ``[total_k, Hkv, D]`` instead of pages.
        page_table: int32 ``[B, max_pages]`` (pages along the last dim, contiguous), a device array (used in place)
            or a host array (uploaded); ``page_size``: tokens per page.
        layout: a :class:`~varblock.layout.decode.DecodeLayout` of kept blocks, or None (dense decode).
        causal: token t of n new tokens sees keys ``j <= kv_len - n + t`` (bottom-right aligned).
        num_splits: force the split-KV count of every row tile (default: chosen from lengths and SM count).
        device: CUDA ordinal (default: that of ``page_table``/``cu_seqlens_q`` if on a GPU, else 0).
        num_sms: override the SM count used by the split heuristic (the CTA slots are then ``num_sms`` x 1).
        persistent: host plans only: True runs the items on a persistent grid of one CTA per slot (CTA ``c`` runs
            items ``c, c + grid, ...``), False one CTA per item, None (default) whichever the cost model
            (``varblock.decode_plan.cost``) estimates faster. For tuning (``benchmarks/decode_sweep.py``).

    Device builder (``max_kv_len=``): a fixed-capacity plan written on the GPU by the ``decode_prepare`` kernel
    from the device arrays (``cu_seqlens_q``, ``kv_lens`` or ``cu_seqlens_k``, and for top-k sparsity
    ``block_indices`` int32 ``[B, Hkv, topk]`` of ``block_size``-key blocks, unique per row, ``-1`` = none, with
    optional ``block_counts [B, Hkv]``), stream-ordered on ``stream`` with no host synchronisation. The capacity
    (``max_kv_len``, ``max_q_tokens``, topk) fixes the grid; ``total_q`` is q's token count. After updating those
    arrays in place, ``plan.prepare()`` rebuilds the list (capturable in a CUDA graph together with ``decode``).
    Lengths past the capacity are clamped and flagged in ``plan.status()``; ``layout`` is host-only. The page
    table needs only ``ceil(kv_lens[b] / page_size)`` columns for each sequence's actual length (not the
    capacity); the host cannot check that without a synchronisation, so the caller guarantees it.
    """
    if persistent is not None and not isinstance(persistent, bool):
        raise TypeError(f"persistent: expected None, True or False, got {persistent!r}")
    if max_kv_len is not None:
        if persistent:
            raise ValueError("persistent: device-built plans (max_kv_len=) run one CTA per item")
        return _plan_on_device(cu_seqlens_q, num_heads_q, num_heads_kv, head_dim, kv_lens, cu_seqlens_k,
                               page_table, page_size, layout, causal, num_splits, device, num_sms, max_kv_len,
                               max_q_tokens, total_q, block_indices, block_counts, block_size, stream)
    if block_indices is not None or block_counts is not None:
        raise TypeError("block_indices / block_counts: device sparsity needs max_kv_len= (host plans take layout=)")
    from varblock.runtime.frameworks import device_ordinal
    from varblock.runtime.memory import DeviceBuffer
    from varblock.runtime.select import variant_for

    hq, hkv, d = _pos_int(num_heads_q, "num_heads_q"), _pos_int(num_heads_kv, "num_heads_kv"), head_dim
    if hq % hkv:
        raise ValueError(f"num_heads_q: {hq} is not a multiple of num_heads_kv = {hkv}")
    if head_dim not in abi.HEAD_DIMS:
        raise ValueError(f"head_dim: decode kernels are built for {abi.HEAD_DIMS}, got {head_dim!r}")
    if (page_table is None) == (cu_seqlens_k is None):
        raise TypeError("page_table / cu_seqlens_k: pass exactly one (a paged or a contiguous KV cache)")
    if num_splits is not None:
        _pos_int(num_splits, "num_splits")
    cu_q = _ints(cu_seqlens_q, "cu_seqlens_q")
    if cu_seqlens_k is not None:
        if kv_lens is not None:
            raise TypeError("kv_lens: a contiguous cache takes its lengths from cu_seqlens_k; pass one of them")
        cu_k = _ints(cu_seqlens_k, "cu_seqlens_k")
        if cu_k.shape != cu_q.shape or cu_k[0] != 0 or (np.diff(cu_k) < 0).any():
            raise ValueError(f"cu_seqlens_k: expected [B+1] = {cu_q.shape} starting at 0 and non-decreasing")
        kv = np.diff(cu_k)
    else:
        if kv_lens is None:
            raise TypeError("kv_lens: required with a paged cache")
        kv = _ints(kv_lens, "kv_lens")
        ps = _pos_int(page_size, "page_size")
    _check_lengths(cu_q, kv, causal)
    if layout is not None:
        _check_layout(layout, kv, hq, hkv)
    if device is None:
        for obj in (page_table, cu_seqlens_q, cu_seqlens_k):
            device = device_ordinal(obj) if obj is not None else None
            if device is not None:
                break
        device = device or 0
    tm = _tile_m(cu_q, hq // hkv)
    entry = _entry(variant_for, device, d, tm)
    tn = int(entry["extra"]["tile_n"])
    sms, per_sm = _occupancy(device, entry) if num_sms is None else (int(num_sms), 1)
    wl = build_worklist(cu_q, kv, num_heads_q=hq, num_heads_kv=hkv, tile_m=tm, tile_n=tn, layout=layout,
                        num_sms=sms, ctas_per_sm=per_sm, num_splits=num_splits, persistent=persistent)
    p = DecodePlan(device, hq, hkv, d, int(kv.shape[0]), int(cu_q[-1]), page_table is not None,
                   ps if page_table is not None else 1, bool(causal), tm, tn, wl, kv)
    p.buffers["cu_seqlens_q"] = DeviceBuffer.from_host(device, cu_q.astype(np.int32))
    p.buffers["items"] = DeviceBuffer.from_host(device, wl.items)
    p.buffers["chunks"] = DeviceBuffer.from_host(device, wl.chunks)
    if wl.num_slots:
        p.buffers["part_o"] = DeviceBuffer(device, wl.num_slots * tm * d * 4)
        p.buffers["part_lse"] = DeviceBuffer(device, wl.num_slots * tm * 4)
        p.buffers["counters"] = DeviceBuffer.zeros(device, wl.num_slots * 4)
    if cu_seqlens_k is not None:
        p.buffers["cu_seqlens_k"] = DeviceBuffer.from_host(device, cu_k.astype(np.int32))
    else:
        _attach_page_table(p, page_table, device)
    return p


def _entry(variant_for, device: int, d: int, tm: int) -> dict[str, Any]:
    """The decode variant for (head_dim, tile_m); tile sizes do not depend on the dtype."""
    try:
        return variant_for(FAMILY, device, {"dtype": "bfloat16", "head_dim": d, "tile_m": tm})
    except ValueError as ex:
        if "no kernel is built" not in str(ex):
            raise  # a manifest problem, not a missing variant
        return variant_for(FAMILY, device, {"dtype": "float16", "head_dim": d, "tile_m": tm})


def _occupancy(device_id: int, entry: dict[str, Any]) -> tuple[int, int]:
    from varblock.runtime.device import device, kernel
    from varblock.runtime.manifest import cubin_dir

    k, _ = kernel(device_id, entry, str(cubin_dir()))
    per_sm = k.occupancy.max_active_blocks_per_multiprocessor(int(entry["block"][0]),
                                                               int(entry["dynamic_smem_bytes"]))
    return int(device(device_id).properties.multiprocessor_count), max(1, int(per_sm))


def pages_needed(p: DecodePlan) -> int:
    """Fewest page-table columns a plan accepts. Host plans know their lengths: the longest sequence's pages.
    Device-built plans cannot read their lengths without a synchronisation, so they only need one column: the
    caller guarantees ``max_pages >= ceil(kv_lens[b] / page_size)`` for every sequence (decode reads
    ``page_table[b, j // page_size]`` only for keys ``j < kv_lens[b]``), e.g. by sizing the table for the
    longest actual sequence or for the capacity."""
    if p.kv_lens is None:
        return 1
    return int(((p.kv_lens + p.page_size - 1) // p.page_size).max(initial=0))


def _attach_page_table(p: DecodePlan, page_table: Any, device: int) -> None:
    from varblock.runtime.frameworks import is_device_array
    from varblock.runtime.memory import DeviceBuffer
    from varblock.runtime.tensors import as_device_array, check_dtype, check_ndim

    need = pages_needed(p)
    if is_device_array(page_table):
        pt = as_device_array(page_table, "page_table")
        check_dtype(pt, ("int32",))
        check_ndim(pt, 2, "[batch, max_pages]")
        if pt.device_id != device:
            raise ValueError(f"page_table: on cuda:{pt.device_id}, the plan is for cuda:{device}")
        rows, cols = pt.shape
        if cols > 1 and pt.strides[1] != 1:
            raise ValueError(f"page_table: pages must be contiguous along the last dim, got strides {pt.strides}")
        p.page_table, p.page_table_ptr = page_table, pt.ptr
        p.pt_stride = pt.strides[0] if rows > 1 else cols
    else:
        a = _ints(page_table, "page_table", ndim=2)
        rows, cols = a.shape
        if rows == p.batch_size and cols >= need and p.kv_lens is not None:
            used = np.arange(cols)[None, :] < ((p.kv_lens + p.page_size - 1) // p.page_size)[:, None]
            if (a[used] < 0).any():
                raise ValueError("page_table: negative page index in an entry a sequence uses")
            p.pt_max_page = int(a[used].max(initial=-1))
        buf = DeviceBuffer.from_host(device, a.astype(np.int32))
        p.page_table, p.page_table_ptr, p.pt_stride = buf, buf.ptr, cols
    if rows != p.batch_size:
        raise ValueError(f"page_table: expected {p.batch_size} rows (one per sequence), got {rows}")
    if cols < need and p.kv_lens is None:
        raise ValueError("page_table: a device-built plan needs at least one page column per sequence, got 0")
    if cols < need:
        raise ValueError(f"page_table: {cols} pages per sequence, but the longest sequence needs {need} pages of "
                         f"{p.page_size} tokens")
    p.max_pages = cols


def _plan_on_device(cu_seqlens_q, hq, hkv, d, kv_lens, cu_seqlens_k, page_table, page_size, layout, causal,
                    num_splits, device, num_sms, max_kv_len, max_q_tokens, total_q, block_indices, block_counts,
                    block_size, stream) -> DecodePlan:
    from varblock.decode_plan.device import plan_decode_device
    from varblock.runtime.frameworks import device_ordinal

    hq, hkv = _pos_int(hq, "num_heads_q"), _pos_int(hkv, "num_heads_kv")
    if hq % hkv:
        raise ValueError(f"num_heads_q: {hq} is not a multiple of num_heads_kv = {hkv}")
    if d not in abi.HEAD_DIMS:
        raise ValueError(f"head_dim: decode kernels are built for {abi.HEAD_DIMS}, got {d!r}")
    if layout is not None:
        raise TypeError("layout: a device-built plan takes block_indices= (layouts are host-side)")
    if (page_table is None) == (cu_seqlens_k is None):
        raise TypeError("page_table / cu_seqlens_k: pass exactly one (a paged or a contiguous KV cache)")
    if page_table is not None:
        _pos_int(page_size, "page_size")
    if num_splits is not None:
        _pos_int(num_splits, "num_splits")
    if total_q is None:
        raise TypeError("total_q: required with max_kv_len= (q's token count; the GPU holds cu_seqlens_q)")
    if device is None:
        device = next((o for o in (device_ordinal(x) for x in (page_table, cu_seqlens_q) if x is not None)
                       if o is not None), 0)

    def occupancy(dev: int, entry: dict) -> tuple[int, int]:
        return _occupancy(dev, entry) if num_sms is None else (int(num_sms), 1)

    return plan_decode_device(DecodePlan, cu_seqlens_q, num_heads_q=hq, num_heads_kv=hkv, head_dim=d,
                              total_q=total_q, max_kv_len=max_kv_len, max_q_tokens=max_q_tokens, kv_lens=kv_lens,
                              cu_seqlens_k=cu_seqlens_k, page_table=page_table, page_size=page_size,
                              block_indices=block_indices, block_counts=block_counts, block_size=block_size,
                              causal=causal, num_splits=num_splits, device=device, entry_for=_entry,
                              occupancy=occupancy, attach_page_table=_attach_page_table, stream=stream)
