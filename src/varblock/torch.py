"""PyTorch adapter: differentiable varlen block-sparse attention as ``torch.library`` custom ops.

Imported on demand (``import varblock.torch``); ``import varblock`` alone never imports torch.

* ``varblock::attention_fwd(q, k, v, plan_id, softmax_scale, deterministic) -> (out, lse)`` and
  ``varblock::attention_bwd(dout, q, k, v, out, lse, plan_id, softmax_scale, deterministic) -> (dq, dk, dv)`` are
  registered with :func:`torch.library.custom_op`, with fake (meta) implementations for shapes and
  ``register_autograd`` linking the two, so :func:`attention` traces under ``torch.compile(fullgraph=True)`` without
  graph breaks and replays in CUDA graphs (the kernels run on torch's current stream).
* A :class:`varblock.Plan` is not a tensor and cannot enter a traced graph: the ops take ``plan.uid``, a
  process-unique int the plan holds, and find the plan with :meth:`varblock.Plan.by_uid` (a weak registry: keep the
  plan alive while graphs that use it can run). Under ``torch.compile`` reading ``plan.uid`` installs a guard, so a
  different plan recompiles instead of silently reusing the old one.
* The forward saves q, k, v, out, lse for the backward, which runs :func:`varblock.attention_backward` with the
  same plan (its key-major work list is built on first use and cached with the plan).
"""

# no ``from __future__ import annotations``: torch.library infers the op schemas from real annotation objects
import math
from typing import Optional

import torch

import varblock
from varblock.plan import Plan

__all__ = ["attention", "attention_forward_op", "attention_backward_op"]

_DTYPES = (torch.bfloat16, torch.float16)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: Plan, *, softmax_scale: float | None = None,
              deterministic: bool | None = None, return_lse: bool = False
              ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Varlen block-sparse attention, differentiable with respect to q, k and v.

    Args:
        q: ``[total_q, Hq, D]``; k, v: ``[total_k, Hkv, D]`` CUDA tensors, bfloat16/float16, shapes of the plan.
        plan: a host :func:`varblock.plan` (the backward needs its layout; device plans are refused).
        softmax_scale: default ``1/sqrt(D)``.
        deterministic: run the backward in deterministic mode (bit-identical gradients from run to run); None
            (default): as ``torch.are_deterministic_algorithms_enabled()``.
        return_lse: also return the natural-log LSE ``[Hq, total_q]`` float32. It is not differentiable: gradients
            do not flow back through it (it is marked non-differentiable).

    Returns:
        ``out [total_q, Hq, D]`` (or ``(out, lse)``).
    """
    if not isinstance(plan, Plan):
        raise TypeError(f"plan: expected a varblock Plan, got {type(plan).__name__}")
    if plan.on_device:
        raise ValueError("plan: a device plan has no host layout for the backward; make the plan from host "
                         "cu_seqlens or a layout")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in _DTYPES:
            raise TypeError(f"{name}: expected bfloat16 or float16, got {t.dtype}")
        if t.dim() != 3:
            raise ValueError(f"{name}: expected [total_tokens, num_heads, head_dim], got shape {tuple(t.shape)}")
    if softmax_scale is not None and (isinstance(softmax_scale, bool) or not isinstance(softmax_scale, (int, float))):
        raise TypeError(f"softmax_scale: expected a float or None, got {type(softmax_scale).__name__}")
    if softmax_scale is not None and not (math.isfinite(softmax_scale) and softmax_scale > 0):
        raise ValueError(f"softmax_scale: expected a finite positive number (the backward needs one), got "
                         f"{softmax_scale!r}")
    if deterministic is None:
        deterministic = torch.are_deterministic_algorithms_enabled()
    if not isinstance(deterministic, bool):
        raise TypeError(f"deterministic: expected a bool, got {type(deterministic).__name__}")
    scale = None if softmax_scale is None else float(softmax_scale)
    out, lse = attention_forward_op(q, k, v, plan.uid, scale, deterministic)
    return (out, lse) if return_lse else out


def _kernel_ready(t: torch.Tensor) -> torch.Tensor:
    """``t`` as the kernels accept it: last dim contiguous, other strides multiples of 8 elements, 16-byte aligned
    (a copy only when it is not)."""
    ok = (t.stride(-1) == 1 and all(s % 8 == 0 for s in t.stride()[:-1]) and t.data_ptr() % 16 == 0)
    return t if ok else t.clone(memory_format=torch.contiguous_format)


@torch.library.custom_op("varblock::attention_fwd", mutates_args=())
def attention_forward_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan_id: int,
                         softmax_scale: Optional[float], deterministic: bool  # noqa: UP045 (schema inference)
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out, lse)`` of :func:`varblock.attention` with the plan ``Plan.by_uid(plan_id)``. ``deterministic`` is
    not used by the forward: it is an input so that the backward (which sees only the forward's inputs) gets it."""
    plan = Plan.by_uid(plan_id)
    q, k, v = (_kernel_ready(t) for t in (q, k, v))
    return varblock.attention(q, k, v, plan, softmax_scale=softmax_scale, return_lse=True)


@attention_forward_op.register_fake
def _attention_forward_fake(q, k, v, plan_id, softmax_scale, deterministic):
    total_q, hq, d = q.shape
    return q.new_empty((total_q, hq, d)), q.new_empty((hq, total_q), dtype=torch.float32)


@torch.library.custom_op("varblock::attention_bwd", mutates_args=())
def attention_backward_op(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                          lse: torch.Tensor, plan_id: int, softmax_scale: Optional[float],  # noqa: UP045
                          deterministic: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dq, dk, dv)`` of :func:`varblock.attention_backward` with the plan ``Plan.by_uid(plan_id)``."""
    plan = Plan.by_uid(plan_id)
    dout, q, k, v, out = (_kernel_ready(t) for t in (dout, q, k, v, out))
    if lse.stride(-1) != 1:
        lse = lse.contiguous()
    return varblock.attention_backward(dout, q, k, v, out, lse, plan, softmax_scale=softmax_scale,
                                       deterministic=deterministic)


@attention_backward_op.register_fake
def _attention_backward_fake(dout, q, k, v, out, lse, plan_id, softmax_scale, deterministic):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, plan_id, softmax_scale, deterministic = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.plan_id, ctx.softmax_scale, ctx.deterministic = plan_id, softmax_scale, deterministic
    ctx.mark_non_differentiable(lse)


def _backward(ctx, dout, dlse):
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = attention_backward_op(dout, q, k, v, out, lse, ctx.plan_id, ctx.softmax_scale, ctx.deterministic)
    return dq, dk, dv, None, None, None


attention_forward_op.register_autograd(_backward, setup_context=_setup_context)
