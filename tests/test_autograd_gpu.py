"""``varblock.torch`` and ``varblock.jax`` on the GPU: gradients against a dense masked softmax attention built from
the layout's token-level mask (FlashAttention's rule: error <= 2x the error of the same dense attention run in the
low-precision dtype, plus rounding noise), directional derivatives against float64 finite differences,
``torch.compile(fullgraph=True)``, CUDA-graph capture and replay of forward + backward, an end-to-end training run
against a float32 dense-masked run, and the JAX custom_vjp against ``jax.grad`` of a dense masked reference.
Fresh random inputs per test; gradients are checked finite everywhere (no unwritten memory)."""

from __future__ import annotations

import os

import numpy as np
import pytest

import varblock
from tests._tolerance import assert_close
from varblock import layout as L

pytestmark = pytest.mark.gpu

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # JAX shares the GPU with torch in this process


def _cu(lens):
    return np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)


def dense_mask(lay, hq: int, hkv: int) -> np.ndarray:
    """bool [Hq, total_q, total_k]: the layout's token-level mask per query head, block-diagonal over sequences."""
    cq, ck = lay.cu_seqlens_q, lay.cu_seqlens_k
    m = np.zeros((hq, int(cq[-1]), int(ck[-1])), bool)
    hmap = lay.head_map(hq, hkv)
    for b in range(len(cq) - 1):
        if cq[b + 1] > cq[b] and ck[b + 1] > ck[b]:
            for h in range(hq):
                m[h, cq[b]:cq[b + 1], ck[b]:ck[b + 1]] = lay.token_mask(b, int(hmap[h]))
    return m


def dense_attention(torch, q, k, v, mask, scale):
    """Masked softmax attention in q's dtype (softmax in float32, P rounded to the dtype, as plain PyTorch does);
    rows without a kept key give 0. ``mask``: bool [Hq, total_q, total_k] on the GPU."""
    group = q.shape[1] // k.shape[1]
    kk, vv = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    s = torch.einsum("qhd,khd->hqk", q, kk)
    s = s.to(torch.promote_types(s.dtype, torch.float32)) * scale
    s = s.masked_fill(~mask, -1e30)
    p = torch.softmax(s, dim=-1) * mask.any(dim=-1, keepdim=True)
    return torch.einsum("hqk,khd->qhd", p.to(q.dtype), vv)


def _rand(torch, shape, dtype, gen):
    return torch.randn(*shape, device="cuda", generator=gen).to(dtype)


def _layout(kind: str, cu, hkv: int, bs: int):
    if kind == "causal_sparse":
        return L.random_blocks(cu, cu, density=0.5, num_heads=hkv, head_mode="per_kv_head", causal=True, seed=7,
                               block_q=bs, block_k=bs)
    if kind == "window":
        return L.sliding_window(cu, cu, window_left=100, window_right=0, block_q=bs, block_k=bs)
    return L.dense(cu, cu, num_heads=1, block_q=bs, block_k=bs)


CASES = [  # (layout kind, Hq, Hkv, D, dtype, block)
    ("causal_sparse", 8, 2, 128, "bfloat16", 64),
    ("dense", 4, 4, 64, "float16", 128),
    ("window", 8, 1, 128, "bfloat16", 64),
]


@pytest.mark.parametrize("kind, hq, hkv, d, dtype, bs", CASES)
@pytest.mark.parametrize("deterministic", [False, True])
def test_gradients_vs_dense_masked_attention(torch, kind, hq, hkv, d, dtype, bs, deterministic):
    import varblock.torch as vbt

    cu = _cu([300, 1, 0, 517, 64])
    lay = _layout(kind, cu, hkv, bs)
    plan = varblock.plan(cu, cu, num_heads_q=hq, num_heads_kv=hkv, head_dim=d, layout=lay)
    g = torch.Generator(device="cuda").manual_seed(hash((kind, deterministic)) % 2**31)
    dt = getattr(torch, dtype)
    t = int(cu[-1])
    q, k, v = (_rand(torch, (t, h, d), dt, g).requires_grad_() for h in (hq, hkv, hkv))
    dout = _rand(torch, (t, hq, d), dt, g)
    out = vbt.attention(q, k, v, plan, deterministic=deterministic)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), dout)
    mask = torch.from_numpy(dense_mask(lay, hq, hkv)).cuda()
    scale = d ** -0.5
    x64 = [x.detach().double().requires_grad_() for x in (q, k, v)]
    o64 = dense_attention(torch, *x64, mask, scale)
    ref = torch.autograd.grad(o64, x64, dout.double())
    o_lp = dense_attention(torch, q, k, v, mask, scale)
    low = torch.autograd.grad(o_lp, (q, k, v), dout)
    np_ = lambda x: x.detach().double().cpu().numpy()  # noqa: E731
    assert_close(np_(out), np_(o64), dtype, baseline=np_(o_lp), what=f"{kind} out")
    for name, got, r, lo in zip(("dq", "dk", "dv"), (dq, dk, dv), ref, low):
        assert torch.isfinite(got).all(), f"{kind}: {name} not finite"
        assert_close(np_(got), np_(r), dtype, baseline=np_(lo), what=f"{kind} {name}")


def test_directional_derivatives_vs_finite_differences(torch):
    """gradcheck-style: <grad L, delta> from varblock's backward against a central finite difference of the float64
    dense reference along random directions (one input at a time, then all), within 2x the error of the same
    directional derivative from a plain bf16 dense attention's autograd plus the noise of rounding the gradients to
    bf16 (6 x 2^-8 x the root sum of squares of grad * delta)."""
    import varblock.torch as vbt

    cu = _cu([200, 129, 33])
    hq, hkv, d = 4, 2, 64
    lay = _layout("causal_sparse", cu, hkv, 64)
    plan = varblock.plan(cu, cu, num_heads_q=hq, num_heads_kv=hkv, head_dim=d, layout=lay)
    g = torch.Generator(device="cuda").manual_seed(11)
    t = int(cu[-1])
    q, k, v = (_rand(torch, (t, h, d), torch.bfloat16, g).requires_grad_() for h in (hq, hkv, hkv))
    w = _rand(torch, (t, hq, d), torch.float64, g)
    mask = torch.from_numpy(dense_mask(lay, hq, hkv)).cuda()
    grads = torch.autograd.grad((vbt.attention(q, k, v, plan).double() * w).sum(), (q, k, v))
    base = torch.autograd.grad((dense_attention(torch, q, k, v, mask, d ** -0.5).double() * w).sum(), (q, k, v))
    x64 = [x.detach().double() for x in (q, k, v)]

    def f(xs):
        return float((dense_attention(torch, *xs, mask, d ** -0.5) * w).sum())

    def directional(gs, dirs):
        return sum(float((gr.double() * dd).sum()) for gr, dd in zip(gs, dirs))

    for trial in range(4):
        dirs = [_rand(torch, x.shape, torch.float64, g) for x in x64]
        if trial < 3:
            dirs = [dd if i == trial else torch.zeros_like(dd) for i, dd in enumerate(dirs)]
        h = 1e-4
        fd = (f([x + h * dd for x, dd in zip(x64, dirs)]) - f([x - h * dd for x, dd in zip(x64, dirs)])) / (2 * h)
        rss = sum(float((gr.double() * dd).square().sum()) for gr, dd in zip(grads, dirs)) ** 0.5
        err, err_base = abs(directional(grads, dirs) - fd), abs(directional(base, dirs) - fd)
        assert err <= 2 * err_base + 6 * 2.0**-8 * rss, f"direction {trial}: error {err:.3g} vs finite " \
            f"difference {fd:.6g} (plain bf16: {err_base:.3g}, rss of g d {rss:.3g})"


class _Layer:
    """A small attention layer as plain tensors: x [T, Dm] -> q/k/v projections (GQA) -> attention -> output
    projection. ``attn``: the attention function (varblock's or the dense reference)."""

    def __init__(self, torch, dm: int, hq: int, hkv: int, d: int, seed: int) -> None:
        g = torch.Generator(device="cuda").manual_seed(seed)
        mk = lambda i, o: (torch.randn(i, o, device="cuda", generator=g) / i ** 0.5).requires_grad_()  # noqa: E731
        self.params = [mk(dm, hq * d), mk(dm, hkv * d), mk(dm, hkv * d), mk(hq * d, dm)]
        self.hq, self.hkv, self.d = hq, hkv, d

    def __call__(self, x, attn, dtype):
        wq, wk, wv, wo = self.params
        t = x.shape[0]
        q = (x @ wq).view(t, self.hq, self.d).to(dtype)
        k = (x @ wk).view(t, self.hkv, self.d).to(dtype)
        v = (x @ wv).view(t, self.hkv, self.d).to(dtype)
        return attn(q, k, v).float().reshape(t, self.hq * self.d) @ wo


def _train(torch, layer, attn, dtype, x, y, steps: int) -> list[float]:
    opt = torch.optim.Adam(layer.params, lr=3e-3)
    losses = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(layer(x, attn, dtype), y)
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in layer.params)
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def test_training_loss_goes_down_and_matches_dense_float32(torch):
    """End to end: a GQA attention layer with a causal block-sparse layout trained 20 steps with varblock (bf16
    attention) and with a float32 dense-masked attention from the same start: both losses fall, and agree."""
    import varblock.torch as vbt

    cu = _cu([256, 100, 384, 17])
    hq, hkv, d, dm = 8, 2, 64, 128
    lay = _layout("causal_sparse", cu, hkv, 64)
    plan = varblock.plan(cu, cu, num_heads_q=hq, num_heads_kv=hkv, head_dim=d, layout=lay)
    mask = torch.from_numpy(dense_mask(lay, hq, hkv)).cuda()
    g = torch.Generator(device="cuda").manual_seed(5)
    x = torch.randn(int(cu[-1]), dm, device="cuda", generator=g)

    def dense32(q, k, v):
        return dense_attention(torch, q, k, v, mask, d ** -0.5)

    with torch.no_grad():
        y = _Layer(torch, dm, hq, hkv, d, seed=99)(x, dense32, torch.float32)  # a teacher layer to fit
    ref = _train(torch, _Layer(torch, dm, hq, hkv, d, seed=1), dense32, torch.float32, x, y, 20)
    got = _train(torch, _Layer(torch, dm, hq, hkv, d, seed=1), lambda q, k, v: vbt.attention(q, k, v, plan),
                 torch.bfloat16, x, y, 20)
    assert got[-1] < 0.5 * got[0] and ref[-1] < 0.5 * ref[0], (got, ref)
    rel = np.abs(np.array(got) - np.array(ref)) / np.array(ref)
    assert rel.max() < 0.02, f"loss curves differ by up to {rel.max():.3%}: varblock {got} vs dense fp32 {ref}"


def test_torch_compile_fullgraph(torch):
    """A module using varblock.torch.attention compiles with fullgraph=True (a graph break raises) under Inductor,
    and its outputs and gradients equal eager mode's."""
    import varblock.torch as vbt

    cu = _cu([130, 0, 77, 256])
    hq, hkv, d, dm = 4, 2, 64, 64
    lay = _layout("causal_sparse", cu, hkv, 64)
    plan = varblock.plan(cu, cu, num_heads_q=hq, num_heads_kv=hkv, head_dim=d, layout=lay)

    class Attn(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = torch.nn.Linear(dm, (hq + 2 * hkv) * d, dtype=torch.bfloat16, device="cuda")
            self.o = torch.nn.Linear(hq * d, dm, dtype=torch.bfloat16, device="cuda")

        def forward(self, x):
            t = x.shape[0]
            q, k, v = self.qkv(x).view(t, hq + 2 * hkv, d).split([hq, hkv, hkv], dim=1)
            return self.o(vbt.attention(q, k, v, plan, deterministic=True).reshape(t, hq * d))

    torch.manual_seed(3)
    mod = Attn()
    x = torch.randn(int(cu[-1]), dm, device="cuda", dtype=torch.bfloat16)
    torch._dynamo.reset()
    cmod = torch.compile(mod, fullgraph=True)
    outs = []
    for m in (mod, cmod):
        mod.zero_grad(set_to_none=True)
        y = m(x)
        (y.float() ** 2).sum().backward()
        outs.append([y.detach()] + [p.grad.clone() for p in mod.parameters()])
    for i, (e, c) in enumerate(zip(*outs)):
        err = (c.float() - e.float()).abs().max().item()
        assert torch.isfinite(c).all() and err <= 2e-2 * e.float().abs().max().item(), (i, err)


def test_cuda_graph_capture_and_replay(torch):
    """Forward + backward captured in a CUDA graph (deterministic mode) and replayed on new inputs copied into the
    static tensors: bit-identical to eager calls on those inputs. The first calls on the capture stream run outside
    capture (the backward's workspace is allocated per plan and stream on first use)."""
    import varblock.torch as vbt

    cu = _cu([300, 45, 512])
    hq, hkv, d = 8, 2, 128
    lay = _layout("causal_sparse", cu, hkv, 128)
    plan = varblock.plan(cu, cu, num_heads_q=hq, num_heads_kv=hkv, head_dim=d, layout=lay)
    t = int(cu[-1])
    g = torch.Generator(device="cuda").manual_seed(21)
    new = lambda: [_rand(torch, (t, h, d), torch.bfloat16, g) for h in (hq, hkv, hkv, hq)]  # noqa: E731
    static = [x.clone() for x in new()]
    for x in static[:3]:
        x.requires_grad_()

    def step():
        q, k, v, dout = static
        out = vbt.attention(q, k, v, plan, deterministic=True)
        return (out, *torch.autograd.grad(out, (q, k, v), dout))

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=s):
        results = step()
    for _ in range(3):
        fresh = new()
        with torch.no_grad():
            for dst, src in zip(static, fresh):
                dst.copy_(src)
            for r in results:  # poison: every element must be rewritten by the replay
                r.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        expect = step()
        for name, a, b in zip(("out", "dq", "dk", "dv"), results, expect):
            assert torch.equal(a, b), f"{name}: graph replay differs from the eager call"


def test_jax_custom_vjp_vs_jax_grad(torch):
    """varblock.jax.attention under jax.value_and_grad against jax.grad of a dense masked attention (float32
    reference; baseline: the same dense attention in bf16)."""
    jax = pytest.importorskip("jax")
    jnp = pytest.importorskip("jax.numpy")
    gpus = [dv for dv in jax.devices() if dv.platform == "gpu"]
    if not gpus:
        pytest.skip("jax sees no GPU")
    import varblock.jax as vbj

    cu = _cu([200, 0, 333])
    hq, hkv, d = 8, 2, 128
    lay = _layout("causal_sparse", cu, hkv, 64)
    plan = varblock.plan(cu, cu, num_heads_q=hq, num_heads_kv=hkv, head_dim=d, layout=lay)
    t = int(cu[-1])
    keys = jax.random.split(jax.random.PRNGKey(int(np.random.default_rng().integers(2**31))), 4)
    put = lambda a: jax.device_put(a, gpus[0])  # noqa: E731
    q, k, v = (put(jax.random.normal(kk, (t, h, d)).astype(jnp.bfloat16)) for kk, h in zip(keys, (hq, hkv, hkv)))
    w = put(jax.random.normal(keys[3], (t, hq, d)))
    mask = put(jnp.asarray(dense_mask(lay, hq, hkv)))
    scale = d ** -0.5

    def dense(q, k, v):
        group = hq // hkv
        kk, vv = jnp.repeat(k, group, axis=1), jnp.repeat(v, group, axis=1)
        s = jnp.einsum("qhd,khd->hqk", q, kk).astype(jnp.float32) * scale
        s = jnp.where(mask, s, -1e30)
        p = jax.nn.softmax(s, axis=-1) * mask.any(axis=-1, keepdims=True)
        return jnp.einsum("hqk,khd->qhd", p.astype(q.dtype), vv)

    def loss(fn, dtype):
        return lambda q, k, v: (fn(q.astype(dtype), k.astype(dtype), v.astype(dtype)).astype(jnp.float32) * w).sum()

    grad = lambda fn: jax.value_and_grad(fn, argnums=(0, 1, 2))  # noqa: E731
    val, got = grad(loss(lambda q, k, v: vbj.attention(q, k, v, plan), jnp.bfloat16))(q, k, v)
    val_r, ref = grad(loss(dense, jnp.float32))(*(x.astype(jnp.float32) for x in (q, k, v)))
    _, low = grad(loss(dense, jnp.bfloat16))(q, k, v)
    assert abs(float(val) - float(val_r)) <= 1e-2 * abs(float(val_r)) + 1.0
    for name, a, r, lo in zip(("dq", "dk", "dv"), got, ref, low):
        a64, r64, lo64 = (np.asarray(x.astype(jnp.float32), np.float64) for x in (a, r, lo))
        assert np.isfinite(a64).all(), name
        assert_close(a64, r64, "bfloat16", baseline=lo64, what=f"jax {name}")
