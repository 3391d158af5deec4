"""Device layouts on the GPU (``varblock.plan_device``): the layout kernels write exactly the NumPy model's tables
(which equal the host builders', tests/test_device_layout_model.py), status words included, on random masks, top-k
indices and bad inputs; attention through a device plan matches the float64 reference and the host plan of the same
layout; rebuild + attention replayed from a CUDA graph gives the eager results."""

from __future__ import annotations

import numpy as np
import pytest

import varblock
from tests._attention_ref import attention_ref, check_attention
from tests.test_device_layout_model import _random_case, _random_lists
from varblock import device_layout as dl
from varblock.device_layout.codes import ERR_INDEX, ERR_MASK_SHAPE, ERR_MASK_VALUE, STATUS_DETAIL, STATUS_ERROR
from varblock.device_layout.model import build_from_lists, build_from_mask, build_from_topk
from varblock.layout import from_block_mask

pytestmark = pytest.mark.gpu

TABLES = ("status", "rows", "entries", "tiles", "chunks", "cols", "col_entries")


def _cu(lens) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)


def _dev(torch, a):
    return torch.from_numpy(np.ascontiguousarray(a)).cuda()


def _assert_tables_equal(got, want, what):
    for name in TABLES:
        g, w = getattr(got, name), getattr(want, name)
        assert g.shape == w.shape, f"{what}: {name} shape {g.shape} != model {w.shape}"
        assert np.array_equal(g, w), f"{what}: {name} differs from the model at {np.argwhere(g != w)[:5].tolist()}"


def _poison_tables(torch, plan):
    """Fill every output table with -7 so that an unwritten element shows."""
    from cuda.bindings import driver

    for name in ("rows", "entries", "tiles", "chunks", "cols", "col_entries"):
        buf = plan.buffers[name]
        (err,) = driver.cuMemsetD32(buf.ptr, 0xFFFFFFF9, max(buf.nbytes // 4, 1))
        assert int(err) == 0


@pytest.mark.parametrize("seed", range(40))
def test_kernels_equal_model_on_random_masks(torch, seed):
    rng = np.random.default_rng(seed)
    mask, cu_q, cu_k, geo = _random_case(rng)
    plan = varblock.plan_device(mask=_dev(torch, mask), cu_seqlens_q=_dev(torch, cu_q), cu_seqlens_k=_dev(torch, cu_k),
                                num_heads_q=geo.num_heads_q, num_heads_kv=geo.num_heads_kv, head_dim=128,
                                block_q=geo.block_q, block_k=geo.block_k, head_mode=geo.head_mode,
                                window=(geo.window_left, geo.window_right), pack_gqa=geo.pack_gqa > 1)
    _poison_tables(torch, plan)
    dl.rebuild(plan, mask=_dev(torch, mask), cu_seqlens_q=_dev(torch, cu_q), cu_seqlens_k=_dev(torch, cu_k))
    torch.cuda.synchronize()
    want = build_from_mask(mask, cu_q, cu_k, dl.geometry(plan))
    _assert_tables_equal(dl.tables(plan), want, f"seed {seed}")


@pytest.mark.parametrize("seed", range(10))
def test_kernels_equal_model_on_topk(torch, seed):
    rng = np.random.default_rng(500 + seed)
    B = int(rng.integers(1, 6))
    lens = rng.integers(0, 2000, size=B)
    cu = _cu(lens)
    mb = int(np.max(-(-lens // 64), initial=0)) + 1
    K = int(rng.integers(1, 9))
    idx = np.stack([rng.integers(0, max(-(-int(n) // 64), 1), size=(4, mb, K)) for n in lens]).astype(np.int32)
    cnt = rng.integers(0, K + 1, size=(B, 4, mb)).astype(np.int32) if seed % 2 else None
    plan = varblock.plan_device(topk_indices=_dev(torch, idx), topk_counts=None if cnt is None else _dev(torch, cnt),
                                cu_seqlens_q=_dev(torch, cu), num_heads_q=8, num_heads_kv=4, head_dim=128, block_q=64,
                                block_k=64, num_key_blocks=mb, causal=True)
    torch.cuda.synchronize()
    want = build_from_topk(idx, cnt, cu, cu, dl.geometry(plan))
    _assert_tables_equal(dl.tables(plan), want, f"top-k seed {seed}")


@pytest.mark.parametrize("seed", range(8))
def test_kernels_equal_model_on_fa4_and_flex_lists(torch, seed):
    rng = np.random.default_rng(700 + seed)
    B, H, bs = int(rng.integers(1, 4)), 2, 64
    lens = rng.integers(1, 900, size=B)
    cu = _cu(lens)
    nb_k = -(-lens // bs)
    mb = int(nb_k.max()) + 1
    nblk = [(int(lens[b]), int(nb_k[b])) for b in range(B)]
    for pad_ok in (False, True):
        cnt, idx = _random_lists(rng, B, H, mb, nblk, mb, pad_beyond=pad_ok, bs=bs)
        if pad_ok:
            src = {"flex": {"kv_num_blocks": _dev(torch, cnt["p"]), "kv_indices": _dev(torch, idx["p"]),
                            "full_kv_num_blocks": _dev(torch, cnt["f"]), "full_kv_indices": _dev(torch, idx["f"]),
                            "BLOCK_SIZE": (bs, bs)}}
        else:
            src = {"fa4": {"mask_block_cnt": _dev(torch, cnt["p"]), "mask_block_idx": _dev(torch, idx["p"]),
                           "full_block_cnt": _dev(torch, cnt["f"]), "full_block_idx": _dev(torch, idx["f"]),
                           "block_size": (bs, bs)}}
        plan = varblock.plan_device(**src, cu_seqlens_q=_dev(torch, cu), num_heads_q=2, head_dim=128, causal=True)
        torch.cuda.synchronize()
        want = build_from_lists((cnt["p"], idx["p"]), (cnt["f"], idx["f"]), cu, cu, dl.geometry(plan),
                                pad_ok=pad_ok)
        assert want.error == 0
        _assert_tables_equal(dl.tables(plan), want, f"lists seed {seed} pad_ok={pad_ok}")


@pytest.mark.parametrize("causal", [False, True])
def test_seer_1d_token_mask(torch, causal):
    from varblock.device_layout.model_seer import build_from_token_mask
    from varblock.layout import from_seer_1d

    rng = np.random.default_rng(40 + causal)
    lens = [1, 200, 0, 513, 64]
    cu = _cu(lens)
    B, hq, hkv, T, NB = len(lens), 8, 2, 520, 9
    tm = rng.random((B, hkv, T, NB)) < 0.3
    plan = varblock.plan_device(seer_1d=_dev(torch, tm), cu_seqlens_q=_dev(torch, cu), num_heads_q=hq,
                                num_heads_kv=hkv, head_dim=128, causal=causal)
    torch.cuda.synchronize()
    want, packed = build_from_token_mask(tm, cu, cu, dl.geometry(plan))
    _assert_tables_equal(dl.tables(plan), want, f"seer_1d causal={causal}")
    total = int(cu[-1])
    got_packed = plan.buffers["tok_mask"].to_host(np.uint8, hkv * B * T * NB).reshape(hkv, B * T, NB)
    assert np.array_equal(got_packed[:, :total], packed[:, :total])
    lay = from_seer_1d(tm, cu, cu, block_size=64, causal=causal)
    g = torch.Generator(device="cuda").manual_seed(9)
    q, k, v = (torch.randn(total, n, 128, device="cuda", generator=g).to(torch.bfloat16) for n in (hq, hkv, hkv))
    out = torch.full_like(q, float("nan"))
    lse = torch.full((hq, total), float("nan"), device="cuda")
    varblock.attention(q, k, v, plan, out=out, lse=lse, return_lse=True)
    torch.cuda.synchronize()
    ref_o, ref_l, base_o = attention_ref(torch, q, k, v, lay)
    check_attention(torch, out, lse, ref_o, ref_l, base_o, what=f"seer_1d device plan causal={causal}")


def test_errors_reach_the_status_word(torch):
    cu = _cu([200, 70])
    mask = np.zeros((2, 2, 4, 4), bool)
    mask[0, 0, :, 0] = True
    mask[1, 1, 1, :2] = True
    kw = dict(num_heads_q=2, head_dim=128, block_q=64, block_k=64)
    plan = varblock.plan_device(mask=_dev(torch, mask), cu_seqlens_q=_dev(torch, cu), max_kept_blocks=3, **kw)
    st = dl.status(plan)
    assert st["error"] == "capacity" and st["detail"] == 6 and st["words"][0] == 0
    with pytest.raises(ValueError, match="capacity"):
        dl.check(plan)
    codes = mask.astype(np.int32)
    codes[1, 0, 3, 2] = 7
    plan = varblock.plan_device(mask=_dev(torch, codes), cu_seqlens_q=_dev(torch, cu), **kw)
    assert (dl.status(plan)["words"][STATUS_ERROR], dl.status(plan)["detail"]) == (ERR_MASK_VALUE, 46)
    plan = varblock.plan_device(mask=_dev(torch, mask[:, :, :3]), cu_seqlens_q=_dev(torch, cu), **kw)
    assert dl.status(plan)["words"][STATUS_ERROR] == ERR_MASK_SHAPE
    idx = np.zeros((2, 2, 4, 2), np.int32)
    idx[1, 0, 1, 1] = 2
    plan = varblock.plan_device(topk_indices=_dev(torch, idx), cu_seqlens_q=_dev(torch, cu), num_key_blocks=4, **kw)
    words = dl.status(plan)["words"]
    want = build_from_topk(idx, None, cu, cu, dl.geometry(plan)).status
    assert words[STATUS_ERROR] == ERR_INDEX and np.array_equal(words, want) and words[STATUS_DETAIL] == 19


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("hq,hkv,mode", [(8, 8, "per_q_head"), (8, 2, "per_kv_head"), (4, 1, "broadcast")])
def test_attention_through_a_device_plan(torch, causal, hq, hkv, mode):
    rng = np.random.default_rng(hq * 10 + hkv + causal)
    lens = [1, 300, 0, 777, 129]
    cu = _cu(lens)
    bs = 128
    mb = int(np.max(-(-np.asarray(lens) // bs)))
    h = {"per_q_head": hq, "per_kv_head": hkv, "broadcast": 1}[mode]
    mask = rng.random((len(lens), h, mb, mb)) < 0.4
    total = int(cu[-1])
    g = torch.Generator(device="cuda").manual_seed(int(causal))
    q, k, v = (torch.randn(total, n, 128, device="cuda", generator=g).to(torch.bfloat16) for n in (hq, hkv, hkv))
    plan = varblock.plan_device(mask=_dev(torch, mask), cu_seqlens_q=_dev(torch, cu), num_heads_q=hq,
                                num_heads_kv=hkv, head_dim=128, block_q=bs, block_k=bs, head_mode=mode, causal=causal)
    lay = from_block_mask(mask, cu, cu, block_q=bs, block_k=bs, head_mode=mode, causal=causal, padding="ignore")
    out = torch.full_like(q, float("nan"))
    lse = torch.full((hq, total), float("nan"), device="cuda")
    varblock.attention(q, k, v, plan, out=out, lse=lse, return_lse=True)
    torch.cuda.synchronize()
    ref_o, ref_l, base_o = attention_ref(torch, q, k, v, lay)
    check_attention(torch, out, lse, ref_o, ref_l, base_o, what=f"device plan {mode} causal={causal}")
    host_plan = varblock.plan(cu, cu, num_heads_q=hq, num_heads_kv=hkv, head_dim=128, layout=lay,
                              backend=plan.family)
    o2, l2 = varblock.attention(q, k, v, host_plan, return_lse=True)
    assert torch.equal(o2, out) and torch.equal(l2, lse), "device plan and host plan of one layout differ"


def test_rebuild_and_attention_in_a_cuda_graph(torch):
    rng = np.random.default_rng(7)
    lens = [513, 64, 1000]
    cu = _cu(lens)
    mb = 8
    masks = [rng.random((3, 4, mb, mb)) < d for d in (0.2, 0.6)]
    total = int(cu[-1])
    q, k, v = (torch.randn(total, 4, 64, device="cuda").to(torch.float16) for _ in range(3))
    cu_d = _dev(torch, cu)
    static_mask = _dev(torch, masks[0])
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        plan = varblock.plan_device(mask=static_mask, cu_seqlens_q=cu_d, num_heads_q=4, head_dim=64, causal=True,
                                    stream=stream)
        out = torch.empty_like(q)
        varblock.attention(q, k, v, plan, out=out, stream=stream)  # warm-up: launches prepared before capture
        stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            dl.rebuild(plan, mask=static_mask, cu_seqlens_q=cu_d, stream=stream)
            varblock.attention(q, k, v, plan, out=out, stream=stream)
    for m in masks:
        static_mask.copy_(_dev(torch, m))
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        lay = from_block_mask(m, cu, cu, block_q=128, block_k=128, causal=True, padding="ignore")
        eager = varblock.attention(q, k, v, varblock.plan(cu, cu, num_heads_q=4, head_dim=64, layout=lay,
                                                          backend=plan.family))
        assert torch.equal(out, eager), "graph replay differs from the eager host-plan result"
