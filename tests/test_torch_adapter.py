"""``varblock.torch`` on the CPU: the plan registry, argument checks, the custom ops' fake implementations and
autograd wiring (the kernels replaced by the float64 reference, so the wrapper is tested without a GPU), and
``torch.compile(fullgraph=True)`` over the ops. The GPU runs are in tests/test_autograd_gpu.py."""

from __future__ import annotations

import numpy as np
import pytest

import varblock
from varblock import layout as L
from varblock.plan import Plan

torch = pytest.importorskip("torch")
vbt = pytest.importorskip("varblock.torch")


def _cu(lens):
    return np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)


def _host_plan(lay, hq: int, hkv: int, d: int) -> Plan:
    """A Plan object carrying a layout (no device buffers: the kernels are replaced in these tests)."""
    return Plan(cu_seqlens_q=lay.cu_seqlens_q, cu_seqlens_k=lay.cu_seqlens_k, num_heads_q=hq, num_heads_kv=hkv,
                head_dim=d, layout=lay, device_id=0, arch="sm90", family="attention_fwd_mma", tile_m=128, tile_n=128,
                worklist=None, window_left=-1, window_right=-1, mask_flags=0, tok_block_k=0, tok_head_div=1)


def _np(t):
    return t.detach().to(torch.float64).numpy()


@pytest.fixture
def calls(monkeypatch):
    """varblock's forward/backward replaced by the float64 reference on CPU tensors; records the plans they got."""
    seen = {"fwd": [], "bwd": []}

    def fwd(q, k, v, plan, *, softmax_scale=None, return_lse=False):
        seen["fwd"].append((plan, softmax_scale))
        out, lse = varblock.reference.attention_forward(_np(q), _np(k), _np(v), plan.layout,
                                                        softmax_scale=softmax_scale)
        return torch.from_numpy(out).to(q.dtype), torch.from_numpy(lse).float()

    def bwd(dout, q, k, v, out, lse, plan, *, softmax_scale=None, deterministic=False):
        seen["bwd"].append((plan, softmax_scale, deterministic, dout.stride()))
        g = varblock.reference.attention_backward(_np(dout), _np(q), _np(k), _np(v), _np(out), _np(lse),
                                                  plan.layout, softmax_scale=softmax_scale)
        return tuple(torch.from_numpy(x).to(q.dtype) for x in g)

    monkeypatch.setattr(varblock, "attention", fwd)
    monkeypatch.setattr(varblock, "attention_backward", bwd, raising=False)
    return seen


def _problem(seed=0, causal=True, hq=4, hkv=2, d=16):
    lay = (L.causal if causal else L.dense)(_cu([5, 0, 19]), _cu([5, 0, 19]), num_heads=1)
    g = torch.Generator().manual_seed(seed)
    t = int(lay.cu_seqlens_q[-1])
    mk = lambda h: torch.randn(t, h, d, generator=g).to(torch.bfloat16).requires_grad_()  # noqa: E731
    return lay, _host_plan(lay, hq, hkv, d), mk(hq), mk(hkv), mk(hkv)


def test_gradients_reach_the_backward_with_the_plan(calls):
    """FA #2424 (an autograd wrapper not passing the sparse tensors to the backward): the backward gets the
    forward's plan, scale and mode, and the gradients are the reference's."""
    lay, plan, q, k, v = _problem()
    out = vbt.attention(q, k, v, plan, softmax_scale=0.3, deterministic=True)
    dout = torch.randn(out.shape).to(out.dtype)
    out.backward(dout)
    (p_f, s_f), = calls["fwd"]
    (p_b, s_b, det, _), = calls["bwd"]
    assert p_f is plan and p_b is plan and s_f == s_b == 0.3 and det is True
    ro, rl = varblock.reference.attention_forward(_np(q), _np(k), _np(v), lay, softmax_scale=0.3)
    ref = varblock.reference.attention_backward(_np(dout), _np(q), _np(k), _np(v), _np(out), rl, lay,
                                                softmax_scale=0.3)
    for name, got, r in zip(("dq", "dk", "dv"), (q.grad, k.grad, v.grad), ref):
        np.testing.assert_allclose(_np(got), r, atol=2e-2, rtol=2e-2, err_msg=name)
        assert np.abs(r).max() > 0


def test_lse_is_returned_and_not_differentiable(calls):
    _, plan, q, k, v = _problem()
    out, lse = vbt.attention(q, k, v, plan, return_lse=True)
    assert lse.shape == (q.shape[1], q.shape[0]) and lse.dtype == torch.float32 and not lse.requires_grad
    assert out.requires_grad
    out.sum().backward()  # dout with zero strides: made contiguous for the kernels
    assert calls["bwd"][0][3] == tuple(torch.empty(out.shape).stride())


def test_fake_implementations_give_the_output_shapes():
    _, plan, q, k, v = _problem()
    from torch._subclasses.fake_tensor import FakeTensorMode

    plain = [t.detach() for t in (q, k, v)]
    with FakeTensorMode() as mode:
        fq, fk, fv = (mode.from_tensor(t) for t in plain)
        out, lse = torch.ops.varblock.attention_fwd(fq, fk, fv, plan.uid, None, False)
        dq, dk, dv = torch.ops.varblock.attention_bwd(out, fq, fk, fv, out, lse, plan.uid, None, False)
    assert out.shape == q.shape and out.dtype == q.dtype and out.is_contiguous()
    assert lse.shape == (q.shape[1], q.shape[0]) and lse.dtype == torch.float32
    assert (dq.shape, dk.shape, dv.shape) == (q.shape, k.shape, v.shape)


def test_torch_compile_fullgraph_and_a_new_plan_recompiles(calls):
    """No graph break (fullgraph=True raises on one); another plan is not served by the first plan's graph."""
    lay, plan, q, k, v = _problem()
    _, plan2, *_ = _problem(causal=False)

    def f(q, k, v, p):
        return (vbt.attention(q * 2, k, v, p).float() ** 2).sum()

    torch._dynamo.reset()
    cf = torch.compile(f, fullgraph=True, backend="aot_eager")
    loss = cf(q, k, v, plan)
    loss.backward()
    eager = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    f(q, k, v, plan).backward()
    for a, b in zip(eager, (q.grad, k.grad, v.grad)):
        torch.testing.assert_close(a, b)
    cf(q, k, v, plan2)
    assert [p for p, _ in calls["fwd"]] == [plan, plan, plan2]
    assert all(p is plan for p, *_ in calls["bwd"])


def test_opcheck_of_the_registrations(calls):
    """torch.library.opcheck: schema, fake and autograd registrations agree with the implementation."""
    _, plan, q, k, v = _problem()
    args = (q.detach().requires_grad_(), k.detach().requires_grad_(), v.detach().requires_grad_(), plan.uid, None,
            False)
    torch.library.opcheck(torch.ops.varblock.attention_fwd.default, args,
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


@pytest.mark.parametrize("bad, kw, err, match", [
    ("plan", {}, TypeError, "plan"),
    ("q", {}, TypeError, "q: expected a torch.Tensor"),
    ("q_dtype", {}, TypeError, "q: expected bfloat16"),
    ("k_ndim", {}, ValueError, "k: expected"),
    (None, {"softmax_scale": "x"}, TypeError, "softmax_scale"),
    (None, {"softmax_scale": -1.0}, ValueError, "softmax_scale: expected a finite positive"),
    (None, {"softmax_scale": float("inf")}, ValueError, "softmax_scale"),
    (None, {"deterministic": 1}, TypeError, "deterministic"),
])
def test_argument_errors(bad, kw, err, match):
    _, plan, q, k, v = _problem()
    args = {"q": q, "k": k, "v": v, "plan": plan}
    if bad == "plan":
        args["plan"] = object()
    elif bad == "q":
        args["q"] = [1.0]
    elif bad == "q_dtype":
        args["q"] = q.float()
    elif bad == "k_ndim":
        args["k"] = k[0]
    with pytest.raises(err, match=match):
        vbt.attention(args["q"], args["k"], args["v"], args["plan"], **kw)


def test_inputs_the_kernels_cannot_take_are_copied(calls):
    """dout of out.sum() has zero strides, a transposed view has a non-unit last stride: both reach the kernels as
    contiguous copies; kernel-ready views are passed as they are."""
    _, plan, q, k, v = _problem()
    seen = []
    orig = varblock.attention

    def spy(q, k, v, plan, **kw):
        seen.append([t.stride() for t in (q, k, v)])
        return orig(q, k, v, plan, **kw)

    varblock.attention = spy
    try:
        kt = k.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()
        vbt.attention(q, kt, v, plan).sum().backward()
    finally:
        varblock.attention = orig
    assert kt.stride(-1) != 1 and seen[0][1] == tuple(torch.empty(k.shape).stride())
    assert seen[0][0] == q.stride() and seen[0][2] == v.stride()
    assert calls["bwd"][0][3] == tuple(torch.empty(q.shape).stride())
    assert kt.grad is not None and kt.grad.shape == k.shape


def test_device_plan_refused():
    _, plan, q, k, v = _problem()
    plan.on_device = True
    with pytest.raises(ValueError, match="device plan"):
        vbt.attention(q, k, v, plan)


def test_deterministic_follows_torch_by_default(calls):
    _, plan, q, k, v = _problem()
    before = torch.are_deterministic_algorithms_enabled()
    try:
        for flag in (True, False):
            torch.use_deterministic_algorithms(flag)
            vbt.attention(q, k, v, plan).sum().backward()
            assert calls["bwd"][-1][2] is flag
    finally:
        torch.use_deterministic_algorithms(before)
