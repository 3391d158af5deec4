"""``decode``: block-sparse flash-decode over a paged or contiguous KV cache (split-KV, GQA-packed)."""

from __future__ import annotations

from typing import Any

from varblock.abi import LOG2E
from varblock.decode_plan.plan import FAMILY, DecodePlan, plan_decode
from varblock.ops.checks import byte_span, check_no_alias, softmax_scale_value, torch_signature
from varblock.ops.fast_path import fast_call
from varblock.runtime import arrays
from varblock.runtime.device import stream_for
from varblock.runtime.frameworks import framework_of
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

__all__ = ["decode", "plan_decode"]

_DTYPES = ("bfloat16", "float16")
_POINTERS = ("q", "k_cache", "v_cache", "o", "lse")


def decode(q: Any, k_cache: Any, v_cache: Any, plan: DecodePlan, *, softmax_scale: float | None = None,
           out: Any = None, lse: Any = None, return_lse: bool = False, stream: Any = None) -> Any:
    """Attention of the new tokens of each sequence over its kept KV blocks.

    Args:
        q: ``[total_q, Hq, D]`` bfloat16/float16, the new tokens of every sequence packed (``plan``'s
            cu_seqlens_q).
        k_cache, v_cache: paged ``[num_pages, page_size, Hkv, D]`` (the plan has a page table) or contiguous
            ``[total_k, Hkv, D]`` (the plan has cu_seqlens_k); last dim contiguous, other strides multiples of 8.
        plan: a :func:`varblock.plan_decode` plan of this step.
        softmax_scale: default ``1/sqrt(D)``.
        out, lse: optional preallocated outputs ``[total_q, Hq, D]`` (dtype of q) and ``[Hq, total_q]`` float32.
        return_lse: also return the natural-log LSE (rows with no kept key: O = 0, LSE = -inf).
        stream: stream to run on (default: the current stream of q's framework).

    Returns:
        ``out``, or ``(out, lse)`` with ``return_lse``, as the caller's array type.
    """
    if not isinstance(plan, DecodePlan):
        raise TypeError(f"plan: expected a varblock.plan_decode(...) plan, got {type(plan).__name__}")
    torch_call = stream is None and framework_of(q) == "torch"
    if torch_call:
        fast = _torch_fast_path(q, k_cache, v_cache, plan, softmax_scale, out, lse, return_lse)
        if fast is not None:
            return fast
    out_given, lse_given, scale_given = out, lse, softmax_scale
    qa = as_device_array(q, "q")
    ka = as_device_array(k_cache, "k_cache")
    va = as_device_array(v_cache, "v_cache")
    check_dtype(qa, _DTYPES)
    check_ndim(qa, 3, "[total_q, num_heads_q, head_dim]")
    hq, hkv, d = plan.num_heads_q, plan.num_heads_kv, plan.head_dim
    check_shape(qa, (plan.total_q, hq, d), "= [total_q, num_heads_q, head_dim] of the plan")
    for a in (ka, va):
        check_dtype(a, (qa.dtype,))
        if plan.paged:
            check_ndim(a, 4, "[num_pages, page_size, num_heads_kv, head_dim] (the plan is paged)")
            if tuple(a.shape[1:]) != (plan.page_size, hkv, d):
                raise ValueError(f"{a.name}: expected [num_pages, {plan.page_size}, {hkv}, {d}] (page size, KV heads "
                                 f"and head dim of the plan), got {a.shape}")
        else:
            check_ndim(a, 3, "[total_k, num_heads_kv, head_dim] (the plan is contiguous)")
            total_k = int(plan.kv_lens.sum()) if plan.kv_lens is not None else 0
            if a.shape[1:] != (hkv, d) or a.shape[0] < total_k:
                raise ValueError(f"{a.name}: expected [>= {total_k}, {hkv}, {d}], got {a.shape}")
    if ka.shape[0] != va.shape[0]:
        raise ValueError(f"v_cache: {va.shape[0]} pages/rows, k_cache has {ka.shape[0]}")
    if plan.paged and plan.pt_max_page is not None and plan.pt_max_page >= ka.shape[0]:
        raise ValueError(f"page_table: page index {plan.pt_max_page} out of range for a cache of {ka.shape[0]} pages")
    for a in (qa, ka, va):
        check_inner_contiguous(a)
        check_aligned(a, 16)
    ordinal = check_same_device([qa, ka, va])
    if ordinal != plan.device_id:
        raise ValueError(f"plan: made for cuda:{plan.device_id}, but q is on cuda:{ordinal}")
    entry = variant_for(FAMILY, ordinal, {"dtype": qa.dtype, "head_dim": d, "tile_m": plan.tile_m})
    if int(entry["extra"]["tile_n"]) != plan.tile_n:
        raise ValueError(f"plan: made for tile_n {plan.tile_n}, the {qa.dtype} kernel has {entry['extra']['tile_n']}")
    st = stream_for(stream, ordinal, like=q)
    total_q = plan.total_q
    if out is None:
        out, oa = arrays.empty_array(q, "out", (total_q, hq, d), qa.dtype, ordinal, st)
    else:
        oa = as_device_array(out, "out")
    check_dtype(oa, (qa.dtype,))
    check_shape(oa, (total_q, hq, d), "= [total_q, num_heads_q, head_dim]")
    check_inner_contiguous(oa)
    check_aligned(oa, 16)
    if lse is None:
        lse, la = arrays.empty_array(q, "lse", (hq, total_q), "float32", ordinal, st)
    else:
        la = as_device_array(lse, "lse")
    check_dtype(la, ("float32",))
    check_shape(la, (hq, total_q), "= [num_heads_q, total_q]")
    if total_q > 1 and la.strides[1] != 1:
        raise ValueError(f"lse: the token dimension must be contiguous, got strides {la.strides}")
    check_same_device([qa, ka, va, oa, la])
    spans = tuple(byte_span(a.shape, a.strides, a.itemsize) for a in (qa, ka, va, oa, la))
    check_no_alias([("out", (oa.ptr, oa.ptr + spans[3])), ("lse", (la.ptr, la.ptr + spans[4]))],
                   [(a.name, (a.ptr, a.ptr + n)) for a, n in zip((qa, ka, va), spans)])
    softmax_scale = softmax_scale_value(softmax_scale, d)
    if plan.num_items == 0:
        return (out, lse) if return_lse else out
    key = (entry["name"], qa.strides, ka.strides, va.strides, oa.strides, la.strides, float(softmax_scale))
    prepared = plan.launch_cache.get(key)
    if prepared is None:
        prepared = PreparedLaunch(entry, ordinal, launch_values(plan, qa, ka, va, oa, la, float(softmax_scale)),
                                  pointers=_POINTERS, what="decode")
        plan.launch_cache[key] = prepared
    prepared(st, (qa.ptr, ka.ptr, va.ptr, oa.ptr, la.ptr))
    if torch_call:
        plan.launch_cache[("torch", torch_signature(q, k_cache, v_cache, scale_given, out_given, lse_given))] = (
            prepared, (total_q, hq, d), (hq, total_q), spans)
    return (out, lse) if return_lse else out


def _torch_fast_path(q, k_cache, v_cache, plan: DecodePlan, softmax_scale, out, lse, return_lse):
    """A call whose torch argument signature this plan has already validated and prepared (:func:`fast_call`).
    None on a miss (the full path validates and records the signature)."""
    try:
        hit = plan.launch_cache.get(("torch", torch_signature(q, k_cache, v_cache, softmax_scale, out, lse)))
    except (AttributeError, TypeError):  # not tensors after all: take the full path
        return None
    if hit is None:
        return None
    return fast_call(hit, (q, k_cache, v_cache), ("q", "k_cache", "v_cache"), out, lse, return_lse,
                     lambda ptrs: hit[0](stream_for(None, q.get_device(), like=q), ptrs))


def _tok_head_strides(a: DeviceArray, tok_dim: int) -> tuple[int, int]:
    """(token, head) element strides; extent-1 modes get the compact stride (DLPack may report anything)."""
    st_tok = a.strides[tok_dim] if a.shape[tok_dim] > 1 else a.shape[tok_dim + 1] * a.shape[tok_dim + 2]
    st_head = a.strides[tok_dim + 1] if a.shape[tok_dim + 1] > 1 else a.shape[tok_dim + 2]
    return st_tok, st_head


def launch_values(plan: DecodePlan, qa: DeviceArray, ka: DeviceArray, va: DeviceArray, oa: DeviceArray,
                  la: DeviceArray, softmax_scale: float) -> dict[str, Any]:
    """Every kernel parameter of ``decode_fwd`` for this plan and these arrays."""
    total_q, hq, _ = qa.shape
    qs, qh = _tok_head_strides(qa, 0)
    os_, oh = _tok_head_strides(oa, 0)
    tok_dim = 1 if plan.paged else 0
    ks, kh = _tok_head_strides(ka, tok_dim)
    vs, vh = _tok_head_strides(va, tok_dim)
    kp = ka.strides[0] if plan.paged and ka.shape[0] > 1 else ks * plan.page_size
    vp = va.strides[0] if plan.paged and va.shape[0] > 1 else vs * plan.page_size
    return {
        "q": qa.ptr, "k_cache": ka.ptr, "v_cache": va.ptr, "o": oa.ptr, "lse": la.ptr,
        "cu_seqlens_q": plan.ptr("cu_seqlens_q"), "cu_seqlens_k": plan.ptr("cu_seqlens_k"),
        "page_table": plan.page_table_ptr, "items": plan.ptr("items"), "chunks": plan.ptr("chunks"),
        "part_o": plan.ptr("part_o"), "part_lse": plan.ptr("part_lse"), "counters": plan.ptr("counters"),
        "num_items_ptr": 0,
        "q_stride_tok": qs, "q_stride_head": qh, "k_stride_page": kp if plan.paged else 0, "k_stride_tok": ks,
        "k_stride_head": kh, "v_stride_page": vp if plan.paged else 0, "v_stride_tok": vs, "v_stride_head": vh,
        "o_stride_tok": os_, "o_stride_head": oh, "lse_stride_head": la.strides[0] if hq > 1 else total_q,
        "pt_stride": plan.pt_stride, "num_items": plan.num_items, "softmax_scale_log2": softmax_scale * LOG2E,
        "group_size": hq // plan.num_heads_kv, "page_size": plan.page_size, "paged": int(plan.paged),
        "causal": int(plan.causal), "num_ctas": plan.num_ctas,
    }
