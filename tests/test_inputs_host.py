"""Arrays on a GPU, checked on the CPU: a stand-in for a CUDA tensor (``__dlpack_device__`` says CUDA, ``__dlpack__``
and ``__array__`` refuse, ``.detach()`` returns another CUDA tensor, ``.cpu()`` a host one) passed to every importer,
generator and ``vb.plan`` gives what NumPy inputs give. This is the class of bug (issue 8.1: RecursionError on GPU
BlockMask / FA4 tensors) that CI must catch without a GPU. Also: the framework adapter's own contract."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from _input_cases import CASES, LENS, assert_same, build, cu_of
from test_dispatch_plan import cpu_device  # noqa: F401  (fixture: arch, device buffers and manifest stood in)

import varblock as vb
import varblock.layout as vl
from varblock.runtime import frameworks as fw

LAYOUT_DIR = Path(vl.__file__).parent


class HostTensor:
    """What ``.cpu()`` of a CUDA tensor gives: a host tensor exporting DLPack (no ``__array__``)."""

    def __init__(self, a: np.ndarray):
        self._a = np.ascontiguousarray(a)

    def __dlpack__(self, *args, **kwargs):
        return self._a.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self):
        return self._a.__dlpack_device__()


class CudaStandIn:
    """A CUDA tensor as a CPU-only machine can fake it (see the module docstring)."""

    calls = {"cpu": 0, "detach": 0}

    def __init__(self, a: np.ndarray, device: int = 0):
        self._a = np.ascontiguousarray(a)
        self._device = device

    def __dlpack__(self, *args, **kwargs):
        raise BufferError("a CUDA tensor cannot be exported to a CPU consumer")

    def __dlpack_device__(self):
        return (2, self._device)  # kDLCUDA

    def __array__(self, *args, **kwargs):
        raise TypeError("can't convert cuda:0 device type tensor to numpy; use .cpu() first")

    @property
    def shape(self):
        return self._a.shape

    def detach(self):
        CudaStandIn.calls["detach"] += 1
        return type(self)(self._a, self._device)  # a new tensor, still on the GPU (the old code recursed here)

    def cpu(self):
        CudaStandIn.calls["cpu"] += 1
        return HostTensor(self._a)


class BrokenCuda(CudaStandIn):
    def cpu(self):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")


def _seed() -> int:
    return int(np.random.default_rng().integers(1 << 31))


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_importer_takes_cuda_tensors(case):
    seed = _seed()
    want = build(case, seed, lambda a: a)
    CudaStandIn.calls.update(cpu=0, detach=0)
    got = build(case, seed, CudaStandIn)
    assert CudaStandIn.calls["cpu"] > 0, "the stand-in never reached the host through .cpu()"
    assert_same(got, want)


@pytest.mark.parametrize("case", ["fa4_varlen", "flex_per_batch", "block_mask_bool"])
def test_lists_and_numpy_give_the_same_layout(case):
    seed = _seed()
    want = build(case, seed, lambda a: a)
    assert_same(build(case, seed, lambda a: a.tolist()), want)


@pytest.mark.usefixtures("cpu_device")
@pytest.mark.parametrize("with_layout", [False, True])
def test_plan_takes_cuda_cu_seqlens_like_numpy(with_layout):
    """vb.plan (device and manifest stood in, see test_dispatch_plan) gives the same plan for stand-in CUDA
    cu_seqlens (and a layout built from them) as for NumPy ones."""
    cu = cu_of(LENS)
    plans = []
    for c in (cu, CudaStandIn(cu)):
        lay = vl.causal(c, block_q=64, block_k=64, num_heads=2, head_mode="per_kv_head") if with_layout else None
        plans.append(vb.plan(c, c, num_heads_q=4, num_heads_kv=2, head_dim=128, causal=not with_layout,
                             layout=lay, cache=False))
    want, got = plans
    assert np.array_equal(got.cu_seqlens_q, want.cu_seqlens_q) and np.array_equal(got.cu_seqlens_k, want.cu_seqlens_k)
    assert got.layout.equals(want.layout) and got.worklist.tiles.shape[0] > 0
    assert np.array_equal(got.worklist.tiles, want.worklist.tiles)
    assert np.array_equal(got.worklist.chunks, want.worklist.chunks)


# ---------------------------------------------------------------------------------------------------------------
# the adapter itself


def test_to_host_does_not_recurse_and_names_the_argument():
    a = np.arange(6, dtype=np.int32)
    assert np.array_equal(fw.to_host(CudaStandIn(a), "x"), a)
    with pytest.raises(TypeError, match=r"cu_seqlens_q: expected a NumPy array .*\.cpu\(\): CUDA error"):
        fw.to_host(BrokenCuda(a), "cu_seqlens_q")
    with pytest.raises(TypeError, match=r"mask: expected an array, got None"):
        fw.to_host(None, "mask")
    with pytest.raises(TypeError, match=r"x: cannot convert the list"):
        fw.to_host([[1, 2], [3]], "x")


def test_device_detection():
    a = np.zeros(3, np.int32)

    class CAI:  # only the CUDA array interface (Numba style), on device 1
        __cuda_array_interface__ = {"shape": (3,), "typestr": "<i4", "data": (0, False), "version": 3}
        device = type("D", (), {"id": 1})()

    class Pinned(HostTensor):
        def __dlpack_device__(self):
            return (3, 0)  # kDLCUDAHost: host memory

    class Managed(HostTensor):
        def __dlpack_device__(self):
            return (13, 2)  # kDLCUDAManaged

    for host in (a, [0, 1], 3, HostTensor(a), Pinned(a)):
        assert not fw.is_device_array(host) and fw.device_ordinal(host) is None
    assert fw.device_ordinal(CudaStandIn(a, device=3)) == 3
    assert fw.device_ordinal(Managed(a)) == 2
    assert fw.device_ordinal(CAI()) == 1 and fw.is_device_array(CAI())


def test_framework_of_is_one_idiom_keyed_on_the_type_module():
    def fake(module: str):
        return type("Tensor", (), {"__module__": module})()

    assert fw.framework_of(np.zeros(1)) == "numpy"
    assert fw.framework_of(fake("torch")) == "torch"
    assert fw.framework_of(fake("torch.nn.parameter")) == "torch"
    assert fw.framework_of(fake("cupy._core.core")) == "cupy"
    assert fw.framework_of(fake("jaxlib._jax")) == "jax"
    assert fw.framework_of(fake("jax._src.array")) == "jax"
    assert fw.framework_of(CudaStandIn(np.zeros(1))) == "generic"
    assert fw.current_stream_handle(CudaStandIn(np.zeros(1)), 0) is None


def test_generic_device_arrays_without_a_gpu_give_a_clear_error():
    class CAIOnly:
        __cuda_array_interface__ = {"shape": (3,), "typestr": "<i4", "data": (1 << 20, False), "version": 3}

    try:
        from varblock.runtime.device import device

        device(0)
        pytest.skip("a GPU is present: the copy would read arbitrary device memory")
    except Exception:
        pass
    with pytest.raises(TypeError, match=r"doc_ids: expected a NumPy array .*device-to-host copy"):
        fw.to_host(CAIOnly(), "doc_ids")


# ---------------------------------------------------------------------------------------------------------------
# the package structure


def _relative_imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            out.add(node.module.split(".")[0])
    return out


def test_layout_modules_import_each_other_without_a_cycle():
    graph = {p.stem: _relative_imports(p) for p in LAYOUT_DIR.glob("*.py") if p.stem != "__init__"}
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        if state.get(m) == 2:
            return
        assert state.get(m) != 1, f"import cycle: {' -> '.join(stack + [m])}"
        state[m] = 1
        for dep in graph.get(m, ()):
            visit(dep, stack + [m])
        state[m] = 2

    for m in graph:
        visit(m, [])
    assert not graph["core"] & {"block_mask", "fa4", "flex", "seer", "flashinfer", "spans", "build"}


def test_importers_are_bound_to_the_class():
    L = vl.BlockSparseLayout
    for name in ("from_block_mask", "from_fa4", "from_flex", "from_seer_2d", "from_seer_1d", "from_flashinfer",
                 "from_row_spans"):
        assert getattr(L, name) is getattr(vl, name)
    lay = vl.causal(cu_of(LENS), block_q=32, block_k=32)
    assert np.array_equal(lay.to_fa4().mask_block_cnt, vl.to_fa4(lay).mask_block_cnt)
    assert lay.to_flashinfer().keys() == vl.to_flashinfer(lay).keys()
    assert lay.to_flex()["BLOCK_SIZE"] == (32, 32)


@pytest.mark.parametrize("view", ["contiguous", "sliced", "transposed", "broadcast_row"])
def test_generic_copy_arranges_the_copied_span_on_the_host(view):
    """The generic device path copies the bytes an array's elements span, then arranges them with NumPy."""
    base = np.random.default_rng().integers(-1000, 1000, size=(37, 5)).astype(np.int32)
    v = {"contiguous": base, "sliced": base[3::2, 1:4], "transposed": base.T,
         "broadcast_row": np.broadcast_to(base[4], (6, 5))}[view]
    strides = tuple(s // v.itemsize for s in v.strides)
    start = v.__array_interface__["data"][0] - base.__array_interface__["data"][0]
    raw = base.view(np.uint8).reshape(-1)[start:start + fw.span_bytes(v.shape, strides, v.itemsize)]
    got = fw.from_span(np.array(raw), v.dtype, v.shape, strides)
    assert got.flags.c_contiguous and np.array_equal(got, v)
    with pytest.raises(ValueError, match="negative strides"):
        fw.span_bytes((3,), (-1,), 4)
