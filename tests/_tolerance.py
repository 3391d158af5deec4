"""The correctness rule of DESIGN.md section 6, shared by the GPU tests.

A kernel passes when its error against a float64 reference is at most 2x the error of a plain low-precision
computation of the same math (here: the reference rounded through the output dtype, or a caller-supplied
baseline), plus a small absolute rounding allowance."""

from __future__ import annotations

import numpy as np

_EPS = {"float32": 2.0**-23, "bfloat16": 2.0**-8, "float16": 2.0**-11}


def round_to(x: np.ndarray, dtype: str) -> np.ndarray:
    """x rounded through ``dtype`` (round-to-nearest-even), back in float64."""
    x = np.asarray(x, dtype=np.float64)
    if dtype == "float32":
        return x.astype(np.float32).astype(np.float64)
    if dtype == "float16":
        return x.astype(np.float16).astype(np.float64)
    if dtype == "bfloat16":
        f = x.astype(np.float32)
        u = f.view(np.uint32).astype(np.uint64)
        u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16 << 16
        out = u.astype(np.uint32).view(np.float32).astype(np.float64)
        return np.where(np.isfinite(f), out, x)
    raise ValueError(dtype)


def assert_close(actual: np.ndarray, ref: np.ndarray, dtype: str, *, baseline: np.ndarray | None = None,
                 what: str = "") -> float:
    """Check the rule; returns the max abs error. NaN never passes; infinities must match exactly."""
    actual = np.asarray(actual, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert actual.shape == ref.shape, (what, actual.shape, ref.shape)
    assert not np.isnan(actual).any(), f"{what}: NaN in output"
    inf = np.isinf(ref)
    assert np.array_equal(np.isinf(actual), inf) and np.array_equal(actual[inf], ref[inf]), \
        f"{what}: infinities differ ({int((np.isinf(actual) != inf).sum())} elements)"
    fin = ~inf
    if baseline is None:
        baseline = round_to(ref, dtype)
    base_err = float(np.abs(np.asarray(baseline, np.float64)[fin] - ref[fin]).max(initial=0.0))
    err = float(np.abs(actual[fin] - ref[fin]).max(initial=0.0))
    scale = float(np.abs(ref[fin]).max(initial=1.0))
    allowed = 2.0 * base_err + 4.0 * _EPS["float32"] * max(scale, 1.0)
    assert err <= allowed, f"{what}: max abs error {err:.3g} > allowed {allowed:.3g} (baseline {base_err:.3g})"
    return err
