"""Timing of the portable backward on W1 / W2-like problems (printed; run with ``-s``). The checks are that every
gradient is finite and that time falls with density (the cost follows the kept blocks, unlike FA4 4.0.0b36's
varlen block-sparse backward, whose time does not fall with density)."""

from __future__ import annotations

import numpy as np
import pytest

import varblock
from varblock import layout as L

pytestmark = pytest.mark.gpu

W1 = [512, 1024, 2048, 4096, 8192, 1536, 3072, 6144]


def _time(torch, fn, reps=10):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return float(np.median(times))


def _bench(torch, lens, hq, hkv, d, lay, label, cache=True):
    cu = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
    g = torch.Generator(device="cuda").manual_seed(0)
    t = int(cu[-1])
    q = torch.randn(t, hq, d, device="cuda", generator=g).bfloat16()
    k = torch.randn(t, hkv, d, device="cuda", generator=g).bfloat16()
    v = torch.randn(t, hkv, d, device="cuda", generator=g).bfloat16()
    dout = torch.randn(t, hq, d, device="cuda", generator=g).bfloat16()
    plan = varblock.plan(cu, cu, num_heads_q=hq, num_heads_kv=hkv, head_dim=d, layout=lay, cache=cache)
    out, lse = varblock.attention(q, k, v, plan, return_lse=True)
    grads = varblock.attention_backward(dout, q, k, v, out, lse, plan)
    torch.cuda.synchronize()
    for x in grads:
        assert torch.isfinite(x.float()).all(), label
    pairs = lay.num_pairs(hq, hkv)
    t_f = _time(torch, lambda: varblock.attention(q, k, v, plan))
    t_b = _time(torch, lambda: varblock.attention_backward(dout, q, k, v, out, lse, plan))
    t_d = _time(torch, lambda: varblock.attention_backward(dout, q, k, v, out, lse, plan, deterministic=True))
    print(f"\n{label}: pairs {pairs:.3e}  fwd {t_f:.3f} ms {4 * d * pairs / t_f / 1e9:.0f} TFLOP/s  "
          f"bwd {t_b:.3f} ms {10 * d * pairs / t_b / 1e9:.0f} TFLOP/s  deterministic {t_d:.3f} ms "
          f"({t_d / t_b:.2f}x)")
    return t_b


@pytest.mark.parametrize("causal", [True, False])
def test_w1_timing(torch, causal):
    cu = np.concatenate([[0], np.cumsum(W1)]).astype(np.int32)
    times = {}
    for density in (1.0, 0.5, 0.1):
        lay = (L.causal(cu, cu, num_heads=1) if causal else L.dense(cu, cu, num_heads=1)) if density == 1.0 else \
            L.random_blocks(cu, cu, density=density, num_heads=8, head_mode="per_kv_head", causal=causal, seed=0)
        times[density] = _bench(torch, W1, 32, 8, 128, lay, f"W1 causal={causal} density={density}")
    assert times[0.1] < times[1.0]


def test_w2_timing(torch):
    lens = [32768]
    cu = np.array([0, 32768], dtype=np.int32)
    times = {}
    for density in (1.0, 0.1):
        lay = L.dense(cu, cu, num_heads=1) if density == 1.0 else \
            L.random_blocks(cu, cu, density=density, num_heads=16, head_mode="per_kv_head", seed=0)
        times[density] = _bench(torch, lens, 16, 16, 128, lay, f"W2 density={density}")
    assert times[0.1] < 0.5 * times[1.0]


def test_w3_timing(torch):
    """64 short sequences (W3): many small tiles."""
    lens = [512] * 64
    cu = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
    for causal in (False, True):
        lay = L.causal(cu, cu, num_heads=1) if causal else L.dense(cu, cu, num_heads=1)
        _bench(torch, lens, 16, 16, 128, lay, f"W3 causal={causal} density=1.0")


def test_w1_64_blocks_timing(torch):
    """SeerAttention's block size: W1 dense causal with 64x64 blocks, Hq = Hkv = 32 (the setting SeerAttention's
    Triton backward was measured in: 156 TFLOP/s; the issue's bar is 1.5x that). Adjacent 64-key columns share one
    128-key tile (bwd_key_groups), so the time is within 15% of the same mask in 128x128 blocks."""
    cu = np.concatenate([[0], np.cumsum(W1)]).astype(np.int32)
    t64 = _bench(torch, W1, 32, 32, 128, L.causal(cu, cu, num_heads=1, block_q=64, block_k=64),
                 "W1 causal 64x64 blocks, Hq = Hkv = 32")
    t128 = _bench(torch, W1, 32, 32, 128, L.causal(cu, cu, num_heads=1), "W1 causal 128x128 blocks, Hq = Hkv = 32")
    assert t64 <= 1.15 * t128, (t64, t128)


def test_w1_64_random_blocks_narrow_tiles(torch, monkeypatch):
    """SeerAttention's cell at density 0.5 (W1 causal, random 64x64 blocks, Hq = Hkv = 32; issue 11 measured 13.36
    ms on 128-key tiles, the same as density 1.0, against SeerAttention's 10.90 ms): the plan's 64-key tiles must
    beat the 128-key tiles on the same mask (a fresh, uncached plan with ``NARROW_TILES = False``)."""
    from varblock.ops import attention_backward as ops

    cu = np.concatenate([[0], np.cumsum(W1)]).astype(np.int32)
    lay = L.random_blocks(cu, cu, density=0.5, num_heads=32, head_mode="per_kv_head", causal=True, seed=1,
                          block_q=64, block_k=64)
    t_narrow = _bench(torch, W1, 32, 32, 128, lay, "W1 causal 64x64 random 0.5, Hq = Hkv = 32, plan's choice",
                      cache=False)
    monkeypatch.setattr(ops, "NARROW_TILES", False)
    t_wide = _bench(torch, W1, 32, 32, 128, lay, "W1 causal 64x64 random 0.5, Hq = Hkv = 32, 128-key tiles",
                    cache=False)
    print(f"\n64-key / 128-key tile time: {t_narrow / t_wide:.3f} (SeerAttention measured 10.90 ms; bar 7.27 ms)")
    assert t_narrow < t_wide, (t_narrow, t_wide)
