"""JAX adapter: differentiable varlen block-sparse attention through ``jax.custom_vjp``, in eager mode.

Imported on demand (``import varblock.jax``); ``import varblock`` alone never imports JAX.

The forward and backward call :func:`varblock.attention` / :func:`varblock.attention_backward` on the concrete
device arrays through DLPack, so they run only on concrete ``jax.Array`` values: eagerly, and under ``jax.grad`` /
``jax.vjp`` / ``jax.value_and_grad`` applied eagerly (JAX then calls the custom forward and backward rules on
concrete arrays).

What does not work: ``jax.jit`` (also ``jax.grad`` inside a jitted function), ``jax.vmap``, ``jax.lax.scan`` bodies
and forward-mode ``jax.jvp``: under them the inputs are tracers with no device memory, and calling the kernels would
need an XLA FFI custom-call handler, which varblock does not register. :func:`attention` raises a ``TypeError``
saying so instead of failing inside JAX. Each call waits for its kernels before returning the arrays to JAX.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import jax

import varblock
from varblock.plan import Plan
from varblock.runtime.device import stream_for

__all__ = ["attention"]

_NOT_TRACEABLE = ("varblock.jax.attention runs its CUDA kernels on concrete arrays only (eager mode, and jax.grad / "
                  "jax.vjp applied eagerly); {what} is a JAX tracer ({kind}): jax.jit, vmap, scan and forward-mode "
                  "jvp would need an XLA FFI handler, which varblock does not provide. Call it outside jax.jit.")


def attention(q: Any, k: Any, v: Any, plan: Plan, *, softmax_scale: float | None = None, deterministic: bool = False,
              return_lse: bool = False) -> Any:
    """Varlen block-sparse attention on ``jax.Array`` inputs, differentiable (reverse mode) w.r.t. q, k, v.

    Args:
        q: ``[total_q, Hq, D]``; k, v: ``[total_k, Hkv, D]`` bfloat16/float16 arrays on a GPU (shapes of the plan).
        plan: a host :func:`varblock.plan` (the backward needs its layout).
        softmax_scale: default ``1/sqrt(D)``.
        deterministic: deterministic backward (bit-identical gradients from run to run).
        return_lse: also return the natural-log LSE ``[Hq, total_q]`` float32; gradients do not flow through it
            (its cotangent is ignored).

    Returns:
        ``out`` or ``(out, lse)`` as ``jax.Array``. Raises ``TypeError`` under ``jax.jit``/``vmap`` (see the module
        docstring).
    """
    if not isinstance(plan, Plan):
        raise TypeError(f"plan: expected a varblock Plan, got {type(plan).__name__}")
    if plan.on_device:
        raise ValueError("plan: a device plan has no host layout for the backward; make the plan from host "
                         "cu_seqlens or a layout")
    if softmax_scale is not None and (isinstance(softmax_scale, bool) or not isinstance(softmax_scale, (int, float))):
        raise TypeError(f"softmax_scale: expected a float or None, got {type(softmax_scale).__name__}")
    if softmax_scale is not None and not (math.isfinite(softmax_scale) and softmax_scale > 0):
        raise ValueError(f"softmax_scale: expected a finite positive number (the backward needs one), got "
                         f"{softmax_scale!r}")
    if not isinstance(deterministic, bool):
        raise TypeError(f"deterministic: expected a bool, got {type(deterministic).__name__}")
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, jax.Array):  # tracers are jax.Arrays too: the rules below check for concrete values
            raise TypeError(f"{name}: expected a jax.Array, got {type(x).__name__}")
    scale = None if softmax_scale is None else float(softmax_scale)
    out, lse = _attention(plan.uid, scale, deterministic, q, k, v)
    return (out, lse) if return_lse else out


def _check_concrete(x: Any, name: str) -> None:
    """TypeError unless ``x`` is a concrete jax.Array (a tracer means jit / vmap / scan / jvp: see the module)."""
    if isinstance(x, jax.core.Tracer):
        raise TypeError(_NOT_TRACEABLE.format(what=name, kind=type(x).__name__))
    if not isinstance(x, jax.Array):
        raise TypeError(f"{name}: expected a jax.Array, got {type(x).__name__}")


def _run(fn: Any, names: tuple[str, ...], *arrays: Any, **kw: Any) -> Any:
    """Call a varblock op on concrete arrays and wait for its kernels (JAX then reads the results on its own
    streams)."""
    for name, x in zip(names, arrays):
        _check_concrete(x, name)
    res = fn(*arrays, **kw)
    ordinal = next(iter(arrays[0].devices())).id
    stream_for(None, ordinal, like=arrays[0]).sync()
    return res


@partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _attention(plan_id: int, scale: float | None, deterministic: bool, q: Any, k: Any, v: Any) -> tuple[Any, Any]:
    return _run(varblock.attention, ("q", "k", "v"), q, k, v, plan=Plan.by_uid(plan_id), softmax_scale=scale,
                return_lse=True)


def _attention_fwd(plan_id, scale, deterministic, q, k, v):
    out, lse = _attention(plan_id, scale, deterministic, q, k, v)
    return (out, lse), (q, k, v, out, lse)


def _attention_bwd(plan_id, scale, deterministic, res, cotangents):
    q, k, v, out, lse = res
    dout = cotangents[0]  # the LSE's cotangent is ignored (documented: not differentiable)
    dout = jax.numpy.asarray(dout, dtype=q.dtype)
    return _run(varblock.attention_backward, ("dout", "q", "k", "v", "out", "lse"), dout, q, k, v, out, lse,
                plan=Plan.by_uid(plan_id), softmax_scale=scale, deterministic=deterministic)


_attention.defvjp(_attention_fwd, _attention_bwd)
