"""Small CuTe DSL helpers shared by the kernel families (build time only: imports cutlass)."""

from __future__ import annotations

import cutlass

_DTYPES = {"float32": cutlass.Float32, "bfloat16": cutlass.BFloat16, "float16": cutlass.Float16,
           "int32": cutlass.Int32, "uint8": cutlass.Uint8}


def dsl_dtype(name: str):
    """DSL numeric type for a varblock dtype name."""
    return _DTYPES[name]
