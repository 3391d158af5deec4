"""Kernel parameters: checking static requirements and packing values in the kernel's parameter order.

A manifest entry lists the kernel's parameters (name, kind, size). An op computes one value per name; this module
turns those values into (a) exact parameter bytes (used by the launch-capture check against the DSL's own host
code, and launched as they are for kernels with by-value struct parameters) and (b) typed arguments for
``cuda.core.launch``. Both follow the same per-kind rules, so what capture proves about the bytes holds for what
is launched.

Struct kinds (``tensormap``, ``i32xN``) are not named in the values: the param's ``recipe`` computes them from
other values (see :mod:`varblock.runtime.tensormap`). ``cuda.core.launch`` passes only scalars, pointers and its
own ``TensorMapDescriptor``, so variants with struct params are launched from bytes (runtime/struct_launch.py).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from varblock.runtime import tensormap
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


def is_struct(kind: str) -> bool:
    """Whether a parameter kind is a by-value struct computed from a recipe (``tensormap``, ``i32xN``)."""
    return kind == "tensormap" or kind.startswith("i32x")


def pack_param(p: Mapping[str, Any], values: Mapping[str, Any]) -> bytes:
    """The bytes of one parameter. A ``tensormap`` is taken from ``values[name]`` when present (128 bytes already
    encoded), else encoded through the driver from its recipe."""
    kind, name = p["kind"], p["name"]
    if kind == "tensormap":
        desc = values.get(name)
        if desc is None:
            desc = tensormap.encode(tensormap.tensormap_args(name, p["recipe"], values))
        if len(desc) != tensormap.DESCRIPTOR_BYTES:
            raise ValueError(f"kernel parameter {name!r}: a TMA descriptor has 128 bytes, got {len(desc)}")
        return bytes(desc)
    if kind.startswith("i32x"):
        fields = tensormap.struct_fields(name, kind, p["recipe"], values)
        return struct.pack(f"<{len(fields)}i", *(_checked("i32", name, f) for f in fields))
    return struct.pack(_STRUCT[kind], _checked(kind, name, values[name]))


def pack_bytes(params: Sequence[Mapping[str, Any]], values: Mapping[str, Any]) -> list[bytes]:
    """One ``bytes`` per parameter, exactly as the kernel's ``.param`` expects it."""
    return [pack_param(p, values) for p in params]


def launch_args(params: Sequence[Mapping[str, Any]], values: Mapping[str, Any]) -> list[Any]:
    """Typed arguments for ``cuda.core.launch``: pointers as Python ints, scalars as NumPy scalars."""
    out: list[Any] = []
    for p in params:
        kind = p["kind"]
        if is_struct(kind):
            raise TypeError(f"kernel parameter {p['name']!r} of kind {kind} cannot go through cuda.core.launch "
                            f"(it passes scalars and pointers only); launch from bytes (struct_launch)")
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


def pointer_alignments(requires: Sequence[Mapping[str, Any]], names: Sequence[str]) -> list[int]:
    """Per pointer name, the byte alignment a variant's ``divisible_by`` requirements ask of it (1 when none)."""
    aligns = {r["value"]: int(r["divisible_by"]) for r in requires
              if "divisible_by" in r and isinstance(r["value"], str)}
    return [aligns.get(n, 1) for n in names]
