"""``varblock.jax`` on the CPU: the custom_vjp wiring with the kernels replaced by the float64 reference (gradients
against ``jax.grad`` of a dense masked attention written in jax.numpy), the plan reaching the backward, and the
clear errors under ``jax.jit`` / ``jax.vmap`` and for bad arguments. The GPU run is in tests/test_autograd_gpu.py."""

from __future__ import annotations

import types

import numpy as np
import pytest

import varblock
from varblock import layout as L
from varblock.plan import Plan

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
vbj = pytest.importorskip("varblock.jax")


def _cu(lens):
    return np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)


def _host_plan(lay, hq: int, hkv: int, d: int) -> Plan:
    """A Plan object carrying a layout (no device buffers: the kernels are replaced in these tests)."""
    return Plan(cu_seqlens_q=lay.cu_seqlens_q, cu_seqlens_k=lay.cu_seqlens_k, num_heads_q=hq, num_heads_kv=hkv,
                head_dim=d, layout=lay, device_id=0, arch="sm90", family="attention_fwd_mma", tile_m=128, tile_n=128,
                worklist=None, window_left=-1, window_right=-1, mask_flags=0, tok_block_k=0, tok_head_div=1)


def dense_mask(lay, hq: int, hkv: int) -> np.ndarray:
    """[Hq, total_q, total_k] bool: the layout's token-level mask, block-diagonal over the sequences."""
    cq, ck = lay.cu_seqlens_q, lay.cu_seqlens_k
    m = np.zeros((hq, int(cq[-1]), int(ck[-1])), bool)
    hmap = lay.head_map(hq, hkv)
    for b in range(len(cq) - 1):
        if cq[b + 1] > cq[b] and ck[b + 1] > ck[b]:
            for h in range(hq):
                m[h, cq[b]:cq[b + 1], ck[b]:ck[b + 1]] = lay.token_mask(b, int(hmap[h]))
    return m


def dense_attention(q, k, v, mask, scale):
    """Masked softmax attention in jax.numpy (float32), rows without keys give 0."""
    group = q.shape[1] // k.shape[1]
    kk, vv = (jnp.repeat(x.astype(jnp.float32), group, axis=1) for x in (k, v))
    s = jnp.einsum("qhd,khd->hqk", q.astype(jnp.float32), kk) * scale
    s = jnp.where(mask, s, -jnp.inf)
    m = jnp.max(s, axis=-1, keepdims=True)
    p = jnp.exp(s - jnp.where(jnp.isfinite(m), m, 0.0))
    z = p.sum(-1, keepdims=True)
    p = p / jnp.where(z > 0, z, 1.0)
    return jnp.einsum("hqk,khd->qhd", p, vv)


@pytest.fixture
def calls(monkeypatch):
    seen = {"fwd": [], "bwd": []}
    f64 = lambda x: np.asarray(x, np.float64)  # noqa: E731

    def fwd(q, k, v, plan, *, softmax_scale=None, return_lse=False):
        seen["fwd"].append(plan)
        out, lse = varblock.reference.attention_forward(f64(q), f64(k), f64(v), plan.layout,
                                                        softmax_scale=softmax_scale)
        return jnp.asarray(out, q.dtype), jnp.asarray(lse, jnp.float32)

    def bwd(dout, q, k, v, out, lse, plan, *, softmax_scale=None, deterministic=False):
        seen["bwd"].append((plan, deterministic))
        g = varblock.reference.attention_backward(f64(dout), f64(q), f64(k), f64(v), f64(out), f64(lse),
                                                  plan.layout, softmax_scale=softmax_scale)
        return tuple(jnp.asarray(x, q.dtype) for x in g)

    monkeypatch.setattr(varblock, "attention", fwd)
    monkeypatch.setattr(varblock, "attention_backward", bwd, raising=False)
    monkeypatch.setattr(vbj, "stream_for", lambda s, o, like=None: types.SimpleNamespace(sync=lambda: None))
    return seen


def _problem(hq=4, hkv=2, d=16, dtype=None):
    lens = [37, 0, 70]
    lay = L.random_blocks(_cu(lens), _cu(lens), density=0.6, num_heads=hkv, head_mode="per_kv_head", causal=True,
                          seed=3, block_q=16, block_k=16)
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    t = int(lay.cu_seqlens_q[-1])
    dt = dtype or jnp.float16
    q = jax.random.normal(keys[0], (t, hq, d)).astype(dt)
    k = jax.random.normal(keys[1], (t, hkv, d)).astype(dt)
    v = jax.random.normal(keys[2], (t, hkv, d)).astype(dt)
    return lay, _host_plan(lay, hq, hkv, d), q, k, v


def test_custom_vjp_gradients_match_the_dense_reference(calls):
    lay, plan, q, k, v = _problem()
    w = jax.random.normal(jax.random.PRNGKey(1), q.shape)
    mask = jnp.asarray(dense_mask(lay, 4, 2))
    scale = 0.25

    def loss_vb(q, k, v):
        return (vbj.attention(q, k, v, plan, softmax_scale=scale, deterministic=True).astype(jnp.float32) * w).sum()

    def loss_ref(q, k, v):
        return (dense_attention(q, k, v, mask, scale) * w).sum()

    val, grads = jax.value_and_grad(loss_vb, argnums=(0, 1, 2))(q, k, v)
    val_r, grads_r = jax.value_and_grad(loss_ref, argnums=(0, 1, 2))(*(x.astype(jnp.float32) for x in (q, k, v)))
    np.testing.assert_allclose(float(val), float(val_r), rtol=2e-2, atol=2e-2)
    for name, g, r in zip(("dq", "dk", "dv"), grads, grads_r):
        assert g.dtype == q.dtype
        np.testing.assert_allclose(np.asarray(g, np.float64), np.asarray(r, np.float64), atol=2e-2, rtol=2e-2,
                                   err_msg=name)
        assert float(jnp.abs(r).max()) > 0
    assert calls["fwd"] == [plan] and calls["bwd"] == [(plan, True)]


def test_return_lse_and_eager_call(calls):
    _, plan, q, k, v = _problem()
    out, lse = vbj.attention(q, k, v, plan, return_lse=True)
    assert out.shape == q.shape and out.dtype == q.dtype and lse.shape == (4, q.shape[0])


@pytest.mark.parametrize("transform", ["jit", "grad_under_jit", "vmap"])
def test_traced_calls_raise_a_clear_error(calls, transform):
    _, plan, q, k, v = _problem()
    f = lambda q: vbj.attention(q, k, v, plan).astype(jnp.float32).sum()  # noqa: E731
    with pytest.raises(TypeError, match="XLA FFI"):
        if transform == "jit":
            jax.jit(f)(q)
        elif transform == "grad_under_jit":
            jax.jit(jax.grad(f))(q)
        else:
            jax.vmap(lambda q: vbj.attention(q, k, v, plan))(q[None])
    assert calls["fwd"] == []


@pytest.mark.parametrize("arg, value, err, match", [
    ("plan", "nope", TypeError, "plan"),
    ("q", np.zeros((3, 4, 16), np.float16), TypeError, "q: expected a jax.Array"),
    ("softmax_scale", "x", TypeError, "softmax_scale"),
    ("softmax_scale", 0.0, ValueError, "softmax_scale: expected a finite positive"),
    ("deterministic", 1, TypeError, "deterministic"),
])
def test_argument_errors(arg, value, err, match):
    _, plan, q, k, v = _problem()
    args = {"q": q, "k": k, "v": v, "plan": plan}
    kw = {}
    if arg in args:
        args[arg] = value
    else:
        kw[arg] = value
    with pytest.raises(err, match=match):
        vbj.attention(args["q"], args["k"], args["v"], args["plan"], **kw)
