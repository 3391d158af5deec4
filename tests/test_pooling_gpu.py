"""``varblock.attention_pooling`` on the GPU against ``varblock.reference.attention_pooling_1d/2d`` (float64 from
the same fp16/bf16 inputs; fp32 tolerance): odd and empty sequence lengths, GQA (and group pooling), causal,
densities, head dims, dtypes, a device plan; outputs are fresh arrays, so every element is checked."""

from __future__ import annotations

import numpy as np
import pytest

import varblock
from tests._pooling_ref import LENS, grid_layout, group_pooling_ref, reference_grid
from varblock import layout as L
from varblock import reference

pytestmark = pytest.mark.gpu

RTOL, ATOL = 2e-3, 2e-5  # the kernel's S, LSE and exp2 are fp32 (the LSE from the forward kernel)


def _cu(lens):
    return np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)


def _qk(torch, total, hq, hkv, d, dtype, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    dt = getattr(torch, dtype)
    return tuple(torch.randn(total, h, d, device="cuda", generator=g).to(dt) for h in (hq, hkv, hkv))


def _run(torch, lay, hq, hkv, d, dtype, seed, *, pool_gqa=False, plan=None):
    cu = lay.cu_seqlens_q
    q, k, v = _qk(torch, int(cu[-1]), hq, hkv, d, dtype, seed)
    p = plan or varblock.plan(cu, lay.cu_seqlens_k, num_heads_q=hq, num_heads_kv=hkv, head_dim=d, layout=lay,
                              backend="attention_fwd_mma")
    _, lse = varblock.attention(q, k, v, p, return_lse=True)
    p1, p2 = varblock.attention_pooling(q, k, lse, p, pool_gqa=pool_gqa, per_sequence=False)
    torch.cuda.synchronize()
    qf, kf = q.float().cpu().numpy(), k.float().cpu().numpy()
    r1 = reference.attention_pooling_1d(qf, kf, lay)
    r2 = reference.attention_pooling_2d(qf, kf, lay)
    if pool_gqa:
        r1, r2 = group_pooling_ref(r1, lay, hq // hkv, lay.block_q)
    g1, g2 = p1.cpu().numpy(), p2.cpu().numpy()
    assert g1.shape == r1.shape and g2.shape == r2.shape, (g1.shape, r1.shape, g2.shape, r2.shape)
    assert np.isfinite(g1).all() and np.isfinite(g2).all()
    np.testing.assert_allclose(g1, r1, rtol=RTOL, atol=ATOL, err_msg="1D pooling")
    np.testing.assert_allclose(g2, r2, rtol=RTOL, atol=ATOL, err_msg="2D pooling")
    return p, (q, k, lse), (g1, g2)


@reference_grid
def test_pooling_matches_reference(torch, dtype, d, causal, density):
    _run(torch, grid_layout(d, causal, density), 8, 2, d, dtype, seed=d + causal)


@pytest.mark.parametrize("hq,hkv,mode", [(8, 2, "per_kv_head"), (8, 1, "broadcast"), (4, 4, "per_q_head")])
def test_gqa_layouts_and_group_pooling(torch, hq, hkv, mode):
    cu = _cu(LENS)
    h = {"per_q_head": hq, "per_kv_head": hkv, "broadcast": 1}[mode]
    lay = L.random_blocks(cu, cu, density=0.4, num_heads=h, head_mode=mode, causal=True, block_q=64, block_k=64)
    _run(torch, lay, hq, hkv, 128, "bfloat16", seed=hq + hkv)
    if hq > hkv:
        _run(torch, lay, hq, hkv, 128, "bfloat16", seed=hq + hkv, pool_gqa=True)


def test_block_sizes_and_per_sequence_views(torch):
    cu = _cu([300, 17, 0, 700])
    lay = L.causal(cu, cu, block_q=128, block_k=128, num_heads=1)
    p, (q, k, lse), (g1, g2) = _run(torch, lay, 4, 4, 64, "float16", seed=3)
    seqs, p2 = varblock.attention_pooling(q, k, lse, p)  # per sequence (host plan default)
    lens = np.diff(cu)
    assert len(seqs) == 4
    for b, s in enumerate(seqs):
        assert tuple(s.shape) == (4, int(lens[b]), -(-int(lens[b]) // 128))
        np.testing.assert_array_equal(s.cpu().numpy(), g1[:, cu[b]:cu[b + 1], :s.shape[2]])
    # pooled key blocks of 256 (a multiple of the layout's 128) against the reference at 256
    _, p2_256 = varblock.attention_pooling(q, k, lse, p, block_q=256, block_k=256)
    qf, kf = q.float().cpu().numpy(), k.float().cpu().numpy()
    np.testing.assert_allclose(p2_256.cpu().numpy(), reference.attention_pooling_2d(qf, kf, lay, block_q=256,
                                                                                      block_k=256),
                               rtol=RTOL, atol=ATOL)
    with pytest.raises(ValueError, match="block_k"):  # (the sm90 kernel pools 64-key halves: it would take it)
        varblock.attention_pooling(q, k, lse, p, block_k=64, backend="attention_pool")


def test_device_plan_pooling_equals_host_plan(torch):
    rng = np.random.default_rng(11)
    lens = [129, 1, 640]
    cu = _cu(lens)
    mb = 10
    mask = rng.random((3, 2, mb, mb)) < 0.5
    dplan = varblock.plan_device(mask=torch.from_numpy(mask).cuda(), cu_seqlens_q=torch.from_numpy(cu).cuda(),
                                 num_heads_q=4, num_heads_kv=2, head_dim=128, block_q=64, block_k=64, causal=True,
                                 backend="attention_fwd_mma")
    lay = L.from_block_mask(mask, cu, cu, block_q=64, block_k=64, head_mode="per_kv_head", causal=True,
                            padding="ignore")
    hplan, (q, k, lse), (g1, g2) = _run(torch, lay, 4, 2, 128, "bfloat16", seed=5)
    d1, d2 = varblock.attention_pooling(q, k, lse, dplan, per_sequence=False)
    torch.cuda.synchronize()
    nb = g1.shape[2]
    assert np.array_equal(d1.cpu().numpy()[:, :, :nb], g1) and not d1.cpu().numpy()[:, :, nb:].any()
    assert np.array_equal(d2.cpu().numpy()[:, :, :g2.shape[2], :nb], g2)
