"""End-to-end JAX training through ``varblock.jax.attention`` (issue 11: "the torch and JAX wrappers train the test
layer"), mirroring the torch training test of tests/test_autograd_gpu.py.

A small GQA attention layer (jax.numpy parameters: q/k/v projections, attention, output projection) is fitted to a
teacher layer with a plain-JAX Adam for 20 eager steps (``jax.value_and_grad``; varblock's kernels run on concrete
arrays only, see docs/autograd.md). The varblock run (bf16 attention, forward and backward kernels) and a float32
dense-masked run from the same initial parameters and data must both halve their loss and agree within 2% at every
step. On the CPU the same training loop runs with the kernels replaced by the float64 reference
(``varblock.reference``), so the wiring of the loop is tested without a GPU.
"""

from __future__ import annotations

import os
import types
from collections.abc import Callable
from functools import partial

import numpy as np
import pytest

import varblock
from varblock import layout as L

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # JAX may share the GPU with torch in this process

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
vbj = pytest.importorskip("varblock.jax")

from tests.test_jax_adapter import dense_attention, dense_mask  # noqa: E402  (after the skips: needs jax)

STEPS = 20


def _cu(lens):
    return np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)


def _layout(cu, hkv: int, block: int):
    return L.random_blocks(cu, cu, density=0.5, num_heads=hkv, head_mode="per_kv_head", causal=True, seed=7,
                           block_q=block, block_k=block)


def init_layer(key, dm: int, hq: int, hkv: int, d: int) -> dict[str, jax.Array]:
    """Parameters of the layer: float32 projections scaled by 1/sqrt(fan-in)."""
    ks = jax.random.split(key, 4)
    shapes = {"wq": (dm, hq * d), "wk": (dm, hkv * d), "wv": (dm, hkv * d), "wo": (hq * d, dm)}
    return {n: jax.random.normal(kk, s) / s[0] ** 0.5 for kk, (n, s) in zip(ks, shapes.items())}


def apply_layer(params, x, attn: Callable, dtype, hq: int, hkv: int, d: int):
    """x [T, Dm] -> projections (float32) -> attention in ``dtype`` -> output projection (float32)."""
    t = x.shape[0]
    q = (x @ params["wq"]).reshape(t, hq, d).astype(dtype)
    k = (x @ params["wk"]).reshape(t, hkv, d).astype(dtype)
    v = (x @ params["wv"]).reshape(t, hkv, d).astype(dtype)
    return attn(q, k, v).astype(jnp.float32).reshape(t, hq * d) @ params["wo"]


def _adam_update(p, m, v, *, lr: float, c1: float, c2: float, eps: float):
    """One Adam parameter update from the moment estimates (bias corrections ``c1``, ``c2``)."""
    return p - lr * (m / c1) / (jnp.sqrt(v / c2) + eps)


def train(params, x, y, attn: Callable, dtype, heads: tuple[int, int, int], steps: int = STEPS,
          lr: float = 3e-3) -> list[float]:
    """``steps`` eager Adam steps (plain JAX, torch.optim.Adam's defaults) on the mean squared error; the losses."""
    b1, b2, eps = 0.9, 0.999, 1e-8
    m = jax.tree_util.tree_map(jnp.zeros_like, params)
    v = jax.tree_util.tree_map(jnp.zeros_like, params)

    def loss_fn(p):
        return jnp.mean((apply_layer(p, x, attn, dtype, *heads) - y) ** 2)

    losses = []
    for i in range(1, steps + 1):
        loss, g = jax.value_and_grad(loss_fn)(params)
        assert all(bool(jnp.isfinite(a).all()) for a in jax.tree_util.tree_leaves(g)), f"step {i}: gradients"
        m = jax.tree_util.tree_map(lambda a, b: b1 * a + (1 - b1) * b, m, g)
        v = jax.tree_util.tree_map(lambda a, b: b2 * a + (1 - b2) * b * b, v, g)
        params = jax.tree_util.tree_map(partial(_adam_update, lr=lr, c1=1 - b1 ** i, c2=1 - b2 ** i, eps=eps),
                                        params, m, v)
        losses.append(float(loss))
    return losses


def _fit_both(plan, lay, x, heads, dtype, *, deterministic: bool = False, steps: int = STEPS):
    """(varblock losses, float32 dense-masked losses) of the same layer, data and teacher."""
    hq, hkv, d = heads
    mask = jnp.asarray(dense_mask(lay, hq, hkv))
    dense32 = lambda q, k, v: dense_attention(q, k, v, mask, d ** -0.5)  # noqa: E731
    dm = x.shape[1]
    y = apply_layer(init_layer(jax.random.PRNGKey(99), dm, *heads), x, dense32, jnp.float32, *heads)  # the teacher
    p0 = init_layer(jax.random.PRNGKey(1), dm, *heads)
    ref = train(p0, x, y, dense32, jnp.float32, heads, steps)
    got = train(p0, x, y, lambda q, k, v: vbj.attention(q, k, v, plan, deterministic=deterministic), dtype, heads,
                steps)
    return got, ref


def _check_curves(got: list[float], ref: list[float], tol: float) -> None:
    assert got[-1] < 0.5 * got[0] and ref[-1] < 0.5 * ref[0], (got, ref)
    rel = np.abs(np.array(got) - np.array(ref)) / np.array(ref)
    assert rel.max() < tol, f"loss curves differ by up to {rel.max():.3%}: varblock {got} vs dense fp32 {ref}"


# ---------------------------------------------------------------------------------------------------- GPU
def _gpu():
    gpus = [dv for dv in jax.devices() if dv.platform == "gpu"]
    if not gpus:
        pytest.skip("jax sees no GPU")
    return gpus[0]


@pytest.mark.gpu
@pytest.mark.parametrize("deterministic", [False, True])
def test_jax_training_loss_goes_down_and_matches_dense_float32(deterministic):
    """A GQA layer with a causal block-sparse layout (odd lengths) trained 20 Adam steps through varblock's bf16
    forward and backward kernels: the loss halves and tracks a float32 dense-masked run within 2% at every step."""
    gpu = _gpu()
    cu = _cu([256, 100, 384, 17])
    heads = (8, 2, 64)
    lay = _layout(cu, heads[1], 64)
    plan = varblock.plan(cu, cu, num_heads_q=heads[0], num_heads_kv=heads[1], head_dim=heads[2], layout=lay)
    seed = int(np.random.default_rng().integers(2**31))
    # float32 matmuls in full precision (XLA would use TF32 on the H200), as the torch test's float32 run
    with jax.default_device(gpu), jax.default_matmul_precision("highest"):
        x = jax.random.normal(jax.random.PRNGKey(seed), (int(cu[-1]), 128))
        got, ref = _fit_both(plan, lay, x, heads, jnp.bfloat16, deterministic=deterministic)
    _check_curves(got, ref, 0.02)


@pytest.mark.gpu
def test_jax_deterministic_gradients_are_bit_identical():
    """deterministic=True through varblock.jax: the VJP of the attention is bit-identical over 5 calls (only
    varblock's kernels between the compared arrays: no XLA reduction order involved)."""
    gpu = _gpu()
    cu = _cu([300, 1, 0, 517])
    hq, hkv, d = 8, 2, 128
    lay = _layout(cu, hkv, 128)
    plan = varblock.plan(cu, cu, num_heads_q=hq, num_heads_kv=hkv, head_dim=d, layout=lay)
    with jax.default_device(gpu):
        ks = jax.random.split(jax.random.PRNGKey(int(np.random.default_rng().integers(2**31))), 4)
        t = int(cu[-1])
        q, k, v = (jax.random.normal(kk, (t, h, d)).astype(jnp.bfloat16) for kk, h in zip(ks, (hq, hkv, hkv)))
        ct = jax.random.normal(ks[3], (t, hq, d)).astype(jnp.bfloat16)
        runs = []
        for _ in range(5):
            _, vjp = jax.vjp(lambda q, k, v: vbj.attention(q, k, v, plan, deterministic=True), q, k, v)
            runs.append([np.asarray(g.astype(jnp.float32)) for g in vjp(ct)])
    for r in runs[1:]:
        for name, a, b in zip(("dq", "dk", "dv"), runs[0], r):
            assert np.isfinite(a).all() and np.array_equal(a, b), f"{name} differs between deterministic runs"


# ---------------------------------------------------------------------------------------------------- CPU
@pytest.fixture
def reference_kernels(monkeypatch):
    """varblock's kernels replaced by the float64 reference (results in the input dtype), the plans seen."""
    seen = []
    f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731

    def fwd(q, k, v, plan, *, softmax_scale=None, return_lse=False):
        out, lse = varblock.reference.attention_forward(f64(q), f64(k), f64(v), plan.layout,
                                                        softmax_scale=softmax_scale)
        return jnp.asarray(out, q.dtype), jnp.asarray(lse, jnp.float32)

    def bwd(dout, q, k, v, out, lse, plan, *, softmax_scale=None, deterministic=False):
        seen.append(plan)
        g = varblock.reference.attention_backward(f64(dout), f64(q), f64(k), f64(v), f64(out), f64(lse),
                                                  plan.layout, softmax_scale=softmax_scale)
        return tuple(jnp.asarray(a, q.dtype) for a in g)

    monkeypatch.setattr(varblock, "attention", fwd)
    monkeypatch.setattr(varblock, "attention_backward", bwd, raising=False)
    monkeypatch.setattr(vbj, "stream_for", lambda s, o, like=None: types.SimpleNamespace(sync=lambda: None))
    return seen


def test_training_loop_with_reference_kernels(reference_kernels):
    """The training loop of the GPU test, on the CPU with the reference in place of the kernels (bf16 in and
    out): the loss halves and tracks the float32 dense-masked run; every step's backward got the plan."""
    from varblock.plan import Plan

    cu = _cu([40, 0, 70, 5])
    heads = (4, 2, 16)
    lay = _layout(cu, heads[1], 16)
    plan = Plan(cu_seqlens_q=cu, cu_seqlens_k=cu, num_heads_q=heads[0], num_heads_kv=heads[1], head_dim=heads[2],
                layout=lay, device_id=0, arch="sm90", family="attention_fwd_mma", tile_m=128, tile_n=128,
                worklist=None, window_left=-1, window_right=-1, mask_flags=0, tok_block_k=0, tok_head_div=1)
    x = jax.random.normal(jax.random.PRNGKey(0), (int(cu[-1]), 32))
    got, ref = _fit_both(plan, lay, x, heads, jnp.bfloat16, steps=12)
    _check_curves(got, ref, 0.03)
    assert len(reference_kernels) == 12 and all(p is plan for p in reference_kernels)
