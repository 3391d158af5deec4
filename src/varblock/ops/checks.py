"""Argument checks shared by the ops' full and fast paths (cheap: no device work)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

from varblock.runtime.tensors import ITEMSIZE, DeviceArray


def byte_span(shape: Sequence[int], strides: Sequence[int], itemsize: int) -> int:
    """Bytes from an array's first element to one past its last (0 for an empty array; strides >= 0)."""
    if any(s == 0 for s in shape):
        return 0
    return (sum((n - 1) * st for n, st in zip(shape, strides)) + 1) * itemsize


def extent(a: DeviceArray) -> tuple[int, int]:
    """``[start, end)`` byte range an array's elements lie in."""
    return a.ptr, a.ptr + byte_span(a.shape, a.strides, ITEMSIZE[a.dtype])


def overlapping(x: tuple[int, int], y: tuple[int, int]) -> bool:
    """True when two non-empty byte ranges share a byte."""
    return x[0] < x[1] and y[0] < y[1] and x[0] < y[1] and y[0] < x[1]


def check_no_alias(outputs: Sequence[tuple[str, tuple[int, int]]], inputs: Sequence[tuple[str, tuple[int, int]]]
                   ) -> None:
    """Refuse an output whose memory overlaps an input's or another output's (the kernels read inputs while they
    write outputs, so aliasing gives garbage). Each item is ``(name, (start, end))``."""
    for i, (oname, orange) in enumerate(outputs):
        for iname, irange in list(inputs) + list(outputs[:i]):
            if overlapping(orange, irange):
                raise ValueError(f"{oname}: its memory overlaps {iname}'s; pass an output that does not alias the "
                                 "inputs or the other outputs")


def check_plan_call(plan: Any, plan_type: type, *, cu_seqlens_q: Any, cu_seqlens_k: Any, layout: Any,
                    causal: bool, window: Any, backend: str) -> None:
    """The argument combinations of an op that takes either a plan or what to make one from (runs on every call,
    so the common case costs a few comparisons)."""
    if backend != "auto" and not isinstance(backend, str):
        raise TypeError(f"backend: expected 'auto' or a kernel family name, got {type(backend).__name__}")
    if plan is None:
        if cu_seqlens_q is None:
            raise TypeError("plan: pass a varblock.plan(...) or cu_seqlens_q= (and cu_seqlens_k=, layout=)")
        return
    if not isinstance(plan, plan_type):
        raise TypeError(f"plan: expected a varblock Plan, got {type(plan).__name__}")
    if cu_seqlens_q is not None or cu_seqlens_k is not None or layout is not None or window is not None or causal:
        given = [n for n, v in (("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k), ("layout", layout),
                                ("window", window)) if v is not None] + (["causal"] if causal else [])
        raise TypeError(f"plan: pass either a plan or {'/'.join(given)} (to make one), not both; the plan already "
                        "fixes the batch and the mask")
    if backend != "auto" and backend != plan.family:
        raise ValueError(f"backend: the plan runs kernel family {plan.family}, not {backend}; make the plan with "
                         f"varblock.plan(..., backend={backend!r})")


def softmax_scale_value(softmax_scale: Any, head_dim: int, *, positive: bool = False) -> float:
    """The softmax scale as a float: ``1/sqrt(head_dim)`` for None; ValueError unless a finite real number (and
    ``> 0`` with ``positive``)."""
    if softmax_scale is None:
        return 1.0 / math.sqrt(head_dim)
    ok = isinstance(softmax_scale, numbers.Real) and not isinstance(softmax_scale, bool) and math.isfinite(
        softmax_scale) and (softmax_scale > 0 or not positive)
    if not ok:
        what = "a finite positive number" if positive else "a finite number"
        raise ValueError(f"softmax_scale: expected {what}, got {softmax_scale!r}")
    return float(softmax_scale)


def torch_signature(q: Any, k: Any, v: Any, softmax_scale: Any, out: Any, lse: Any) -> tuple:
    """Everything an op's argument checks depend on for torch tensors ``q, k, v`` (and the optional outputs),
    except the data pointers (checked per call): the key of the ops' torch fast paths."""
    o = None if out is None else (out.shape, out.stride(), out.dtype, out.get_device(), type(out).__module__)
    m = None if lse is None else (lse.shape, lse.stride(), lse.dtype, lse.get_device(), type(lse).__module__)
    return (q.shape, q.stride(), q.dtype, q.get_device(), k.shape, k.stride(), k.dtype, k.get_device(),
            v.shape, v.stride(), v.dtype, v.get_device(), type(k).__module__, type(v).__module__, softmax_scale, o, m)
