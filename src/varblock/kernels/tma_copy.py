"""TMA tile copy (sm90): ``dst[r, c] = src[r, c]`` for a 2-D ``[rows, cols]`` array with row strides ``ld_src`` /
``ld_dst`` (elements, the column stride is 1).

A small real kernel that proves the ``tensormap`` parameter kind end to end: the host function takes two pointers
and four integers and builds two TMA descriptors (load and store) plus their coordinate tensors; the kernel
receives ``(tma_src: tensormap, src_coords: i32x2, tma_dst: tensormap, dst_coords: i32x2)``. The runtime rebuilds
the same four parameters from the same six values (the recipes below), and launch capture checks them against
the DSL's own host code. One CTA per ``TILE_M x tile_n`` tile, 128-byte rows of tile (``tile_n`` = 64 elements
for 16-bit types, 32 for float32) in a 128B-swizzled shared-memory buffer; TMA clips the tail tiles. Rows must
be whole 16-byte units (``cols`` a multiple of 8 for 16-bit types, 4 for float32): a TMA store clips a tail tile
at 16-byte granularity, so a shorter row would be overwritten past its end.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from varblock.kernels import common
from varblock.kernels.registry import Family, Param, Variant
from varblock.runtime.tensormap import DTYPES as TMA_DTYPES

THREADS = 128
TILE_M = 64
DTYPES = ("bfloat16", "float16", "float32")
_SHORT = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}
#: the host function's arguments (what an op supplies), in order
HOST_PARAMS = (
    Param("src", "ptr", 16),
    Param("dst", "ptr", 16),
    Param("rows", "i32"),
    Param("cols", "i32"),
    Param("ld_src", "i64"),  # row stride of src, elements
    Param("ld_dst", "i64"),  # row stride of dst, elements
)


def _elem_bytes(dtype: str) -> int:
    return TMA_DTYPES[dtype][1]


def tile_cols(dtype: str) -> int:
    """Tile width in elements: one 128-byte swizzle span."""
    return 128 // _elem_bytes(dtype)


def tensormap_recipe(pointer: str, ld: str, dtype: str) -> dict[str, Any]:
    """The descriptor of a row-major ``[rows, cols]`` array at ``pointer`` with row stride ``ld`` elements, as
    ``make_tiled_tma_atom`` builds it for a ``(TILE_M, tile_cols)`` box over a 128B-swizzled tile: TMA dim 0 is
    the contiguous column dimension."""
    return {
        "pointer": pointer, "dtype": dtype,
        "dims": ["cols", "rows"],                          # TMA order: innermost first
        "strides": [["mul", ld, _elem_bytes(dtype)]],      # bytes, for dims 1..rank-1
        "box": [tile_cols(dtype), TILE_M], "element_strides": [1, 1],
        "interleave": "none", "swizzle": "128B", "l2_promotion": "128B", "oob_fill": "none",
    }


def _params(dtype: str) -> tuple[Param, ...]:
    coords = {"fields": ["rows", "cols"]}  # extents of the TMA coordinate tensor
    return (
        Param("tma_src", "tensormap", 64, tensormap_recipe("src", "ld_src", dtype)),
        Param("src_coords", "i32x2", 4, coords),
        Param("tma_dst", "tensormap", 64, tensormap_recipe("dst", "ld_dst", dtype)),
        Param("dst_coords", "i32x2", 4, coords),
    )


def _requires(dtype: str) -> tuple[dict[str, Any], ...]:
    per16 = 16 // _elem_bytes(dtype)
    return (
        {"what": "src address", "value": "src", "divisible_by": 16},
        {"what": "dst address", "value": "dst", "divisible_by": 16},
        {"what": "src row stride (elements)", "value": "ld_src", "divisible_by": per16},
        {"what": "dst row stride (elements)", "value": "ld_dst", "divisible_by": per16},
        # TMA stores write whole 16-byte units: a row of cols elements would spill past its end otherwise
        # (seen on an H200: zeros written into the padding after cols = 70 bf16 columns)
        {"what": "cols (elements per row)", "value": "cols", "divisible_by": per16},
        {"what": "rows", "value": "rows", "range": [1, 2**31 - 1]},
        {"what": "cols", "value": "cols", "range": [1, 2**31 - 1]},
    )


def variants(arch: str) -> list[Variant]:
    """One variant per dtype (sm90 only: TMA and the 128B-swizzle layout used here are Hopper's)."""
    if arch != "sm90":
        return []
    return [
        Variant(family="tma_copy", name=f"tma_copy_{_SHORT[dt]}", arch=arch, key={"dtype": dt},
                params=_params(dt), host_params=HOST_PARAMS, block=(THREADS, 1, 1),
                grid=(["cdiv", "cols", tile_cols(dt)], ["cdiv", "rows", TILE_M], 1), requires=_requires(dt),
                extra={"tile": [TILE_M, tile_cols(dt)]})
        for dt in DTYPES
    ]


FAMILY = Family(name="tma_copy", module=__name__, variants=variants,
                sources=(__file__, str(Path(__file__).with_name("_tma_copy_dsl.py")), *common.SOURCES),
                arches=("sm90",))


def capture_cases(variant: Variant) -> list[dict[str, Any]]:
    """Host-function argument sets (fake 16-byte aligned addresses) for the launch-capture check."""
    per16 = 16 // _elem_bytes(variant.key["dtype"])
    cases = []
    for i, (rows, cols, pad) in enumerate(((1000, 200, 0), (113, 3 * per16, per16), (1, per16, 0),
                                           (4224, 1023 // per16 * per16, 5 * per16), (70000, 4096, 0))):
        cases.append({"src": 0x7F0000000000 + (i << 20), "dst": 0x7F1000000000 + 0x40 * i, "rows": rows,
                      "cols": cols, "ld_src": cols + pad, "ld_dst": cols})
    return cases


def compile_args(variant: Variant):
    """The host function and its compile-time arguments (imports the DSL: build time only)."""
    from varblock.kernels._tma_copy_dsl import make_host

    return make_host(variant)
