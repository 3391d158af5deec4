"""Kernel-family dispatch: per op, an ordered list of family bindings, fastest first.

``choose(op, problem, backend)`` returns the first binding whose ``supports(problem)`` is None (``backend="auto"``)
or the named one (``backend="<family>"``, a ValueError naming the family and its reason when it cannot run the
problem), together with the reasons of the families that declined. Adding a family = one binding module (see
``attention_fwd_mma.py`` and docs/families.md) + one line in ``FAMILIES``.
"""

from __future__ import annotations

from typing import Any

from varblock.families import attention_bwd_mma, attention_fwd_mma, attention_fwd_sm90, attention_pool
from varblock.families.base import FEATURES, MASK_KINDS, AttentionFamily, AttentionProblem, FamilyBinding

#: op -> family bindings, in order of preference (the first that supports a problem runs it)
FAMILIES: dict[str, tuple[FamilyBinding, ...]] = {
    # the Hopper family first where it supports the problem (sm_90a, d64/96/128), the portable one as the fallback
    "attention_fwd": (attention_fwd_sm90.BINDING, attention_fwd_mma.BINDING),
    "attention_bwd": (attention_bwd_mma.BINDING,),
    # attention pooling's QK^T kernel: the Hopper one first (sm_90a, chunks aligned to 64 keys), the portable one
    "attention_pool": (attention_pool.BINDING_SM90, attention_pool.BINDING_MMA),
}

__all__ = ["FAMILIES", "FEATURES", "MASK_KINDS", "AttentionFamily", "AttentionProblem", "FamilyBinding", "binding",
           "choose", "family_names"]


def family_names(op: str) -> tuple[str, ...]:
    """The families of ``op``, in order of preference."""
    return tuple(b.name for b in _bindings(op))


def binding(op: str, name: str) -> FamilyBinding:
    """The binding of family ``name`` for ``op`` (a ValueError listing the families when unknown)."""
    for b in _bindings(op):
        if b.name == name:
            return b
    raise ValueError(f"backend: unknown {op} kernel family {name!r}; known: {', '.join(family_names(op))}")


def choose(op: str, problem: Any, backend: str = "auto") -> tuple[FamilyBinding, dict[str, str]]:
    """The binding that runs ``problem`` and ``{family: reason}`` for those preferred to it that declined."""
    if not isinstance(backend, str):
        raise TypeError(f"backend: expected 'auto' or a family name, got {type(backend).__name__}")
    if backend != "auto":
        b = binding(op, backend)
        reason = b.supports(problem)
        if reason is not None:
            raise ValueError(f"backend: kernel family {b.name} cannot run this problem: {reason}")
        return b, {}
    declined: dict[str, str] = {}
    for b in _bindings(op):
        reason = b.supports(problem)
        if reason is None:
            return b, declined
        declined[b.name] = reason
    raise ValueError(f"no {op} kernel family can run this problem: "
                     + "; ".join(f"{n}: {r}" for n, r in declined.items()))


def _bindings(op: str) -> tuple[FamilyBinding, ...]:
    try:
        return FAMILIES[op]
    except KeyError:
        raise ValueError(f"unknown op {op!r}; ops with kernel families: {', '.join(FAMILIES)}") from None
