"""Shared test setup: the `gpu` marker skips cleanly without a CUDA device and built cubins."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))


@functools.lru_cache(maxsize=1)
def gpu_unavailable_reason() -> str | None:
    """None when GPU tests can run, else why not."""
    if os.environ.get("VARBLOCK_NO_GPU"):
        return "VARBLOCK_NO_GPU is set"
    try:
        from cuda.bindings import driver

        (err,) = driver.cuInit(0)
        if int(err) != 0:
            return f"no CUDA driver/device (cuInit: {err})"
        err, n = driver.cuDeviceGetCount()
        if int(err) != 0 or n == 0:
            return "no CUDA device"
    except Exception as ex:  # no libcuda on this machine
        return f"no CUDA driver ({type(ex).__name__}: {ex})"
    try:
        from varblock.runtime.manifest import cubin_dir

        cubin_dir()
    except FileNotFoundError:
        return "no built cubins (run python build_kernels.py)"
    try:
        import torch  # noqa: F401
    except ImportError:
        try:
            import cupy  # noqa: F401
        except ImportError:
            return "GPU tests allocate with torch or cupy; neither is installed"
    return None


def pytest_collection_modifyitems(config, items):
    reason = None
    for item in items:
        if "gpu" in item.keywords:
            reason = reason or gpu_unavailable_reason() or ""
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def torch():
    t = pytest.importorskip("torch")
    if not t.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    return t


@pytest.fixture(scope="session")
def cupy():
    return pytest.importorskip("cupy")
