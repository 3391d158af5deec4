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
    #: torch argument signatures already validated by ``attention`` -> (prepared launch, out shape, lse shape)
    fast_paths: dict[tuple, Any] = field(default_factory=dict, repr=False)
    #: "persistent" (a grid of num_ctas CTAs pulls tiles with atomicAdd) or "single" (one CTA per tile)
    scheduler: str = "single"
    num_ctas: int = 0
    #: tile counters for the persistent schedule: one {next, done} pair per stream, reset by the kernel itself
    counter_slots: dict[int, int] = field(default_factory=dict, repr=False)
    debug_counts: Any = field(default=None, repr=False)
    #: device plans: the work list was built on the GPU by the prepare kernel (no host copy of cu_seqlens)
    on_device: bool = False
    max_tiles: int = 0
    totals: tuple[int | None, int | None] = (None, None)
    prepare_stream: Any = field(default=None, repr=False)
    prepare_event: Any = field(default=None, repr=False)
    ready_streams: set = field(default_factory=set, repr=False)

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
        self.fast_paths.clear()
        return self.debug_counts

    @property
    def total_q(self) -> int | None:
        """Query tokens (None for a device plan made without ``total_q``)."""
        return self.totals[0] if self.on_device else int(self.cu_seqlens_q[-1])

    @property
    def total_k(self) -> int | None:
        return self.totals[1] if self.on_device else int(self.cu_seqlens_k[-1])

    @property
    def batch_size(self) -> int:
        if self.on_device:
            return self.buffers["cu_seqlens_q"].nbytes // 4 - 1
        return int(self.cu_seqlens_q.shape[0] - 1)

    @property
    def num_tiles(self) -> int:
        """Tiles of the work list (for a device plan: its capacity; the kernel reads the count on the GPU)."""
        return self.max_tiles if self.on_device else self.worklist.num_tiles

    @property
    def pack_gqa(self) -> int:
        return self.worklist.pack_gqa

    def wait_ready(self, stream: Any) -> None:
        """Order ``stream`` after the prepare kernel of a device plan (once per stream)."""
        if self.on_device and int(stream.handle) not in self.ready_streams:
            if int(stream.handle) != int(self.prepare_stream.handle):
                stream.wait(self.prepare_event)
            self.ready_streams.add(int(stream.handle))

    def ptr(self, name: str) -> int:
        b = self.buffers.get(name)
        return 0 if b is None else b.ptr

    def flops(self) -> float:
        """Forward FLOPs on computed pairs (4 * D per pair)."""
        if self.layout is None:
            raise ValueError("plan: a device plan has no host layout to count pairs from")
        return 4.0 * self.head_dim * self.layout.num_pairs(self.num_heads_q, self.num_heads_kv)


def _attention_entry(arch: str, head_dim: int) -> dict | None:
    """A built forward variant for (arch, head_dim); tile sizes, block and occupancy do not depend on the dtype."""
    from varblock.runtime.manifest import find_variant

    for dt in ("bfloat16", "float16"):
        e = find_variant(FAMILY, arch, {"dtype": dt, "head_dim": head_dim})
        if e is not None:
            return e
    return None


def _tile_config(arch: str, head_dim: int) -> tuple[int, int]:
    e = _attention_entry(arch, head_dim)
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
         dtype: str | None = None, scheduler: str = "auto", cache: bool = True,
         max_seqlen_q: int | None = None, max_seqlen_k: int | None = None, total_q: int | None = None,
         total_k: int | None = None, stream: Any = None) -> Plan:
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
            resets itself), "single" (one CTA per tile) or "auto" (single for host plans, which measured as fast
            or faster with this kernel; persistent for device plans).
        max_seqlen_q, max_seqlen_k, total_q, total_k: with device ``cu_seqlens`` and no layout, either pair sizes
            the work list so that the prepare kernel builds it ON THE GPU, with no host synchronisation (on
            ``stream``, default: the current stream of cu_seqlens' framework). Such a plan snapshots cu_seqlens at
            creation. Without them, device cu_seqlens are copied to the host (a synchronisation).
    """
    if layout is None and _is_device_array(cu_seqlens_q) and (
            max_seqlen_q is not None or total_q is not None):
        return _device_plan(cu_seqlens_q, cu_seqlens_k if cu_seqlens_k is not None else cu_seqlens_q,
                            num_heads_q=num_heads_q, num_heads_kv=num_heads_kv, head_dim=head_dim, causal=causal,
                            window=window, pack_gqa=pack_gqa, max_seqlen_q=max_seqlen_q,
                            max_seqlen_k=max_seqlen_k, total_q=total_q, total_k=total_k, stream=stream)
    cu_q, dev_q = _host_int32(cu_seqlens_q, "cu_seqlens_q")
    cu_k, dev_k = _host_int32(cu_seqlens_k if cu_seqlens_k is not None else cu_seqlens_q, "cu_seqlens_k")
    if cu_q.shape != cu_k.shape:
        raise ValueError(f"cu_seqlens_k: expected {cu_q.shape[0]} entries like cu_seqlens_q, got {cu_k.shape[0]}")
    hkv = _check_heads(num_heads_q, num_heads_kv, head_dim)
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
                   pack_gqa, dense=layout is None)
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


def _is_device_array(x: Any) -> bool:
    dl = getattr(x, "__dlpack_device__", None)
    return dl is not None and not isinstance(x, np.ndarray) and dl()[0] in (2, 13)


def _check_heads(num_heads_q: Any, num_heads_kv: Any, head_dim: Any) -> int:
    hkv = num_heads_q if num_heads_kv is None else num_heads_kv
    for nm, v in (("num_heads_q", num_heads_q), ("num_heads_kv", hkv), ("head_dim", head_dim)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{nm}: expected a positive int, got {v!r}")
    if num_heads_q % hkv:
        raise ValueError(f"num_heads_q: {num_heads_q} is not a multiple of num_heads_kv = {hkv}")
    if head_dim not in HEAD_DIMS:
        raise ValueError(f"head_dim: {head_dim} is not supported; supported: {HEAD_DIMS}")
    return int(hkv)


def _band(causal: bool, window: tuple[int, int] | None) -> tuple[int, int]:
    """(window_left, window_right) as the kernels take them: causal folded into the right bound, -1 = unbounded,
    bounded to 2**30 (the kernels' int32 band arithmetic)."""
    wl, wr = (int(window[0]), int(window[1])) if window is not None else (-1, -1)
    if window is not None and (wl < -1 or wr < -1):
        raise ValueError(f"window: expected (left, right) with -1 = unbounded, got {window!r}")
    if causal:
        wr = 0 if wr < 0 else min(wr, 0)
    return min(wl, 2**30), min(wr, 2**30)


def _device_plan(cu_seqlens_q, cu_seqlens_k, *, num_heads_q, num_heads_kv, head_dim, causal, window, pack_gqa,
                 max_seqlen_q, max_seqlen_k, total_q, total_k, stream) -> Plan:
    """Dense / causal / window plan whose work list the prepare kernel builds on the GPU (no host sync)."""
    from varblock.dense_worklist import capacities
    from varblock.runtime.device import stream_for
    from varblock.runtime.launch import PreparedLaunch
    from varblock.runtime.memory import DeviceBuffer
    from varblock.runtime.select import arch_for_device, variant_for
    from varblock.runtime.tensors import as_device_array, check_same_device

    hkv = _check_heads(num_heads_q, num_heads_kv, head_dim)
    cq, ck = as_device_array(cu_seqlens_q, "cu_seqlens_q"), as_device_array(cu_seqlens_k, "cu_seqlens_k")
    for a in (cq, ck):
        if a.dtype != "int32" or len(a.shape) != 1 or a.shape[0] < 1 or (a.shape[0] > 1 and a.strides[0] != 1):
            raise ValueError(f"{a.name}: expected a contiguous 1-D int32 array [batch + 1], got {a.dtype} {a.shape}")
    if cq.shape != ck.shape:
        raise ValueError(f"cu_seqlens_k: expected {cq.shape[0]} entries like cu_seqlens_q, got {ck.shape[0]}")
    ordinal = check_same_device([cq, ck])
    b = cq.shape[0] - 1
    arch = arch_for_device(ordinal)
    tile_m, tile_n = _tile_config(arch, int(head_dim))
    group = num_heads_q // hkv
    if pack_gqa and group == 1:
        raise ValueError("pack_gqa: needs GQA (num_heads_q > num_heads_kv)")
    small = max_seqlen_q is not None and int(max_seqlen_q) * group <= tile_m
    g = group if group > 1 and (pack_gqa or (pack_gqa is None and small)) else 1
    heads = hkv if g > 1 else int(num_heads_q)
    tpt = tile_m // g
    caps = []
    if total_q is not None:
        caps.append(capacities(int(total_q), int(total_k if total_k is not None else total_q), b, heads, g,
                               tile_m, tile_n))
    if max_seqlen_q is not None:
        mk = int(max_seqlen_k if max_seqlen_k is not None else max_seqlen_q)
        caps.append((heads * b * -(-int(max_seqlen_q) // tpt), b * -(-mk // tile_n)))
    max_tiles = max(1, min(c[0] for c in caps))
    max_chunks = max(1, min(c[1] for c in caps))
    st = stream_for(stream, ordinal, like=cu_seqlens_q)
    wl, wr = _band(causal, window)
    bufs = {
        "cu_seqlens_q": DeviceBuffer.copy_of(ordinal, cq.ptr, 4 * (b + 1), st),
        "cu_seqlens_k": DeviceBuffer.copy_of(ordinal, ck.ptr, 4 * (b + 1), st),
        "tiles": DeviceBuffer(ordinal, 32 * max_tiles, st),
        "chunks": DeviceBuffer(ordinal, 8 * max_chunks, st),
        "status": DeviceBuffer(ordinal, 8, st),
        "scratch": DeviceBuffer(ordinal, 8 * (b + 1), st),
        "tile_counters": DeviceBuffer.zeros(ordinal, 8 * Plan.MAX_STREAMS, st),
    }
    values = {"cu_seqlens_q": bufs["cu_seqlens_q"].ptr, "cu_seqlens_k": bufs["cu_seqlens_k"].ptr,
              "tiles": bufs["tiles"].ptr, "chunks": bufs["chunks"].ptr, "status": bufs["status"].ptr,
              "scratch": bufs["scratch"].ptr, "batch": b, "num_tile_heads": heads, "pack_gqa": g, "tile_m": tile_m,
              "tile_n": tile_n, "window_left": wl, "window_right": wr, "max_tiles": max_tiles,
              "max_chunks": max_chunks}
    PreparedLaunch(variant_for("attention_prepare", ordinal, {}), ordinal, values, what="plan")(st, ())
    wl_ = WorkList(tiles=np.zeros((0, 8), np.int32), chunks=np.zeros((0, 2), np.int32), tile_m=tile_m,
                   tile_n=tile_n, pack_gqa=g)
    p = Plan(cu_seqlens_q=None, cu_seqlens_k=None, num_heads_q=int(num_heads_q), num_heads_kv=hkv,
             head_dim=int(head_dim), layout=None, device_id=ordinal, arch=arch, tile_m=tile_m, tile_n=tile_n,
             worklist=wl_, window_left=wl, window_right=wr, mask_flags=0, tok_block_k=1, tok_head_div=1,
             buffers=bufs, on_device=True, max_tiles=max_tiles,
             totals=(int(total_q) if total_q is not None else None,
                     int(total_k if total_k is not None else total_q) if total_q is not None else None),
             prepare_stream=st)
    p.prepare_event = st.record()
    _choose_schedule(p, "persistent")
    return p


def _make_plan(lay, cu_q, cu_k, hq, hkv, d, ordinal, arch, tile_m, tile_n, pack_gqa, dense=False) -> Plan:
    from varblock.dense_worklist import dense_worklist
    from varblock.runtime.memory import DeviceBuffer

    g = _choose_pack(lay, hq, hkv, tile_m, pack_gqa)
    m = lay.mask
    wl, wr = _band(m.causal, (m.window_left, m.window_right))
    if dense and m.doc_ids_q is None and m.token_mask is None:
        # the prepare kernel's format (per-sequence chunk lists: memory linear in the keys), longest tiles first
        tiles, chunks = dense_worklist(cu_q, cu_k, num_tile_heads=hkv if g > 1 else hq, pack_gqa=g, tile_m=tile_m,
                                       tile_n=tile_n, window_left=wl, window_right=wr)
        tiles = tiles[np.argsort(-(tiles[:, 5].astype(np.int64) + tiles[:, 6]), kind="stable")]
        worklist = WorkList(tiles=np.ascontiguousarray(tiles, np.int32), chunks=chunks, tile_m=tile_m,
                            tile_n=tile_n, pack_gqa=g)
    else:
        worklist = build_worklist(lay.rows(), cu_q, cu_k, num_heads_q=hq, num_heads_kv=hkv,
                                  head_mode=lay.head_mode, tile_m=tile_m, tile_n=tile_n, pack_gqa=g,
                                  num_layout_heads=lay.num_heads, longest_first=True)
    flags, tbk, tdiv = 0, 1, 1
    bufs = {
        "cu_seqlens_q": DeviceBuffer.from_host(ordinal, cu_q),
        "cu_seqlens_k": DeviceBuffer.from_host(ordinal, cu_k),
        "tiles": DeviceBuffer.from_host(ordinal, worklist.tiles),
        "chunks": DeviceBuffer.from_host(ordinal, worklist.chunks),
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
                device_id=ordinal, arch=arch, tile_m=tile_m, tile_n=tile_n, worklist=worklist,
                window_left=int(wl), window_right=int(wr), mask_flags=flags, tok_block_k=tbk,
                tok_head_div=tdiv, buffers=bufs, tok_strides=tok_strides)


def _choose_schedule(p: Plan, scheduler: str) -> None:
    """Persistent grid size = resident CTAs per SM (occupancy of the variant) x SMs."""
    from varblock.runtime.device import device, kernel
    from varblock.runtime.manifest import load_manifest

    e = _attention_entry(p.arch, p.head_dim)
    supports = e is not None and any(q["name"] == "persistent" for q in e["params"])
    if not supports or scheduler == "single" or p.num_tiles == 0:
        if scheduler == "persistent" and not supports:
            raise ValueError("scheduler: the built attention kernels have no persistent schedule; rebuild them")
        p.scheduler, p.num_ctas = "single", p.num_tiles
        return
    if scheduler == "auto" and not p.on_device:
        # Measured on an H200 (benchmarks/bench_scheduler.py, W1 and W3, d128): with host-sorted longest-first tiles
        # the hardware's own block dispatch already balances the portable kernel, and the persistent loop was 0-5%
        # slower (it does not overlap one tile's epilogue with the next tile's loads yet). Device plans, whose tile
        # count only the GPU knows, are always persistent.
        p.scheduler, p.num_ctas = "single", p.num_tiles
        return
    k, _ = kernel(p.device_id, e, load_manifest()["_dir"])
    per_sm = k.occupancy.max_active_blocks_per_multiprocessor(int(e["block"][0]), int(e["dynamic_smem_bytes"]))
    wave = max(1, int(per_sm)) * int(device(p.device_id).properties.multiprocessor_count)
    p.scheduler, p.num_ctas = "persistent", min(p.num_tiles, wave)


def clear_cache() -> None:
    _cache.clear()
