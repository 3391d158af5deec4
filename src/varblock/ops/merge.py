"""``merge_states``: combine partial attention states (split-KV, context parallelism)."""

from __future__ import annotations

from typing import Any

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

_FLOATS = ("float32", "bfloat16", "float16")
_POINTERS = ("out_parts", "lse_parts", "out", "lse")
_prepared: dict[tuple, PreparedLaunch] = {}
_PAIRS = {("float32", "float32"), ("float32", "bfloat16"), ("float32", "float16"), ("bfloat16", "bfloat16"),
          ("float16", "float16")}


def merge_states(out_parts: Any, lse_parts: Any, *, out_dtype: str | None = None, out: Any = None,
                 lse: Any = None, stream: Any = None) -> tuple[Any, Any]:
    """Merge S partial attention results into one.

    Args:
        out_parts: ``[S, total_q, H, D]`` float32, bfloat16 or float16 (last dim contiguous): partial outputs,
            each normalised by its own softmax sum.
        lse_parts: ``[S, H, total_q]`` float32: natural-log sum-exp of each partial (``-inf``: empty partial).
        out_dtype: output dtype (default: that of ``out``, else of ``out_parts``); float32 partials may produce
            bf16/fp16.
        out, lse: optional preallocated outputs ``[total_q, H, D]`` and ``[H, total_q]`` float32.
        stream: stream to run on (default: the current stream of the inputs' framework).

    Returns:
        ``(out, lse)`` as arrays of the caller's framework. Rows whose partials are all ``-inf`` give 0 and ``-inf``.
    """
    op = as_device_array(out_parts, "out_parts")
    lp = as_device_array(lse_parts, "lse_parts")
    check_dtype(op, _FLOATS)
    check_dtype(lp, ("float32",))
    check_ndim(op, 4, "[num_splits, total_q, num_heads, head_dim]")
    check_ndim(lp, 3, "[num_splits, num_heads, total_q]")
    s, t, h, d = op.shape
    if s < 1:
        raise ValueError("out_parts: need at least one split (num_splits = out_parts.shape[0] >= 1)")
    check_shape(lp, (s, h, t), "= [num_splits, num_heads, total_q] of out_parts")
    check_inner_contiguous(op)
    check_aligned(op, op.itemsize)
    check_aligned(lp, 4)
    ordinal = check_same_device([op, lp])
    o = as_device_array(out, "out") if out is not None else None
    out_dtype = out_dtype or (o.dtype if o is not None else op.dtype)
    if out_dtype not in _FLOATS:
        raise TypeError(f"out_dtype: expected one of {_FLOATS}, got {out_dtype!r}")
    if (op.dtype, out_dtype) not in _PAIRS:
        raise TypeError(f"out_dtype: {op.dtype} partials can be merged into "
                        f"{sorted(o for i, o in _PAIRS if i == op.dtype)}, not {out_dtype}")
    entry = variant_for("merge_states", ordinal, {"in_dtype": op.dtype, "out_dtype": out_dtype})
    st = stream_for(stream, ordinal, like=out_parts)
    if o is None:
        out, o = arrays.empty_array(out_parts, "out", (t, h, d), out_dtype, ordinal, st)
    if lse is None:
        lse, lo = arrays.empty_array(out_parts, "lse", (h, t), "float32", ordinal, st)
    else:
        lo = as_device_array(lse, "lse")
    check_dtype(o, (out_dtype,))
    check_dtype(lo, ("float32",))
    check_shape(o, (t, h, d), "= [total_q, num_heads, head_dim]")
    check_shape(lo, (h, t), "= [num_heads, total_q]")
    check_inner_contiguous(o)
    check_same_device([op, lp, o, lo])
    key = (entry["name"], ordinal, op.shape, op.strides, lp.strides, o.strides, lo.strides)
    prepared = _prepared.get(key)
    if prepared is None:
        prepared = PreparedLaunch(entry, ordinal, _values(op, lp, o, lo), pointers=_POINTERS, what="merge_states")
        if len(_prepared) >= 256:
            _prepared.clear()
        _prepared[key] = prepared
    prepared(st, (op.ptr, lp.ptr, o.ptr, lo.ptr))
    return out, lse


def _values(op, lp, o, lo) -> dict[str, Any]:
    s, t, h, d = op.shape
    return {
        "out_parts": op.ptr, "lse_parts": lp.ptr, "out": o.ptr, "lse": lo.ptr,
        "num_splits": s, "total_q": t, "num_heads": h, "head_dim": d,
        "op_stride_s": op.strides[0], "op_stride_t": op.strides[1], "op_stride_h": op.strides[2],
        "lp_stride_s": lp.strides[0], "lp_stride_h": lp.strides[1], "lp_stride_t": lp.strides[2],
        "o_stride_t": o.strides[0], "o_stride_h": o.strides[1], "l_stride_h": lo.strides[0],
        "l_stride_t": lo.strides[1],
    }
