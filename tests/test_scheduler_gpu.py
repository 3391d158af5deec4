"""The dynamic persistent scheduler on the GPU: same results as one CTA per tile on every mask kind, every tile
processed exactly once, a plan reused 1000 times, CUDA-graph replays, two streams sharing one plan."""

from __future__ import annotations

import numpy as np
import pytest

import varblock
from tests._attention_ref import attention_ref, check_attention
from varblock import layout as L
from varblock.ops.state import state_of

pytestmark = pytest.mark.gpu


def _cu(lens):
    return np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)


def _qkv(torch, tq, tk, hq, hkv, d, seed, dtype="bfloat16"):
    g = torch.Generator(device="cuda").manual_seed(seed)
    dt = getattr(torch, dtype)
    return tuple(torch.randn(t, h, d, device="cuda", generator=g).to(dt) for t, h in ((tq, hq), (tk, hkv), (tk, hkv)))


def _layouts():
    lens = [1023, 3, 0, 2048, 113, 700]
    cu = _cu(lens)
    rng = np.random.default_rng(0)
    doc = np.concatenate([np.repeat(np.arange(3), rng.multinomial(n, [0.3, 0.3, 0.4])) for n in lens]).astype(np.int32)
    t = max(lens)
    m1d = rng.random((len(lens), 2, t, (t + 63) // 64)) < 0.3
    return cu, {
        "random": L.random_blocks(cu, cu, density=0.3, num_heads=2, head_mode="per_kv_head", seed=1),
        "causal": L.causal(cu, cu),
        "window": L.sliding_window(cu, cu, window_left=300, window_right=0),
        "document": L.document(cu, cu, doc_ids_q=doc, causal=True),
        "token": L.from_seer_1d(m1d, cu, cu, block_size=64, head_mode="per_kv_head"),
        "sinks": L.attention_sinks(cu, cu, sink_blocks=1, window_left=256),
    }


def _plan(lay, scheduler, **kw):
    return varblock.plan(lay.cu_seqlens_q, lay.cu_seqlens_k, num_heads_q=8, num_heads_kv=2, head_dim=128,
                         layout=lay, scheduler=scheduler, cache=False, **kw)


@pytest.mark.parametrize("kind", ["random", "causal", "window", "document", "token", "sinks"])
def test_persistent_equals_single(torch, kind):
    cu, lays = _layouts()
    lay = lays[kind]
    q, k, v = _qkv(torch, int(cu[-1]), int(cu[-1]), 8, 2, 128, seed=3)
    ps, pp = _plan(lay, "single"), _plan(lay, "persistent")
    assert ps.scheduler == "single" and pp.scheduler == "persistent"
    assert pp.num_ctas <= pp.num_tiles
    os_, ls = varblock.attention(q, k, v, ps, return_lse=True)
    op, lp = varblock.attention(q, k, v, pp, return_lse=True)
    torch.cuda.synchronize()
    assert torch.equal(os_, op) and torch.equal(ls, lp), "persistent and single-tile results differ"
    ref_o, ref_l, base_o = attention_ref(torch, q, k, v, lay)
    check_attention(torch, op, lp, ref_o, ref_l, base_o, what=kind)


@pytest.mark.parametrize("scheduler", ["single", "persistent"])
def test_every_tile_exactly_once(torch, scheduler):
    cu, lays = _layouts()
    p = _plan(lays["random"], scheduler)
    counts = p.enable_tile_counts()
    q, k, v = _qkv(torch, int(cu[-1]), int(cu[-1]), 8, 2, 128, seed=5)
    varblock.attention(q, k, v, p)
    torch.cuda.synchronize()
    c = counts.to_host(np.int32, p.num_tiles)
    assert (c == 1).all(), f"tiles processed {np.bincount(c)} times"
    for _ in range(5):
        varblock.attention(q, k, v, p)
    torch.cuda.synchronize()
    assert (counts.to_host(np.int32, p.num_tiles) == 6).all()


def test_plan_reused_1000_times(torch):
    cu, lays = _layouts()
    lay = lays["causal"]
    p = _plan(lay, "persistent")
    q, k, v = _qkv(torch, int(cu[-1]), int(cu[-1]), 8, 2, 128, seed=7)
    first = varblock.attention(q, k, v, p)
    out = torch.empty_like(first)
    for _ in range(1000):
        varblock.attention(q, k, v, p, out=out)
    torch.cuda.synchronize()
    assert torch.equal(first, out)
    ref_o, ref_l, base_o = attention_ref(torch, q, k, v, lay)
    _, lse = varblock.attention(q, k, v, p, return_lse=True)
    check_attention(torch, out, lse, ref_o, ref_l, base_o, what="after 1000 reuses")


@pytest.mark.parametrize("scheduler", ["single", "persistent"])
def test_cuda_graph_replay(torch, scheduler):
    cu, lays = _layouts()
    lay = lays["window"]
    p = _plan(lay, scheduler)
    q, k, v = _qkv(torch, int(cu[-1]), int(cu[-1]), 8, 2, 128, seed=9)
    out = torch.empty_like(q)
    lse = torch.empty(8, q.shape[0], device="cuda")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())  # q, k, v are written on the default stream
    with torch.cuda.stream(s):  # warm up on the capture stream (loads the module, prepares the launch)
        varblock.attention(q, k, v, p, out=out, lse=lse, return_lse=True)
    s.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g, stream=s):
        varblock.attention(q, k, v, p, out=out, lse=lse, return_lse=True)
    ref_o, ref_l, base_o = attention_ref(torch, q, k, v, lay)
    for i in range(100):
        out.fill_(float("nan"))
        g.replay()
        if i in (0, 99):
            torch.cuda.synchronize()
            check_attention(torch, out, lse, ref_o, ref_l, base_o, what=f"graph replay {i}")
    torch.cuda.synchronize()


def test_two_streams_share_a_plan(torch):
    cu, lays = _layouts()
    lay = lays["random"]
    p = _plan(lay, "persistent")
    q, k, v = _qkv(torch, int(cu[-1]), int(cu[-1]), 8, 2, 128, seed=11)
    ref = varblock.attention(q, k, v, p)
    torch.cuda.synchronize()
    s1, s2 = torch.cuda.Stream(), torch.cuda.Stream()
    o1, o2 = torch.empty_like(ref), torch.empty_like(ref)
    for _ in range(50):
        with torch.cuda.stream(s1):
            varblock.attention(q, k, v, p, out=o1)
        with torch.cuda.stream(s2):
            varblock.attention(q, k, v, p, out=o2)
    torch.cuda.synchronize()
    assert torch.equal(o1, ref) and torch.equal(o2, ref)
    assert len(state_of(p).counter_slots) >= 2


@pytest.mark.parametrize("causal,window,hq,hkv,pack", [(False, None, 8, 2, None), (True, None, 8, 2, None),
                                                       (True, (200, 0), 4, 4, None), (False, (64, 64), 8, 1, True),
                                                       (True, None, 8, 2, True)])
def test_device_plan_matches_host_plan(torch, causal, window, hq, hkv, pack):
    """cu_seqlens on the GPU: the prepare kernel builds the work list there; results equal the host plan's."""
    lens = [1023, 3, 0, 2048, 113, 1]
    cu = _cu(lens)
    cu_dev = torch.tensor(cu, device="cuda")
    q, k, v = _qkv(torch, int(cu[-1]), int(cu[-1]), hq, hkv, 128, seed=13)
    kw = dict(num_heads_q=hq, num_heads_kv=hkv, head_dim=128, causal=causal, window=window, pack_gqa=pack)
    ph = varblock.plan(cu, **kw, cache=False)
    pd = varblock.plan(cu_dev, **kw, max_seqlen_q=max(lens), cache=False)
    assert pd.on_device and pd.scheduler == "persistent"
    oh, lh = varblock.attention(q, k, v, ph, return_lse=True)
    od, ld = varblock.attention(q, k, v, pd, return_lse=True)
    torch.cuda.synchronize()
    assert torch.equal(oh, od) and torch.equal(lh, ld)
    status = pd.buffers["status"].to_host(np.int32, 2)
    assert status[1] == 0 and 0 < status[0] <= pd.max_tiles
    ref_o, ref_l, base_o = attention_ref(torch, q, k, v, ph.layout)
    check_attention(torch, od, ld, ref_o, ref_l, base_o, what="device plan")


def test_device_plan_needs_no_host_sync(torch):
    lens = [700, 300]
    cu_dev = torch.tensor(_cu(lens), device="cuda")
    q, k, v = _qkv(torch, 1000, 1000, 4, 2, 64, seed=17)
    varblock.attention(q, k, v, cu_seqlens_q=cu_dev, causal=True)  # loads the modules
    torch.cuda.synchronize()
    torch.cuda._sleep(int(1e9))  # keep the GPU busy for a while
    busy = torch.cuda.Event()
    out = varblock.attention(q, k, v, cu_seqlens_q=cu_dev, causal=True)  # implicit device plan each call
    busy.record()
    assert not busy.query(), "planning with device cu_seqlens waited for the GPU"
    torch.cuda.synchronize()
    lay = varblock.plan(_cu(lens), num_heads_q=4, num_heads_kv=2, head_dim=64, causal=True).layout
    ref_o, ref_l, base_o = attention_ref(torch, q, k, v, lay)
    _, lse = varblock.attention(q, k, v, cu_seqlens_q=cu_dev, causal=True, return_lse=True)
    check_attention(torch, out, lse, ref_o, ref_l, base_o, what="implicit device plan")


def test_device_plan_single_tile_schedule(torch):
    """A device plan with scheduler="single": a grid of the tile capacity, CTAs past the device count exit."""
    lens = [700, 0, 129, 1]
    cu = _cu(lens)
    q, k, v = _qkv(torch, int(cu[-1]), int(cu[-1]), 4, 2, 64, seed=19)
    kw = dict(num_heads_q=4, num_heads_kv=2, head_dim=64, causal=True, cache=False)
    pd = varblock.plan(torch.tensor(cu, device="cuda"), **kw, max_seqlen_q=max(lens), scheduler="single")
    assert pd.on_device and pd.scheduler == "single" and pd.num_ctas == pd.max_tiles
    counts = pd.enable_tile_counts()
    od, ld = varblock.attention(q, k, v, pd, return_lse=True)
    oh, lh = varblock.attention(q, k, v, varblock.plan(cu, **kw), return_lse=True)
    torch.cuda.synchronize()
    assert torch.equal(oh, od) and torch.equal(lh, ld)
    n = int(pd.buffers["status"].to_host(np.int32, 2)[0])
    c = counts.to_host(np.int32, pd.max_tiles)
    assert (c[:n] == 1).all() and (c[n:] == 0).all()
