"""Tile pairing on the GPU (``varblock.tile_pairing``): layouts of 64-token blocks planned for 128-row tiles, run by
every attention_fwd family, against the reference with the DESIGN.md section 6 rule — both the merged plan and its
unmerged twin. Odd and empty sequence lengths, len_k != len_q, GQA, causal / dense / random / window + sinks /
documents / SeerAttention 1D token masks, d64 / d128, bf16 / fp16."""

from __future__ import annotations

import numpy as np
import pytest

import varblock
from tests._attention_ref import attention_ref, check_attention
from varblock import layout as L
from varblock.abi import CHUNK_DROP_SHIFT
from varblock.plan.host import unmerged_plan

pytestmark = pytest.mark.gpu

LENS_Q = [1, 3, 113, 0, 1023, 200, 64, 129]
LENS_K = [1, 70, 113, 5, 1100, 200, 64, 256]
POISON = float("nan")
BACKENDS = varblock.families.family_names("attention_fwd")


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


def _cu(lens):
    return np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)


def _plan(lay, hq, hkv, d, backend, **kw):
    try:
        return varblock.plan(lay.cu_seqlens_q, lay.cu_seqlens_k, num_heads_q=hq, num_heads_kv=hkv, head_dim=d,
                             layout=lay, backend=backend, cache=False, **kw)
    except ValueError as ex:
        if backend != BACKENDS[-1] and "cannot run this problem" in str(ex):
            pytest.skip(str(ex))
        raise


def _run(torch, lay, hq, hkv, d, dtype, backend, seed, what, **kw):
    """Run the merged plan and its unmerged twin; both must pass the rule. Returns the merged plan."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    dt = getattr(torch, dtype)
    tq, tk = int(lay.cu_seqlens_q[-1]), int(lay.cu_seqlens_k[-1])
    q = torch.randn(tq, hq, d, device="cuda", generator=g).to(dt)
    k = torch.randn(tk, hkv, d, device="cuda", generator=g).to(dt)
    v = torch.randn(tk, hkv, d, device="cuda", generator=g).to(dt)
    p = _plan(lay, hq, hkv, d, backend, **kw)
    ref_o, ref_l, base_o = attention_ref(torch, q, k, v, lay)
    for plan, tag in ((p, "merged"), (unmerged_plan(p), "unmerged")):
        out = torch.full((tq, hq, d), POISON, dtype=dt, device="cuda")
        lse = torch.full((hq, tq), POISON, dtype=torch.float32, device="cuda")
        varblock.attention(q, k, v, plan, return_lse=True, out=out, lse=lse)
        torch.cuda.synchronize()
        assert not torch.isnan(lse).any(), f"{what} {tag}: unwritten LSE"
        check_attention(torch, out, lse, ref_o, ref_l, base_o, what=f"{what} {tag} ({plan.family})")
    return p


def _layout(kind, cu_q, cu_k, heads, mode, rng):
    kw = dict(block_q=64, block_k=64, num_heads=heads, head_mode=mode)
    if kind == "causal":
        return L.causal(cu_q, cu_k, **kw)
    if kind == "dense":
        return L.dense(cu_q, cu_k, **kw)
    if kind == "random_causal":
        return L.random_blocks(cu_q, cu_k, density=0.5, causal=True, seed=7, **kw)
    if kind == "random":
        return L.random_blocks(cu_q, cu_k, density=0.5, seed=8, **kw)
    if kind == "window_sinks":
        return L.sliding_window(cu_q, cu_k, window_left=150, window_right=0, num_sink_tokens=10, **kw)
    if kind == "document":
        dq = np.repeat(np.arange(6), -(-int(cu_q[-1]) // 6))[: int(cu_q[-1])].astype(np.int32)
        dk = np.repeat(np.arange(6), -(-int(cu_k[-1]) // 6))[: int(cu_k[-1])].astype(np.int32)
        return L.document(cu_q, cu_k, doc_ids_q=dq, doc_ids_k=dk, causal=True, **kw)
    assert kind == "seer1d"
    t = int(np.diff(cu_q).max())
    nbk = -(-int(np.diff(cu_k).max()) // 64)
    m = rng.random((cu_q.shape[0] - 1, heads, t, nbk)) < 0.6
    return L.from_seer_1d(m, cu_q, cu_k, block_size=64, head_mode=mode, causal=True)


KINDS = ["causal", "dense", "random_causal", "random", "window_sinks", "document", "seer1d"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("hq,hkv", [(8, 2), (4, 4)])
@pytest.mark.parametrize("same_lengths", [True, False])
def test_64x64_layouts(torch, backend, kind, hq, hkv, same_lengths):
    cu_q = _cu(LENS_Q)
    cu_k = cu_q if same_lengths else _cu(LENS_K)
    lay = _layout(kind, cu_q, cu_k, hkv, "per_kv_head", np.random.default_rng(hq + 3 * hkv))
    p = _run(torch, lay, hq, hkv, 128, "bfloat16", backend, seed=hq * 7 + same_lengths,
             what=f"{kind} Hq{hq}/Hkv{hkv} same_lengths={same_lengths}")
    assert p.worklist.merged
    if kind in ("causal", "dense") and same_lengths and p.pack_gqa == 1:
        # every tile holds two 64-row blocks, except a sequence's last (odd) block
        assert p.num_tiles == hq * sum(-(-n // p.tile_m) for n in LENS_Q)


@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("mode", ["per_q_head", "broadcast"])
def test_head_modes_dims_dtypes(torch, backend, d, dtype, mode):
    cu = _cu(LENS_Q)
    heads = {"per_q_head": 8, "broadcast": 1}[mode]
    lay = L.random_blocks(cu, cu, density=0.7, causal=True, seed=d, block_q=64, block_k=64, num_heads=heads,
                          head_mode=mode)
    _run(torch, lay, 8, 1, d, dtype, backend, seed=d, what=f"{mode} d{d} {dtype}")


@pytest.mark.parametrize("density", [0.5, 0.1])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("scheduler", ["single", "persistent"])
def test_random_64x64_drop_bits(torch, backend, density, causal, d, scheduler):
    """Random 64x64 layouts pair every two 64-row blocks; chunks that only one of them keeps carry the row-half
    drop bits (``varblock.abi.CHUNK_DROP_SHIFT``), which the kernels must apply (the unmerged twin has none)."""
    cu_q, cu_k = _cu(LENS_Q), _cu(LENS_K)
    lay = L.random_blocks(cu_q, cu_k, density=density, causal=causal, seed=int(density * 10) + d, block_q=64,
                          block_k=64, num_heads=2, head_mode="per_kv_head")
    p = _run(torch, lay, 8, 2, d, "bfloat16", backend, seed=d + causal, scheduler=scheduler,
             what=f"random {density} causal={causal} d{d} {scheduler}")
    assert ((p.worklist.chunks[:, 1] >> CHUNK_DROP_SHIFT) != 0).any(), "no chunk carries drop bits"
    assert not ((unmerged_plan(p).worklist.chunks[:, 1] >> CHUNK_DROP_SHIFT) != 0).any()


def test_w1_causal_64x64_every_tile_once(torch, backend):
    """W1 (Hq 32 / Hkv 8, d128, bf16), causal 64x64: the issue's benchmark case, persistent schedule; every tile is
    processed exactly once."""
    cu = _cu([512, 1024, 2048, 4096, 8192, 1536, 3072, 6144])
    lay = L.random_blocks(cu, cu, density=1.0, num_heads=8, head_mode="per_kv_head", causal=True, seed=1,
                          block_q=64, block_k=64)
    p = _run(torch, lay, 32, 8, 128, "bfloat16", backend, seed=11, what="W1 causal 64x64", scheduler="persistent")
    assert p.num_tiles == 32 * sum(-(-n // p.tile_m) for n in np.diff(cu))
    counts = p.enable_tile_counts()
    tq = int(cu[-1])
    q = torch.randn(tq, 32, 128, device="cuda").to(torch.bfloat16)
    k = torch.randn(tq, 8, 128, device="cuda").to(torch.bfloat16)
    varblock.attention(q, k, k, p)
    torch.cuda.synchronize()
    assert (counts.to_host(np.int32, p.num_tiles) == 1).all()
