"""Kernel parameters: checking static requirements and packing values in the kernel's parameter order.

A manifest entry lists the kernel's parameters (name, kind, size). An op computes one value per name; this module
turns those values into (a) exact parameter bytes (used by the launch-capture check against the DSL's own host
code) and (b) typed arguments for ``cuda.core.launch``. Both follow the same per-kind rules, so what capture
proves about the bytes holds for what is launched.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from varblock.runtime.expr import evaluate

_STRUCT = {"ptr": "<Q", "i32": "<i", "u32": "<I", "i64": "<q", "f32": "<f", "u8": "<B"}
_NUMPY = {"i32": np.int32, "u32": np.uint32, "i64": np.int64, "f32": np.float32, "u8": np.uint8}
_INT_RANGE = {"i32": (-(2**31), 2**31 - 1), "u32": (0, 2**32 - 1), "i64": (-(2**63), 2**63 - 1),
              "u8": (0, 255), "ptr": (0, 2**64 - 1)}


def _checked(kind: str, name: str, value: Any) -> Any:
    if kind == "f32":
        return float(value)
    v = int(value)
    lo, hi = _INT_RANGE[kind]
    if not lo <= v <= hi:
        raise OverflowError(f"kernel parameter {name!r} = {v} does not fit {kind}")
    return v


def pack_bytes(params: Sequence[Mapping[str, Any]], values: Mapping[str, Any]) -> list[bytes]:
    """One ``bytes`` per parameter, exactly as the kernel's ``.param`` expects it."""
    return [struct.pack(_STRUCT[p["kind"]], _checked(p["kind"], p["name"], values[p["name"]])) for p in params]


def launch_args(params: Sequence[Mapping[str, Any]], values: Mapping[str, Any]) -> list[Any]:
    """Typed arguments for ``cuda.core.launch``: pointers as Python ints, scalars as NumPy scalars."""
    out: list[Any] = []
    for p in params:
        kind = p["kind"]
        v = _checked(kind, p["name"], values[p["name"]])
        out.append(v if kind == "ptr" else _NUMPY[kind](v))
    return out


def check_requires(requires: Sequence[Mapping[str, Any]], values: Mapping[str, Any]) -> list[str]:
    """Human-readable violations of a variant's static requirements (empty when all hold)."""
    bad = []
    for r in requires:
        v = evaluate(r["value"], values)
        if "divisible_by" in r and v % int(r["divisible_by"]) != 0:
            bad.append(f"{r['what']} must be a multiple of {r['divisible_by']} (got {v})")
        if "equals" in r and v != int(r["equals"]):
            bad.append(f"{r['what']} must equal {r['equals']} (got {v})")
        if "range" in r and not int(r["range"][0]) <= v <= int(r["range"][1]):
            bad.append(f"{r['what']} must lie in [{r['range'][0]}, {r['range'][1]}] (got {v})")
    return bad


def grid_of(grid: Sequence[Any], values: Mapping[str, Any]) -> tuple[int, int, int]:
    g = tuple(evaluate(e, values) for e in grid)
    if len(g) != 3:
        raise ValueError(f"grid must have 3 dimensions, got {grid!r}")
    return g  # type: ignore[return-value]
