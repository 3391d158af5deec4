"""GPU-resident inputs (issue 8.1): every importer, generator and vb.plan takes torch / CuPy / JAX arrays on the
GPU and gives the layout its host (NumPy) inputs give; a real FlexAttention ``create_block_mask(device="cuda")`` and
FA4-like objects with CUDA tensor fields import like their host copies."""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest
from _input_cases import CASES, LENS, assert_same, build, cu_of

import varblock as vb
import varblock.layout as vl
from varblock.runtime import frameworks as fw

pytestmark = pytest.mark.gpu


def _seed() -> int:
    return int(np.random.default_rng().integers(1 << 31))


def _torch_wrap():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    return lambda a: torch.from_numpy(np.array(a)).cuda()  # a writable copy: torch warns on read-only arrays


def _cupy_wrap():
    cupy = pytest.importorskip("cupy")
    return lambda a: cupy.asarray(a)


def _jax_wrap():
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # share the GPU with torch in one process
    jax = pytest.importorskip("jax")
    gpus = [d for d in jax.devices() if d.platform == "gpu"]
    if not gpus:
        pytest.skip("jax sees no GPU")
    return lambda a: jax.device_put(a, gpus[0])


WRAPS = {"torch": _torch_wrap, "cupy": _cupy_wrap, "jax": _jax_wrap}


@pytest.mark.parametrize("framework", sorted(WRAPS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_importers_take_gpu_arrays(case, framework):
    wrap = WRAPS[framework]()
    probe = wrap(np.arange(4, dtype=np.int32))
    assert fw.is_device_array(probe) and fw.framework_of(probe) == framework
    seed = _seed()
    assert_same(build(case, seed, wrap), build(case, seed, lambda a: a))


@pytest.mark.parametrize("framework", sorted(WRAPS))
def test_plan_takes_gpu_cu_seqlens(framework):
    wrap = WRAPS[framework]()
    cu = cu_of(LENS)
    lay = vl.causal(cu, block_q=64, block_k=64)
    for layout in (None, lay):
        kw = dict(num_heads_q=4, num_heads_kv=2, head_dim=64, causal=layout is None, layout=layout, cache=False)
        want = vb.plan(cu, cu, **kw)
        got = vb.plan(wrap(cu), wrap(cu), **kw)
        assert np.array_equal(got.cu_seqlens_q, want.cu_seqlens_q)
        assert np.array_equal(got.cu_seqlens_k, want.cu_seqlens_k)
        assert got.layout.equals(want.layout)


def test_flex_block_mask_made_on_the_gpu():
    torch = pytest.importorskip("torch")
    flex = pytest.importorskip("torch.nn.attention.flex_attention")
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    rng = np.random.default_rng(_seed())
    B, H, S = 2, 3, 384
    period = int(rng.integers(2, 5))

    def causal(b, h, q, kv):
        return q >= kv

    def striped(b, h, q, kv):
        return ((q // 64 + kv // 64 + h) % period != 0) & (q >= kv)

    for mask_mod in (causal, striped):
        bm = flex.create_block_mask(mask_mod, B, H, S, S, device="cuda")
        assert bm.kv_num_blocks.is_cuda
        got = vl.from_flex(bm, causal=True)
        host = {k: getattr(bm, k).cpu() for k in ("kv_num_blocks", "kv_indices", "full_kv_num_blocks",
                                                  "full_kv_indices") if getattr(bm, k) is not None}
        want = vl.from_flex(None, BLOCK_SIZE=bm.BLOCK_SIZE, seq_lengths=(S, S), causal=True, **host)
        assert got.equals(want)
        if mask_mod is causal:  # diagonal blocks partial (the element mask applies), the rest full
            tril = np.tril(np.ones((S, S), dtype=bool))
            for b in range(B):
                for h in range(H):
                    assert np.array_equal(got.token_mask(b, h), tril), (b, h)


def test_fa4_like_object_with_cuda_fields_and_autograd_bf16_scores():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    rng = np.random.default_rng(_seed())
    cu = cu_of(LENS)
    lay = vl.from_block_mask(rng.random((1, 2, 3, 3)) < 0.6, cu_of([96, 80]), block_q=32, block_k=32,
                             causal=True)
    host = lay.to_fa4()
    dev = SimpleNamespace(**{k: (torch.from_numpy(v).cuda() if isinstance(v, np.ndarray) else v)
                             for k, v in host._asdict().items()})
    # varlen-packed FA4 tensors (cu_total_m_blocks set) come with both cu_seqlens, as FA4's varlen call takes them
    cu2 = cu_of([96, 80])
    cu2_dev = torch.from_numpy(cu2).cuda()
    want_fa4 = vl.from_fa4(host, cu2, cu2, causal=True)
    assert vl.from_fa4(dev, cu2_dev, cu2_dev, causal=True).equals(want_fa4)
    # scores that require grad, in bfloat16, on the GPU: the top-k of the (exactly widened) bf16 values
    M = -(-np.asarray(LENS) // 32)
    s = torch.randn(2, int(M.sum()), int(M.max()), device="cuda").to(torch.bfloat16).requires_grad_()
    want = vl.topk_blocks(s.detach().float().cpu().numpy(), cu, k=2, block_q=32, block_k=32)
    assert vl.topk_blocks(s, torch.from_numpy(cu).cuda(), k=2, block_q=32, block_k=32).equals(want)


class DLPackOnly:
    """A producer varblock has no framework knowledge of, exporting DLPack only."""

    def __init__(self, t):
        self.t = t

    def __dlpack__(self, *args, **kwargs):
        return self.t.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self):
        return self.t.__dlpack_device__()


class CAIOnly:
    """A producer exporting only ``__cuda_array_interface__`` v3 with its stream (Numba / CuPy style)."""

    def __init__(self, t):
        import torch

        self.t = t
        handle = int(torch.cuda.current_stream(t.device).cuda_stream)
        # v3: 0 is not allowed for the legacy default stream, 1 names it
        self.__cuda_array_interface__ = dict(t.__cuda_array_interface__, version=3, stream=handle or 1)


class CAIv2Only:
    """A producer exporting only a version-2 ``__cuda_array_interface__`` (no stream: producer already synced)."""

    def __init__(self, t):
        import torch

        torch.cuda.current_stream(t.device).synchronize()  # v2 has no stream: the data must be ready on export
        self.t = t
        self.__cuda_array_interface__ = dict(t.__cuda_array_interface__, version=2)
        self.__cuda_array_interface__.pop("stream", None)


@pytest.mark.parametrize("wrapper", [DLPackOnly, CAIOnly, CAIv2Only])
@pytest.mark.parametrize("view", ["contiguous", "sliced", "transposed"])
def test_generic_producers_go_through_the_driver_copy(wrapper, view):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    base = torch.randint(-1000, 1000, (37, 5), dtype=torch.int32, device="cuda")
    t = {"contiguous": base, "sliced": base[::2, 1:4], "transposed": base.t()}[view]
    obj = wrapper(t)
    assert fw.framework_of(obj) == "generic" and fw.is_device_array(obj)
    got = fw.to_host(obj, "x")
    assert isinstance(got, np.ndarray) and got.dtype == np.int32 and np.array_equal(got, t.cpu().numpy())
    cu = cu_of(LENS)
    assert vl.causal(wrapper(torch.from_numpy(cu).cuda()), block_q=32, block_k=32).equals(
        vl.causal(cu, block_q=32, block_k=32))
