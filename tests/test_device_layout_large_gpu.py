"""Device layouts on the GPU at training sizes: the W1 mask (8 sequences of 512..8192 tokens, 32 heads, 128-token
blocks: 16 384 padded rows and columns, so the scan takes several steps over the row / column groups) and larger
batches with empty sequences, unequal query / key lengths and padding; the kernels write exactly the NumPy
model's tables (which equal the host builders'), capacity overflow reaches the status word at this size, and the
plan's ``cu_seqlens`` copies follow a rebuild with new lengths (the scan kernel writes them)."""

from __future__ import annotations

import numpy as np
import pytest

import varblock
from tests.test_device_layout_gpu import _assert_tables_equal, _cu, _dev, _poison_tables
from tests.test_device_layout_model import _host_tables
from varblock import device_layout as dl
from varblock.device_layout.codes import ERR_CAPACITY, STATUS_DETAIL, STATUS_ERROR
from varblock.device_layout.model import build_from_mask

pytestmark = pytest.mark.gpu

W1_LENS = [512, 1024, 2048, 4096, 8192, 1536, 3072, 6144]


def _w1_mask(rng: np.random.Generator, density: float) -> np.ndarray:
    """Padded W1 block mask [8, 32, 64, 64]: random kept blocks inside each sequence plus the diagonal."""
    nb = np.asarray(W1_LENS) // 128
    mask = rng.random((len(W1_LENS), 32, 64, 64)) < density
    for b, n in enumerate(nb):
        mask[b, :, n:, :] = False
        mask[b, :, :, n:] = False
        mask[b, :, np.arange(n), np.arange(n)] = True
    return mask


def _rebuild_and_read(torch, plan, mask, cu_q, cu_k):
    _poison_tables(torch, plan)
    dl.rebuild(plan, mask=_dev(torch, mask), cu_seqlens_q=_dev(torch, cu_q), cu_seqlens_k=_dev(torch, cu_k))
    torch.cuda.synchronize()
    return dl.tables(plan)


@pytest.mark.parametrize("causal", [False, True])
def test_w1_layout_equals_model_and_host(torch, causal):
    rng = np.random.default_rng(13 + causal)
    cu = _cu(W1_LENS)
    mask = _w1_mask(rng, 0.1)
    plan = varblock.plan_device(mask=_dev(torch, mask), cu_seqlens_q=_dev(torch, cu), num_heads_q=32,
                                num_heads_kv=8, head_dim=128, causal=causal)
    geo = dl.geometry(plan)
    got = _rebuild_and_read(torch, plan, mask, cu, cu)
    want = build_from_mask(mask, cu, cu, geo)
    assert want.error == 0 and want.rows.shape[0] == 32 * 208
    _assert_tables_equal(got, want, f"W1 causal={causal}")
    for name, h in zip(("rows", "entries", "tiles", "chunks", "cols", "col_entries"), _host_tables(mask, cu, cu, geo)):
        assert np.array_equal(getattr(got, name), h), f"W1 causal={causal}: {name} differs from the host builders"
    copies = [plan.buffers[n].to_host(np.int32, cu.shape[0]) for n in ("cu_seqlens_q", "cu_seqlens_k")]
    assert all(np.array_equal(c, cu) for c in copies), "the scan kernel did not copy cu_seqlens into the plan"


def test_w1_capacity_overflow_and_exact_fit(torch):
    rng = np.random.default_rng(21)
    cu = _cu(W1_LENS)
    mask = _w1_mask(rng, 0.1)
    kept = int(build_from_mask(mask, cu, cu, _w1_geometry(torch, mask, cu)).entries.shape[0])
    for cap, ok in ((kept - 1, False), (kept, True)):
        plan = varblock.plan_device(mask=_dev(torch, mask), cu_seqlens_q=_dev(torch, cu), num_heads_q=32,
                                    num_heads_kv=8, head_dim=128, max_kept_blocks=cap)
        got = _rebuild_and_read(torch, plan, mask, cu, cu)
        want = build_from_mask(mask, cu, cu, dl.geometry(plan))
        _assert_tables_equal(got, want, f"W1 capacity {cap}")
        if ok:
            assert got.error == 0 and got.entries.shape[0] == kept
        else:
            s = got.status
            assert (s[STATUS_ERROR], s[STATUS_DETAIL], s[0]) == (ERR_CAPACITY, kept, 0)


def _w1_geometry(torch, mask, cu):
    plan = varblock.plan_device(mask=_dev(torch, mask), cu_seqlens_q=_dev(torch, cu), num_heads_q=32,
                                num_heads_kv=8, head_dim=128)
    return dl.geometry(plan)


@pytest.mark.parametrize("seed", range(4))
def test_large_batches_with_empty_sequences(torch, seed):
    """Many groups (several scan steps), MB != NB, empty and one-token sequences, longer keys, padding cells set
    (ignored), per-KV-head and per-query-head masks, bool and integer codes."""
    rng = np.random.default_rng(77 + seed)
    B = 24
    lens_q = rng.integers(0, 3000, size=B)
    lens_q[rng.random(B) < 0.25] = 0
    lens_q[0] = 1
    lens_k = lens_q + rng.integers(0, 700, size=B) * (seed % 2)
    bq, bk = (128, 64) if seed < 2 else (64, 128)
    mb = int(np.max(-(-lens_q // bq))) + 1
    nb = int(np.max(-(-lens_k // bk))) + 2
    hq, hkv = 16, 4
    h = hkv if seed % 2 else hq
    cu_q, cu_k = _cu(lens_q), _cu(lens_k)
    mask = rng.random((B, h, mb, nb)) < 0.15
    if seed == 3:  # integer codes, zero outside the sequences
        inside = ((np.arange(mb)[None, :] * bq < lens_q[:, None])[:, None, :, None]
                  & (np.arange(nb)[None, :] * bk < lens_k[:, None])[:, None, None, :])
        mask = (rng.integers(1, 3, size=mask.shape) * mask * inside).astype(np.int8)
    plan = varblock.plan_device(mask=_dev(torch, mask), cu_seqlens_q=_dev(torch, cu_q), cu_seqlens_k=_dev(torch, cu_k),
                                num_heads_q=hq, num_heads_kv=hkv, head_dim=128, block_q=bq, block_k=bk,
                                causal=seed % 2 == 0)
    got = _rebuild_and_read(torch, plan, mask, cu_q, cu_k)
    want = build_from_mask(mask, cu_q, cu_k, dl.geometry(plan))
    assert want.error == 0
    _assert_tables_equal(got, want, f"large batch seed {seed}")
    # a rebuild with other lengths (same batch): the kernels read the new cu_seqlens, the plan's copies follow
    lens2 = rng.permutation(lens_q)
    cu2 = _cu(lens2)
    got2 = _rebuild_and_read(torch, plan, mask, cu2, cu2)
    want2 = build_from_mask(mask, cu2, cu2, dl.geometry(plan))
    _assert_tables_equal(got2, want2, f"large batch seed {seed}, rebuilt with permuted lengths")
    assert np.array_equal(plan.buffers["cu_seqlens_k"].to_host(np.int32, B + 1), cu2)
