"""The deterministic backward's dQ schedule, on the CPU through the discrete-event model of
tests/_bwd_schedule_model.py: the walk the deterministic mode uses (longest tiles first, query chunks by decreasing
position, semaphore released after the add completes) stays within the issue's 1.3x of the default on scaled-down
W1-like problems, where the walk of the first version (increasing position, equal-length tiles in layout order,
semaphore held through each add) is modelled, as measured on the H200, at 1.3x (dense) to over 2x (causal, density
0.5)."""

from __future__ import annotations

import numpy as np
import pytest

from tests._bwd_schedule_model import simulate, slowdown
from varblock import layout as L
from varblock.bwd_worklist import build_bwd_worklist
from varblock.ops.attention_backward import TILE_ORDER

LENS = [128, 256, 512, 1024, 2048, 384, 768, 1536]  # W1's lengths / 4
SMS = 33  # an H200's 132 SMs / 4


def _worklist(causal: bool, density: float, deterministic_walk: bool, hq: int = 8, hkv: int = 2):
    """The work list in the deterministic mode's order (``TILE_ORDER[True]``) or the first version's."""
    tile_order, chunk_order = TILE_ORDER[True] if deterministic_walk else ("longest_first", "ascending")
    cu = np.concatenate([[0], np.cumsum(LENS)]).astype(np.int32)
    lay = L.random_blocks(cu, cu, density=density, num_heads=hkv, head_mode="per_kv_head", causal=causal, seed=1,
                          block_q=128, block_k=128)
    return build_bwd_worklist(lay.transposed(), cu, cu, num_heads_q=hq, num_heads_kv=hkv, head_mode=lay.head_mode,
                              num_layout_heads=lay.num_heads, tile_m=64, tile_n=128, heads_per_tile=hq // hkv,
                              band=lay.mask.band, tile_order=tile_order, chunk_order=chunk_order)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("density", [1.0, 0.5, 0.1])
def test_deterministic_walk_within_bar(causal, density):
    new = slowdown(_worklist(causal, density, True), num_sms=SMS, protocol="deferred")
    old = slowdown(_worklist(causal, density, False), num_sms=SMS, protocol="blocking")
    assert new <= 1.3, f"modelled deterministic / default = {new:.2f}"
    assert new < old, (new, old)


def test_first_version_modelled_as_measured():
    """Causal random blocks at density 0.5 with the first version's walk: far over the bar (measured 3.1-3.5x on
    W1); the new walk alone brings most of it back, before the semaphore protocol changes."""
    asc = slowdown(_worklist(True, 0.5, False), num_sms=SMS, protocol="blocking")
    desc = slowdown(_worklist(True, 0.5, True), num_sms=SMS, protocol="blocking")
    assert asc > 1.8 and desc < 0.75 * asc, (asc, desc)


def test_model_arguments_and_default_mode():
    wl = _worklist(False, 1.0, False)
    base = simulate(wl, num_sms=SMS)
    assert base["stall"] == 0.0
    work = float(((wl.tiles[:, 5] + wl.tiles[:, 6]) * wl.heads_per_tile).sum() + wl.num_tiles)
    assert work / SMS <= base["makespan"] <= work / SMS + float(wl.tiles[:, 5:7].sum(1).max()) * 4 + 1
    with pytest.raises(ValueError, match="protocol"):
        simulate(wl, deterministic=True, protocol="nope")


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("density", [0.5, 0.1])
def test_narrow_64_key_tiles_within_bar(causal, density):
    """Random 64x64 blocks on the narrow 64-key tiles (twice the tiles adding dQ to each query span, one query head
    per tile as in SeerAttention's Hq = Hkv cell): the deterministic walk stays within the bar in the model."""
    cu = np.concatenate([[0], np.cumsum(LENS)]).astype(np.int32)
    lay = L.random_blocks(cu, cu, density=density, num_heads=8, head_mode="per_kv_head", causal=causal, seed=1,
                          block_q=64, block_k=64)
    wl = build_bwd_worklist(lay.transposed(), cu, cu, num_heads_q=8, num_heads_kv=8, head_mode=lay.head_mode,
                            num_layout_heads=8, tile_m=64, tile_n=64, band=lay.mask.band,
                            tile_order=TILE_ORDER[True][0], chunk_order=TILE_ORDER[True][1], opaque_mask=False)
    assert wl.num_tiles == 8 * int(np.sum((np.array(LENS) + 63) // 64))
    assert slowdown(wl, num_sms=SMS, protocol="deferred") <= 1.3
