"""``attention``: varlen (block-sparse) attention forward, launched through the kernel family its plan chose."""

from __future__ import annotations

from typing import Any

from varblock import families
from varblock.families.base import ATTENTION_DTYPES
from varblock.ops.checks import byte_span, check_no_alias, check_plan_call, extent, softmax_scale_value
from varblock.ops.checks import torch_signature as _torch_signature
from varblock.ops.fast_path import fast_call
from varblock.ops.state import PlanState, state_of
from varblock.plan import Plan
from varblock.plan import plan as make_plan
from varblock.runtime import arrays
from varblock.runtime.device import stream_for
from varblock.runtime.frameworks import framework_of, is_device_array
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

OP = "attention_fwd"


def attention(q: Any, k: Any, v: Any, plan: Plan | None = None, *, cu_seqlens_q: Any = None,
              cu_seqlens_k: Any = None, layout: Any = None, causal: bool = False,
              window: tuple[int, int] | None = None, softmax_scale: float | None = None, return_lse: bool = False,
              out: Any = None, lse: Any = None, stream: Any = None, backend: str = "auto") -> Any:
    """Varlen attention forward over a block-sparse layout.

    Args:
        q: ``[total_q, Hq, D]`` bfloat16/float16; k, v: ``[total_k, Hkv, D]`` (last dim contiguous, other strides
            multiples of 8 elements, 16-byte aligned).
        plan: a :func:`varblock.plan` for this batch shape. Without one, pass ``cu_seqlens_q``
            (``cu_seqlens_k``), ``layout``/``causal``/``window``: a plan is made and cached.
        softmax_scale: default ``1/sqrt(D)``.
        return_lse: also return the natural-log LSE ``[Hq, total_q]`` float32 (empty rows: -inf).
        out, lse: optional preallocated outputs (must not overlap q, k, v or each other).
        stream: stream to run on (default: the current stream of the inputs' framework).
        backend: "auto" or a kernel family name (see :func:`varblock.plan`); with a plan, it must be the plan's.

    Returns:
        ``out`` (``[total_q, Hq, D]``, dtype of q), or ``(out, lse)`` with ``return_lse``, as the caller's array type.
        Query rows with no kept key give 0 (LSE -inf).
    """
    check_plan_call(plan, Plan, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, layout=layout,
                    causal=causal, window=window, backend=backend)
    if plan is not None and stream is None and framework_of(q) == "torch":
        fast = _torch_fast_path(q, k, v, plan, softmax_scale, out, lse, return_lse)
        if fast is not None:
            return fast
    out_given, lse_given, scale_given = out, lse, softmax_scale
    qa, ka, va = _inputs(q, k, v)
    ordinal = check_same_device([qa, ka, va])
    total_q, hq, d = qa.shape
    if plan is None:
        on_dev = layout is None and is_device_array(cu_seqlens_q)
        plan = make_plan(cu_seqlens_q, cu_seqlens_k, num_heads_q=hq, num_heads_kv=ka.shape[1], head_dim=d,
                         layout=layout, causal=causal, window=window, device=ordinal, dtype=qa.dtype, backend=backend,
                         total_q=total_q if on_dev else None, total_k=ka.shape[0] if on_dev else None,
                         cache=not on_dev, stream=stream if on_dev else None)
    _check_against_plan(plan, qa, ka, va, ordinal)
    binding = families.binding(OP, plan.family)
    entry = variant_for(binding.name, ordinal, {"dtype": qa.dtype, "head_dim": d})
    softmax_scale = softmax_scale_value(softmax_scale, d)
    st = stream_for(stream, ordinal, like=q)
    out, oa, lse, la = _outputs(q, (qa, ka, va), out, lse, ordinal, st)
    if plan.num_tiles:
        state = state_of(plan)
        # with q's and k's shapes: TMA descriptors (attention_fwd_sm90) hold their extents; device plans may see
        # other totals
        key = (entry["name"], qa.shape, qa.strides, ka.shape, ka.strides, va.strides, oa.strides, la.strides,
               softmax_scale)
        prepared = state.launches.get(key)
        if prepared is None:
            values = binding.bind(plan, {"q": qa, "k": ka, "v": va, "o": oa, "lse": la},
                                  {"softmax_scale": softmax_scale})
            prepared = PreparedLaunch(entry, ordinal, values, pointers=binding.pointers, what="attention")
            state.launches[key] = prepared
        _launch(plan, state, prepared, st, (qa.ptr, ka.ptr, va.ptr, oa.ptr, la.ptr))
        if stream is None and framework_of(q) == "torch":
            spans = tuple(byte_span(a.shape, a.strides, a.itemsize) for a in (qa, ka, va, oa, la))
            state.fast_paths[_torch_signature(q, k, v, scale_given, out_given, lse_given)] = (
                prepared, (total_q, hq, d), (hq, total_q), spans)
    return (out, lse) if return_lse else out


def _inputs(q: Any, k: Any, v: Any) -> tuple[DeviceArray, DeviceArray, DeviceArray]:
    qa, ka, va = as_device_array(q, "q"), as_device_array(k, "k"), as_device_array(v, "v")
    for a in (qa, ka, va):
        check_dtype(a, ATTENTION_DTYPES)
        check_ndim(a, 3, "[total_tokens, num_heads, head_dim]")
        check_inner_contiguous(a)
        check_aligned(a, 16)
    if not (qa.dtype == ka.dtype == va.dtype):
        raise TypeError(f"q, k, v: dtypes must match, got {qa.dtype}, {ka.dtype}, {va.dtype}")
    return qa, ka, va


def _check_against_plan(plan: Plan, qa: DeviceArray, ka: DeviceArray, va: DeviceArray, ordinal: int) -> None:
    if plan.device_id != ordinal:
        raise ValueError(f"plan: made for cuda:{plan.device_id}, but q is on cuda:{ordinal}")
    tq = plan.total_q if plan.total_q is not None else qa.shape[0]  # a device plan may not know its totals
    tk = plan.total_k if plan.total_k is not None else ka.shape[0]
    check_shape(qa, (tq, plan.num_heads_q, plan.head_dim), "= [total_q, num_heads_q, head_dim] of the plan")
    check_shape(ka, (tk, plan.num_heads_kv, plan.head_dim), "= [total_k, num_heads_kv, head_dim] of the plan")
    check_shape(va, (tk, plan.num_heads_kv, plan.head_dim), "= [total_k, num_heads_kv, head_dim] of the plan")


def _outputs(q: Any, ins: tuple[DeviceArray, DeviceArray, DeviceArray], out: Any, lse: Any, ordinal: int, st: Any
             ) -> tuple[Any, DeviceArray, Any, DeviceArray]:
    """The output and LSE arrays (allocated in q's framework unless given), checked; given ones must not alias."""
    qa = ins[0]
    total_q, hq, d = qa.shape
    out_given, lse_given = out is not None, lse is not None
    if out_given:
        oa = as_device_array(out, "out")
    else:
        out, oa = arrays.empty_array(q, "out", (total_q, hq, d), qa.dtype, ordinal, st)
    check_dtype(oa, (qa.dtype,))
    check_shape(oa, (total_q, hq, d), "= [total_q, num_heads_q, head_dim]")
    check_inner_contiguous(oa)
    if lse_given:
        la = as_device_array(lse, "lse")
    else:
        lse, la = arrays.empty_array(q, "lse", (hq, total_q), "float32", ordinal, st)
    check_dtype(la, ("float32",))
    check_shape(la, (hq, total_q), "= [num_heads_q, total_q]")
    if total_q > 1 and la.strides[1] != 1:
        raise ValueError(f"lse: the token dimension must be contiguous, got strides {la.strides}")
    check_same_device([qa, oa, la])
    if out_given or lse_given:
        given = [(a.name, extent(a)) for a, g in ((oa, out_given), (la, lse_given)) if g]
        check_no_alias(given, [(a.name, extent(a)) for a in ins])
    return out, oa, lse, la


def _launch(plan: Plan, state: PlanState, prepared: PreparedLaunch, st: Any, pointers: tuple[int, ...]) -> None:
    """Order ``st`` after a device plan's prepare kernel, pick the stream's tile counter, launch."""
    state.wait_ready(plan, st)
    counter = state.counter_ptr(plan, int(st.handle)) if plan.scheduler == "persistent" else 0
    prepared(st, (*pointers, counter))


def _torch_fast_path(q, k, v, plan: Plan, softmax_scale, out, lse, return_lse):
    """A call whose argument signature this plan has already validated and prepared (:func:`fast_call`: only the
    pointers, outputs and stream change). Returns None on a miss (the full path validates
    and records the signature). The plan-versus-arguments combination was checked by the caller."""
    state = state_of(plan)
    try:
        hit = state.fast_paths.get(_torch_signature(q, k, v, softmax_scale, out, lse))
    except (AttributeError, TypeError):  # not tensors after all (e.g. a list for out): take the full path
        return None
    if hit is None:
        return None
    return fast_call(hit, (q, k, v), ("q", "k", "v"), out, lse, return_lse,
                     lambda ptrs: _launch(plan, state, hit[0], stream_for(None, q.get_device(), like=q), ptrs))
