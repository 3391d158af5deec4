"""Small CuTe DSL helpers shared by the kernel families (build time only: imports cutlass)."""

from __future__ import annotations

import cutlass
import cutlass.cute as cute
from cutlass.cute.runtime import nullptr

_DTYPES = {"float32": cutlass.Float32, "bfloat16": cutlass.BFloat16, "float16": cutlass.Float16,
           "int32": cutlass.Int32, "uint8": cutlass.Uint8}


def dsl_dtype(name: str):
    """DSL numeric type for a varblock dtype name."""
    return _DTYPES[name]


def fake_pointer(dtype, align: int):
    """A global-memory pointer argument for tracing (the value is supplied at launch time)."""
    return nullptr(dtype, cute.AddressSpace.gmem, assumed_align=align)
