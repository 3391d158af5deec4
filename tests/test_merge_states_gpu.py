"""merge_states on the GPU against the float64 reference: fp32/bf16/fp16, S = 1..64, odd lengths, -inf partials."""

from __future__ import annotations

import numpy as np
import pytest

import varblock
from tests._tolerance import assert_close

pytestmark = pytest.mark.gpu

POISON = 12345.0


def merge_reference(op: np.ndarray, lp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 merge of [S,T,H,D] / [S,H,T] partials (independent of the library's reference module)."""
    lse_t = np.transpose(lp, (0, 2, 1))  # [S, T, H]
    m = lse_t.max(axis=0)
    empty = np.isneginf(m)
    w = np.exp(lse_t - np.where(empty, 0.0, m)[None])
    w[:, empty] = 0.0
    tot = w.sum(axis=0)
    out = (w[..., None] * op).sum(axis=0) / np.where(tot > 0, tot, 1.0)[..., None]
    lse = np.where(empty, -np.inf, m + np.log(np.where(tot > 0, tot, 1.0)))
    return out, lse.T


def _make(torch, s, t, h, d, dtype, rng, p_inf=0.2):
    op = torch.randn(s, t, h, d, dtype=torch.float32, device="cuda").to(getattr(torch, dtype))
    lse = rng.normal(0.0, 3.0, size=(s, h, t))
    lse[rng.random(size=lse.shape) < p_inf] = -np.inf
    if t > 2:
        lse[:, :, 1] = -np.inf  # a row with every partial empty
    return op, torch.tensor(lse, dtype=torch.float32, device="cuda")


PAIRS = [("float32", "float32"), ("float32", "bfloat16"), ("float32", "float16"), ("bfloat16", "bfloat16"),
         ("float16", "float16")]


@pytest.mark.parametrize("in_dtype,out_dtype", PAIRS)
@pytest.mark.parametrize("s,t,h,d", [(1, 1, 1, 64), (2, 3, 4, 128), (3, 113, 8, 96), (7, 1023, 2, 256),
                                     (64, 37, 3, 128), (5, 4224, 1, 64), (33, 9, 16, 40)])
def test_merge_matches_reference(torch, in_dtype, out_dtype, s, t, h, d):
    rng = np.random.default_rng(abs(hash((in_dtype, out_dtype, s, t, h, d))) % 2**32)
    op, lp = _make(torch, s, t, h, d, in_dtype, rng)
    out = torch.full((t, h, d), POISON, dtype=getattr(torch, out_dtype), device="cuda")
    lse = torch.full((h, t), POISON, dtype=torch.float32, device="cuda")
    o2, l2 = varblock.merge_states(op, lp, out_dtype=out_dtype, out=out, lse=lse)
    assert o2 is out and l2 is lse
    torch.cuda.synchronize()
    ref_o, ref_l = merge_reference(op.float().cpu().double().numpy(), lp.cpu().double().numpy())
    got_o = out.float().cpu().double().numpy()
    got_l = lse.cpu().double().numpy()
    assert not (got_o == POISON).any() and not (got_l == POISON).any(), "unwritten output elements"
    assert_close(got_o, ref_o, out_dtype, what="out")
    assert_close(got_l, ref_l, "float32", what="lse")


def test_merge_allocates_caller_type_and_uses_stream(torch):
    op, lp = _make(torch, 4, 50, 2, 64, "bfloat16", np.random.default_rng(0))
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        out, lse = varblock.merge_states(op, lp)
    s.synchronize()
    assert isinstance(out, torch.Tensor) and out.dtype == torch.bfloat16 and out.shape == (50, 2, 64)
    ref_o, ref_l = merge_reference(op.float().cpu().double().numpy(), lp.cpu().double().numpy())
    assert_close(out.float().cpu().numpy(), ref_o, "bfloat16")
    out2, _ = varblock.merge_states(op, lp, stream=s)
    s.synchronize()
    assert torch.equal(out, out2)


def test_merge_strided_inputs(torch):
    """Non-compact partials (a slice of a bigger buffer) are read through their strides."""
    big = torch.randn(3, 40, 6, 160, device="cuda", dtype=torch.float16)
    op = big[:, :, 1:5, 16:144]
    lbig = torch.randn(3, 6, 50, device="cuda")
    lp = lbig[:, 1:5, 5:45]
    out, lse = varblock.merge_states(op, lp)
    torch.cuda.synchronize()
    ref_o, ref_l = merge_reference(op.float().cpu().double().numpy(), lp.cpu().double().numpy())
    assert_close(out.float().cpu().numpy(), ref_o, "float16")
    assert_close(lse.cpu().numpy(), ref_l, "float32")


def test_merge_cupy(cupy):
    rng = np.random.default_rng(1)
    op = cupy.asarray(rng.normal(size=(3, 77, 2, 64)).astype(np.float32))
    lp = cupy.asarray(rng.normal(size=(3, 2, 77)).astype(np.float32))
    out, lse = varblock.merge_states(op, lp, out_dtype="float16")
    cupy.cuda.get_current_stream().synchronize()
    assert isinstance(out, cupy.ndarray) and out.dtype == np.float16
    ref_o, ref_l = merge_reference(cupy.asnumpy(op).astype(np.float64), cupy.asnumpy(lp).astype(np.float64))
    assert_close(cupy.asnumpy(out), ref_o, "float16")
    assert_close(cupy.asnumpy(lse), ref_l, "float32")


@pytest.mark.parametrize("case,exc,match", [
    ("dtype", TypeError, "out_parts: dtype int32"),
    ("lse_dtype", TypeError, "lse_parts: dtype float16"),
    ("ndim", ValueError, "out_parts: expected a 4-d"),
    ("shape", ValueError, "lse_parts: expected shape"),
    ("cpu", ValueError, "out_parts: expected an array on a CUDA device"),
    ("noncontig", ValueError, "out_parts: the last dimension must be contiguous"),
    ("misaligned", ValueError, "out_parts address must be a multiple of 2"),
    ("out_shape", ValueError, "out: expected shape"),
    ("out_dtype", TypeError, "out_dtype"),
    ("out_wrong_dtype", TypeError, "out: dtype float16"),
    ("lse_wrong_device_kind", ValueError, "lse: expected an array on a CUDA device"),
    ("not_array", TypeError, "out_parts: expected a CUDA device array"),
    ("zero_splits", ValueError, "at least one split"),
])
def test_merge_bad_input(torch, case, exc, match):
    op = torch.randn(2, 10, 3, 64, device="cuda")
    lp = torch.randn(2, 3, 10, device="cuda")
    kw = {}
    if case == "dtype":
        op = op.to(torch.int32)
    elif case == "lse_dtype":
        lp = lp.half()
    elif case == "ndim":
        op = op[0]
    elif case == "shape":
        lp = lp[:, :, :9]
    elif case == "cpu":
        op = op.cpu()
    elif case == "noncontig":
        op = torch.randn(2, 10, 3, 128, device="cuda")[..., ::2]
    elif case == "misaligned":
        base = torch.randn(2 * 10 * 3 * 64 + 8, device="cuda", dtype=torch.bfloat16)
        op = _odd_byte_view(base[: 2 * 10 * 3 * 64].view(2, 10, 3, 64))
    elif case == "out_shape":
        kw["out"] = torch.empty(10, 3, 32, device="cuda")
    elif case == "out_dtype":
        kw["out_dtype"] = "int8"
    elif case == "out_wrong_dtype":
        kw["out"] = torch.empty(10, 3, 64, device="cuda", dtype=torch.float16)
        kw["out_dtype"] = "float32"
    elif case == "lse_wrong_device_kind":
        kw["lse"] = torch.empty(3, 10)
    elif case == "not_array":
        op = [1, 2, 3]
    elif case == "zero_splits":
        op, lp = op[:0], lp[:0]
    with pytest.raises(exc, match=match):
        varblock.merge_states(op, lp, **kw)


def _odd_byte_view(t):
    """An object exporting a bfloat16 CUDA array at an address that is not 2-byte aligned."""
    class OddView:
        def __init__(self, base):
            self.base = base
            self.dtype = "bfloat16"
            self.__cuda_array_interface__ = {
                "shape": tuple(base.shape), "typestr": "<u2", "version": 3,
                "data": (base.data_ptr() + 1, False), "strides": tuple(2 * s for s in base.stride())}
    return OddView(t)


def test_merge_jax():
    """JAX arrays in, JAX arrays out (through DLPack)."""
    jax = pytest.importorskip("jax")
    jnp = pytest.importorskip("jax.numpy")
    if not any(d.platform == "gpu" for d in jax.devices()):
        pytest.skip("jax sees no GPU")
    rng = np.random.default_rng(2)
    op_h = rng.normal(size=(2, 65, 3, 64)).astype(np.float32)
    lp_h = rng.normal(size=(2, 3, 65)).astype(np.float32)
    op, lp = jnp.asarray(op_h), jnp.asarray(lp_h)
    op.block_until_ready()
    out, lse = varblock.merge_states(op, lp)
    assert isinstance(out, jax.Array) and out.shape == (65, 3, 64)
    ref_o, ref_l = merge_reference(op_h.astype(np.float64), lp_h.astype(np.float64))
    assert_close(np.asarray(out), ref_o, "float32")
    assert_close(np.asarray(lse), ref_l, "float32")
