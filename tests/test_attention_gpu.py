"""The portable attention forward on the GPU against the reference (DESIGN.md section 6 tolerance rule):
every mask kind, GQA ratios, head dims, dtypes, odd and empty sequence lengths, densities, torch and cupy."""

from __future__ import annotations

import numpy as np
import pytest

import varblock
from tests._attention_ref import attention_ref, check_attention
from varblock import layout as L
from varblock.ops.state import state_of

pytestmark = pytest.mark.gpu

LENS = [1, 3, 113, 0, 1023, 200]
POISON = float("nan")
#: every attention_fwd kernel family, fastest first; the correctness tests run once per family (backend= forced)
BACKENDS = varblock.families.family_names("attention_fwd")


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


def _plan(*args, backend="auto", **kw):
    """``varblock.plan`` forcing ``backend``; a family other than the portable fallback may decline (then skip)."""
    try:
        return varblock.plan(*args, backend=backend, **kw)
    except ValueError as ex:
        if backend not in ("auto", BACKENDS[-1]) and "cannot run this problem" in str(ex):
            pytest.skip(str(ex))
        raise


def _cu(lens):
    return np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)


def _qkv(torch, total_q, total_k, hq, hkv, d, dtype, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    dt = getattr(torch, dtype)
    q = torch.randn(total_q, hq, d, device="cuda", generator=g).to(dt)
    k = torch.randn(total_k, hkv, d, device="cuda", generator=g).to(dt)
    v = torch.randn(total_k, hkv, d, device="cuda", generator=g).to(dt)
    return q, k, v


def _run(torch, q, k, v, plan_or_layout, *, what, backend="auto", **kw):
    total_q, hq, d = q.shape
    out = torch.full((total_q, hq, d), POISON, dtype=q.dtype, device="cuda")
    lse = torch.full((hq, total_q), POISON, dtype=torch.float32, device="cuda")
    if isinstance(plan_or_layout, varblock.Plan):
        p = plan_or_layout
    else:
        p = _plan(plan_or_layout.cu_seqlens_q, plan_or_layout.cu_seqlens_k, num_heads_q=hq,
                  num_heads_kv=k.shape[1], head_dim=d, layout=plan_or_layout, backend=backend, **kw)
    assert backend == "auto" or p.family == backend
    o2, l2 = varblock.attention(q, k, v, p, return_lse=True, out=out, lse=lse)
    assert o2 is out and l2 is lse
    torch.cuda.synchronize()
    assert not torch.isnan(lse).any(), f"{what}: unwritten LSE"
    ref_o, ref_l, base_o = attention_ref(torch, q, k, v, p.layout)
    return check_attention(torch, out, lse, ref_o, ref_l, base_o, what=what), p


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("d", [64, 96, 128, 192, 256])
@pytest.mark.parametrize("causal", [False, True])
def test_dense_and_causal(torch, dtype, d, causal, backend):
    lens = LENS
    cu = _cu(lens)
    q, k, v = _qkv(torch, int(cu[-1]), int(cu[-1]), 8, 2, d, dtype, seed=d + 7 * causal)
    p = _plan(cu, cu, num_heads_q=8, num_heads_kv=2, head_dim=d, causal=causal, dtype=dtype, backend=backend)
    _run(torch, q, k, v, p, what=f"dense causal={causal} d={d} {dtype}")


@pytest.mark.parametrize("density", [1.0, 0.5, 0.1, 0.0])
@pytest.mark.parametrize("hq,hkv", [(4, 4), (8, 2), (8, 1), (16, 2)])
@pytest.mark.parametrize("causal", [False, True])
def test_random_blocks(torch, density, hq, hkv, causal, backend):
    lens = [113, 1023, 3, 0, 517]
    cu = _cu(lens)
    lay = L.random_blocks(cu, cu, density=density, num_heads=hkv, head_mode="per_kv_head", causal=causal,
                          seed=int(density * 100) + hq, keep_diagonal=density > 0)
    q, k, v = _qkv(torch, int(cu[-1]), int(cu[-1]), hq, hkv, 128, "bfloat16", seed=hq * 31 + hkv)
    _run(torch, q, k, v, lay, what=f"random density={density} {hq}/{hkv} causal={causal}", backend=backend)


def test_per_q_head_layout_seqlen_q_ne_k(torch, backend):
    """Per-query-head patterns (FA4-style), seqlen_q != seqlen_k (bottom-right causal)."""
    lq, lk = [50, 300, 1, 129], [200, 300, 77, 1000]
    cu_q, cu_k = _cu(lq), _cu(lk)
    lay = L.random_blocks(cu_q, cu_k, density=0.4, num_heads=6, head_mode="per_q_head", causal=True, seed=3,
                          block_q=64, block_k=64)
    q, k, v = _qkv(torch, int(cu_q[-1]), int(cu_k[-1]), 6, 3, 64, "float16", seed=5)
    _run(torch, q, k, v, lay, what="per-q-head causal q!=k", backend=backend)


@pytest.mark.parametrize("wl,wr", [(100, 0), (64, 64), (0, 300), (511, -1)])
def test_sliding_window(torch, wl, wr, backend):
    cu = _cu([1023, 3, 700])
    lay = L.sliding_window(cu, cu, window_left=wl, window_right=wr, num_heads=1)
    q, k, v = _qkv(torch, int(cu[-1]), int(cu[-1]), 4, 4, 128, "bfloat16", seed=wl + wr)
    _run(torch, q, k, v, lay, what=f"window ({wl},{wr})", backend=backend)


def test_dense_window_plan(torch, backend):
    cu = _cu([300, 1, 1023])
    q, k, v = _qkv(torch, int(cu[-1]), int(cu[-1]), 4, 1, 64, "bfloat16", seed=11)
    p = _plan(cu, num_heads_q=4, num_heads_kv=1, head_dim=64, causal=True, window=(200, 0), backend=backend)
    _run(torch, q, k, v, p, what="dense plan causal window 200")


def test_attention_sinks(torch, backend):
    cu = _cu([1023, 4224])
    lay = L.attention_sinks(cu, cu, sink_blocks=2, window_left=256, causal=True, num_heads=1)
    q, k, v = _qkv(torch, int(cu[-1]), int(cu[-1]), 4, 2, 128, "bfloat16", seed=13)
    _run(torch, q, k, v, lay, what="sinks + window", backend=backend)


def _sink_rule(lq, lk, sinks, wl):
    """Token rule (StreamingLLM / FlexAttention), causal: key j visible to query i iff (j < sinks or
    j >= i + off - wl) and j <= i + off."""
    i, j = np.arange(lq)[:, None], np.arange(lk)[None, :]
    off = lk - lq
    return ((j < sinks) | (j >= i + off - wl)) & (j <= i + off)


@pytest.mark.parametrize("sinks", [1, 4, 64, 100])
@pytest.mark.parametrize("block_q,block_k", [(64, 64), (32, 48)])
def test_attention_sinks_token_rule(torch, sinks, block_q, block_k):
    """Issue 8.3: with window_left=32, sink keys stay visible where a sink block crosses the diagonal (kernel
    parameter num_sink_tokens), for block sizes that do and do not divide the sink count and the window."""
    lq, lk = [300, 1, 257, 64], [300, 70, 400, 64]
    cu_q, cu_k = _cu(lq), _cu(lk)
    lay = L.attention_sinks(cu_q, cu_k, num_sink_tokens=sinks, window_left=32, causal=True, block_q=block_q,
                            block_k=block_k, num_heads=1)
    for b in range(len(lq)):  # the reference's token expansion is the token rule
        assert np.array_equal(lay.token_mask(b, 0), _sink_rule(lq[b], lk[b], sinks, 32))
    q, k, v = _qkv(torch, int(cu_q[-1]), int(cu_k[-1]), 4, 2, 128, "bfloat16", seed=sinks + block_k)
    _, p = _run(torch, q, k, v, lay, what=f"sinks={sinks} window 32 blocks {block_q}x{block_k}")
    assert p.num_sink_tokens == sinks


@pytest.mark.parametrize("causal", [False, True])
def test_document_mask(torch, causal, backend):
    lens = [1000, 333]
    cu = _cu(lens)
    rng = np.random.default_rng(4)
    doc = np.concatenate([np.repeat(np.arange(5), rng.multinomial(n, [0.2] * 5)) for n in lens]).astype(np.int32)
    lay = L.document(cu, cu, doc_ids_q=doc, causal=causal, num_heads=1)
    q, k, v = _qkv(torch, int(cu[-1]), int(cu[-1]), 4, 2, 64, "float16", seed=17)
    _run(torch, q, k, v, lay, what=f"document causal={causal}", backend=backend)


@pytest.mark.parametrize("pack", [None, True, False])
def test_token_mask_seer_1d(torch, pack, backend):
    """SeerAttention 1D token-level masks shared by each GQA group; with and without pack-GQA."""
    lens = [300, 77, 1]
    cu = _cu(lens)
    bs = 64
    hkv, hq = 2, 8
    rng = np.random.default_rng(8)
    t = max(lens)
    m1d = rng.random((len(lens), hkv, t, (t + bs - 1) // bs)) < 0.3
    lay = L.from_seer_1d(m1d, cu, cu, block_size=bs, head_mode="per_kv_head")
    q, k, v = _qkv(torch, int(cu[-1]), int(cu[-1]), hq, hkv, 128, "bfloat16", seed=19)
    kw = {} if pack is None else {"pack_gqa": pack}
    _, p = _run(torch, q, k, v, lay, what=f"seer 1d pack={pack}", backend=backend, **kw)
    if pack is not None:
        assert p.pack_gqa == (4 if pack else 1)


def test_flashinfer_variable_blocks(torch, backend):
    hkv, hq = 2, 4
    row = np.array([[100, 28, 300], [128, 128, 172]])
    col = np.array([[64, 200, 164], [1, 255, 172]])
    rng = np.random.default_rng(2)
    bmm = rng.random((hkv, 3, 3)) < 0.6
    cu = _cu([428])
    lay = L.from_flashinfer(bmm, row, col, cu, cu)
    q, k, v = _qkv(torch, 428, 428, hq, hkv, 96, "bfloat16", seed=23)
    _run(torch, q, k, v, lay, what="flashinfer variable blocks", backend=backend)


def test_long_sequence_4224(torch, backend):
    cu = _cu([4224])
    lay = L.random_blocks(cu, cu, density=0.3, num_heads=1, causal=True, seed=1)
    q, k, v = _qkv(torch, 4224, 4224, 2, 1, 128, "bfloat16", seed=29)
    _run(torch, q, k, v, lay, what="4224 causal random", backend=backend)


def test_empty_batch_and_all_empty(torch):
    cu = _cu([0, 0])
    q, k, v = _qkv(torch, 0, 0, 2, 2, 64, "bfloat16", seed=1)
    out = varblock.attention(q, k, v, cu_seqlens_q=cu, cu_seqlens_k=cu)
    assert out.shape == (0, 2, 64)


def test_cupy_inputs(cupy, torch):
    cu = _cu([113, 1023])
    q, k, v = _qkv(torch, int(cu[-1]), int(cu[-1]), 4, 2, 64, "float16", seed=31)
    qc, kc, vc = (cupy.from_dlpack(x) for x in (q, k, v))
    out, lse = varblock.attention(qc, kc, vc, cu_seqlens_q=cu, causal=True, return_lse=True)
    assert isinstance(out, cupy.ndarray)
    cupy.cuda.get_current_stream().synchronize()
    lay = varblock.plan(cu, num_heads_q=4, num_heads_kv=2, head_dim=64, causal=True).layout
    ref_o, ref_l, base_o = attention_ref(torch, q, k, v, lay)
    check_attention(torch, torch.from_dlpack(out), torch.from_dlpack(lse), ref_o, ref_l, base_o, what="cupy")


def test_plan_reuse_and_cache(torch):
    cu = _cu([100, 200])
    p1 = varblock.plan(cu, num_heads_q=2, head_dim=64, causal=True)
    p2 = varblock.plan(cu.copy(), num_heads_q=2, head_dim=64, causal=True)
    assert p1 is p2
    q, k, v = _qkv(torch, 300, 300, 2, 2, 64, "bfloat16", seed=37)
    a = varblock.attention(q, k, v, p1)
    for _ in range(10):
        b = varblock.attention(q, k, v, p1)
    torch.cuda.synchronize()
    assert torch.equal(a, b)


@pytest.mark.parametrize("case,exc,match", [
    ("dtype", TypeError, "q: dtype float32"),
    ("mixed", TypeError, "dtypes must match"),
    ("shape", ValueError, "k: expected shape"),
    ("ndim", ValueError, "q: expected a 3-d"),
    ("cpu", ValueError, "q: expected an array on a CUDA device"),
    ("noncontig", ValueError, "v: the last dimension must be contiguous"),
    ("head_dim", ValueError, "head_dim: 80 is not supported"),
    ("gqa", ValueError, "num_heads_q: 6 is not a multiple"),
    ("stride", ValueError, "q_stride_tok multiple of 8"),
    ("no_plan", TypeError, "plan: pass"),
    ("cu_bad", ValueError, "cu_seqlens_q: must be non-decreasing"),
    ("lse_shape", ValueError, "lse: expected shape"),
])
def test_attention_bad_input(torch, case, exc, match):
    cu = _cu([10, 20])
    q, k, v = _qkv(torch, 30, 30, 4, 2, 64, "bfloat16", seed=41)
    kw = {"cu_seqlens_q": cu}
    if case == "dtype":
        q, k, v = q.float(), k.float(), v.float()
    elif case == "mixed":
        k = k.half()
    elif case == "shape":
        k = k[:29]
    elif case == "ndim":
        q = q[0]
    elif case == "cpu":
        q = q.cpu()
    elif case == "noncontig":
        v = torch.randn(30, 2, 128, device="cuda", dtype=torch.bfloat16)[..., ::2]
    elif case == "head_dim":
        q, k, v = _qkv(torch, 30, 30, 4, 2, 80, "bfloat16", seed=1)
    elif case == "gqa":
        q, k, v = _qkv(torch, 30, 30, 6, 4, 64, "bfloat16", seed=1)
    elif case == "stride":
        q = torch.as_strided(torch.randn(30 * 260, device="cuda", dtype=torch.bfloat16), (30, 4, 64), (260, 64, 1))
    elif case == "no_plan":
        kw = {}
    elif case == "cu_bad":
        kw = {"cu_seqlens_q": np.array([0, 20, 10], np.int32)}
    elif case == "lse_shape":
        kw["lse"] = torch.empty(30, 4, device="cuda")
    with pytest.raises(exc, match=match):
        varblock.attention(q, k, v, **kw)


def test_check_detects_a_wrong_result(torch):
    """The tolerance check is discriminative: a slightly wrong softmax scale fails it."""
    cu = _cu([500, 300])
    q, k, v = _qkv(torch, 800, 800, 4, 2, 128, "bfloat16", seed=43)
    p = varblock.plan(cu, num_heads_q=4, num_heads_kv=2, head_dim=128, causal=True)
    out, lse = varblock.attention(q, k, v, p, return_lse=True, softmax_scale=0.95 / np.sqrt(128))
    torch.cuda.synchronize()
    ref_o, ref_l, base_o = attention_ref(torch, q, k, v, p.layout)
    with pytest.raises(AssertionError):
        check_attention(torch, out, lse, ref_o, ref_l, base_o, what="wrong scale")


def test_fast_path_still_checks_alignment_and_signature(torch):
    """Repeated calls take the prepared fast path; a misaligned view with the same shape and strides, or a changed
    signature, is still caught."""
    cu = _cu([64, 64])
    p = varblock.plan(cu, num_heads_q=2, head_dim=64, causal=True)
    base = torch.randn(128 * 2 * 64 + 8, device="cuda", dtype=torch.bfloat16)
    q = base[: 128 * 2 * 64].view(128, 2, 64)
    k, v = torch.randn_like(q), torch.randn_like(q)
    a = varblock.attention(q, k, v, p)
    import varblock.ops.attention as A

    hits = []
    orig = A._torch_fast_path

    def spy(*args):
        r = orig(*args)
        hits.append(r is not None)
        return r

    A._torch_fast_path = spy
    try:
        b = varblock.attention(q, k, v, p)  # fast path
    finally:
        A._torch_fast_path = orig
    torch.cuda.synchronize()
    assert torch.equal(a, b) and len(state_of(p).fast_paths) == 1 and hits == [True]
    shifted = base[1: 1 + 128 * 2 * 64].view(128, 2, 64)
    with pytest.raises(ValueError, match="q address must be a multiple of 16"):
        varblock.attention(shifted, k, v, p)
    with pytest.raises(TypeError, match="dtypes must match"):
        varblock.attention(q, k.half(), v, p)


def _warm(torch, p, q, k, v, **kw):
    """Two calls: the second takes the fast path (asserted)."""
    varblock.attention(q, k, v, p, **kw)
    n = len(state_of(p).fast_paths)
    varblock.attention(q, k, v, p, **kw)
    torch.cuda.synchronize()
    assert n >= 1 and len(state_of(p).fast_paths) == n


@pytest.mark.parametrize("extra", [{"cu_seqlens_q": "cu"}, {"cu_seqlens_k": "cu"}, {"layout": "lay"},
                                   {"causal": True}, {"window": (8, 0)}])
def test_fast_path_refuses_plan_with_planning_arguments(torch, extra):
    """Bug 8.4: a plan plus arguments that would make another plan is refused every time, also when warm."""
    cu = _cu([64, 64])
    p = varblock.plan(cu, num_heads_q=2, head_dim=64, causal=True, cache=False)
    q, k, v = _qkv(torch, 128, 128, 2, 2, 64, "bfloat16", seed=47)
    kw = {n: (cu if x == "cu" else p.layout if x == "lay" else x) for n, x in extra.items()}
    for warm in (False, True):
        if warm:
            _warm(torch, p, q, k, v)
        with pytest.raises(TypeError, match="plan: pass either a plan or"):
            varblock.attention(q, k, v, p, **kw)


@pytest.mark.parametrize("target", ["q", "k", "v", "q_overlap", "lse_in_out"])
def test_out_aliasing_inputs_is_refused(torch, target):
    """``out=`` (or ``lse=``) sharing memory with q, k, v or the other output is refused, cold and warm."""
    cu = _cu([64, 64])
    p = varblock.plan(cu, num_heads_q=2, head_dim=64, causal=True, cache=False)
    q, k, v = _qkv(torch, 128, 128, 2, 2, 64, "bfloat16", seed=53)
    big = torch.empty(2 * 128 * 2 * 64, dtype=torch.bfloat16, device="cuda")
    out_ok, lse_ok = torch.empty_like(q), torch.empty(2, 128, device="cuda")
    if target == "q_overlap":  # q and out are different views of one buffer that overlap by half
        q = big[: 128 * 2 * 64].view(128, 2, 64).copy_(q)
        kw = {"out": big[64 * 2 * 64: 64 * 2 * 64 + 128 * 2 * 64].view(128, 2, 64)}
    elif target == "lse_in_out":
        kw = {"out": out_ok, "lse": out_ok.view(torch.float32).view(-1)[: 2 * 128].view(2, 128)}
    else:
        kw = {"out": {"q": q, "k": k, "v": v}[target]}
    for warm in (False, True):
        if warm:
            _warm(torch, p, q, k, v, out=out_ok, lse=lse_ok)
        with pytest.raises(ValueError, match="memory overlaps"):
            varblock.attention(q, k, v, p, **kw)


def test_backend_choice_and_forcing(torch):
    """``backend=``: auto records the chosen family; forcing a known family works; unknown ones and a plan of
    another family are refused with the family named."""
    cu = _cu([100, 3])
    p = varblock.plan(cu, num_heads_q=2, head_dim=64, causal=True, cache=False)
    assert p.family in BACKENDS and set(p.declined) == set(BACKENDS[: BACKENDS.index(p.family)])
    assert BACKENDS[-1] == "attention_fwd_mma", "the portable family is the fallback"
    forced = varblock.plan(cu, num_heads_q=2, head_dim=64, causal=True, cache=False, backend="attention_fwd_mma")
    assert forced.family == "attention_fwd_mma" and forced.declined == {}
    q, k, v = _qkv(torch, 103, 103, 2, 2, 64, "bfloat16", seed=59)
    b = varblock.attention(q, k, v, forced, backend="attention_fwd_mma")
    c = varblock.attention(q, k, v, cu_seqlens_q=cu, causal=True, backend="attention_fwd_mma")
    torch.cuda.synchronize()
    assert torch.equal(b, c)
    _run(torch, q, k, v, p, what=f"auto-chosen family {p.family}")
    with pytest.raises(ValueError, match="unknown attention_fwd kernel family 'nope'"):
        varblock.plan(cu, num_heads_q=2, head_dim=64, backend="nope")
    with pytest.raises(ValueError, match=f"backend: the plan runs kernel family {p.family}"):
        varblock.attention(q, k, v, p, backend="nope")
    with pytest.raises(ValueError, match="attention_fwd_mma cannot run this problem: head_dim: 80"):
        varblock.plan(cu, num_heads_q=2, head_dim=80, backend="attention_fwd_mma")
