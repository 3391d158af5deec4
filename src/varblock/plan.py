"""Plans: the per-batch-shape metadata the attention kernels read, computed once and reused by every layer.

A :class:`Plan` owns its device buffers (allocated through cuda.core): ``cu_seqlens_q/k``, the work list
(``tiles``, ``chunks``: docs/contracts.md section 2) and the element-mask tables (document ids, token mask). It
depends on the batch (cu_seqlens), the layout and mask, the head counts, the head dimension (which fixes the
kernel's tile sizes) and the device's arch; not on the dtype or the data.

Cache key (``plan_cache_key``): the bytes of cu_seqlens_q/k, ``num_heads_q``, ``num_heads_kv``, ``head_dim``,
``causal``, ``window``, ``pack_gqa``, the device ordinal, and the identity of the layout object (layouts are
immutable; pass the same object to hit the cache). ``vb.attention(..., cu_seqlens_q=..., layout=...)`` uses it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from varblock.layout import BlockSparseLayout, generators
from varblock.layout.mask import ElementMask
from varblock.worklist import WorkList, build_worklist

FAMILY = "attention_fwd_mma"
HEAD_DIMS = (64, 96, 128, 192, 256)
_CACHE_SIZE = 64
_cache: OrderedDict[tuple, Plan] = OrderedDict()


def _host_int32(x: Any, name: str) -> tuple[np.ndarray, int | None]:
    """A host int32 copy of a 1-D integer array given as NumPy or any DLPack/CUDA array (device arrays are copied
    to the host: a synchronisation). Returns (array, device ordinal if it came from a device)."""
    if x is None:
        raise TypeError(f"{name}: expected a 1-D int32 array [batch + 1], got None")
    dev = None
    if isinstance(x, np.ndarray):
        a = x
    elif isinstance(x, (list, tuple)):
        a = np.asarray(x)
    else:
        dl = getattr(x, "__dlpack_device__", None)
        if dl is not None and dl()[0] in (2, 13):  # kDLCUDA, kDLCUDAManaged
            dev = int(dl()[1])
            a = _device_to_host(x, name)
        else:
            a = np.asarray(x)
    if a.ndim != 1 or a.shape[0] < 1 or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name}: expected a 1-D integer array [batch + 1], got dtype {a.dtype} shape {a.shape}")
    if a[0] != 0 or (np.diff(a.astype(np.int64)) < 0).any():
        raise ValueError(f"{name}: cumulative sequence lengths must start at 0 and be non-decreasing")
    if a[-1] > 2**31 - 1:
        raise ValueError(f"{name}: total length {int(a[-1])} exceeds int32")
    return a.astype(np.int32), dev


def _device_to_host(x: Any, name: str) -> np.ndarray:
    from varblock.runtime.device import device
    from varblock.runtime.tensors import as_device_array

    d = as_device_array(x, name)
    if len(d.shape) != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {d.shape}")
    if d.dtype not in ("int32", "int64"):
        raise TypeError(f"{name}: expected int32, got {d.dtype}")
    device(d.device_id).sync()
    from cuda.bindings import driver

    out = np.empty(d.shape[0], dtype=d.dtype)
    if d.strides[0] != 1 and d.shape[0] > 1:
        raise ValueError(f"{name}: must be contiguous")
    (err,) = driver.cuMemcpyDtoH(out.ctypes.data, d.ptr, out.nbytes)
    if int(err) != 0:
        raise RuntimeError(f"cuMemcpyDtoH({name}) failed: {err}")
    return out


@dataclass(eq=False)
class Plan:
    """Metadata and device buffers for one batch shape (see module docstring)."""

    cu_seqlens_q: np.ndarray
    cu_seqlens_k: np.ndarray
    num_heads_q: int
    num_heads_kv: int
    head_dim: int
    layout: BlockSparseLayout
    device_id: int
    arch: str
    tile_m: int
    tile_n: int
    worklist: WorkList
    window_left: int
    window_right: int
    mask_flags: int
    tok_block_k: int
    tok_head_div: int
    buffers: dict[str, Any] = field(default_factory=dict, repr=False)
    tok_strides: tuple[int, int, int] = (0, 0, 0)
    #: prepared launches of this plan, keyed by (variant, strides, softmax scale)
    launch_cache: dict[tuple, Any] = field(default_factory=dict, repr=False)
    #: "persistent" (a grid of num_ctas CTAs pulls tiles with atomicAdd) or "single" (one CTA per tile)
    scheduler: str = "single"
    num_ctas: int = 0
    #: tile counters for the persistent schedule: one {next, done} pair per stream, reset by the kernel itself
    counter_slots: dict[int, int] = field(default_factory=dict, repr=False)
    debug_counts: Any = field(default=None, repr=False)

    MAX_STREAMS = 64

    def counter_ptr(self, stream_handle: int) -> int:
        """Address of this stream's tile counter (slots are zeroed once at plan creation; the kernel resets its
        counter after every launch, so nothing is allocated or cleared per call, also inside CUDA graphs)."""
        slot = self.counter_slots.get(stream_handle)
        if slot is None:
            if len(self.counter_slots) >= self.MAX_STREAMS:
                raise RuntimeError(f"plan: used from more than {self.MAX_STREAMS} streams; make one plan per group "
                                   "of streams")
            slot = self.counter_slots[stream_handle] = len(self.counter_slots)
        return self.buffers["tile_counters"].ptr + 8 * slot

    def enable_tile_counts(self) -> Any:
        """Debugging aid: from now on every launch adds 1 to ``counts[tile]`` for each tile it processes; returns
        the device buffer (int32 [num_tiles]; read it with ``.to_host(numpy.int32, plan.num_tiles)``)."""
        from varblock.runtime.memory import DeviceBuffer

        self.debug_counts = DeviceBuffer.zeros(self.device_id, 4 * max(self.num_tiles, 1))
        self.launch_cache.clear()
        return self.debug_counts

    @property
    def total_q(self) -> int:
        return int(self.cu_seqlens_q[-1])

    @property
    def total_k(self) -> int:
        return int(self.cu_seqlens_k[-1])

    @property
    def batch_size(self) -> int:
        return int(self.cu_seqlens_q.shape[0] - 1)

    @property
    def num_tiles(self) -> int:
        return self.worklist.num_tiles

    @property
    def pack_gqa(self) -> int:
        return self.worklist.pack_gqa

    def ptr(self, name: str) -> int:
        b = self.buffers.get(name)
        return 0 if b is None else b.ptr

    def flops(self) -> float:
        """Forward FLOPs on computed pairs (4 * D per pair)."""
        return 4.0 * self.head_dim * self.layout.num_pairs(self.num_heads_q, self.num_heads_kv)


def _tile_config(arch: str, head_dim: int) -> tuple[int, int]:
    from varblock.runtime.manifest import find_variant, load_manifest

    m = load_manifest()
    for dt in ("bfloat16", "float16"):
        e = find_variant(FAMILY, arch, {"dtype": dt, "head_dim": head_dim}, m)
        if e is not None:
            return int(e["extra"]["tile_m"]), int(e["extra"]["tile_n"])
    raise ValueError(f"head_dim: no attention kernel is built for head_dim={head_dim} on {arch}; built head dims: "
                     f"{sorted({k['head_dim'] for k in _keys(arch)})}")


def _keys(arch: str) -> list[dict]:
    from varblock.runtime.manifest import available_keys

    return available_keys(FAMILY, arch)


def _resolve_layout(layout, cu_q, cu_k, causal, window, tile_m, tile_n, num_heads_q) -> BlockSparseLayout:
    wl, wr = window if window is not None else (-1, -1)
    if layout is None:
        mask = ElementMask(causal=bool(causal), window_left=int(wl), window_right=int(wr))
        return generators.dense(cu_q, cu_k, block_q=tile_m, block_k=tile_n, num_heads=1, head_mode="broadcast",
                                element_mask=mask)
    if not isinstance(layout, BlockSparseLayout):
        raise TypeError(f"layout: expected a varblock BlockSparseLayout, got {type(layout).__name__}")
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


def plan(cu_seqlens_q: Any, cu_seqlens_k: Any = None, *, num_heads_q: int, num_heads_kv: int | None = None,
         head_dim: int, layout: BlockSparseLayout | None = None, causal: bool = False,
         window: tuple[int, int] | None = None, pack_gqa: bool | None = None, device: int | None = None,
         dtype: str | None = None, scheduler: str = "auto", cache: bool = True) -> Plan:
    """Plan varlen (block-sparse) attention for one batch shape; reuse the plan for every layer.

    Args:
        cu_seqlens_q, cu_seqlens_k: int32 ``[B+1]`` cumulative lengths (host or device arrays; ``cu_seqlens_k``
            defaults to ``cu_seqlens_q``).
        num_heads_q, num_heads_kv: query and key/value heads (``num_heads_q`` a multiple of ``num_heads_kv``).
        head_dim: 64, 96, 128, 192 or 256.
        layout: a :class:`varblock.layout.BlockSparseLayout` (None: dense, with ``causal``/``window``).
        causal: bottom-right aligned causal mask (dense plans; a layout carries its own mask).
        window: ``(left, right)`` sliding window, -1 = unbounded (dense plans).
        pack_gqa: pack the query heads of a GQA group into one tile (None: automatic).
        device: CUDA device ordinal (default: that of device cu_seqlens, else 0).
        dtype: accepted for API symmetry; a plan serves fp16 and bf16 alike.
        scheduler: "persistent" (about one wave of CTAs pulls tiles, longest first, from a tile counter the kernel
            resets itself), "single" (one CTA per tile) or "auto" (persistent when the tiles exceed one wave).
    """
    cu_q, dev_q = _host_int32(cu_seqlens_q, "cu_seqlens_q")
    cu_k, dev_k = _host_int32(cu_seqlens_k if cu_seqlens_k is not None else cu_seqlens_q, "cu_seqlens_k")
    if cu_q.shape != cu_k.shape:
        raise ValueError(f"cu_seqlens_k: expected {cu_q.shape[0]} entries like cu_seqlens_q, got {cu_k.shape[0]}")
    hkv = num_heads_q if num_heads_kv is None else num_heads_kv
    for nm, v in (("num_heads_q", num_heads_q), ("num_heads_kv", hkv), ("head_dim", head_dim)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{nm}: expected a positive int, got {v!r}")
    if num_heads_q % hkv:
        raise ValueError(f"num_heads_q: {num_heads_q} is not a multiple of num_heads_kv = {hkv}")
    if head_dim not in HEAD_DIMS:
        raise ValueError(f"head_dim: {head_dim} is not supported; supported: {HEAD_DIMS}")
    if dtype is not None and dtype not in ("bfloat16", "float16"):
        raise TypeError(f"dtype: expected 'bfloat16' or 'float16', got {dtype!r}")
    if window is not None and (len(window) != 2 or any(int(w) < -1 for w in window)):
        raise ValueError(f"window: expected (left, right) with -1 = unbounded, got {window!r}")
    ordinal = device if device is not None else (dev_q if dev_q is not None else (dev_k or 0))
    if scheduler not in ("auto", "persistent", "single"):
        raise ValueError(f"scheduler: expected 'auto', 'persistent' or 'single', got {scheduler!r}")
    key = (cu_q.tobytes(), cu_k.tobytes(), int(num_heads_q), int(hkv), int(head_dim), bool(causal),
           tuple(window) if window is not None else None, pack_gqa, int(ordinal), id(layout), scheduler)
    if cache and key in _cache:
        p = _cache[key]
        if p.layout is layout or layout is None:
            _cache.move_to_end(key)
            return p
    from varblock.runtime.select import arch_for_device

    arch = arch_for_device(int(ordinal))
    tile_m, tile_n = _tile_config(arch, int(head_dim))
    lay = _resolve_layout(layout, cu_q, cu_k, causal, window, tile_m, tile_n, num_heads_q)
    lay.check_compatible(int(num_heads_q), int(hkv), int(head_dim))
    p = _make_plan(lay, cu_q, cu_k, int(num_heads_q), int(hkv), int(head_dim), int(ordinal), arch, tile_m, tile_n,
                   pack_gqa)
    _choose_schedule(p, scheduler)
    if cache:
        _cache[key] = p
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return p


def _choose_pack(lay: BlockSparseLayout, hq: int, hkv: int, tile_m: int, pack_gqa: bool | None) -> int:
    group = hq // hkv
    shareable = group > 1 and lay.head_mode != "per_q_head" and group <= tile_m
    if pack_gqa is None:
        small_q = int(np.diff(lay.cu_seqlens_q).max(initial=0)) * group <= tile_m
        return group if shareable and (lay.mask.token_mask is not None or small_q) else 1
    if pack_gqa and not shareable:
        raise ValueError("pack_gqa: needs GQA (num_heads_q > num_heads_kv) and a layout shared by each group "
                         "(head_mode per_kv_head or broadcast)")
    return group if pack_gqa else 1


def _make_plan(lay, cu_q, cu_k, hq, hkv, d, ordinal, arch, tile_m, tile_n, pack_gqa) -> Plan:
    from varblock.runtime.memory import DeviceBuffer

    g = _choose_pack(lay, hq, hkv, tile_m, pack_gqa)
    wl = build_worklist(lay.rows(), cu_q, cu_k, num_heads_q=hq, num_heads_kv=hkv, head_mode=lay.head_mode,
                        tile_m=tile_m, tile_n=tile_n, pack_gqa=g, num_layout_heads=lay.num_heads,
                        longest_first=True)
    m = lay.mask
    wl, wr = min(m.window_left, 2**30), min(m.window_right, 2**30)  # the kernel's int32 band arithmetic
    if m.causal:
        wr = 0 if wr < 0 else min(wr, 0)
    flags, tbk, tdiv = 0, 1, 1
    bufs = {
        "cu_seqlens_q": DeviceBuffer.from_host(ordinal, cu_q),
        "cu_seqlens_k": DeviceBuffer.from_host(ordinal, cu_k),
        "tiles": DeviceBuffer.from_host(ordinal, wl.tiles),
        "chunks": DeviceBuffer.from_host(ordinal, wl.chunks),
        "tile_counters": DeviceBuffer.zeros(ordinal, 8 * Plan.MAX_STREAMS),
    }
    tok_strides = (0, 0, 0)
    if m.doc_ids_q is not None:
        flags |= 1
        bufs["doc_q"] = DeviceBuffer.from_host(ordinal, np.asarray(m.doc_ids_q, np.int32))
        bufs["doc_k"] = DeviceBuffer.from_host(ordinal, np.asarray(m.doc_ids_k, np.int32))
    if m.token_mask is not None:
        flags |= 2
        tm = np.ascontiguousarray(np.asarray(m.token_mask).astype(np.uint8))
        bufs["tok_mask"] = DeviceBuffer.from_host(ordinal, tm)
        tbk = int(m.token_block_k)
        tok_strides = (tm.shape[1] * tm.shape[2], tm.shape[2], 1)
        group = hq // hkv
        if tm.shape[0] == 1:
            tdiv = hq
        else:
            tdiv = {"per_q_head": 1, "per_kv_head": group, "broadcast": hq}[lay.head_mode]
    return Plan(cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, num_heads_q=hq, num_heads_kv=hkv, head_dim=d, layout=lay,
                device_id=ordinal, arch=arch, tile_m=tile_m, tile_n=tile_n, worklist=wl,
                window_left=int(wl), window_right=int(wr), mask_flags=flags, tok_block_k=tbk,
                tok_head_div=tdiv, buffers=bufs, tok_strides=tok_strides)


def _choose_schedule(p: Plan, scheduler: str) -> None:
    """Persistent grid size = resident CTAs per SM (occupancy of the variant) x SMs."""
    from varblock.runtime.device import device, kernel
    from varblock.runtime.manifest import find_variant, load_manifest

    m = load_manifest()
    e = find_variant(FAMILY, p.arch, {"dtype": "bfloat16", "head_dim": p.head_dim}, m)
    supports = e is not None and any(q["name"] == "persistent" for q in e["params"])
    if not supports or scheduler == "single" or p.num_tiles == 0:
        if scheduler == "persistent" and not supports:
            raise ValueError("scheduler: the built attention kernels have no persistent schedule; rebuild them")
        p.scheduler, p.num_ctas = "single", p.num_tiles
        return
    k, _ = kernel(p.device_id, e, m["_dir"])
    per_sm = k.occupancy.max_active_blocks_per_multiprocessor(int(e["block"][0]), int(e["dynamic_smem_bytes"]))
    wave = max(1, int(per_sm)) * int(device(p.device_id).properties.multiprocessor_count)
    if scheduler == "auto" and p.num_tiles <= wave:
        p.scheduler, p.num_ctas = "single", p.num_tiles
        return
    p.scheduler, p.num_ctas = "persistent", min(p.num_tiles, wave)


def clear_cache() -> None:
    _cache.clear()
