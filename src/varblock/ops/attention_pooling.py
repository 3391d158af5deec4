"""``attention_pooling``: SeerAttention's max-pooled attention probabilities, fused (``kernels/attention_pool.py``;
on sm90 the QK^T kernel of ``kernels/attention_pool_sm90.py``, chosen through ``families.FAMILIES["attention_pool"]``):
Q K^T is recomputed per kept chunk of the plan's work list and normalised with the forward's LSE; no t x t matrix
is ever stored. ``varblock.reference.attention_pooling_1d/2d`` define the results."""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from varblock import families
from varblock.families.attention_fwd_mma import BINDING as FWD_MMA
from varblock.families.attention_fwd_sm90 import BINDING as FWD_SM90
from varblock.families.attention_pool import SM90_HALF, PoolingProblem
from varblock.families.base import ATTENTION_DTYPES, FamilyBinding
from varblock.ops.checks import softmax_scale_value
from varblock.ops.state import state_of
from varblock.plan import Plan
from varblock.plan import plan as make_plan
from varblock.plan.host import unmerged_plan
from varblock.runtime import arrays
from varblock.runtime.device import device, stream_for
from varblock.runtime.frameworks import compact_strides, framework_of
from varblock.runtime.launch import PreparedLaunch
from varblock.runtime.select import variant_for
from varblock.runtime.tensors import (
    DeviceArray,
    as_device_array,
    check_aligned,
    check_dtype,
    check_inner_contiguous,
    check_ndim,
    check_same_device,
    check_shape,
)

FAMILY = "attention_pool"  #: the portable family: its reduce kernels serve every qk family
OP = "attention_pool"
#: plans re-made for the tiles of a pooling family: original plan -> {forward family: plan over the same layout}
_replanned: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _pooling_plan(plan: Plan, tile_m: int, tile_n: int, fwd_family: str, fill: bool = False) -> Plan:
    """The plan the pooling kernel walks: ``plan`` itself when its tiles fit the kernel's (``tile_m x tile_n``; with
    ``fill``, also when its chunks are as long as the kernel's), else the same layout planned once for
    ``fwd_family`` (whose tiles are the kernel's; the LSE does not depend on the tiles, so the maps are the same).
    A plan that fits but has shorter chunks (a portable plan under the sm90 kernel) is used as it is when it cannot
    be re-planned on the host. Device plans without a layout whose tiles do not fit must be made with
    ``backend="attention_fwd_mma"``."""
    plan = unmerged_plan(plan)  # tile pairing off: the pooling kernels map a chunk to the blocks of its start
    fits = plan.tile_m <= tile_m and plan.tile_n <= tile_n
    replannable = plan.layout is not None and not plan.on_device
    if fits and (not fill or plan.tile_n >= tile_n or not replannable):
        return plan
    if not replannable:
        raise ValueError(f"plan: its tiles ({plan.tile_m}, {plan.tile_n}) exceed the pooling kernel's ({tile_m}, "
                         f"{tile_n}) and it has no host layout to re-plan from; plan with backend='attention_fwd_mma'")
    made = _replanned.setdefault(plan, {})
    p = made.get(fwd_family)
    if p is None:
        try:
            p = unmerged_plan(make_plan(plan.cu_seqlens_q, plan.cu_seqlens_k, num_heads_q=plan.num_heads_q,
                                        num_heads_kv=plan.num_heads_kv, head_dim=plan.head_dim, layout=plan.layout,
                                        device=plan.device_id, backend=fwd_family, cache=False))
        except ValueError:
            if not fits:
                raise
            p = plan  # e.g. the forward family is not built: the plan's own (shorter) chunks also fit
        made[fwd_family] = p
    return p


def choose_family(problem: PoolingProblem, backend: str = "auto") -> tuple[FamilyBinding, dict[str, str]]:
    """The pooling qk family that runs ``problem`` (``FAMILIES["attention_pool"]``, Hopper first) and the reasons
    of those preferred to it that declined."""
    return families.choose(OP, problem, backend)


def _key_align(plan: Plan) -> int:
    """Chunk starts of the plan's work list are multiples of this: the layout's key block (dense plans: of the
    tile's chunk length)."""
    lay = plan.layout
    if lay is not None:
        return int(lay.block_k)
    geo = _device_geometry(plan)
    return int(geo.block_k if geo is not None else plan.tile_n)


def _num_sms(ordinal: int) -> int:
    return int(device(ordinal).properties.multiprocessor_count)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _blocks(plan: Plan, block_q: int | None, block_k: int | None, granule: int | None = None) -> tuple[int, int]:
    """Pooling block sizes (default: the layout's), ``block_k`` a multiple of ``granule`` (default: the plan's key
    block / chunk alignment, so that no chunk straddles two pooling blocks; the op passes the finest granule a
    pooling family takes and the family choice decides)."""
    lay = plan.layout
    if lay is not None and not lay.is_fixed:
        raise ValueError("plan: attention pooling needs a layout with fixed block sizes (not variable spans)")
    geo = _device_geometry(plan)
    align = _key_align(plan)
    step = align if granule is None else granule
    dq = lay.block_q if lay is not None else (geo.block_q if geo is not None else plan.tile_m)
    bq = dq if block_q is None else block_q
    bk = align if block_k is None else block_k
    for name, v in (("block_q", bq), ("block_k", bk)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name}: expected a positive int, got {v!r}")
    if bk % step and step == align:
        raise ValueError(f"block_k: {bk} must be a multiple of the plan's key block / chunk alignment {align} "
                         "(a pooled block must not split a kept block)")
    if bk % step:
        raise ValueError(f"block_k: {bk} must be a multiple of {step} (the sm90 pooling kernel's granule; the "
                         f"plan's key block / chunk alignment is {align})")
    return int(bq), int(bk)


def _device_geometry(plan: Plan) -> Any:
    if not plan.on_device:
        return None
    from varblock.device_layout import plan as dplan

    try:
        return dplan.geometry(plan)
    except TypeError:  # a dense device plan (varblock.plan with device cu_seqlens)
        return None


def _extents(plan: Plan, bq: int, bk: int, max_seqlen_q: int | None, max_seqlen_k: int | None
             ) -> tuple[int, int, list[tuple[int, int, int]] | None]:
    """(query blocks, key blocks) of the padded 2D map and, with host lengths, (start, length, key blocks) per
    sequence."""
    if plan.cu_seqlens_q is not None:
        cq = plan.cu_seqlens_q.astype(np.int64)
        lq, lk = np.diff(cq), np.diff(plan.cu_seqlens_k.astype(np.int64))
        seqs = [(int(cq[b]), int(lq[b]), _cdiv(int(lk[b]), bk)) for b in range(lq.shape[0])]
        return _cdiv(int(lq.max(initial=0)), bq), _cdiv(int(lk.max(initial=0)), bk), seqs
    geo = _device_geometry(plan)
    mq = max_seqlen_q if max_seqlen_q is not None else (geo.mb * geo.block_q if geo is not None else None)
    mk = max_seqlen_k if max_seqlen_k is not None else (geo.nb * geo.block_k if geo is not None else None)
    if mq is None or mk is None:
        raise ValueError("max_seqlen_q / max_seqlen_k: required for a device plan made without a device layout")
    return _cdiv(int(mq), bq), _cdiv(int(mk), bk), None


def _inputs(q: Any, k: Any, lse: Any, plan: Plan) -> tuple[DeviceArray, DeviceArray, DeviceArray, int]:
    qa, ka, la = as_device_array(q, "q"), as_device_array(k, "k"), as_device_array(lse, "lse")
    for a in (qa, ka):
        check_dtype(a, ATTENTION_DTYPES)
        check_ndim(a, 3, "[total_tokens, num_heads, head_dim]")
        check_inner_contiguous(a)
        check_aligned(a, 16)
    if qa.dtype != ka.dtype:
        raise TypeError(f"q, k: dtypes must match, got {qa.dtype}, {ka.dtype}")
    ordinal = check_same_device([qa, ka, la])
    if plan.device_id != ordinal:
        raise ValueError(f"plan: made for cuda:{plan.device_id}, but q is on cuda:{ordinal}")
    tq = plan.total_q if plan.total_q is not None else qa.shape[0]
    tk = plan.total_k if plan.total_k is not None else ka.shape[0]
    check_shape(qa, (tq, plan.num_heads_q, plan.head_dim), "= [total_q, num_heads_q, head_dim] of the plan")
    check_shape(ka, (tk, plan.num_heads_kv, plan.head_dim), "= [total_k, num_heads_kv, head_dim] of the plan")
    check_dtype(la, ("float32",))
    check_shape(la, (plan.num_heads_q, qa.shape[0]), "= [num_heads_q, total_q] (the forward's LSE)")
    if qa.shape[0] > 1 and la.strides[1] != 1:
        raise ValueError(f"lse: the token dimension must be contiguous, got strides {la.strides}")
    return qa, ka, la, ordinal


def _zero(a: DeviceArray, st: Any) -> None:
    from cuda.bindings import driver

    n = int(np.prod(a.shape))
    if n:
        (err,) = driver.cuMemsetD32Async(a.ptr, 0, n, int(st.handle))
        if int(err) != 0:
            raise RuntimeError(f"cuMemsetD32Async failed: {err}")


#: per-call pointer parameters of the qk and reduce kernels (everything else is fixed per plan and shapes)
_QK_POINTERS = ("q", "k", "lse", "pool", "tile_counter")
_QK_POINTERS_2D = ("q", "k", "lse", "pool", "pool2d", "tile_counter")  #: a qk kernel that also writes the 2D map
_REDUCE_POINTERS = ("pool", "out")


def _row_starts(plan: Plan, ordinal: int, batch: int, rows: int) -> int:
    """Device address of int32 ``[0, rows, 2 rows, ..., batch * rows]``, kept in the plan's ops state: the
    ``cu_seqlens_q`` under which the 2D reduce kernel reads a raw 2D map ``[B, Ho, MB, NB]`` as a 1D map of
    ``Ho * MB`` one-token "query blocks" per sequence (``block_q`` 1, heads ``MB * NB`` apart), so that it only
    normalises each row."""
    if batch * rows >= 2**31:
        raise ValueError(f"block_q: the 2D map has {batch * rows} rows, more than the int32 the kernels index with")
    state = state_of(plan)
    key = ("attention_pooling", "row_starts", batch, rows)
    buf = state.launches.get(key)
    if buf is None:
        from varblock.runtime.memory import DeviceBuffer

        buf = DeviceBuffer.from_host(ordinal, (np.arange(batch + 1, dtype=np.int64) * rows).astype(np.int32))
        state.launches[key] = buf
    return int(buf.ptr)


def _prepare(plan: Plan, entry: dict[str, Any], ordinal: int, values: dict[str, Any],
             pointers: tuple[str, ...]) -> Callable[[Any, tuple[int, ...]], None]:
    """A launch of ``entry`` called as ``(stream, pointer values)``; prepared once (packed parameters, TMA
    descriptors of the sm90 kernel) per plan, variant and non-pointer values, in the plan's ops state."""
    state = state_of(plan)
    key = ("attention_pooling", entry["name"], *sorted((n, v) for n, v in values.items() if n not in pointers))
    prepared = state.launches.get(key)
    if prepared is None:
        prepared = PreparedLaunch(entry, ordinal, values, pointers=pointers, what="attention_pooling")
        state.launches[key] = prepared
    return prepared


@dataclass(frozen=True)
class _Recipe:
    """Everything of a pooling call that depends on the arguments' shapes and options, not on their data: a
    repeated call (kept per plan and argument signature for torch inputs) only allocates, zeroes and launches."""

    ordinal: int
    plan: Plan  #: the plan the qk kernel walks
    qk: Callable[[Any, tuple[int, ...]], None] | None  #: (q, k, lse, pool[, pool2d], tile counter); None: no tiles
    persistent: bool
    reduce_2d: Callable[[Any, tuple[int, ...]], None]  #: (pool or, with raw_2d, the raw 2D map, out)
    reduce_1d: Callable[[Any, tuple[int, ...]], None] | None  #: group pooling (pool, out); None: no groups
    pool_shape: tuple[int, ...]
    out_2d_shape: tuple[int, ...]
    out_1d_shape: tuple[int, ...]
    seqs: list[tuple[int, int, int]] | None  #: per-sequence views of the 1D map (None: packed)
    raw_2d: bool = False  #: the qk kernel writes the raw 2D map (shape out_2d_shape); the 2D reduce normalises it


def _recipe(arrays_: tuple[DeviceArray, DeviceArray, DeviceArray], ordinal: int, plan: Plan, opts: dict[str, Any]
            ) -> _Recipe:
    """Check the options (``attention_pooling``'s keywords) against the plan, choose the pooling family, prepare
    its launches."""
    qa, ka, la = arrays_
    key_align = _key_align(plan)
    bq, bk = _blocks(plan, opts["block_q"], opts["block_k"], granule=math.gcd(key_align, SM90_HALF))
    mb, nb, seqs = _extents(plan, bq, bk, opts["max_seqlen_q"], opts["max_seqlen_k"])
    per_sequence = seqs is not None if opts["per_sequence"] is None else opts["per_sequence"]
    if per_sequence and seqs is None:
        raise ValueError("per_sequence: a device plan has no host lengths; pass per_sequence=False")
    total_q, hq, d = qa.shape
    group = hq // plan.num_heads_kv if opts["pool_gqa"] else 1
    ho = hq // group
    scale = softmax_scale_value(opts["softmax_scale"], d)
    binding, _ = choose_family(PoolingProblem(plan.arch, d, qa.dtype, key_align, bk), opts["backend"])
    entry = variant_for(binding.name, ordinal, {"stage": "qk", "dtype": qa.dtype, "head_dim": d})
    portable = binding.name == FAMILY
    plan = _pooling_plan(plan, int(entry["extra"]["tile_m"]), int(entry["extra"]["tile_n"]),
                         FWD_MMA.name if portable else FWD_SM90.name, fill=not portable)
    raw_2d = bool(binding.writes_2d)
    shape_2d = (plan.batch_size, ho, mb, nb)
    pool = DeviceArray("pool_1d", 0, (hq, total_q, nb), compact_strides((hq, total_q, nb)), "float32", ordinal,
                       None)  # (its address is a per-call pointer)
    pool2d = DeviceArray("pool_2d_raw", 0, shape_2d, compact_strides(shape_2d), "float32", ordinal, None)
    qk, persistent = None, False
    if plan.num_tiles:
        scalars = {"softmax_scale": scale, "block_k": bk, "block_q": bq, "group": group}
        if not portable:
            scalars["num_sms"] = _num_sms(ordinal)
        values = binding.bind(plan, {"q": qa, "k": ka, "lse": la, "pool": pool, "pool2d": pool2d}, scalars)
        persistent = bool(values["persistent"])
        qk = _prepare(plan, entry, ordinal, values, _QK_POINTERS_2D if raw_2d else _QK_POINTERS)
    red = dict(pool=0, out=0, cu_seqlens_q=plan.ptr("cu_seqlens_q"), cu_seqlens_k=plan.ptr("cu_seqlens_k"),
               pool_stride_head=pool.strides[0], pool_stride_tok=pool.strides[1], batch=plan.batch_size,
               num_heads_out=ho, group=group, block_q=bq, block_k=bk)
    red_2d = dict(red, mb=mb, nbo=nb, num_items=plan.batch_size * ho * mb)
    if raw_2d:  # normalise the raw map: its rows as one-token query blocks, one head per output head
        red_2d.update(cu_seqlens_q=_row_starts(plan, ordinal, plan.batch_size, ho * mb), group=1, block_q=1,
                      pool_stride_head=mb * nb, pool_stride_tok=nb)
    reduce_2d = _prepare(plan, variant_for(FAMILY, ordinal, {"stage": "reduce", "mode": 0}), ordinal, red_2d,
                         _REDUCE_POINTERS)
    reduce_1d = None
    if group > 1:
        reduce_1d = _prepare(plan, variant_for(FAMILY, ordinal, {"stage": "reduce", "mode": 1}), ordinal,
                             {**red, "mb": total_q, "nbo": nb, "num_items": ho * total_q}, _REDUCE_POINTERS)
    return _Recipe(ordinal, plan, qk, persistent, reduce_2d, reduce_1d, pool.shape, shape_2d, (ho, total_q, nb),
                   seqs if per_sequence else None, raw_2d)


def _run(r: _Recipe, like: Any, pointers: tuple[int, int, int], st: Any) -> tuple[Any, Any]:
    """Allocate and zero the map(s), launch the qk kernel (``pointers``: q, k, lse) and the reduce kernels."""
    pool, pa = arrays.empty_array(like, "pool_1d", r.pool_shape, "float32", r.ordinal, st)
    _zero(pa, st)
    src_2d = pa.ptr  # what the 2D reduce reads: the 1D map, or the raw 2D map the qk kernel wrote
    maps: tuple[int, ...] = (pa.ptr,)
    raw = None
    if r.raw_2d:
        raw, ra = arrays.empty_array(like, "pool_2d_raw", r.out_2d_shape, "float32", r.ordinal, st)
        _zero(ra, st)
        src_2d, maps = ra.ptr, (pa.ptr, ra.ptr)
    if r.qk is not None:
        p = r.plan
        if p.on_device and p.prepare_event is not None and int(st.handle) != int(p.prepare_stream.handle):
            st.wait(p.prepare_event)
        counter = state_of(p).counter_ptr(p, int(st.handle)) if r.persistent else 0
        r.qk(st, (*pointers, *maps, counter))
    out2, o2 = arrays.empty_array(like, "pool_2d", r.out_2d_shape, "float32", r.ordinal, st)
    r.reduce_2d(st, (src_2d, o2.ptr))
    del raw  # alive until the 2D reduce is queued (a caching allocator may hand its memory out again after that)
    out1 = pool
    if r.reduce_1d is not None:
        out1, o1 = arrays.empty_array(like, "pool_1d", r.out_1d_shape, "float32", r.ordinal, st)
        r.reduce_1d(st, (pa.ptr, o1.ptr))
    if r.seqs is not None:
        out1 = [out1[:, s:s + n, :kb] for s, n, kb in r.seqs]
    return out1, out2


def attention_pooling(q: Any, k: Any, lse: Any, plan: Plan, *, block_q: int | None = None,
                      block_k: int | None = None, pool_gqa: bool = False, softmax_scale: float | None = None,
                      per_sequence: bool | None = None, max_seqlen_q: int | None = None,
                      max_seqlen_k: int | None = None, stream: Any = None, backend: str = "auto") -> tuple[Any, Any]:
    """SeerAttention's pooled attention maps of the attention ``plan`` describes (same masks, GQA, layout).

    Args:
        q, k: ``[total_q, Hq, D]``, ``[total_k, Hkv, D]`` fp16/bf16, as given to :func:`varblock.attention`.
        lse: the forward's LSE ``[Hq, total_q]`` float32 (``varblock.attention(..., return_lse=True)``).
        plan: the forward's plan (``varblock.plan`` or ``varblock.plan_device``). A host plan whose tiles do not
            suit the chosen pooling kernel is re-planned once (same layout) for that kernel's tiles; a device plan
            whose tiles exceed them must be made with ``backend="attention_fwd_mma"``.
        block_q, block_k: pooling block sizes (default the layout's; ``block_k`` a multiple of the layout's key
            block, or of 64 where the sm90 kernel runs, e.g. 64 over the 128-key blocks of a dense sm90 plan).
        pool_gqa: pool over the query heads of each GQA group (max), giving one map per KV head.
        per_sequence: return the 1D map as a list of per-sequence views ``[H, t_b, ceil(lk_b / block_k)]``
            (default when the plan knows the lengths on the host) instead of the packed ``[H, total_q, max_nb]``.
        max_seqlen_q, max_seqlen_k: bounds that size the outputs of a device plan without a device layout.
        backend: "auto" (the Hopper kernel ``attention_pool_sm90`` where it applies, else the portable
            ``attention_pool``) or one of those names.

    Returns:
        ``(pool_1d, pool_2d)`` float32 in q's framework: 1D = per query token and key block the largest attention
        probability (not renormalised); 2D ``[B, H, max M_b, max N_b]`` = per query block x key block the largest
        probability, each block row divided by its sum. ``H`` = Hq, or Hkv with ``pool_gqa``.
    """
    opts = dict(block_q=block_q, block_k=block_k, pool_gqa=pool_gqa, softmax_scale=softmax_scale,
                per_sequence=per_sequence, max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k, backend=backend)
    sig = None
    if stream is None and framework_of(q) == "torch":
        try:
            sig = ("attention_pooling", _torch_signature(q, k, lse), *opts.values())
            hit = state_of(plan).fast_paths.get(sig)
        except (AttributeError, TypeError):  # not tensors after all, or an unhashable option: the full path
            sig = hit = None
        if hit is not None:
            return _run(hit, q, (q.data_ptr(), k.data_ptr(), lse.data_ptr()), stream_for(None, hit.ordinal, like=q))
    qa, ka, la, ordinal = _inputs(q, k, lse, plan)
    r = _recipe((qa, ka, la), ordinal, plan, opts)
    if sig is not None:
        state_of(plan).fast_paths[sig] = r
    return _run(r, q, (qa.ptr, ka.ptr, la.ptr), stream_for(stream, ordinal, like=q))


def _torch_signature(q: Any, k: Any, lse: Any) -> tuple:
    """What the checks of ``attention_pooling`` read from torch tensors, except the data pointers (whose alignment
    the prepared launches check per call)."""
    return tuple((t.shape, t.stride(), t.dtype, t.get_device()) for t in (q, k, lse))
