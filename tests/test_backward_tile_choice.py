"""The backward's key tile choice on the CPU (``varblock.bwd_tile_choice``, ``ops.attention_backward._choose``):
64-key tiles for 64-key columns that do not pair into 128-key tiles (random 64x64 blocks, SeerAttention's cell),
128-key tiles where they pair exactly (dense, causal) or where columns are wider, the reason on the choice, and
the narrow main variants registered for sm90 / sm100 only."""

from __future__ import annotations

from types import SimpleNamespace as NS

import numpy as np
import pytest

from varblock import layout as L
from varblock.bwd_tile_choice import NARROW_STEP_COST, KeyTileChoice, choose_key_tile
from varblock.bwd_worklist import build_bwd_worklist
from varblock.kernels import attention_bwd_mma as K
from varblock.ops import attention_backward as ops

W1 = [512, 1024, 2048, 4096, 8192, 1536, 3072, 6144]


def _cu(lens):
    return np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)


def _builder(lay, heads, calls):
    cols = lay.transposed()

    def build(tile_n):
        calls.append(tile_n)
        return build_bwd_worklist(cols, lay.cu_seqlens_q, lay.cu_seqlens_k, num_heads_q=heads, num_heads_kv=heads,
                                  head_mode=lay.head_mode, num_layout_heads=lay.num_heads, tile_m=64, tile_n=tile_n,
                                  band=lay.mask.band, opaque_mask=False)
    return cols, build


def test_seer_cell_random_64_blocks_choose_64_key_tiles():
    """W1, causal, 64x64 blocks at density 0.5 (issue 11's Seer cell, 4 heads here): the columns do not pair, so
    the 128-key list has as many steps as the 64-key one; the narrow tile wins and says why."""
    cu = _cu(W1)
    lay = L.random_blocks(cu, cu, density=0.5, num_heads=4, head_mode="per_kv_head", causal=True, seed=1,
                          block_q=64, block_k=64)
    calls = []
    cols, build = _builder(lay, 4, calls)
    ch = choose_key_tile(cols.k_len, 128, 64, build)
    assert ch.tile_n == 64 and sorted(calls) == [64, 128]
    assert ch.steps[64] * NARROW_STEP_COST < ch.steps[128] <= ch.steps[64]
    assert "64-key tiles" in ch.reason and "do not pair" in ch.reason and f"{ch.steps[64]:,}" in ch.reason


@pytest.mark.parametrize("kind", ["causal", "dense"])
def test_exact_pairs_keep_128_key_tiles(kind):
    """Dense and causal 64x64 layouts pair exactly (bwd_key_groups): half the steps on 128-key tiles."""
    cu = _cu([1000, 1, 333, 64])
    lay = (L.causal if kind == "causal" else L.dense)(cu, cu, num_heads=1, block_q=64, block_k=64)
    cols, build = _builder(lay, 1, [])
    ch = choose_key_tile(cols.k_len, 128, 64, build)
    assert ch.tile_n == 128 and "pair into 128-key tiles" in ch.reason
    assert ch.steps[128] < NARROW_STEP_COST * ch.steps[64]


def test_wide_columns_and_missing_variant_keep_the_default_without_building():
    cu = _cu([700, 129])
    calls = []
    lay = L.random_blocks(cu, cu, density=0.5, num_heads=1, head_mode="per_kv_head", causal=True, seed=4)
    cols, build = _builder(lay, 1, calls)
    ch = choose_key_tile(cols.k_len, 128, 64, build)
    assert ch == KeyTileChoice(128, ch.reason) and "up to 128 keys wide" in ch.reason
    ch = choose_key_tile(np.array([64, 64]), 128, None, build)
    assert ch.tile_n == 128 and "no narrower main variant" in ch.reason
    ch = choose_key_tile(np.zeros(0, np.int64), 128, 64, build)
    assert ch.tile_n == 128 and "no key columns" in ch.reason
    assert calls == []


def test_smaller_blocks_compare_grouped_lists():
    """16-key columns group on both widths (4 per 64-key tile, up to 8 per 128-key tile); the cheaper list wins."""
    cu = _cu([300, 1, 640])
    lay = L.random_blocks(cu, cu, density=0.4, num_heads=1, head_mode="per_kv_head", causal=True, seed=16,
                          block_q=16, block_k=16)
    cols, build = _builder(lay, 1, [])
    ch = choose_key_tile(cols.k_len, 128, 64, build)
    wide, narrow = ch.steps[128], ch.steps[64]
    assert ch.tile_n == (64 if narrow * NARROW_STEP_COST < wide else 128)


def test_step_cost_checked():
    with pytest.raises(ValueError, match="step_cost"):
        choose_key_tile(np.array([64]), 128, 64, lambda n: pytest.fail("built"), step_cost=0.0)


def test_narrow_variants_registered():
    """sm90 / sm100: a 64-key main variant beside each 128-key d64 / d128 default (key ``tile_n``); none where
    the default is already 64 keys wide or on the 99 KB parts."""
    for arch in ("sm90", "sm100"):
        mains = [v for v in K.variants(arch) if v.key["kind"] == "main"]
        narrow = {(v.key["dtype"], v.key["head_dim"]) for v in mains if v.key["tile_n"] == 64
                  and v.name.endswith("_n64")}
        assert narrow == {(dt, d) for _, dt in K.DTYPES for d in (64, 128)}
        for v in mains:
            assert v.extra["tile_n"] == v.key["tile_n"] and v.extra["smem_bytes"] <= K.SMEM_LIMIT[arch]
    for arch in ("sm80", "sm120"):
        assert not [v for v in K.variants(arch) if v.name.endswith("_n64")]


def _fake_plan(lay, hq, hkv):
    return NS(arch="sm90", head_dim=128, layout=lay, cu_seqlens_q=lay.cu_seqlens_q, cu_seqlens_k=lay.cu_seqlens_k,
              num_heads_q=hq, num_heads_kv=hkv, num_sink_tokens=0, device_id=0)


def _entries(tile_ns):
    return {n: {"key": {"kind": "main", "dtype": "bfloat16", "head_dim": 128, "tile_n": n},
                "extra": {"tile_m": 64, "tile_n": n}} for n in tile_ns}


@pytest.mark.parametrize("switch", [True, False])
def test_ops_choice_and_switch(monkeypatch, switch):
    """The op module's choice: the chosen width's default-order list is the one kept; ``NARROW_TILES = False``
    keeps the default width."""
    cu = _cu([1000, 77, 513])
    lay = L.random_blocks(cu, cu, density=0.5, num_heads=2, head_mode="per_kv_head", causal=True, seed=9,
                          block_q=64, block_k=64)
    monkeypatch.setattr(type(ops.BINDING), "main_entries", lambda self, arch, d, dtype=None: _entries((64, 128)))
    monkeypatch.setattr(ops, "NARROW_TILES", switch)
    state = ops._BwdState(0, 1)
    choice, built = ops._choose(state, _fake_plan(lay, 2, 2))
    assert state.choice is choice and choice.tile_n == (64 if switch else 128)
    assert set(built) == ({64, 128} if switch else set())
    if switch:
        assert built[64].tile_n == 64 and "do not pair" in choice.reason
    # both modes' work lists at the chosen width (the default order reuses the list built for the choice)
    from varblock.runtime import memory

    monkeypatch.setattr(memory, "DeviceBuffer", NS(from_host=lambda dev, arr: NS(ptr=1, arr=arr)))
    fresh = ops._BwdState(0, 1)
    for det in (False, True):
        wl, bufs = ops._worklist(fresh, _fake_plan(lay, 2, 2), ops.TILE_ORDER[det])
        assert fresh.choice == choice and wl.tile_n == choice.tile_n and bufs["tiles"].arr is wl.tiles
        assert (wl.tiles[:, 3] <= choice.tile_n).all()
        assert np.array_equal(wl.dq_order[:, 1] < wl.dq_order[:, 2], np.ones(wl.chunks.shape[0], bool))
