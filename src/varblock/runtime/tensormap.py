"""TMA descriptors (``tensormap`` kernel parameters): recipe -> ``cuTensorMapEncodeTiled`` arguments -> 128 bytes.

A manifest parameter of kind ``tensormap`` carries a recipe (written by the kernel family, checked against the
DSL's own descriptor by launch capture)::

    {"pointer": "src", "dtype": "bfloat16",
     "dims": [expr, ...],            # global extents, TMA order (dim 0 = the contiguous one)
     "strides": [expr, ...],         # byte strides of dims 1..rank-1
     "box": [int, ...], "element_strides": [int, ...],
     "interleave": "none", "swizzle": "128B", "l2_promotion": "128B", "oob_fill": "none"}

Expressions are those of :mod:`varblock.runtime.expr`, over the launch values (pointers, sizes, strides).
:func:`tensormap_args` evaluates and checks a recipe (plain Python, no GPU); :func:`encode` calls the driver, and
caches the 128 bytes per argument tuple, so a cached launch re-encodes only when a pointer or a shape changes.
cuda.core 1.2's own ``TensorMapDescriptor`` is built only from a ``StridedMemoryView`` and cannot be read back
as bytes, so the driver call is used directly.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from varblock.runtime.expr import evaluate

DESCRIPTOR_BYTES = 128
#: CUtensorMapDataType values (cuda.h) and element sizes
DTYPES: dict[str, tuple[int, int]] = {
    "uint8": (0, 1), "uint16": (1, 2), "uint32": (2, 4), "int32": (3, 4), "uint64": (4, 8), "int64": (5, 8),
    "float16": (6, 2), "float32": (7, 4), "float64": (8, 8), "bfloat16": (9, 2),
}
INTERLEAVE = {"none": 0, "16B": 1, "32B": 2}
SWIZZLE = {"none": 0, "32B": 1, "64B": 2, "128B": 3}
L2_PROMOTION = {"none": 0, "64B": 1, "128B": 2, "256B": 3}
OOB_FILL = {"none": 0, "nan": 1}
_SWIZZLE_SPAN = {0: None, 1: 32, 2: 64, 3: 128}
_RECIPE_KEYS = {"pointer", "dtype", "dims", "strides", "box", "element_strides", "interleave", "swizzle",
                "l2_promotion", "oob_fill"}


@dataclass(frozen=True)
class TensorMapArgs:
    """The arguments of ``cuTensorMapEncodeTiled`` as plain ints (TMA dimension order: innermost first)."""

    dtype: int
    address: int
    dims: tuple[int, ...]
    strides: tuple[int, ...]  # bytes, dims 1..rank-1
    box: tuple[int, ...]
    element_strides: tuple[int, ...]
    interleave: int
    swizzle: int
    l2_promotion: int
    oob_fill: int

    @property
    def rank(self) -> int:
        return len(self.dims)


def check_recipe(name: str, recipe: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` when a manifest recipe is malformed (missing keys, unknown enum names, ranks)."""
    if not isinstance(recipe, Mapping) or set(recipe) != _RECIPE_KEYS:
        raise ValueError(f"tensormap param {name!r}: recipe must have exactly the keys {sorted(_RECIPE_KEYS)}")
    for key, table in (("dtype", DTYPES), ("interleave", INTERLEAVE), ("swizzle", SWIZZLE),
                       ("l2_promotion", L2_PROMOTION), ("oob_fill", OOB_FILL)):
        if recipe[key] not in table:
            raise ValueError(f"tensormap param {name!r}: {key} {recipe[key]!r} is not one of {sorted(table)}")
    rank = len(recipe["dims"])
    if not 1 <= rank <= 5:
        raise ValueError(f"tensormap param {name!r}: rank {rank} outside [1, 5]")
    for key, n in (("strides", rank - 1), ("box", rank), ("element_strides", rank)):
        if len(recipe[key]) != n:
            raise ValueError(f"tensormap param {name!r}: {key} needs {n} entries, has {len(recipe[key])}")


def tensormap_args(name: str, recipe: Mapping[str, Any], values: Mapping[str, Any]) -> TensorMapArgs:
    """Evaluate ``recipe`` against ``values`` and check what the TMA unit requires (``ValueError`` naming the
    parameter and its pointer when the inputs break a rule: 16-byte aligned address and strides, extents in
    [1, 2^32], box in [1, 256] and within the swizzle span)."""
    check_recipe(name, recipe)
    what = f"{name} (TMA descriptor of {recipe['pointer']!r})"
    code, elem = DTYPES[recipe["dtype"]]
    address = evaluate(recipe["pointer"], values)
    dims = tuple(evaluate(e, values) for e in recipe["dims"])
    strides = tuple(evaluate(e, values) for e in recipe["strides"])
    box = tuple(int(b) for b in recipe["box"])
    estr = tuple(int(s) for s in recipe["element_strides"])
    swizzle = SWIZZLE[recipe["swizzle"]]
    if address % 16:
        raise ValueError(f"{what}: address must be a multiple of 16 bytes (got 0x{address:x})")
    for i, d in enumerate(dims):
        if not 1 <= d <= 2**32:
            raise ValueError(f"{what}: extent {i} must lie in [1, 2^32] (got {d})")
    for i, s in enumerate(strides, start=1):
        if s % 16 or not 0 < s < 2**40:
            raise ValueError(f"{what}: byte stride of dim {i} must be a positive multiple of 16 below 2^40 "
                             f"(got {s})")
    for i, (b, e) in enumerate(zip(box, estr)):
        if not 1 <= b <= 256 or not 1 <= e <= 8:
            raise ValueError(f"{what}: box {i} must lie in [1, 256] and element stride in [1, 8] (got {b}, {e})")
    span = _SWIZZLE_SPAN[swizzle]
    if span is not None and box[0] * elem > span:
        raise ValueError(f"{what}: inner box {box[0]} x {elem} B exceeds the {span} B swizzle span")
    return TensorMapArgs(code, address, dims, strides, box, estr, INTERLEAVE[recipe["interleave"]], swizzle,
                         L2_PROMOTION[recipe["l2_promotion"]], OOB_FILL[recipe["oob_fill"]])


_cache: dict[TensorMapArgs, bytes] = {}
_cache_lock = threading.Lock()
_CACHE_LIMIT = 4096


def encode(args: TensorMapArgs) -> bytes:
    """The 128-byte ``CUtensorMap`` for ``args`` from the driver (cached per argument tuple)."""
    desc = _cache.get(args)
    if desc is not None:
        return desc
    from cuda.bindings import driver

    err, tmap = driver.cuTensorMapEncodeTiled(
        driver.CUtensorMapDataType(args.dtype), args.rank, args.address,
        [driver.cuuint64_t(d) for d in args.dims], [driver.cuuint64_t(s) for s in args.strides],
        [driver.cuuint32_t(b) for b in args.box], [driver.cuuint32_t(e) for e in args.element_strides],
        driver.CUtensorMapInterleave(args.interleave), driver.CUtensorMapSwizzle(args.swizzle),
        driver.CUtensorMapL2promotion(args.l2_promotion), driver.CUtensorMapFloatOOBfill(args.oob_fill))
    if int(err) != 0:
        raise RuntimeError(f"cuTensorMapEncodeTiled failed ({err}) for {args}")
    desc = b"".join(int(w).to_bytes(8, "little") for w in tmap.opaque)
    with _cache_lock:
        if len(_cache) >= _CACHE_LIMIT:
            _cache.clear()
        _cache[args] = desc
    return desc


def struct_fields(name: str, kind: str, recipe: Mapping[str, Any], values: Mapping[str, Any]) -> list[int]:
    """The int32 values of an ``i32xN`` parameter (its recipe lists one expression per field)."""
    fields = recipe.get("fields") if isinstance(recipe, Mapping) else None
    n = int(kind[4:])
    if not isinstance(fields, list) or len(fields) != n:
        raise ValueError(f"param {name!r} of kind {kind}: recipe needs 'fields' with {n} expressions")
    return [evaluate(f, values) for f in fields]
