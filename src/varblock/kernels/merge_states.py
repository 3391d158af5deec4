"""Split-KV combine: merge S partial attention states (O_s, LSE_s) into one (O, LSE).

    m      = max_s LSE_s                      (over the S partials of one (token, head) row)
    w_s    = exp(LSE_s - m) / sum_s exp(LSE_s - m)
    O      = sum_s w_s * O_s,   LSE = m + log(sum_s exp(LSE_s - m))

Partials with LSE = -inf contribute nothing; a row whose partials are all -inf gives O = 0, LSE = -inf.
One warp per (token, head) row; lanes stride over the head dimension (coalesced), the S partials are read once per
lane chunk. All shapes and strides are runtime values, so one cubin per (input dtype, output dtype) serves every S,
length, head count and head dimension.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from varblock.kernels import common
from varblock.kernels.registry import Family, Param, Variant, pointer_requires

WARPS = 4
THREADS = 32 * WARPS

#: (input dtype, output dtype) pairs that are built
DTYPE_PAIRS = (("float32", "float32"), ("float32", "bfloat16"), ("float32", "float16"),
               ("bfloat16", "bfloat16"), ("float16", "float16"))
_ELEM_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}



def _params(in_bytes: int, out_bytes: int) -> tuple[Param, ...]:
    return (
        Param("out_parts", "ptr", in_bytes),  # [S, total_q, H, D] input dtype, D contiguous
        Param("lse_parts", "ptr", 4),         # [S, H, total_q] fp32
        Param("out", "ptr", out_bytes),       # [total_q, H, D] output dtype, D contiguous
        Param("lse", "ptr", 4),               # [H, total_q] fp32
    ) + _SCALARS


_SCALARS = (
    Param("num_splits", "i32"),
    Param("total_q", "i32"),
    Param("num_heads", "i32"),
    Param("head_dim", "i32"),
    Param("op_stride_s", "i64"),    # element strides of out_parts (split, token, head)
    Param("op_stride_t", "i64"),
    Param("op_stride_h", "i64"),
    Param("lp_stride_s", "i64"),    # element strides of lse_parts (split, head, token)
    Param("lp_stride_h", "i64"),
    Param("lp_stride_t", "i64"),
    Param("o_stride_t", "i64"),     # element strides of out (token, head)
    Param("o_stride_h", "i64"),
    Param("l_stride_h", "i64"),     # element strides of lse (head, token)
    Param("l_stride_t", "i64"),
)

GRID = (["cdiv", ["mul", "total_q", "num_heads"], WARPS], 1, 1)


def variants(arch: str) -> list[Variant]:
    out = []
    for din, dout in DTYPE_PAIRS:
        short = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}
        params = _params(_ELEM_BYTES[din], _ELEM_BYTES[dout])
        out.append(Variant(
            family="merge_states", name=f"merge_states_{short[din]}_{short[dout]}", arch=arch,
            key={"in_dtype": din, "out_dtype": dout}, params=params, block=(THREADS, 1, 1), grid=GRID,
            requires=pointer_requires(params) + (
                {"what": "total_q * num_heads", "value": ["mul", "total_q", "num_heads"], "range": [0, 2**31 - 1]},
            ),
        ))
    return out


FAMILY = Family(name="merge_states", module=__name__, variants=variants,
                sources=(__file__, str(Path(__file__).with_name("_merge_states_dsl.py")), *common.SOURCES))


def capture_cases(variant: Variant) -> list[dict[str, Any]]:
    """Realistic argument sets (fake device addresses) for the launch-capture check."""
    cases = []
    for s, t, h, d in ((2, 1000, 8, 128), (1, 3, 1, 64), (64, 4224, 32, 256), (7, 113, 5, 96)):
        cases.append({
            "out_parts": 0x7F0000000000, "lse_parts": 0x7F1000000000, "out": 0x7F2000000000,
            "lse": 0x7F3000000000, "num_splits": s, "total_q": t, "num_heads": h, "head_dim": d,
            "op_stride_s": t * h * d, "op_stride_t": h * d, "op_stride_h": d,
            "lp_stride_s": h * t, "lp_stride_h": t, "lp_stride_t": 1,
            "o_stride_t": h * d, "o_stride_h": d, "l_stride_h": t, "l_stride_t": 1,
        })
    return cases


def compile_args(variant: Variant):
    """The host function and its compile-time arguments (imports the DSL: build time only)."""
    from varblock.kernels._merge_states_dsl import make_host

    return make_host(variant)
