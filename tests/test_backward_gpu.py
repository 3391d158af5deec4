"""The portable attention backward on the GPU against a float64 reference (DESIGN.md section 6 / FlashAttention's
rule: error <= 2 x the error of a plain low-precision implementation of the same math + a tiny absolute term):
every mask kind, GQA ratios 1/4/8, head dims, dtypes, odd and empty sequence lengths, densities 1.0/0.5/0.1/0.0,
block sizes different from the kernel tiles, many query blocks selecting one key block, rows with LSE = -inf,
poisoned outputs, 200 back-to-back calls, and argument errors. Each test names the anchor bug it guards against
where there is one (docs/backward.md)."""

from __future__ import annotations

import numpy as np
import pytest

import varblock
from varblock import layout as L

pytestmark = pytest.mark.gpu

LENS = [1, 3, 113, 0, 1023, 200]
_EPS32 = 2.0**-23


def _cu(lens):
    return np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)


def _rand(torch, shape, dtype, gen):
    return torch.randn(*shape, device="cuda", generator=gen).to(getattr(torch, dtype))


def _inputs(torch, total_q, total_k, hq, hkv, d, dtype, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return (_rand(torch, (total_q, hq, d), dtype, g), _rand(torch, (total_k, hkv, d), dtype, g),
            _rand(torch, (total_k, hkv, d), dtype, g), _rand(torch, (total_q, hq, d), dtype, g))


def backward_ref(torch, q, k, v, dout, layout, scale):
    """(float64 dq, dk, dv) and the plain low-precision baseline (P and dS rounded to the input dtype before the
    products, matmuls in the input dtype), per sequence and query head from the layout's token-level mask."""
    total_q, hq, d = q.shape
    hkv = k.shape[1]
    group = hq // hkv
    hmap = layout.head_map(hq, hkv)
    cu_q, cu_k = layout.cu_seqlens_q.astype(np.int64), layout.cu_seqlens_k.astype(np.int64)
    f64 = torch.float64
    ref = [torch.zeros(t.shape, dtype=f64, device="cuda") for t in (q, k, v)]
    low = [torch.zeros(t.shape, dtype=torch.float32, device="cuda") for t in (q, k, v)]
    for b in range(cu_q.shape[0] - 1):
        q0, q1, k0, k1 = int(cu_q[b]), int(cu_q[b + 1]), int(cu_k[b]), int(cu_k[b + 1])
        if q1 == q0 or k1 == k0:
            continue
        masks = {}
        for h in range(hq):
            hl = int(hmap[h])
            if hl not in masks:
                masks[hl] = torch.from_numpy(layout.token_mask(b, hl)).to("cuda")
            allowed = masks[hl]
            hk = h // group
            qs, ks, vs, dos = q[q0:q1, h], k[k0:k1, hk], v[k0:k1, hk], dout[q0:q1, h]
            # float64 reference
            s = (qs.to(f64) @ ks.to(f64).T) * scale
            s = s.masked_fill(~allowed, float("-inf"))
            m = s.amax(dim=1, keepdim=True)
            m = torch.where(torch.isinf(m), torch.zeros_like(m), m)
            e = torch.exp(s - m)
            z = e.sum(dim=1, keepdim=True)
            p = e / torch.where(z > 0, z, torch.ones_like(z))
            o = p @ vs.to(f64)
            dp = dos.to(f64) @ vs.to(f64).T
            ds = p * (dp - (dos.to(f64) * o).sum(dim=1, keepdim=True))
            ref[0][q0:q1, h] += scale * ds @ ks.to(f64)
            ref[1][k0:k1, hk] += scale * ds.T @ qs.to(f64)
            ref[2][k0:k1, hk] += p.T @ dos.to(f64)
            # plain low precision: same math, P and dS rounded to the input dtype, products in the input dtype
            p_lp = p.to(q.dtype)
            ds_lp = (p.float() * ((dos @ vs.T).float() - (dos.float() * o.float()).sum(dim=1, keepdim=True)))
            ds_lp = ds_lp.to(q.dtype)
            low[0][q0:q1, h] += (ds_lp @ ks).float() * scale
            low[1][k0:k1, hk] += (ds_lp.T @ qs).float() * scale
            low[2][k0:k1, hk] += (p_lp.T @ dos).float()
    return ref, [x.to(q.dtype) for x in low]


def _check(torch, got, ref, low, what):
    for name, g, r, lo in zip(("dq", "dk", "dv"), got, ref, low):
        gd = g.to(torch.float64)
        assert torch.isfinite(gd).all(), f"{what}: {name} has NaN/inf (unwritten poison?)"
        err = (gd - r).abs().max().item() if g.numel() else 0.0
        base = (lo.to(torch.float64) - r).abs().max().item() if g.numel() else 0.0
        scale = r.abs().max().item() if g.numel() else 0.0
        allowed = 2.0 * base + 4 * _EPS32 * max(scale, 1.0)
        assert err <= allowed, f"{what}: {name} max error {err:.3g} > allowed {allowed:.3g} (baseline {base:.3g})"


def _run(torch, lay, hq, hkv, d, dtype, seed, *, what, plan=None, deterministic=False, **plan_kw):
    cu_q, cu_k = lay.cu_seqlens_q, lay.cu_seqlens_k
    q, k, v, dout = _inputs(torch, int(cu_q[-1]), int(cu_k[-1]), hq, hkv, d, dtype, seed)
    if plan is None:
        plan = varblock.plan(cu_q, cu_k, num_heads_q=hq, num_heads_kv=hkv, head_dim=d, layout=lay, **plan_kw)
    out, lse = varblock.attention(q, k, v, plan, return_lse=True)
    nan = float("nan")
    grads = [torch.full_like(t, nan) for t in (q, k, v)]
    res = varblock.attention_backward(dout, q, k, v, out, lse, plan, dq=grads[0], dk=grads[1], dv=grads[2],
                                      deterministic=deterministic)
    assert all(a is b for a, b in zip(res, grads))
    torch.cuda.synchronize()
    ref, low = backward_ref(torch, q, k, v, dout, plan.layout, 1.0 / np.sqrt(d))
    _check(torch, grads, ref, low, what)
    return grads, (q, k, v, dout, out, lse, plan)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("d", [64, 96, 128, 192, 256])
@pytest.mark.parametrize("mask", ["dense", "causal"])
def test_dense_and_causal(torch, dtype, d, mask):
    """Every head dim and dtype (FA #2623: a head dim returning garbage with no error)."""
    cu = _cu(LENS)
    lay = (L.dense if mask == "dense" else L.causal)(cu, cu, num_heads=1)
    _run(torch, lay, 8, 2, d, dtype, seed=d + (mask == "causal"), what=f"{mask} d={d} {dtype}")


@pytest.mark.parametrize("density", [1.0, 0.5, 0.1, 0.0])
@pytest.mark.parametrize("hq,hkv", [(4, 4), (8, 2), (8, 1)])
@pytest.mark.parametrize("causal", [False, True])
def test_random_blocks_gqa(torch, density, hq, hkv, causal):
    """GQA ratios 1 / 4 / 8 and densities, the key/value tiles with no kept query block write zeros."""
    cu = _cu([113, 1023, 3, 0, 517])
    lay = L.random_blocks(cu, cu, density=density, num_heads=hkv, head_mode="per_kv_head", causal=causal,
                          seed=int(density * 100) + hq, keep_diagonal=density > 0)
    _run(torch, lay, hq, hkv, 128, "bfloat16", seed=hq * 31 + hkv, what=f"random {density} {hq}/{hkv} c={causal}")


@pytest.mark.parametrize("block", [16, 32, 64, 128, 256])
def test_block_sizes_other_than_the_tile(torch, block):
    """Sparse blocks smaller / larger than the kernel's tiles (FA #2429, #2757, #2903: tile width != block size)."""
    cu = _cu([300, 1, 640])
    lay = L.random_blocks(cu, cu, density=0.4, num_heads=2, head_mode="per_kv_head", causal=True, seed=block,
                          block_q=block, block_k=block)
    _run(torch, lay, 4, 2, 64, "bfloat16", seed=block, what=f"block {block}")


@pytest.mark.parametrize("kind", ["causal", "dense", "window_sinks", "causal_q_ne_k", "document"])
@pytest.mark.parametrize("deterministic", [False, True])
def test_64_blocks_key_groups(torch, kind, deterministic):
    """SeerAttention's 64x64 blocks: two 64-key columns share one 128-key tile where exact (bwd_key_groups), the
    tile walking the union of their query blocks with the element mask on the chunks where they differ."""
    from varblock.ops.attention_backward import bwd_worklist

    lq = [1000, 1, 0, 333, 64]
    lk = [1100, 70, 5, 333, 64] if kind == "causal_q_ne_k" else lq
    cu, ck = _cu(lq), _cu(lk)
    if kind in ("causal", "causal_q_ne_k"):
        lay = L.causal(cu, ck, num_heads=1, block_q=64, block_k=64)
    elif kind == "dense":
        lay = L.dense(cu, ck, num_heads=1, block_q=64, block_k=64)
    elif kind == "window_sinks":
        lay = L.sliding_window(cu, ck, window_left=190, window_right=0, num_sink_tokens=3, block_q=64,
                               block_k=64, num_heads=1)
    else:
        rng = np.random.default_rng(6)
        doc = np.concatenate([np.repeat(np.arange(3), rng.multinomial(n, [0.2, 0.5, 0.3])) for n in lq])
        lay = L.document(cu, ck, doc_ids_q=doc.astype(np.int32), causal=True, num_heads=1, block_q=64, block_k=64)
    grads, (*_, plan) = _run(torch, lay, 8, 8, 128, "bfloat16", seed=17, what=f"64x64 {kind}",
                             deterministic=deterministic)
    if kind != "document":
        wl = bwd_worklist(plan, deterministic)
        assert (wl.tiles[:, 3] > 64).any(), "no 64-key columns were grouped"


def test_per_q_head_layout_seqlen_q_ne_k(torch):
    """Per-query-head patterns with GQA (fp32 dK/dV per query head, summed in the postprocess), len_q != len_k."""
    lq, lk = [50, 300, 1, 129], [200, 300, 77, 1000]
    lay = L.random_blocks(_cu(lq), _cu(lk), density=0.4, num_heads=6, head_mode="per_q_head", causal=True, seed=3,
                          block_q=64, block_k=64)
    _run(torch, lay, 6, 3, 64, "float16", seed=5, what="per-q-head causal q!=k")


def forward_ref(torch, q, k, v, layout, scale):
    """float64 (out rounded to q's dtype, float32 LSE [Hq, total_q]) from the layout's token-level mask."""
    total_q, hq, d = q.shape
    group = hq // k.shape[1]
    hmap = layout.head_map(hq, k.shape[1])
    cu_q, cu_k = layout.cu_seqlens_q.astype(np.int64), layout.cu_seqlens_k.astype(np.int64)
    out = torch.zeros(q.shape, dtype=torch.float64, device="cuda")
    lse = torch.full((hq, total_q), float("-inf"), dtype=torch.float64, device="cuda")
    for b in range(cu_q.shape[0] - 1):
        q0, q1, k0, k1 = int(cu_q[b]), int(cu_q[b + 1]), int(cu_k[b]), int(cu_k[b + 1])
        if q1 == q0 or k1 == k0:
            continue
        for h in range(hq):
            allowed = torch.from_numpy(layout.token_mask(b, int(hmap[h]))).to("cuda")
            s = (q[q0:q1, h].double() @ k[k0:k1, h // group].double().T) * scale
            s = s.masked_fill(~allowed, float("-inf"))
            m = s.amax(dim=1, keepdim=True)
            m = torch.where(torch.isinf(m), torch.zeros_like(m), m)
            e = torch.exp(s - m)
            z = e.sum(dim=1, keepdim=True)
            out[q0:q1, h] = (e / torch.where(z > 0, z, torch.ones_like(z))) @ v[k0:k1, h // group].double()
            lse[h, q0:q1] = torch.where(z[:, 0] > 0, torch.log(z[:, 0]) + m[:, 0], torch.full_like(m[:, 0], -np.inf))
    return out.to(q.dtype), lse.float()


def test_window_and_sinks_backward_alone(torch):
    """Window + token-level sinks with the forward's out / LSE taken from the float64 reference: checks the
    backward's sink rule on its own (keys j < num_sink_tokens waive the left window bound)."""
    cu = _cu([1023, 1, 300])
    lay = L.sliding_window(cu, cu, window_left=200, window_right=0, num_sink_tokens=5, block_q=64, block_k=64,
                           num_heads=1)
    q, k, v, dout = _inputs(torch, int(cu[-1]), int(cu[-1]), 4, 1, 128, "bfloat16", 11)
    plan = varblock.plan(cu, cu, num_heads_q=4, num_heads_kv=1, head_dim=128, layout=lay)
    scale = 1.0 / np.sqrt(128)
    out, lse = forward_ref(torch, q, k, v, lay, scale)
    grads = varblock.attention_backward(dout, q, k, v, out, lse, plan)
    torch.cuda.synchronize()
    ref, low = backward_ref(torch, q, k, v, dout, lay, scale)
    _check(torch, grads, ref, low, "window + sinks, reference out / LSE")


def test_window_and_sinks(torch):
    """The same through varblock's forward: its out / LSE are checked first (a wrong LSE makes P wrong)."""
    cu = _cu([1023, 1, 300])
    lay = L.sliding_window(cu, cu, window_left=200, window_right=0, num_sink_tokens=5, block_q=64, block_k=64,
                           num_heads=1)
    q, k, v, _ = _inputs(torch, int(cu[-1]), int(cu[-1]), 4, 1, 128, "bfloat16", 11)
    plan = varblock.plan(cu, cu, num_heads_q=4, num_heads_kv=1, head_dim=128, layout=lay)
    out, lse = varblock.attention(q, k, v, plan, return_lse=True)
    out_ref, lse_ref = forward_ref(torch, q, k, v, lay, 1.0 / np.sqrt(128))
    fin = torch.isfinite(lse_ref)
    assert torch.equal(torch.isfinite(lse), fin), "forward: LSE -inf pattern differs from the reference"
    assert (lse[fin] - lse_ref[fin]).abs().max().item() <= 1e-2, "forward: LSE differs from the reference"
    _run(torch, lay, 4, 1, 128, "bfloat16", seed=11, what="window + sinks", plan=plan)


def test_two_sided_window(torch):
    cu = _cu([1023, 1, 300])
    lay = L.sliding_window(cu, cu, window_left=100, window_right=37, block_q=128, block_k=128, num_heads=1)
    _run(torch, lay, 4, 4, 96, "float16", seed=12, what="two-sided window")


@pytest.mark.parametrize("causal", [False, True])
def test_document_mask(torch, causal):
    lens = [1000, 333]
    cu = _cu(lens)
    rng = np.random.default_rng(4)
    doc = np.concatenate([np.repeat(np.arange(5), rng.multinomial(n, [0.2] * 5)) for n in lens]).astype(np.int32)
    lay = L.document(cu, cu, doc_ids_q=doc, causal=causal, num_heads=1)
    _run(torch, lay, 4, 2, 64, "float16", seed=17, what=f"document causal={causal}")


def test_token_mask_seer_1d(torch):
    lens = [300, 77, 1]
    cu = _cu(lens)
    bs, hkv, hq = 64, 2, 8
    rng = np.random.default_rng(8)
    t = max(lens)
    m1d = rng.random((len(lens), hkv, t, (t + bs - 1) // bs)) < 0.3
    lay = L.from_seer_1d(m1d, cu, cu, block_size=bs, head_mode="per_kv_head")
    _run(torch, lay, hq, hkv, 128, "bfloat16", seed=19, what="seer 1d")


def test_flashinfer_variable_blocks(torch):
    hkv, hq = 2, 4
    row = np.array([[100, 28, 300], [128, 128, 172]])
    col = np.array([[64, 200, 164], [1, 255, 172]])
    rng = np.random.default_rng(2)
    bmm = rng.random((hkv, 3, 3)) < 0.6
    lay = L.from_flashinfer(bmm, row, col)
    _run(torch, lay, hq, hkv, 128, "bfloat16", seed=23, what="flashinfer variable blocks")


def test_many_query_blocks_select_one_key_block(torch):
    """Every query block keeps key block 0 only (cudnn-frontend #385: wrong when many queries select the same K/V
    rows): one key tile accumulates dK/dV over 32 query blocks, dQ of every block comes from the same tile."""
    cu = _cu([4096, 700])
    nb = -(-np.diff(cu) // 128)
    mask = np.zeros((2, 1, int(nb.max()), int(nb.max())), dtype=bool)
    mask[:, :, :, 0] = True
    lay = L.from_block_mask(mask, cu, cu, block_q=128, block_k=128, padding="ignore")
    _run(torch, lay, 8, 2, 128, "bfloat16", seed=29, what="all queries -> key block 0")


def test_empty_rows_zero_gradients(torch):
    """Rows with no kept key (LSE = -inf) get zero dQ; keys nobody attends get zero dK/dV."""
    cu = _cu([500, 3, 260])
    lay = L.random_blocks(cu, cu, density=0.2, num_heads=1, keep_diagonal=False, seed=1, block_q=64, block_k=64)
    grads, (q, k, v, dout, out, lse, plan) = _run(torch, lay, 2, 1, 64, "bfloat16", seed=31, what="empty rows")
    empty_q = torch.isinf(lse).T  # [total_q, Hq]
    assert empty_q.any()
    assert (grads[0][empty_q] == 0).all()


def test_back_to_back_launches(torch):
    """200 calls in a row on one stream with no host sync: no NaN, same result within atomics' rounding (FA #2643,
    #2756, #2481: the main kernel reading LSE / dPsum / dQaccum before the preprocess finished)."""
    cu = _cu(LENS)
    lay = L.causal(cu, cu, num_heads=1)
    grads, (q, k, v, dout, out, lse, plan) = _run(torch, lay, 8, 2, 128, "bfloat16", seed=37, what="first")
    acc = [torch.zeros_like(g, dtype=torch.float32) for g in grads]
    for _ in range(200):
        res = varblock.attention_backward(dout, q, k, v, out, lse, plan)
        for a, r in zip(acc, res):
            a += r.float()
    torch.cuda.synchronize()
    for a, g in zip(acc, grads):
        assert torch.isfinite(a).all()
        assert ((a / 200 - g.float()).abs().max().item()) <= 2e-2 * max(g.float().abs().max().item(), 1.0)


def test_argument_errors(torch):
    cu = _cu([100, 50])
    lay = L.causal(cu, cu, num_heads=1)
    q, k, v, dout = _inputs(torch, 150, 150, 4, 2, 64, "bfloat16", 0)
    plan = varblock.plan(cu, cu, num_heads_q=4, num_heads_kv=2, head_dim=64, layout=lay)
    out, lse = varblock.attention(q, k, v, plan, return_lse=True)
    with pytest.raises(TypeError, match="deterministic"):
        varblock.attention_backward(dout, q, k, v, out, lse, plan, deterministic=1)
    with pytest.raises(ValueError, match="softmax_scale"):
        varblock.attention_backward(dout, q, k, v, out, lse, plan, softmax_scale=-1.0)
    with pytest.raises(TypeError, match="dtypes must match"):
        varblock.attention_backward(dout.half(), q, k, v, out, lse, plan)
    with pytest.raises(ValueError, match="dout"):
        varblock.attention_backward(dout[:100], q, k, v, out, lse, plan)
    with pytest.raises(ValueError, match="lse"):
        varblock.attention_backward(dout, q, k, v, out, lse[:, :100], plan)
    with pytest.raises(TypeError, match="plan"):
        varblock.attention_backward(dout, q, k, v, out, lse, None)
    with pytest.raises(ValueError, match="dq"):
        varblock.attention_backward(dout, q, k, v, out, lse, plan, dq=q)  # aliases an input
    dev = varblock.plan(torch.from_numpy(cu).cuda(), num_heads_q=4, num_heads_kv=2, head_dim=64, total_q=150,
                        total_k=150)
    with pytest.raises(ValueError, match="device plan"):
        varblock.attention_backward(dout, q, k, v, out, lse, dev)


@pytest.mark.parametrize("case", ["random_gqa", "per_q_head", "flashinfer", "dense_d64", "causal_d256", "window_sinks",
                                  "two_sided_window", "long_sparse_gqa"])
def test_deterministic_bit_identical(torch, case):
    """deterministic=True: correct, and bit-identical over 10 runs (dQ added tile by tile in tile order; each tile
    walks its query chunks by decreasing position, full ones then partial ones)."""
    if case == "window_sinks":
        cu = _cu([1023, 1, 300])
        lay = L.sliding_window(cu, cu, window_left=200, window_right=0, num_sink_tokens=5, block_q=64, block_k=64,
                               num_heads=1)
        args = (4, 1, 128, "bfloat16")
    elif case == "two_sided_window":
        cu = _cu([700, 129])
        lay = L.sliding_window(cu, cu, window_left=100, window_right=37, block_q=128, block_k=128, num_heads=1)
        args = (4, 4, 64, "float16")
    elif case == "long_sparse_gqa":  # many tiles per query span, reaching it at different steps of their walks
        cu = _cu([4096, 2048, 77])
        lay = L.random_blocks(cu, cu, density=0.1, num_heads=2, head_mode="per_kv_head", causal=True, seed=5)
        args = (8, 2, 128, "bfloat16")
    elif case == "random_gqa":
        cu = _cu([113, 1023, 3, 0, 517])
        lay = L.random_blocks(cu, cu, density=0.5, num_heads=2, head_mode="per_kv_head", causal=True, seed=7)
        args = (8, 2, 128, "bfloat16")
    elif case == "per_q_head":
        lq, lk = [50, 300, 1, 129], [200, 300, 77, 1000]
        lay = L.random_blocks(_cu(lq), _cu(lk), density=0.4, num_heads=4, head_mode="per_q_head", causal=True,
                              seed=3, block_q=64, block_k=64)
        args = (4, 2, 96, "float16")
    elif case == "flashinfer":
        rng = np.random.default_rng(2)
        lay = L.from_flashinfer(rng.random((2, 3, 3)) < 0.6, np.array([[100, 28, 300], [128, 128, 172]]),
                                np.array([[64, 200, 164], [1, 255, 172]]))
        args = (4, 2, 128, "bfloat16")
    elif case == "dense_d64":
        cu = _cu(LENS)
        lay = L.dense(cu, cu, num_heads=1, block_q=64, block_k=64)
        args = (4, 1, 64, "bfloat16")
    else:
        cu = _cu([700, 1, 129])
        lay = L.causal(cu, cu, num_heads=1)
        args = (4, 4, 256, "float16")
    grads, (q, k, v, dout, out, lse, plan) = _run(torch, lay, *args, seed=41, what=f"deterministic {case}",
                                                  deterministic=True)
    for _ in range(10):
        res = varblock.attention_backward(dout, q, k, v, out, lse, plan, deterministic=True)
        for a, b in zip(res, grads):
            assert torch.equal(a, b), f"deterministic {case}: results differ between runs"


def _narrow_built() -> bool:
    """Whether this device's build has the narrow 64-key main variant (sm90 / sm100, d128)."""
    from varblock.families.attention_bwd_mma import BINDING
    from varblock.runtime.select import arch_for_device

    return 64 in BINDING.main_entries(arch_for_device(0), 128)


@pytest.mark.parametrize("case", ["causal", "gqa", "gqa_group_per_tile", "gqa_per_q_head_layout", "q_ne_k",
                                  "non_causal_fp16", "d64_fp16", "d64_bf16", "density_0.1"])
@pytest.mark.parametrize("deterministic", [False, True])
def test_64_blocks_random_narrow_tiles(torch, case, deterministic):
    """Random 64x64 blocks (SeerAttention's block size; adjacent key columns do not pair): the plan chooses the
    narrow 64-key main variant where it is built (bwd_tile_choice), odd lengths, GQA, len_q != len_k; the
    deterministic mode also bit-identical over 5 runs."""
    from varblock.ops.attention_backward import bwd_tile_choice

    lq = [1000, 1, 0, 333, 64, 517]
    lk = [1100, 70, 5, 333, 64, 400] if case == "q_ne_k" else lq
    cu, ck = _cu(lq), _cu(lk)
    hq, hkv, d, dtype, dens, mode, causal = 8, 8, 128, "bfloat16", 0.5, "per_kv_head", True
    if case == "gqa":
        hq, hkv = 8, 2
    elif case == "gqa_group_per_tile":  # long enough for heads_per_tile = 4 (dK / dV summed in registers)
        lq = lk = [8192, 4096, 77, 5000]
        cu = ck = _cu(lq)
        hq, hkv, dens = 8, 2, 0.3
    elif case == "gqa_per_q_head_layout":
        hq, hkv, mode = 4, 2, "per_q_head"
    elif case == "non_causal_fp16":
        dtype, causal = "float16", False
    elif case.startswith("d64"):
        d, dtype = 64, "float16" if case == "d64_fp16" else "bfloat16"
    elif case == "density_0.1":
        dens = 0.1
    lay = L.random_blocks(cu, ck, density=dens, num_heads=hq if mode == "per_q_head" else hkv, head_mode=mode,
                          causal=causal, seed=len(case), block_q=64, block_k=64)
    grads, (q, k, v, dout, out, lse, plan) = _run(torch, lay, hq, hkv, d, dtype, seed=23,
                                                  what=f"64x64 random {case}", deterministic=deterministic)
    choice = bwd_tile_choice(plan)
    if _narrow_built():
        assert choice.tile_n == 64, choice.reason
    if case == "gqa_group_per_tile":
        from varblock.ops.attention_backward import bwd_worklist

        assert bwd_worklist(plan, deterministic).heads_per_tile == 4
    if deterministic:
        for _ in range(5):
            res = varblock.attention_backward(dout, q, k, v, out, lse, plan, deterministic=True)
            for a, b in zip(res, grads):
                assert torch.equal(a, b), f"64x64 random {case}: deterministic results differ between runs"
