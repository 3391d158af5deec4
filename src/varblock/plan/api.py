"""``varblock.plan(...)``: validate the arguments, choose the kernel family, build the work list (host or device),
choose the schedule; plans with host cu_seqlens are cached.

Cache key: the bytes of cu_seqlens_q/k, ``num_heads_q``, ``num_heads_kv``, ``head_dim``, ``causal``, ``window``,
``pack_gqa``, the device ordinal, the identity of the layout object (layouts are immutable; pass the same object
to hit the cache), ``scheduler``, ``backend`` and ``dtype``. ``vb.attention(..., cu_seqlens_q=..., layout=...)``
uses it.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np

from varblock import families
from varblock.families.base import ATTENTION_DTYPES, AttentionProblem
from varblock.layout import BlockSparseLayout
from varblock.plan.core import Plan
from varblock.plan.device import build_device_plan
from varblock.plan.host import build_host_plan, mask_kinds, resolve_layout
from varblock.plan.schedule import SCHEDULERS, choose_schedule
from varblock.plan.seqlens import device_seqlens, host_seqlens
from varblock.runtime.frameworks import is_device_array
from varblock.runtime.select import arch_for_device

OP = "attention_fwd"
_CACHE_SIZE = 64
_cache: OrderedDict[tuple, Plan] = OrderedDict()


def plan(cu_seqlens_q: Any, cu_seqlens_k: Any = None, *, num_heads_q: int, num_heads_kv: int | None = None,
         head_dim: int, layout: BlockSparseLayout | None = None, causal: bool = False,
         window: tuple[int, int] | None = None, pack_gqa: bool | None = None, device: int | None = None,
         dtype: str | None = None, scheduler: str = "auto", backend: str = "auto", cache: bool = True,
         max_seqlen_q: int | None = None, max_seqlen_k: int | None = None, total_q: int | None = None,
         total_k: int | None = None, stream: Any = None) -> Plan:
    """Plan varlen (block-sparse) attention for one batch shape; reuse the plan for every layer.

    Args:
        cu_seqlens_q, cu_seqlens_k: int32 ``[B+1]`` cumulative lengths (host or device arrays; ``cu_seqlens_k``
            defaults to ``cu_seqlens_q``).
        num_heads_q, num_heads_kv: query and key/value heads (``num_heads_q`` a multiple of ``num_heads_kv``).
        head_dim: 64, 96, 128, 192 or 256 (what the kernel families are built for).
        layout: a :class:`varblock.layout.BlockSparseLayout` (None: dense, with ``causal``/``window``).
        causal: bottom-right aligned causal mask (dense plans; a layout carries its own mask).
        window: ``(left, right)`` sliding window, -1 = unbounded (dense plans).
        pack_gqa: pack the query heads of a GQA group into one tile (None: automatic).
        device: CUDA device ordinal (default: that of device cu_seqlens, else 0).
        dtype: ``"bfloat16"`` / ``"float16"`` or None (a plan serves both; given, families that lack it decline).
        scheduler: "persistent" (about one wave of CTAs pulls tiles, longest first, from a tile counter the kernel
            resets itself), "single" (one CTA per tile) or "auto" (single for host plans, which measured as fast
            or faster with the portable kernel; persistent for device plans).
        backend: "auto" (the first kernel family that supports the problem, fastest first) or a family name
            (``varblock.families.family_names("attention_fwd")``); a family that cannot run the problem raises a
            ValueError with its reason. ``plan.family`` / ``plan.declined`` say what was chosen and why.
        max_seqlen_q, max_seqlen_k, total_q, total_k: with device ``cu_seqlens`` and no layout, either pair sizes
            the work list so that the prepare kernel builds it ON THE GPU, with no host synchronisation (on
            ``stream``, default: the current stream of cu_seqlens' framework). Such a plan snapshots cu_seqlens at
            creation. Without them, device cu_seqlens are copied to the host (a synchronisation).
    """
    hkv = _check_args(num_heads_q, num_heads_kv, head_dim, dtype, window, scheduler, layout)
    if layout is None and is_device_array(cu_seqlens_q) and (max_seqlen_q is not None or total_q is not None):
        cq, ck = device_seqlens(cu_seqlens_q, cu_seqlens_k if cu_seqlens_k is not None else cu_seqlens_q)
        arch = arch_for_device(cq.device_id)
        problem = AttentionProblem(arch, int(head_dim), int(num_heads_q), hkv, dtype, _dense_kinds(causal, window),
                                   _features(None, pack_gqa, scheduler, on_device=True), pack_gqa, scheduler)
        binding, declined = families.choose(OP, problem, backend)
        tile_m, tile_n = binding.tile_config(arch, int(head_dim))
        p = build_device_plan(cq, ck, cu_seqlens_q, num_heads_q=int(num_heads_q), num_heads_kv=hkv,
                              head_dim=int(head_dim), arch=arch, family=binding.name, declined=declined,
                              tile_m=tile_m, tile_n=tile_n, causal=causal, window=window, pack_gqa=pack_gqa,
                              max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k, total_q=total_q,
                              total_k=total_k, stream=stream)
        choose_schedule(p, binding, "persistent" if scheduler == "auto" else scheduler)
        return p
    cu_q, dev_q = host_seqlens(cu_seqlens_q, "cu_seqlens_q")
    cu_k, dev_k = host_seqlens(cu_seqlens_k if cu_seqlens_k is not None else cu_seqlens_q, "cu_seqlens_k")
    if cu_q.shape != cu_k.shape:
        raise ValueError(f"cu_seqlens_k: expected {cu_q.shape[0]} entries like cu_seqlens_q, got {cu_k.shape[0]}")
    ordinal = int(device if device is not None else (dev_q if dev_q is not None else (dev_k or 0)))
    key = (cu_q.tobytes(), cu_k.tobytes(), int(num_heads_q), hkv, int(head_dim), bool(causal),
           tuple(window) if window is not None else None, pack_gqa, ordinal, id(layout), scheduler, backend, dtype)
    if cache and key in _cache:
        p = _cache[key]
        if p.layout is layout or layout is None:
            _cache.move_to_end(key)
            return p
    arch = arch_for_device(ordinal)
    kinds = _dense_kinds(causal, window) if layout is None else mask_kinds(layout.mask)
    problem = AttentionProblem(arch, int(head_dim), int(num_heads_q), hkv, dtype, kinds,
                               _features(layout, pack_gqa, scheduler, on_device=False), pack_gqa, scheduler)
    binding, declined = families.choose(OP, problem, backend)
    tile_m, tile_n = binding.tile_config(arch, int(head_dim))
    lay = resolve_layout(layout, cu_q, cu_k, causal, window, tile_m, tile_n)
    lay.check_compatible(int(num_heads_q), hkv, int(head_dim))
    p = build_host_plan(lay, cu_q, cu_k, num_heads_q=int(num_heads_q), num_heads_kv=hkv, head_dim=int(head_dim),
                        ordinal=ordinal, arch=arch, family=binding.name, declined=declined, tile_m=tile_m,
                        tile_n=tile_n, pack_gqa=pack_gqa, dense=layout is None)
    choose_schedule(p, binding, scheduler)
    if cache:
        _cache[key] = p
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return p


def _check_args(num_heads_q: Any, num_heads_kv: Any, head_dim: Any, dtype: Any, window: Any, scheduler: Any,
                layout: Any) -> int:
    """Validate what does not depend on cu_seqlens; returns ``num_heads_kv`` (default ``num_heads_q``)."""
    hkv = num_heads_q if num_heads_kv is None else num_heads_kv
    for nm, v in (("num_heads_q", num_heads_q), ("num_heads_kv", hkv), ("head_dim", head_dim)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{nm}: expected a positive int, got {v!r}")
    if num_heads_q % hkv:
        raise ValueError(f"num_heads_q: {num_heads_q} is not a multiple of num_heads_kv = {hkv}")
    if dtype is not None and dtype not in ATTENTION_DTYPES:
        raise TypeError(f"dtype: expected 'bfloat16' or 'float16', got {dtype!r}")
    if window is not None and (len(window) != 2 or any(int(w) < -1 for w in window)):
        raise ValueError(f"window: expected (left, right) with -1 = unbounded, got {window!r}")
    if scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler: expected 'auto', 'persistent' or 'single', got {scheduler!r}")
    if layout is not None and not isinstance(layout, BlockSparseLayout):
        raise TypeError(f"layout: expected a varblock BlockSparseLayout, got {type(layout).__name__}")
    return int(hkv)


def _dense_kinds(causal: bool, window: tuple[int, int] | None) -> frozenset[str]:
    kinds = {"causal"} if causal else set()
    if window is not None and (int(window[0]) >= 0 or int(window[1]) >= 0):
        kinds.add("window")
    return frozenset(kinds)


def _features(layout: BlockSparseLayout | None, pack_gqa: bool | None, scheduler: str, on_device: bool
              ) -> frozenset[str]:
    f = set()
    if layout is not None:
        f.add("block_sparse")
        if not layout.is_fixed:
            f.add("variable_spans")
    if pack_gqa:
        f.add("pack_gqa")
    if on_device:
        f.add("device_plan")
    if scheduler == "persistent" or (on_device and scheduler == "auto"):
        f.add("persistent")
    return frozenset(f)


def clear_cache() -> None:
    """Forget every cached plan."""
    _cache.clear()
