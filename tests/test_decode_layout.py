"""Decode sparsity importers on the CPU: SeerAttention decode masks, top-k indices, window + sinks, dense; errors
name the argument."""

from __future__ import annotations

import numpy as np
import pytest

from varblock.layout import decode as LD


def _rows(lay):
    return [[lay.row(b, h).tolist() for h in range(lay.num_heads)] for b in range(lay.batch_size)]


def test_seer_mask_and_4d_form():
    kv = np.array([130, 64])
    m = np.zeros((2, 2, 3), dtype=bool)
    m[0, 0, [0, 2]] = True
    m[0, 1, 1] = True
    m[1, 1, 0] = True
    lay = LD.from_seer_decode_mask(m, kv_lens=kv, block_size=64)
    assert _rows(lay) == [[[0, 2], [1]], [[], [0]]]
    lay4 = LD.from_seer_decode_mask(m[:, :, None, :].astype(np.int8), kv_lens=kv, block_size=64)
    assert _rows(lay4) == _rows(lay)
    assert lay.kept_keys().tolist() == [[64 + 2, 64], [0, 64]]
    assert lay.density() == pytest.approx((66 + 64 + 64) / (2 * 194))


def test_seer_mask_rejects_blocks_past_the_sequence():
    m = np.ones((1, 1, 3), dtype=bool)
    with pytest.raises(ValueError, match="block index 2 out of range for sequence 0 head 0"):
        LD.from_seer_decode_mask(m, kv_lens=[128], block_size=64)
    with pytest.raises(ValueError, match="block_mask: expected"):
        LD.from_seer_decode_mask(np.ones((2, 3)), kv_lens=[1, 2], block_size=64)
    with pytest.raises(ValueError, match="block_mask: batch 1 differs"):
        LD.from_seer_decode_mask(m, kv_lens=[200, 200], block_size=64)


def test_topk_padding_duplicates_counts():
    idx = np.array([[[3, 1, -1, 1]], [[0, 2, 1, -1]]])
    lay = LD.from_topk_indices(idx, kv_lens=[256, 200], block_size=64)
    assert _rows(lay) == [[[1, 3]], [[0, 1, 2]]]
    lay = LD.from_topk_indices(idx, kv_lens=[256, 200], block_size=64, counts=np.array([[1], [0]]))
    assert _rows(lay) == [[[3]], [[]]]
    with pytest.raises(ValueError, match="counts: entries"):
        LD.from_topk_indices(idx, kv_lens=[256, 200], block_size=64, counts=np.array([[5], [0]]))
    with pytest.raises(ValueError, match="indices: negative"):
        LD.from_topk_indices(idx - 2, kv_lens=[256, 200], block_size=64)
    with pytest.raises(ValueError, match="indices: expected an integer"):
        LD.from_topk_indices(idx.astype(float), kv_lens=[256, 200], block_size=64)


def test_window_sinks_and_dense():
    lay = LD.window_sinks([1000, 50, 0], block_size=64, window=130, sinks=70, num_heads=2)
    # 1000 keys = 16 blocks; window covers keys 870.. -> blocks 13..15; sinks 70 keys -> blocks 0, 1
    assert _rows(lay) == [[[0, 1, 13, 14, 15]] * 2, [[0]] * 2, [[]] * 2]
    d = LD.dense_decode([129, 0], block_size=64, num_heads=1)
    assert _rows(d) == [[[0, 1, 2]], [[]]]
    assert d.density() == 1.0
    with pytest.raises(ValueError, match="window"):
        LD.window_sinks([10], block_size=16, window=-1)
    with pytest.raises(ValueError, match="block_size"):
        LD.dense_decode([10], block_size=0)
    with pytest.raises(ValueError, match="head_mode"):
        LD.dense_decode([10], block_size=16, head_mode="per_block")
    with pytest.raises(ValueError, match="kv_lens"):
        LD.dense_decode([[10]], block_size=16)
