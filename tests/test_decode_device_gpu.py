"""Device-built decode plans on the GPU: the work list the decode_prepare kernel writes equals its NumPy twin
(varblock.decode_plan.fixed) element for element, decode over it passes the reference rule, lengths and page
tables updated in place are picked up by plan.prepare(), also inside a CUDA graph."""

from __future__ import annotations

import numpy as np
import pytest

import varblock
from tests.test_decode_gpu import _make, _run_and_check
from varblock.decode_plan import abi
from varblock.decode_plan.fixed import ERR_CAPACITY, ERR_OK, fixed_worklist
from varblock.layout import decode as LD

pytestmark = pytest.mark.gpu


def _device_plan(torch, case, hq, hkv, d, max_kv, max_q=1, **kw):
    cu_q = torch.from_numpy(case["cu_q"]).cuda()
    if "pt" in case:
        return varblock.plan_decode(cu_q, kv_lens=torch.from_numpy(case["kv"].astype(np.int32)).cuda(),
                                    page_table=case["pt"], page_size=case["page_size"], num_heads_q=hq,
                                    num_heads_kv=hkv, head_dim=d, max_kv_len=max_kv, max_q_tokens=max_q,
                                    total_q=int(case["cu_q"][-1]), **kw)
    return varblock.plan_decode(cu_q, cu_seqlens_k=torch.from_numpy(case["cu_k"]).cuda(), num_heads_q=hq,
                                num_heads_kv=hkv, head_dim=d, max_kv_len=max_kv, max_q_tokens=max_q,
                                total_q=int(case["cu_q"][-1]), **kw)


def _check_twin(plan, case, bi=None, bc=None, block_size=0):
    """Items / chunks on the device equal the NumPy twin's."""
    items = plan.buffers["items"].to_host(np.int32, plan.num_items * abi.ITEM_WIDTH).reshape(-1, abi.ITEM_WIDTH)
    n_chunks = plan.buffers["chunks"].nbytes // (4 * abi.CHUNK_WIDTH)
    chunks = plan.buffers["chunks"].to_host(np.int32, n_chunks * abi.CHUNK_WIDTH).reshape(-1, abi.CHUNK_WIDTH)
    g = plan.num_heads_q // plan.num_heads_kv
    splits = int(items[0, abi.ITEM_NUM_SPLITS]) if len(items) else 1
    row_tiles = plan.num_items // (plan.batch_size * plan.num_heads_kv * splits)
    cap = n_chunks // (plan.batch_size * plan.num_heads_kv)
    ti, tc, ts = fixed_worklist(case["cu_q"], case["kv"], num_heads_kv=plan.num_heads_kv, group_size=g,
                                tile_m=plan.tile_m, tile_n=plan.tile_n, row_tiles=row_tiles, splits=splits,
                                chunk_cap=cap, block_size=block_size, block_idx=bi, block_cnt=bc)
    np.testing.assert_array_equal(items, ti)
    np.testing.assert_array_equal(chunks, tc)
    assert plan.status() == (int(ts[0]), int(ts[1]))


@pytest.mark.parametrize("page_size", [16, None])
@pytest.mark.parametrize("g,max_q", [(8, 1), (4, 3), (1, 16)])
@pytest.mark.parametrize("splits", [None, 1, 5])
def test_dense_device_plan(torch, page_size, g, max_q, splits):
    rng = np.random.default_rng(hash((page_size, g, max_q, splits)) % 2**32)
    hkv = 2
    case = _make(torch, rng, B=4, hkv=hkv, g=g, d=128, dtype="bfloat16", page_size=page_size, max_q=max_q,
                 kv_range=(1, 3000))
    plan = _device_plan(torch, case, hkv * g, hkv, 128, max_kv=3000, max_q=max_q, num_splits=splits)
    assert plan.on_device
    _check_twin(plan, case)
    _run_and_check(torch, case, hq=hkv * g, hkv=hkv, d=128, dtype="bfloat16", plan=plan)


@pytest.mark.parametrize("with_counts", [False, True])
def test_topk_device_plan(torch, with_counts):
    rng = np.random.default_rng(int(with_counts))
    hkv, g, bs, k = 2, 8, 64, 6
    case = _make(torch, rng, B=5, hkv=hkv, g=g, d=128, dtype="float16", page_size=32, max_q=1,
                 kv_range=(200, 4000))
    nb = LD.num_blocks(case["kv"], bs)
    idx = np.full((5, hkv, k), -1, np.int32)
    for b in range(5):
        for h in range(hkv):
            sel = rng.permutation(int(nb[b]))[:k - 1]  # unique; the last entry stays -1
            idx[b, h, :sel.size] = sel
    cnt = rng.integers(0, k + 1, size=(5, hkv)).astype(np.int32) if with_counts else None
    plan = _device_plan(torch, case, hkv * g, hkv, 128, max_kv=4000, block_indices=torch.from_numpy(idx).cuda(),
                        block_counts=None if cnt is None else torch.from_numpy(cnt).cuda(), block_size=bs)
    _check_twin(plan, case, idx, cnt, bs)
    lay = LD.from_topk_indices(idx, kv_lens=case["kv"], block_size=bs, counts=cnt)
    _run_and_check(torch, case, hq=hkv * g, hkv=hkv, d=128, dtype="float16", layout=lay, plan=plan)


def test_capacity_is_flagged(torch):
    rng = np.random.default_rng(9)
    case = _make(torch, rng, B=2, hkv=1, g=4, d=64, dtype="bfloat16", page_size=None, max_q=1,
                 kv_range=(900, 1000))
    plan = _device_plan(torch, case, 4, 1, 64, max_kv=128)
    assert plan.status()[1] == ERR_CAPACITY


def test_prepare_picks_up_in_place_updates_in_a_graph(torch):
    """A server step: lengths and page table change in place, prepare() + decode() replayed from one graph."""
    rng = np.random.default_rng(4)
    hkv, g, d, ps, max_kv = 2, 8, 128, 16, 4096
    case = _make(torch, rng, B=3, hkv=hkv, g=g, d=d, dtype="bfloat16", page_size=ps, max_q=1, kv_range=(50, 60))
    big_k = torch.randn(3 * max_kv // ps + 8, ps, hkv, d, device="cuda").to(torch.bfloat16)
    big_v = torch.randn_like(big_k)
    pt = torch.zeros(3, max_kv // ps, dtype=torch.int32, device="cuda")
    kv_dev = torch.zeros(3, dtype=torch.int32, device="cuda")
    cu_q = torch.from_numpy(case["cu_q"]).cuda()
    plan = varblock.plan_decode(cu_q, kv_lens=kv_dev, page_table=pt, page_size=ps, num_heads_q=hkv * g,
                                num_heads_kv=hkv, head_dim=d, max_kv_len=max_kv, total_q=3, num_splits=4)
    q = case["q"].clone()
    out = torch.empty_like(q)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        plan.prepare()
        varblock.decode(q, big_k, big_v, plan, out=out)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        plan.prepare()
        varblock.decode(q, big_k, big_v, plan, out=out)
    for step in range(3):
        kv = rng.integers(1, max_kv + 1, size=3)
        perm = rng.permutation(big_k.shape[0])[:3 * (max_kv // ps)].reshape(3, -1)
        kv_dev.copy_(torch.from_numpy(kv.astype(np.int32)))
        pt.copy_(torch.from_numpy(perm.astype(np.int32)))
        q.copy_(torch.randn_like(q))
        graph.replay()
        torch.cuda.synchronize()
        assert plan.status()[1] == ERR_OK
        ref_case = {"cu_q": case["cu_q"], "kv": kv, "q": q, "k": big_k, "v": big_v, "pt": pt, "page_size": ps}
        host_plan = varblock.plan_decode(case["cu_q"], kv_lens=kv, page_table=pt, page_size=ps,
                                         num_heads_q=hkv * g, num_heads_kv=hkv, head_dim=d)
        want = varblock.decode(q, big_k, big_v, host_plan)
        torch.cuda.synchronize()
        assert (out.float() - want.float()).abs().max().item() <= 2e-2, step
        _run_and_check(torch, ref_case, hq=hkv * g, hkv=hkv, d=d, dtype="bfloat16", plan=plan)
