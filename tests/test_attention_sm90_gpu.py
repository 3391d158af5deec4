"""The Hopper warp-specialized forward (``attention_fwd_sm90``) on the GPU, beyond the shared forward suite
(tests/test_attention_gpu.py runs every case there once per family): a one-tile smoke test, agreement with the
portable family, bit-identical reruns and schedules, every tile exactly once, counter reset over many reuses, device
plans, variable spans at arbitrary rows, pack-GQA, 64-token blocks, a long sequence. Skips off Hopper."""

from __future__ import annotations

import numpy as np
import pytest

import varblock
from tests._attention_ref import attention_ref, check_attention
from varblock import layout as L

pytestmark = pytest.mark.gpu
FAMILY = "attention_fwd_sm90"
POISON = float("nan")


@pytest.fixture(autouse=True)
def _hopper_only(torch):
    cc = torch.cuda.get_device_capability()
    if cc[0] != 9:
        pytest.skip(f"{FAMILY} runs on sm90 only (this GPU is sm{cc[0]}{cc[1]})")
    binding = varblock.families.binding("attention_fwd", FAMILY)
    if binding.entry("sm90", 128) is None:
        pytest.skip(f"no {FAMILY} cubins built")


def _cu(lens):
    return np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)


def _qkv(torch, tq, tk, hq, hkv, d, seed, dtype="bfloat16"):
    g = torch.Generator(device="cuda").manual_seed(seed)
    dt = getattr(torch, dtype)
    return tuple(torch.randn(t, h, d, device="cuda", generator=g).to(dt) for t, h in ((tq, hq), (tk, hkv), (tk, hkv)))


def _plan(lay, hq, hkv, d, backend=FAMILY, **kw):
    return varblock.plan(lay.cu_seqlens_q, lay.cu_seqlens_k, num_heads_q=hq, num_heads_kv=hkv, head_dim=d, layout=lay,
                         backend=backend, cache=False, **kw)


def _run(torch, q, k, v, p):
    total_q, hq, d = q.shape
    out = torch.full((total_q, hq, d), POISON, dtype=q.dtype, device="cuda")
    lse = torch.full((hq, total_q), POISON, dtype=torch.float32, device="cuda")
    varblock.attention(q, k, v, p, out=out, lse=lse, return_lse=True)
    torch.cuda.synchronize()
    return out, lse


def _check(torch, q, k, v, lay, p, what):
    assert p.family == FAMILY, f"{what}: plan chose {p.family}"
    out, lse = _run(torch, q, k, v, p)
    ref_o, ref_l, base_o = attention_ref(torch, q, k, v, lay)
    check_attention(torch, out, lse, ref_o, ref_l, base_o, what=what)
    return out, lse


def test_smoke_one_tile(torch):
    """One 128-token sequence, one head, d128, dense: the smallest complete run (one tile, one chunk)."""
    cu = _cu([128])
    q, k, v = _qkv(torch, 128, 128, 1, 1, 128, seed=1)
    lay = L.random_blocks(cu, cu, density=1.0)
    p = _plan(lay, 1, 1, 128)
    assert p.num_tiles == 1
    out, lse = _check(torch, q, k, v, lay, p, "smoke: one tile d128")
    ref_o, _, _ = attention_ref(torch, q, k, v, lay)
    print(f"\nsmoke {FAMILY}: max |out - ref| = {(out.float() - ref_o).abs().max().item():.3e}, "
          f"lse[0, :4] = {lse[0, :4].tolist()}")


@pytest.mark.parametrize("d", [64, 96, 128])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("causal", [False, True])
def test_matches_portable_family(torch, d, dtype, causal):
    lens = [1, 129, 0, 700, 2048, 255]
    cu = _cu(lens)
    lay = L.random_blocks(cu, cu, density=0.5, num_heads=2, head_mode="per_kv_head", causal=causal, seed=3)
    q, k, v = _qkv(torch, int(cu[-1]), int(cu[-1]), 8, 2, d, seed=d, dtype=dtype)
    o1, l1 = _check(torch, q, k, v, lay, _plan(lay, 8, 2, d), f"random d{d} {dtype} causal={causal}")
    o2, l2 = _run(torch, q, k, v, _plan(lay, 8, 2, d, backend="attention_fwd_mma"))
    assert (o1.float() - o2.float()).abs().max().item() < 0.05
    fin = torch.isfinite(l2)
    assert torch.equal(torch.isfinite(l1), fin) and (l1[fin] - l2[fin]).abs().max().item() < 1e-2


def _layouts(cu):
    rng = np.random.default_rng(0)
    lens = np.diff(cu)
    doc = np.concatenate([np.repeat(np.arange(3), rng.multinomial(n, [0.3, 0.3, 0.4])) for n in lens]).astype(np.int32)
    t = int(lens.max())
    m1d = rng.random((len(lens), 2, t, (t + 63) // 64)) < 0.3
    return {
        "causal": L.causal(cu, cu),
        "window": L.sliding_window(cu, cu, window_left=300, window_right=0),
        "document": L.document(cu, cu, doc_ids_q=doc, causal=True),
        "token": L.from_seer_1d(m1d, cu, cu, block_size=64, head_mode="per_kv_head"),
        "sinks": L.attention_sinks(cu, cu, sink_blocks=1, window_left=256),
        "blocks64": L.random_blocks(cu, cu, density=0.4, num_heads=2, head_mode="per_kv_head", causal=True,
                                    seed=5, block_q=64, block_k=64),
    }


@pytest.mark.parametrize("kind", ["causal", "window", "document", "token", "sinks", "blocks64"])
def test_mask_kinds_and_schedules_bit_identical(torch, kind):
    """Every mask kind against the reference; single-tile and persistent schedules and reruns bit-identical."""
    cu = _cu([1023, 3, 0, 2048, 113, 700])
    lay = _layouts(cu)[kind]
    q, k, v = _qkv(torch, int(cu[-1]), int(cu[-1]), 8, 2, 128, seed=7)
    ps, pp = _plan(lay, 8, 2, 128, scheduler="single"), _plan(lay, 8, 2, 128, scheduler="persistent")
    assert ps.scheduler == "single" and pp.scheduler == "persistent"
    os_, ls = _check(torch, q, k, v, lay, ps, f"{kind} single")
    op, lp = _run(torch, q, k, v, pp)
    op2, lp2 = _run(torch, q, k, v, pp)
    assert torch.equal(os_, op) and torch.equal(ls, lp), f"{kind}: persistent and single-tile results differ"
    assert torch.equal(op, op2) and torch.equal(lp, lp2), f"{kind}: reruns differ"


@pytest.mark.parametrize("scheduler", ["single", "persistent"])
def test_every_tile_exactly_once_and_reuse(torch, scheduler):
    cu = _cu([1023, 3, 0, 2048, 113, 700])
    lay = L.random_blocks(cu, cu, density=0.3, num_heads=2, head_mode="per_kv_head", seed=1)
    p = _plan(lay, 8, 2, 128, scheduler=scheduler)
    counts = p.enable_tile_counts()
    q, k, v = _qkv(torch, int(cu[-1]), int(cu[-1]), 8, 2, 128, seed=5)
    first, _ = _check(torch, q, k, v, lay, p, f"tile counts {scheduler}")
    c = counts.to_host(np.int32, p.num_tiles)
    assert (c == 1).all(), f"tiles processed {np.bincount(c)} times"
    out = torch.empty_like(first)
    for _ in range(200):  # the persistent counter resets itself at the end of every launch
        varblock.attention(q, k, v, p, out=out)
    torch.cuda.synchronize()
    assert torch.equal(first, out)
    assert (counts.to_host(np.int32, p.num_tiles) == 201).all()


@pytest.mark.parametrize("pack", [True, False])
def test_device_plan_and_pack_gqa(torch, pack):
    lens = [1023, 3, 0, 2048, 113, 1]
    cu = _cu(lens)
    q, k, v = _qkv(torch, int(cu[-1]), int(cu[-1]), 8, 2, 128, seed=13)
    kw = dict(num_heads_q=8, num_heads_kv=2, head_dim=128, causal=True, pack_gqa=pack, backend=FAMILY, cache=False)
    ph = varblock.plan(cu, **kw)
    pd = varblock.plan(torch.tensor(cu, device="cuda"), **kw, max_seqlen_q=max(lens))
    assert ph.family == FAMILY and pd.family == FAMILY and pd.on_device
    oh, lh = _check(torch, q, k, v, ph.layout, ph, f"host plan pack={pack}")
    od, ld = _run(torch, q, k, v, pd)
    assert torch.equal(oh, od) and torch.equal(lh, ld), "device plan differs from host plan"


def test_flashinfer_variable_spans(torch):
    """Chunks of 64 / 128 / 192 tokens starting at arbitrary rows: TMA loads at those rows, tails masked."""
    rng = np.random.default_rng(11)
    hkv, mb = 2, 24
    sz0 = rng.choice([64, 128, 192], mb)
    row_sz = np.stack([sz0, rng.permutation(sz0)]).astype(np.int32)  # per head: same total, other positions
    col_sz = np.stack([rng.permutation(sz0), sz0]).astype(np.int32)
    t = int(sz0.sum())
    keep = (rng.random((hkv, mb, mb)) < 0.5) | np.eye(mb, dtype=bool)[None]
    cu = _cu([t])
    lay = L.from_flashinfer(keep, row_sz, col_sz, cu, cu)
    q, k, v = _qkv(torch, t, t, 8, hkv, 128, seed=17)
    _check(torch, q, k, v, lay, _plan(lay, 8, hkv, 128), "flashinfer variable spans")


def test_long_sequence_and_seqlen_q_ne_k(torch):
    cu_q, cu_k = _cu([300, 4500]), _cu([1000, 16384])
    lay = L.random_blocks(cu_q, cu_k, density=0.3, num_heads=4, head_mode="per_kv_head", causal=True, seed=2)
    q, k, v = _qkv(torch, int(cu_q[-1]), int(cu_k[-1]), 16, 4, 128, seed=19)
    _check(torch, q, k, v, lay, _plan(lay, 16, 4, 128), "long, seqlen_q != seqlen_k")
