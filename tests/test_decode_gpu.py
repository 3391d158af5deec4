"""varblock.decode on the GPU against the float64 reference (varblock.reference_decode), FlashAttention's rule:
max error <= 2 x that of a plain low-precision decode (P rounded to the input dtype before PV, output rounded)
+ 1e-5. Fresh random inputs, poisoned outputs. Page sizes 1..128 and contiguous caches, odd and empty lengths,
GQA 1/4/8, 1-16 new tokens, densities 1.0/0.5/0.1/0.0, fp16/bf16, head dims 64/128/256, split vs unsplit."""

from __future__ import annotations

import numpy as np
import pytest

import varblock
from tests._tolerance import round_to
from varblock import reference_decode as R
from varblock.layout import decode as LD

pytestmark = pytest.mark.gpu
POISON = 777.0


def _make(torch, rng, *, B, hkv, g, d, dtype, page_size, max_q, kv_range, causal=True, n_q=None, kv=None):
    n_q = rng.integers(1, max_q + 1, size=B) if n_q is None else np.asarray(n_q)
    kv = rng.integers(kv_range[0], kv_range[1] + 1, size=B) if kv is None else np.asarray(kv)
    if causal:
        kv = np.maximum(kv, n_q)
    cu_q = np.concatenate([[0], np.cumsum(n_q)]).astype(np.int32)
    tdt = getattr(torch, dtype)
    q = torch.randn(int(cu_q[-1]), hkv * g, d, device="cuda").to(tdt)
    case = {"cu_q": cu_q, "kv": kv, "q": q}
    if page_size is None:
        cu_k = np.concatenate([[0], np.cumsum(kv)]).astype(np.int32)
        case["k"] = torch.randn(int(cu_k[-1]) + 3, hkv, d, device="cuda").to(tdt)
        case["v"] = torch.randn(int(cu_k[-1]) + 3, hkv, d, device="cuda").to(tdt)
        case["cu_k"] = cu_k
        return case
    pages = (kv + page_size - 1) // page_size
    num_pages = int(pages.sum()) + 2
    perm = rng.permutation(num_pages)
    pt = np.full((B, int(pages.max(initial=0)) + 2), -1, dtype=np.int32)  # unused entries stay invalid
    o = 0
    for b in range(B):
        pt[b, :pages[b]] = perm[o:o + pages[b]]
        o += pages[b]
    case["k"] = torch.randn(num_pages, page_size, hkv, d, device="cuda").to(tdt)
    case["v"] = torch.randn(num_pages, page_size, hkv, d, device="cuda").to(tdt)
    case["pt"] = torch.from_numpy(pt).cuda()
    case["page_size"] = page_size
    return case


def _plan(case, hq, hkv, d, layout=None, causal=True, num_splits=None, num_sms=None, persistent=None):
    kw = dict(num_heads_q=hq, num_heads_kv=hkv, head_dim=d, layout=layout, causal=causal, num_splits=num_splits,
              num_sms=num_sms, persistent=persistent)
    if "pt" in case:
        return varblock.plan_decode(case["cu_q"], kv_lens=case["kv"], page_table=case["pt"],
                                    page_size=case["page_size"], **kw)
    return varblock.plan_decode(case["cu_q"], cu_seqlens_k=case["cu_k"], **kw)


def _np(t):
    return t.float().cpu().numpy().astype(np.float64)


def _baseline(case, dtype, layout, causal):
    """A plain low-precision decode: S and softmax in float64 from the rounded inputs, P rounded to the input
    dtype before PV, the output rounded to the dtype."""
    q, kc, vc = _np(case["q"]), _np(case["k"]), _np(case["v"])
    pt = case["pt"].cpu().numpy() if "pt" in case else None
    cu_k = case.get("cu_k")
    cu_q, kv = case["cu_q"], case["kv"]
    hq, hkv, d = q.shape[1], kc.shape[-2], q.shape[2]
    g = hq // hkv
    out = np.zeros_like(q)
    for b in range(len(kv)):
        q0, n, L = int(cu_q[b]), int(cu_q[b + 1] - cu_q[b]), int(kv[b])
        if n == 0 or L == 0:
            continue
        kb = R.gather_kv(kc, b, L, page_table=pt, cu_seqlens_k=cu_k)
        vb = R.gather_kv(vc, b, L, page_table=pt, cu_seqlens_k=cu_k)
        t = np.arange(n)
        cok = (np.arange(L)[None] <= (L - n + t)[:, None]) if causal else np.ones((n, L), bool)
        for h in range(hq):
            ok = cok & R.allowed_keys(layout, b, h, g, L)[None]
            s = np.where(ok, q[q0:q0 + n, h] @ kb[:, h // g].T / np.sqrt(d), -np.inf)
            m = s.max(axis=1, initial=-np.inf)
            m = np.where(np.isfinite(m), m, 0.0)
            p = np.where(ok, np.exp(s - m[:, None]), 0.0)
            den = p.sum(axis=1)
            o = round_to(p, dtype) @ vb[:, h // g] / np.where(den > 0, den, 1.0)[:, None]
            out[q0:q0 + n, h] = round_to(o, dtype)
    return out


def _run_and_check(torch, case, *, hq, hkv, d, dtype, layout=None, causal=True, num_splits=None, plan=None):
    plan = plan or _plan(case, hq, hkv, d, layout, causal, num_splits)
    out = torch.full_like(case["q"], POISON)
    lse = torch.full((hq, case["q"].shape[0]), POISON, device="cuda")
    res = varblock.decode(case["q"], case["k"], case["v"], plan, out=out, lse=lse, return_lse=True)
    assert res[0] is out and res[1] is lse
    torch.cuda.synchronize()
    got, got_lse = _np(out), lse.cpu().numpy().astype(np.float64)
    assert not (got == POISON).any() and not (got_lse == POISON).any(), "unwritten output elements"
    kw = {"kv_lens": case["kv"], "page_table": case["pt"]} if "pt" in case else {"cu_seqlens_k": case["cu_k"]}
    ref, ref_lse = R.decode(_np(case["q"]), _np(case["k"]), _np(case["v"]), cu_seqlens_q=case["cu_q"],
                            layout=layout, causal=causal, **kw)
    base = _baseline(case, dtype, layout, causal)
    assert np.isfinite(got).all(), "NaN/inf in out"
    err = float(np.abs(got - ref).max(initial=0.0))
    base_err = float(np.abs(base - ref).max(initial=0.0))
    assert err <= 2 * base_err + 1e-5, f"out max error {err:.3g} > 2 x baseline {base_err:.3g} + 1e-5"
    inf = np.isinf(ref_lse)
    assert np.array_equal(np.isinf(got_lse), inf) and (got_lse[inf] < 0).all(), "LSE -inf pattern differs"
    if (~inf).any():
        assert np.abs(got_lse[~inf] - ref_lse[~inf]).max() <= 1e-3
    assert (got[inf.T] == 0).all(), "empty rows must be exactly 0"
    return out, lse, plan


def _random_layout(rng, kv, heads, bs, density, head_mode="per_kv_head"):
    if density >= 1.0:
        return LD.dense_decode(kv, block_size=bs, num_heads=heads, head_mode=head_mode)
    nb = int(LD.num_blocks(kv, bs).max(initial=0)) + 1
    valid = np.arange(nb)[None, :] < LD.num_blocks(kv, bs)[:, None]
    m = (rng.random((len(kv), heads, nb)) < density) & valid[:, None, :]
    return LD.from_seer_decode_mask(m, kv_lens=kv, block_size=bs, head_mode=head_mode)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("d", [64, 128, 256])
@pytest.mark.parametrize("g", [1, 4, 8])
def test_dtypes_dims_gqa(torch, dtype, d, g):
    rng = np.random.default_rng(hash((dtype, d, g)) % 2**32)
    hkv = 2
    case = _make(torch, rng, B=4, hkv=hkv, g=g, d=d, dtype=dtype, page_size=16, max_q=4, kv_range=(1, 1500))
    lay = _random_layout(rng, case["kv"], hkv, 64, 0.5)
    _run_and_check(torch, case, hq=hkv * g, hkv=hkv, d=d, dtype=dtype, layout=lay)


@pytest.mark.parametrize("page_size", [1, 16, 32, 64, 128, None])
def test_page_sizes_and_contiguous(torch, page_size):
    rng = np.random.default_rng(page_size or 0)
    case = _make(torch, rng, B=5, hkv=2, g=4, d=128, dtype="bfloat16", page_size=page_size, max_q=3,
                 kv_range=(1, 2100))
    lay = _random_layout(rng, case["kv"], 2, 128 if page_size in (None, 1) else max(page_size, 16), 0.6)
    _run_and_check(torch, case, hq=8, hkv=2, d=128, dtype="bfloat16", layout=lay)


@pytest.mark.parametrize("density", [1.0, 0.5, 0.1, 0.0])
@pytest.mark.parametrize("dense_plan", [False, True])
def test_densities(torch, density, dense_plan):
    if dense_plan and density != 1.0:
        pytest.skip("a dense plan (layout=None) is density 1.0 only")
    rng = np.random.default_rng(int(density * 10) + 100 * dense_plan)
    case = _make(torch, rng, B=6, hkv=2, g=8, d=128, dtype="bfloat16", page_size=64, max_q=2, kv_range=(1, 3000))
    lay = None if dense_plan else _random_layout(rng, case["kv"], 2, 64, density)
    _run_and_check(torch, case, hq=16, hkv=2, d=128, dtype="bfloat16", layout=lay)


@pytest.mark.parametrize("g", [1, 4, 8])
@pytest.mark.parametrize("n_tok", [1, 2, 5, 16])
def test_query_tokens(torch, g, n_tok):
    """1..16 new tokens: causal within them; g x n_tok > 16 uses 64-row tiles, > 64 several row tiles."""
    rng = np.random.default_rng(g * 100 + n_tok)
    case = _make(torch, rng, B=3, hkv=2, g=g, d=64, dtype="float16", page_size=16, max_q=n_tok,
                 kv_range=(n_tok, 700), n_q=[n_tok, max(1, n_tok - 1), n_tok])
    lay = _random_layout(rng, case["kv"], 2, 32, 0.7)
    _run_and_check(torch, case, hq=2 * g, hkv=2, d=64, dtype="float16", layout=lay)


def test_empty_and_odd_lengths(torch):
    """kv_len 0 (non-causal), 1, odd lengths, and a sequence with no new token."""
    rng = np.random.default_rng(5)
    case = _make(torch, rng, B=6, hkv=2, g=4, d=128, dtype="bfloat16", page_size=32, max_q=3, kv_range=(0, 0),
                 causal=False, n_q=[1, 2, 0, 3, 1, 2], kv=[0, 1, 17, 0, 1023, 33])
    _run_and_check(torch, case, hq=8, hkv=2, d=128, dtype="bfloat16", causal=False)
    lay = _random_layout(rng, case["kv"], 2, 32, 0.5)
    _run_and_check(torch, case, hq=8, hkv=2, d=128, dtype="bfloat16", layout=lay, causal=False)


@pytest.mark.parametrize("kind", ["per_q_head", "topk", "window_sinks"])
def test_importers(torch, kind):
    rng = np.random.default_rng(len(kind))
    hkv, g = 2, 4
    case = _make(torch, rng, B=4, hkv=hkv, g=g, d=128, dtype="bfloat16", page_size=16, max_q=2,
                 kv_range=(100, 2500))
    kv = case["kv"]
    if kind == "per_q_head":
        lay = _random_layout(rng, kv, hkv * g, 64, 0.4, head_mode="per_q_head")
    elif kind == "topk":
        nb = torch.from_numpy(LD.num_blocks(kv, 64)).cuda()[:, None, None]
        idx = (torch.randint(0, 1 << 20, (4, hkv, 6), device="cuda") % nb).to(torch.int32)
        idx[:, :, -1] = -1  # padding
        counts = torch.randint(0, 7, (4, hkv), device="cuda", dtype=torch.int32)
        lay = LD.from_topk_indices(idx, kv_lens=kv, block_size=64, counts=counts)  # GPU tensors accepted
    else:
        lay = LD.window_sinks(kv, block_size=64, window=300, sinks=4, num_heads=hkv)
    _run_and_check(torch, case, hq=hkv * g, hkv=hkv, d=128, dtype="bfloat16", layout=lay)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_split_and_unsplit_agree(torch, dtype):
    """Forced 1 split, forced 7 splits and the automatic choice all pass the rule and agree with each other."""
    rng = np.random.default_rng(11)
    case = _make(torch, rng, B=3, hkv=2, g=8, d=128, dtype=dtype, page_size=64, max_q=2,
                 kv_range=(3000, 9000))
    lay = _random_layout(rng, case["kv"], 2, 64, 0.5)
    outs = []
    for ns in (1, 7, None):
        out, lse, plan = _run_and_check(torch, case, hq=16, hkv=2, d=128, dtype=dtype, layout=lay, num_splits=ns)
        outs.append((out.float(), lse))
        if ns == 7:
            assert plan.worklist.num_slots > 0
    for o, ls in outs[1:]:
        assert (o - outs[0][0]).abs().max().item() <= 2e-2
        fin = torch.isfinite(outs[0][1])
        assert (ls[fin] - outs[0][1][fin]).abs().max().item() <= 1e-3


def test_long_sequence_auto_split(torch):
    """Batch 1 x 40k: the plan splits the sequence over the SMs; result within the rule."""
    rng = np.random.default_rng(3)
    case = _make(torch, rng, B=1, hkv=2, g=8, d=128, dtype="bfloat16", page_size=128, max_q=1,
                 kv_range=(40000, 40000))
    _, _, plan = _run_and_check(torch, case, hq=16, hkv=2, d=128, dtype="bfloat16")
    assert plan.worklist.num_slots > 1


@pytest.mark.parametrize("dtype,d", [("bfloat16", 64), ("bfloat16", 128), ("float16", 128), ("bfloat16", 256)])
@pytest.mark.parametrize("n_tok", [1, 5])
@pytest.mark.parametrize("num_sms", [1, 3])
@pytest.mark.parametrize("num_splits", [None, 3])
def test_persistent_grid(torch, dtype, d, n_tok, num_sms, num_splits):
    """A persistent grid (``num_sms=1``: one CTA runs every item; 3: CTA c runs items c, c + 3, ...), whose loader
    streams the next item's first chunks during the current item's last ones: short, long and single-key
    sequences, sparse and empty KV heads, splits of one row tile on one CTA, 1 or 5 tokens x GQA 4 (row tiles of
    16 and of 64: d256 x 64 rows is the variant without cross-item prefetch)."""
    rng = np.random.default_rng([d, n_tok, num_sms, num_splits or 0, len(dtype)])
    kv = np.array([5, 17, 300, 64, 1000, 6, 2000, 130, 7])
    case = _make(torch, rng, B=9, hkv=2, g=4, d=d, dtype=dtype, page_size=16, max_q=n_tok, kv_range=(0, 0),
                 n_q=np.minimum(n_tok, kv), kv=kv)
    lay = _random_layout(rng, case["kv"], 2, 32, 0.5)
    plan = _plan(case, 8, 2, d, layout=lay, num_splits=num_splits, num_sms=num_sms, persistent=True)
    assert plan.num_ctas == num_sms < plan.num_items
    out, lse, _ = _run_and_check(torch, case, hq=8, hkv=2, d=d, dtype=dtype, layout=lay, plan=plan)
    again = varblock.decode(case["q"], case["k"], case["v"], plan)
    torch.cuda.synchronize()
    assert torch.equal(again, out)


def test_plan_reuse_is_exact_and_graph_capturable(torch):
    """Repeated calls give bit-identical results (the split semaphores reset themselves), also replayed from a
    CUDA graph with new query values."""
    rng = np.random.default_rng(21)
    case = _make(torch, rng, B=2, hkv=2, g=4, d=128, dtype="bfloat16", page_size=16, max_q=2,
                 kv_range=(5000, 8000))
    plan = _plan(case, 8, 2, 128, num_splits=5)
    a = varblock.decode(case["q"], case["k"], case["v"], plan)
    b = varblock.decode(case["q"], case["k"], case["v"], plan)
    torch.cuda.synchronize()
    assert torch.equal(a, b)
    q_static = case["q"].clone()
    out = torch.empty_like(q_static)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        varblock.decode(q_static, case["k"], case["v"], plan, out=out)  # warm-up (loads the kernel)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        varblock.decode(q_static, case["k"], case["v"], plan, out=out)
    for _ in range(3):
        q_static.copy_(torch.randn_like(q_static))
        graph.replay()
        torch.cuda.synchronize()
        want = varblock.decode(q_static, case["k"], case["v"], plan)
        torch.cuda.synchronize()
        assert torch.equal(out, want)


def test_bad_inputs_name_the_argument(torch):
    rng = np.random.default_rng(0)
    case = _make(torch, rng, B=2, hkv=2, g=4, d=128, dtype="bfloat16", page_size=16, max_q=1, kv_range=(10, 50))
    plan = _plan(case, 8, 2, 128)
    with pytest.raises(ValueError, match="q: expected shape"):
        varblock.decode(case["q"][:, :4], case["k"], case["v"], plan)
    with pytest.raises(TypeError, match="k_cache: dtype"):
        varblock.decode(case["q"], case["k"].half(), case["v"], plan)
    with pytest.raises(ValueError, match="v_cache: expected"):
        varblock.decode(case["q"], case["k"], case["v"][:, :8], plan)
    with pytest.raises(TypeError, match="plan"):
        varblock.decode(case["q"], case["k"], case["v"], None)
    with pytest.raises(ValueError, match="softmax_scale"):
        varblock.decode(case["q"], case["k"], case["v"], plan, softmax_scale=float("nan"))
    with pytest.raises(ValueError, match="page_table: expected 2 rows"):
        varblock.plan_decode(case["cu_q"], kv_lens=case["kv"], page_table=case["pt"][:1], page_size=16,
                             num_heads_q=8, num_heads_kv=2, head_dim=128)
    with pytest.raises(ValueError, match="head_dim"):
        varblock.plan_decode(case["cu_q"], kv_lens=case["kv"], page_table=case["pt"], page_size=16,
                             num_heads_q=8, num_heads_kv=2, head_dim=96)


def test_torch_fast_path(torch):
    """A repeated call with the same torch argument signature takes the fast path (only the pointers and the stream
    change): new q values and outputs give what a fresh plan's full path gives, lse is allocated when not passed,
    and an output aliasing an input is refused on both paths."""
    rng = np.random.default_rng(31)
    case = _make(torch, rng, B=3, hkv=2, g=4, d=128, dtype="bfloat16", page_size=16, max_q=2, kv_range=(100, 900))
    plan = _plan(case, 8, 2, 128)
    first = varblock.decode(case["q"], case["k"], case["v"], plan)
    assert any(isinstance(k, tuple) and k[0] == "torch" for k in plan.launch_cache)
    q2 = torch.randn_like(case["q"])
    out2, lse2 = varblock.decode(q2, case["k"], case["v"], plan, return_lse=True)
    fresh, lse_fresh = varblock.decode(q2, case["k"], case["v"], _plan(case, 8, 2, 128), return_lse=True)
    again = varblock.decode(case["q"], case["k"], case["v"], plan)
    torch.cuda.synchronize()
    assert torch.equal(out2, fresh) and torch.equal(lse2, lse_fresh)
    assert torch.equal(again, first) and not torch.equal(out2, first)
    varblock.decode(case["q"], case["k"], case["v"], plan, out=torch.empty_like(case["q"]))  # records out=
    for p in (plan, _plan(case, 8, 2, 128)):  # fast path (signature with out= recorded), full path
        with pytest.raises(ValueError, match="overlaps"):
            varblock.decode(case["q"], case["k"], case["v"], p, out=case["q"])
