"""The Hopper pooling kernel (``attention_pool_sm90``, forced with ``backend=``) on an sm90 GPU against
``varblock.reference.attention_pooling_1d/2d`` (float64 from the same fp16/bf16 inputs; fp32 tolerance), and against
the portable pooling kernel on the same inputs: odd and empty lengths, GQA (group pooling, pack-GQA rows through
cp.async), causal, densities, every mask kind on partial chunks, 64- and 128-token blocks pooled at 64 / 128 / 256,
d64 / d128, fp16 / bf16, sm90 and portable forward plans, a device plan, and a long batch with far more tiles than
SMs (the persistent loop). The pooling map is fresh and zeroed by the op, so every element is checked."""

from __future__ import annotations

import numpy as np
import pytest

import varblock
from tests._pooling_ref import LENS, grid_layout, group_pooling_ref, reference_grid
from varblock import layout as L
from varblock import reference

pytestmark = pytest.mark.gpu

RTOL, ATOL = 2e-3, 2e-5  # S, LSE and exp2 in fp32 (the LSE from the forward kernel)
#: sm90 vs portable kernel on the same inputs and LSE: only S's fp32 accumulation order differs (wgmma vs mma.sync)
X_RTOL, X_ATOL = 1e-4, 1e-6
SM90 = "attention_pool_sm90"


@pytest.fixture(autouse=True)
def _sm90_only(torch):
    if tuple(torch.cuda.get_device_capability()) != (9, 0):
        pytest.skip("attention_pool_sm90 runs on sm90 (Hopper) only")


def _cu(lens):
    return np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)


def _qk(torch, total_q, total_k, hq, hkv, d, dtype, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    dt = getattr(torch, dtype)
    return tuple(torch.randn(t, h, d, device="cuda", generator=g).to(dt)
                 for t, h in ((total_q, hq), (total_k, hkv), (total_k, hkv)))


def _check(torch, q, k, lse, plan, lay, *, block_q=None, block_k=None, pool_gqa=False, portable=True):
    """The Hopper maps against the float64 reference and (``portable``) against the portable kernel's maps on the
    same inputs."""
    kw = dict(block_q=block_q, block_k=block_k, pool_gqa=pool_gqa, per_sequence=False)
    h1, h2 = varblock.attention_pooling(q, k, lse, plan, backend=SM90, **kw)
    torch.cuda.synchronize()
    qf, kf = q.float().cpu().numpy(), k.float().cpu().numpy()
    bq = block_q or lay.block_q
    r1 = reference.attention_pooling_1d(qf, kf, lay, block_k=block_k)
    r2 = reference.attention_pooling_2d(qf, kf, lay, block_q=bq, block_k=block_k)
    if pool_gqa:
        r1, r2 = group_pooling_ref(r1, lay, q.shape[1] // k.shape[1], bq)
    g1, g2 = h1.cpu().numpy(), h2.cpu().numpy()
    assert g1.shape == r1.shape and g2.shape == r2.shape, (g1.shape, r1.shape, g2.shape, r2.shape)
    assert np.isfinite(g1).all() and np.isfinite(g2).all()
    np.testing.assert_allclose(g1, r1, rtol=RTOL, atol=ATOL, err_msg="1D pooling (sm90)")
    np.testing.assert_allclose(g2, r2, rtol=RTOL, atol=ATOL, err_msg="2D pooling (sm90)")
    if portable:
        p1, p2 = varblock.attention_pooling(q, k, lse, plan, backend="attention_pool", **kw)
        np.testing.assert_allclose(g1, p1.cpu().numpy(), rtol=X_RTOL, atol=X_ATOL, err_msg="sm90 vs portable 1D")
        np.testing.assert_allclose(g2, p2.cpu().numpy(), rtol=X_RTOL, atol=X_ATOL, err_msg="sm90 vs portable 2D")
    return g1, g2


def _run(torch, lay, hq, hkv, d, dtype, seed, *, fwd="auto", pack_gqa=None, **kw):
    cu_q, cu_k = lay.cu_seqlens_q, lay.cu_seqlens_k
    q, k, v = _qk(torch, int(cu_q[-1]), int(cu_k[-1]), hq, hkv, d, dtype, seed)
    plan = varblock.plan(cu_q, cu_k, num_heads_q=hq, num_heads_kv=hkv, head_dim=d, layout=lay, backend=fwd,
                         pack_gqa=pack_gqa)
    _, lse = varblock.attention(q, k, v, plan, return_lse=True)
    return plan, (q, k, lse), _check(torch, q, k, lse, plan, lay, **kw)


@reference_grid
def test_matches_reference(torch, dtype, d, causal, density):
    _run(torch, grid_layout(d, causal, density), 8, 2, d, dtype, seed=d + causal)


@pytest.mark.parametrize("hq,hkv,mode", [(8, 2, "per_kv_head"), (8, 1, "broadcast"), (4, 4, "per_q_head")])
def test_gqa_layouts_group_pooling_and_pack_gqa(torch, hq, hkv, mode):
    cu = _cu(LENS)
    h = {"per_q_head": hq, "per_kv_head": hkv, "broadcast": 1}[mode]
    lay = L.random_blocks(cu, cu, density=0.4, num_heads=h, head_mode=mode, causal=True, block_q=64, block_k=64,
                          seed=hq + hkv)
    _run(torch, lay, hq, hkv, 128, "bfloat16", seed=hq + hkv)
    if hq > hkv:
        _run(torch, lay, hq, hkv, 128, "bfloat16", seed=hq + hkv, pool_gqa=True)
        plan, _, _ = _run(torch, lay, hq, hkv, 64, "float16", seed=1, pack_gqa=True)  # Q rows by cp.async
        assert plan.pack_gqa > 1


@pytest.mark.parametrize("block,pool_k", [(64, 128), (64, 256), (128, 128), (128, 256)])
def test_pooling_blocks_larger_than_the_layouts(torch, block, pool_k):
    """Chunks starting mid pooling block (64-blocks pooled at 128: the two halves of a chunk go to neighbouring
    blocks) and pooling blocks spanning several chunks (max-accumulated)."""
    cu = _cu([300, 17, 0, 700, 129])
    lay = L.random_blocks(cu, cu, density=0.6, num_heads=4, head_mode="per_q_head", causal=True, block_q=block,
                          block_k=block, seed=block + pool_k)
    _run(torch, lay, 4, 4, 64, "float16", seed=3, block_q=pool_k, block_k=pool_k)


def test_every_mask_kind_on_partial_chunks(torch):
    cu = _cu(LENS)
    t = max(LENS)
    rng = np.random.default_rng(2)
    doc = np.concatenate([np.repeat(np.arange(3), [n // 3, n // 3, n - 2 * (n // 3)]) for n in LENS]).astype(np.int32)
    m1d = rng.random((len(LENS), 2, t, (t + 63) // 64)) < 0.4
    for lay, hq, hkv in [
        (L.sliding_window(cu, cu, window_left=100, window_right=0, block_q=64, block_k=64), 4, 2),
        (L.attention_sinks(cu, cu, sink_blocks=1, window_left=150, causal=True, block_q=64, block_k=64), 4, 4),
        (L.document(cu, cu, doc_ids_q=doc, causal=True, block_q=64, block_k=128), 4, 2),
        (L.from_seer_1d(m1d, cu, cu, block_size=64, head_mode="per_kv_head"), 8, 2),
    ]:
        _run(torch, lay, hq, hkv, 128, "bfloat16", seed=hq)


def test_portable_forward_plan_and_cross_attention(torch):
    """A plan of the portable forward (64-key chunks at d128: re-planned for the Hopper tiles) and q != k lengths."""
    cu_q, cu_k = _cu([5, 300, 1, 77]), _cu([700, 64, 129, 0])
    lay = L.random_blocks(cu_q, cu_k, density=0.5, num_heads=2, head_mode="per_kv_head", causal=False, block_q=64,
                          block_k=64, seed=9)
    plan, _, _ = _run(torch, lay, 8, 2, 128, "bfloat16", seed=4, fwd="attention_fwd_mma")
    assert plan.tile_n == 64


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_dense_sm90_plan_pooled_at_64(torch, dtype):
    """What SeerAttention distils from (and benchmarks/bench_pooling.py times): a dense causal plan of the sm90
    forward (its layout resolves to 128 x 128 blocks) pooled at 64 x 64, which only the sm90 kernel can do."""
    cu = _cu(LENS)
    plan = varblock.plan(cu, cu, num_heads_q=8, num_heads_kv=2, head_dim=128, causal=True)
    assert plan.family == "attention_fwd_sm90" and plan.layout.block_k == 128
    q, k, v = _qk(torch, int(cu[-1]), int(cu[-1]), 8, 2, 128, dtype, 12)
    _, lse = varblock.attention(q, k, v, plan, return_lse=True)
    g1, g2 = _check(torch, q, k, lse, plan, plan.layout, block_q=64, block_k=64, portable=False)
    auto1, auto2 = varblock.attention_pooling(q, k, lse, plan, block_q=64, block_k=64, per_sequence=False)
    np.testing.assert_array_equal(auto1.cpu().numpy(), g1)  # "auto" picks the sm90 kernel: the same bits
    np.testing.assert_array_equal(auto2.cpu().numpy(), g2)
    with pytest.raises(ValueError, match="block_k: 64"):
        varblock.attention_pooling(q, k, lse, plan, block_k=64, backend="attention_pool")


def test_device_plan_and_many_tiles(torch):
    """A device plan of the sm90 forward (tile count read on the GPU; the portable pooling kernel cannot take its
    128 x 128 tiles at d128) and a long batch with more tiles than SMs: the persistent loop pulls tiles from the
    counter, twice in a row (the counter resets itself)."""
    rng = np.random.default_rng(11)
    lens = [129, 1, 640]
    cu = _cu(lens)
    mask = rng.random((3, 2, 10, 10)) < 0.5
    dplan = varblock.plan_device(mask=torch.from_numpy(mask).cuda(), cu_seqlens_q=torch.from_numpy(cu).cuda(),
                                 num_heads_q=4, num_heads_kv=2, head_dim=128, block_q=64, block_k=64, causal=True)
    lay = L.from_block_mask(mask, cu, cu, block_q=64, block_k=64, head_mode="per_kv_head", causal=True,
                            padding="ignore")
    q, k, v = _qk(torch, 770, 770, 4, 2, 128, "bfloat16", 5)
    _, lse = varblock.attention(q, k, v, dplan, return_lse=True)
    assert dplan.on_device and dplan.family == "attention_fwd_sm90"
    _check(torch, q, k, lse, dplan, lay, portable=False)
    cu = _cu([2048, 1500, 1, 2500])
    lay = L.causal(cu, cu, block_q=128, block_k=128, num_heads=1)
    plan, (q, k, lse), (g1, _) = _run(torch, lay, 8, 2, 128, "bfloat16", seed=6, block_k=128)
    assert plan.num_tiles > torch.cuda.get_device_properties(0).multi_processor_count
    again, _ = varblock.attention_pooling(q, k, lse, plan, block_k=128, per_sequence=False, backend=SM90)
    np.testing.assert_array_equal(again.cpu().numpy(), g1)


@pytest.mark.parametrize("hq,hkv", [(16, 16), (8, 2)])
def test_many_short_tiles_dense_causal(torch, hq, hkv):
    """W3's shape, scaled: dozens of 512-token sequences (and odd ones) under a dense causal sm90 plan pooled at
    64 x 64: thousands of tiles of 1-4 chunks, each CTA pulling dozens in a row, so the ping-pong turns, the Q ring
    and the mask inputs cross tile boundaries all the time. Against the float64 reference, and bit-equal on a
    second call (every map entry has one writer)."""
    cu = _cu([512] * 40 + [320, 200, 64, 1, 511, 129])
    plan = varblock.plan(cu, cu, num_heads_q=hq, num_heads_kv=hkv, head_dim=128, causal=True)
    assert plan.family == "attention_fwd_sm90"
    q, k, v = _qk(torch, int(cu[-1]), int(cu[-1]), hq, hkv, 128, "bfloat16", 21 + hq)
    _, lse = varblock.attention(q, k, v, plan, return_lse=True)
    g1, g2 = _check(torch, q, k, lse, plan, plan.layout, block_q=64, block_k=64, portable=False)
    assert plan.num_tiles > 8 * torch.cuda.get_device_properties(0).multi_processor_count
    again1, again2 = varblock.attention_pooling(q, k, lse, plan, block_q=64, block_k=64, per_sequence=False)
    np.testing.assert_array_equal(again1.cpu().numpy(), g1)
    np.testing.assert_array_equal(again2.cpu().numpy(), g2)


@pytest.mark.parametrize("block_q", [16, 40, 200])
def test_raw_2d_map_for_query_blocks_of_any_size(torch, block_q):
    """The kernel's own 2D maxima (the 2D reduce then only normalises): warps whose 16 rows lie in one query block
    write one maximum per half (block_q 16), warps spanning two blocks one per row (40, 200); group pooling, and
    pack-GQA rows (heads interleaved: always per row). Against the reference and the portable kernel."""
    cu = _cu(LENS)
    lay = L.random_blocks(cu, cu, density=0.5, num_heads=2, head_mode="per_kv_head", causal=True, block_q=64,
                          block_k=64, seed=block_q)
    _run(torch, lay, 8, 2, 128, "bfloat16", seed=block_q, block_q=block_q, block_k=64)
    _run(torch, lay, 8, 2, 128, "bfloat16", seed=block_q + 1, block_q=block_q, block_k=128, pool_gqa=True)
    plan, _, _ = _run(torch, lay, 8, 2, 64, "float16", seed=block_q + 2, pack_gqa=True, block_q=block_q,
                      block_k=64, pool_gqa=True)
    assert plan.pack_gqa > 1
