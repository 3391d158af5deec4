"""``attention``: varlen (block-sparse) attention forward."""

from __future__ import annotations

import math
from typing import Any

from varblock.plan import FAMILY, Plan, _is_device_array
from varblock.plan import plan as make_plan
from varblock.runtime import arrays
from varblock.runtime.device import stream_for
from varblock.runtime.launch import PreparedLaunch
from varblock.runtime.select import variant_for
from varblock.runtime.tensors import (
    as_device_array,
    check_aligned,
    check_dtype,
    check_inner_contiguous,
    check_ndim,
    check_same_device,
    check_shape,
)

_DTYPES = ("bfloat16", "float16")
_POINTERS = ("q", "k", "v", "o", "lse", "tile_counter")
_LOG2E = 1.4426950408889634


def attention(q: Any, k: Any, v: Any, plan: Plan | None = None, *, cu_seqlens_q: Any = None,
              cu_seqlens_k: Any = None, layout: Any = None, causal: bool = False,
              window: tuple[int, int] | None = None, softmax_scale: float | None = None, return_lse: bool = False,
              out: Any = None, lse: Any = None, stream: Any = None) -> Any:
    """Varlen attention forward over a block-sparse layout.

    Args:
        q: ``[total_q, Hq, D]`` bfloat16/float16; k, v: ``[total_k, Hkv, D]`` (last dim contiguous, other strides
            multiples of 8 elements, 16-byte aligned).
        plan: a :func:`varblock.plan` for this batch shape. Without one, pass ``cu_seqlens_q``
            (``cu_seqlens_k``), ``layout``/``causal``/``window``: a plan is made and cached.
        softmax_scale: default ``1/sqrt(D)``.
        return_lse: also return the natural-log LSE ``[Hq, total_q]`` float32 (empty rows: -inf).
        out, lse: optional preallocated outputs.
        stream: stream to run on (default: the current stream of the inputs' framework).

    Returns:
        ``out`` (``[total_q, Hq, D]``, dtype of q), or ``(out, lse)`` with ``return_lse``, as the caller's array type.
        Query rows with no kept key give 0 (LSE -inf).
    """
    if plan is not None and stream is None and type(q).__module__ == "torch" and isinstance(plan, Plan):
        fast = _torch_fast_path(q, k, v, plan, softmax_scale, out, lse, return_lse)
        if fast is not None:
            return fast
    out_given, lse_given, scale_given = out, lse, softmax_scale
    qa = as_device_array(q, "q")
    ka = as_device_array(k, "k")
    va = as_device_array(v, "v")
    for a in (qa, ka, va):
        check_dtype(a, _DTYPES)
        check_ndim(a, 3, "[total_tokens, num_heads, head_dim]")
        check_inner_contiguous(a)
        check_aligned(a, 16)
    if not (qa.dtype == ka.dtype == va.dtype):
        raise TypeError(f"q, k, v: dtypes must match, got {qa.dtype}, {ka.dtype}, {va.dtype}")
    ordinal = check_same_device([qa, ka, va])
    total_q, hq, d = qa.shape
    if plan is None:
        if cu_seqlens_q is None:
            raise TypeError("plan: pass a varblock.plan(...) or cu_seqlens_q= (and cu_seqlens_k=, layout=)")
        on_dev = layout is None and _is_device_array(cu_seqlens_q)
        plan = make_plan(cu_seqlens_q, cu_seqlens_k, num_heads_q=hq, num_heads_kv=ka.shape[1], head_dim=d,
                         layout=layout, causal=causal, window=window, device=ordinal,
                         total_q=total_q if on_dev else None, total_k=ka.shape[0] if on_dev else None,
                         cache=not on_dev, stream=stream if on_dev else None)
    elif not isinstance(plan, Plan):
        raise TypeError(f"plan: expected a varblock Plan, got {type(plan).__name__}")
    elif cu_seqlens_q is not None or layout is not None:
        raise TypeError("plan: pass either a plan or cu_seqlens_q/layout, not both")
    if plan.device_id != ordinal:
        raise ValueError(f"plan: made for cuda:{plan.device_id}, but q is on cuda:{ordinal}")
    tq = plan.total_q if plan.total_q is not None else qa.shape[0]  # a device plan may not know its totals
    tk = plan.total_k if plan.total_k is not None else ka.shape[0]
    check_shape(qa, (tq, plan.num_heads_q, plan.head_dim), "= [total_q, num_heads_q, head_dim] of the plan")
    check_shape(ka, (tk, plan.num_heads_kv, plan.head_dim), "= [total_k, num_heads_kv, head_dim] of the plan")
    check_shape(va, (tk, plan.num_heads_kv, plan.head_dim), "= [total_k, num_heads_kv, head_dim] of the plan")
    entry = variant_for(FAMILY, ordinal, {"dtype": qa.dtype, "head_dim": d})
    st = stream_for(stream, ordinal, like=q)
    if out is None:
        out, oa = arrays.empty_array(q, "out", (total_q, hq, d), qa.dtype, ordinal, st)
    else:
        oa = as_device_array(out, "out")
    check_dtype(oa, (qa.dtype,))
    check_shape(oa, (total_q, hq, d), "= [total_q, num_heads_q, head_dim]")
    check_inner_contiguous(oa)
    if lse is None:
        lse, la = arrays.empty_array(q, "lse", (hq, total_q), "float32", ordinal, st)
    else:
        la = as_device_array(lse, "lse")
    check_dtype(la, ("float32",))
    check_shape(la, (hq, total_q), "= [num_heads_q, total_q]")
    if total_q > 1 and la.strides[1] != 1:
        raise ValueError(f"lse: the token dimension must be contiguous, got strides {la.strides}")
    check_same_device([qa, ka, va, oa, la])
    if softmax_scale is None:
        softmax_scale = 1.0 / math.sqrt(d)
    if not (isinstance(softmax_scale, (int, float)) and math.isfinite(softmax_scale)):
        raise ValueError(f"softmax_scale: expected a finite number, got {softmax_scale!r}")
    if plan.num_tiles:
        key = (entry["name"], qa.strides, ka.strides, va.strides, oa.strides, la.strides, float(softmax_scale))
        prepared = plan.launch_cache.get(key)
        if prepared is None:
            prepared = PreparedLaunch(entry, ordinal, _values(plan, qa, ka, va, oa, la, float(softmax_scale)),
                                      pointers=_POINTERS, what="attention")
            plan.launch_cache[key] = prepared
        plan.wait_ready(st)
        counter = plan.counter_ptr(int(st.handle)) if plan.scheduler == "persistent" else 0
        prepared(st, (qa.ptr, ka.ptr, va.ptr, oa.ptr, la.ptr, counter))
        if stream is None and type(q).__module__ == "torch":
            plan.fast_paths[_torch_signature(q, k, v, scale_given, out_given, lse_given)] = (
                prepared, (total_q, hq, d), (hq, total_q))
    return (out, lse) if return_lse else out


def _torch_signature(q, k, v, softmax_scale, out, lse) -> tuple:
    """Everything the checks of ``attention`` depend on, except the data pointers (checked per call)."""
    o = None if out is None else (out.shape, out.stride(), out.dtype, out.get_device(), type(out).__module__)
    m = None if lse is None else (lse.shape, lse.stride(), lse.dtype, lse.get_device(), type(lse).__module__)
    return (q.shape, q.stride(), q.dtype, q.get_device(), k.shape, k.stride(), k.dtype, k.get_device(),
            v.shape, v.stride(), v.dtype, v.get_device(), type(k).__module__, type(v).__module__, softmax_scale, o, m)


def _torch_fast_path(q, k, v, plan: Plan, softmax_scale, out, lse, return_lse):
    """A call whose argument signature this plan has already validated and prepared: only the pointers (alignment
    checked) and the stream change. Returns None on a miss (the full path validates and records the signature)."""
    try:
        hit = plan.fast_paths.get(_torch_signature(q, k, v, softmax_scale, out, lse))
    except (AttributeError, TypeError):  # not tensors after all (e.g. a list for out): take the full path
        return None
    if hit is None:
        return None
    prepared, oshape, lshape = hit
    import torch

    dev = q.get_device()
    if out is None:
        out = torch.empty(oshape, dtype=q.dtype, device=q.device)
    if lse is None:
        lse = torch.empty(lshape, dtype=torch.float32, device=q.device)
    st = stream_for(None, dev, like=q)
    plan.wait_ready(st)
    counter = plan.counter_ptr(int(st.handle)) if plan.scheduler == "persistent" else 0
    prepared(st, (q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), lse.data_ptr(), counter))
    return (out, lse) if return_lse else out


def _values(plan: Plan, qa, ka, va, oa, la, softmax_scale: float) -> dict[str, Any]:
    """Every kernel parameter of the portable forward for this plan and these arrays."""
    total_q, hq, d = qa.shape
    ts = plan.tok_strides
    values = {
        "q": qa.ptr, "k": ka.ptr, "v": va.ptr, "o": oa.ptr, "lse": la.ptr,
        "cu_seqlens_q": plan.ptr("cu_seqlens_q"), "cu_seqlens_k": plan.ptr("cu_seqlens_k"),
        "tiles": plan.ptr("tiles"), "chunks": plan.ptr("chunks"), "doc_q": plan.ptr("doc_q"),
        "doc_k": plan.ptr("doc_k"), "tok_mask": plan.ptr("tok_mask"),
        "q_stride_tok": qa.strides[0], "q_stride_head": qa.strides[1],
        "k_stride_tok": ka.strides[0], "k_stride_head": ka.strides[1],
        "v_stride_tok": va.strides[0], "v_stride_head": va.strides[1],
        "o_stride_tok": oa.strides[0], "o_stride_head": oa.strides[1],
        "lse_stride_head": la.strides[0] if hq > 1 else total_q,
        "tm_stride_head": ts[0], "tm_stride_tok": ts[1], "tm_stride_blk": ts[2],
        "num_tiles": plan.num_tiles, "softmax_scale_log2": softmax_scale * _LOG2E,
        "window_left": plan.window_left, "window_right": plan.window_right,
        "qhead_per_kvhead": plan.num_heads_q // plan.num_heads_kv, "pack_gqa": plan.pack_gqa,
        "tok_block_k": plan.tok_block_k, "tok_head_div": plan.tok_head_div, "mask_flags": plan.mask_flags,
        "num_tiles_ptr": plan.ptr("status") if plan.on_device else 0, "tile_counter": 0,
        "persistent": int(plan.scheduler == "persistent"),
        "num_ctas": plan.num_ctas, "debug_counts": plan.debug_counts.ptr if plan.debug_counts is not None else 0,
    }
    for arr, prefix in ((qa, "q"), (ka, "k"), (va, "v"), (oa, "o")):
        # an extent-1 mode may carry any stride (DLPack canonicalises it): use the compact one
        if arr.shape[0] <= 1:
            values[f"{prefix}_stride_tok"] = arr.shape[1] * arr.shape[2]
        if arr.shape[1] <= 1:
            values[f"{prefix}_stride_head"] = arr.shape[2]
    return values
