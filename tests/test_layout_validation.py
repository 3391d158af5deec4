"""Every validation error of varblock.layout and varblock.reference: clear ValueError / TypeError naming the argument.

One case per error site; ``test_every_raise_site_is_exercised`` checks (with a line tracer) that the table reaches
every ``raise ValueError`` / ``raise TypeError`` of the modules."""

from __future__ import annotations

import ast
import inspect
import sys

import numpy as np
import pytest
from conftest_layout import cu_of, ordered_from_dense

import varblock.layout as vl
import varblock.layout._common as common
import varblock.layout._host as host
import varblock.layout._lists as lists
import varblock.layout.block_mask as block_mask
import varblock.layout.build as build
import varblock.layout.core as core
import varblock.layout.fa4 as fa4
import varblock.layout.flashinfer as flashinfer
import varblock.layout.flex as flex
import varblock.layout.generators as gen
import varblock.layout.mask as maskmod
import varblock.layout.packed as packed
import varblock.layout.partition as partition
import varblock.layout.seer as seer
import varblock.layout.spans as spans
import varblock.reference as ref
from varblock.layout import BlockSparseLayout, ElementMask, RowSpans
from varblock.layout._host import to_host

LAYOUT_MODULES = (host, common, lists, partition, build, core, maskmod, block_mask, fa4, flex, seer, flashinfer,
                  spans, packed, gen)
CU = cu_of([40, 17])  # blocks of 16: M = N = [3, 2]
B1 = np.ones((1, 5, 3), dtype=bool)
B1[0, 3:, 2] = False
I32 = np.int32


def lay():
    return vl.from_block_mask(B1, CU, block_q=16, block_k=16, causal=True)


def fa4_varlen(**over):
    """Valid varlen FA4 fields for CU, blocks 16 (TM = 5, TN = 3*3 + 2*2 = 13)."""
    d = dict(mask_block_cnt=np.zeros((1, 5), I32), mask_block_idx=np.zeros((1, 13), I32),
             full_block_cnt=np.zeros((1, 5), I32), full_block_idx=np.zeros((1, 13), I32),
             cu_total_m_blocks=np.array([0, 3, 5], I32), cu_block_idx_offsets=np.array([0, 9, 13], I32),
             block_size=(16, 16))
    d["full_block_cnt"][0, 0] = 1  # row 0 keeps block 0 (full)
    d.update(over)
    return d


def fa4_batched(**over):
    d = dict(mask_block_cnt=np.zeros((2, 1, 3), I32), mask_block_idx=np.zeros((2, 1, 3, 3), I32),
             block_size=(16, 16))
    d.update(over)
    return d


def flex(**over):
    codes = np.array([[1, 0, 0], [2, 1, 0], [2, 2, 1]], dtype=np.int8)[None, None]
    c, i = ordered_from_dense(codes == 1)
    fc, fi = ordered_from_dense(codes == 2)
    d = dict(kv_num_blocks=c, kv_indices=i, full_kv_num_blocks=fc, full_kv_indices=fi, BLOCK_SIZE=(16, 16))
    d.update(over)
    return d


def fi_args(**over):
    d = dict(block_mask_map=np.ones((1, 2, 2), bool), block_row_sz=np.array([[3, 4]]),
             block_col_sz=np.array([[5, 2]]))
    d.update(over)
    return d


def rows_of(layout=None, **over):
    rs = (layout or lay()).rows()
    d = {f: np.array(getattr(rs, f)) for f in ("head", "batch", "q_start", "q_len", "ent_ptr", "n_full", "k_start",
                                               "k_len")}
    d.update(over)
    return RowSpans(**d)


def qkv(Hq=2, Hkv=1, D=4, layout=None):
    L = layout or lay()
    rng = np.random.default_rng(0)
    return (rng.standard_normal((L.total_q, Hq, D)), rng.standard_normal((L.total_k, Hkv, D)),
            rng.standard_normal((L.total_k, Hkv, D)))


class Opaque:
    pass


class BadCpu:
    def cpu(self):
        raise RuntimeError("no device")


def _set(a, idx, v):
    a = np.array(a)
    a[idx] = v
    return a


def _big_cu():
    return np.array([0, 2**31 - 16], dtype=np.int64)


CASES = [
    # ---- _host: inputs, cu_seqlens, block sizes, int32
    ("to_host None", lambda: vl.from_block_mask(None, CU), TypeError, r"mask: expected an array, got None"),
    ("to_host opaque", lambda: vl.from_block_mask(B1, Opaque()), TypeError, r"cu_seqlens_q: expected a NumPy"),
    ("to_host cpu fails", lambda: to_host(BadCpu(), "x"), TypeError, r"x: expected a NumPy.*\.cpu\(\): no device"),
    ("cu float", lambda: vl.causal(np.array([0.0, 4.0])), TypeError, r"cu_seqlens_q: expected an integer array"),
    ("cu bool", lambda: vl.causal(np.array([False, True])), TypeError, r"cu_seqlens_q: expected an integer array"),
    ("cu 2-D", lambda: vl.causal(np.zeros((2, 2), int)), ValueError, r"cu_seqlens_q: expected a 1-D array"),
    ("cu empty", lambda: vl.causal(np.zeros(0, int)), ValueError, r"cu_seqlens_q: expected shape \[B\+1\]"),
    ("cu start", lambda: vl.causal([1, 4]), ValueError, r"cu_seqlens_q: must start at 0"),
    ("cu monotone", lambda: vl.causal([0, 5, 3]), ValueError, r"cu_seqlens_q: must be non-decreasing"),
    ("cu int32", lambda: vl.causal([0, 2**31]), ValueError, r"cu_seqlens_q: total of 2147483648 tokens exceeds"),
    ("cu_k int32", lambda: vl.causal([0, 5], [0, 2**32]), ValueError, r"cu_seqlens_k: total of"),
    ("cu_k batch", lambda: vl.causal([0, 5], [0, 5, 6]), ValueError, r"cu_seqlens_k: expected shape \(2,\)"),
    ("block float", lambda: vl.causal(CU, block_q=16.0), TypeError, r"block_q: expected an int block size"),
    ("block bool", lambda: vl.causal(CU, block_k=True), TypeError, r"block_k: expected an int block size"),
    ("block 24", lambda: vl.causal(CU, block_q=24), ValueError, r"block_q: block size 24 is not supported.*"
                                                               r"multiple of 16 in \[16, 1024\]"),
    ("block 2048", lambda: vl.causal(CU, block_k=2048), ValueError, r"block_k: block size 2048"),
    ("block 0", lambda: vl.causal(CU, block_k=0), ValueError, r"block_k: block size 0"),
    ("as_bool values", lambda: vl.from_seer_2d(np.full((2, 1, 3, 3), 2), CU, block_size=16), ValueError,
     r"mask: expected a boolean \(0/1\) mask, found 2"),
    ("as_bool dtype", lambda: vl.from_seer_2d(np.ones((2, 1, 3, 3)), CU, block_size=16), TypeError,
     r"mask: expected a boolean array, got dtype float64"),
    ("as_bool ndim", lambda: vl.from_seer_2d(np.ones((1, 3, 3), bool), CU, block_size=16), ValueError,
     r"mask: expected a 4-D array"),
    ("as_int shape", lambda: vl.document(CU, doc_ids_q=np.zeros(5, int), block_q=16, block_k=16), ValueError,
     r"mask.doc_ids_q: expected shape \(57,\)"),
    # ---- core: partitions, layout, heads
    ("span length", lambda: vl.from_row_spans(rows_of(q_len=_set(rows_of().q_len, 0, 0)), CU, CU, 1), ValueError,
     r"rows \(query spans\): span 0 has length 0"),
    ("span order", lambda: vl.from_row_spans(rows_of(batch=_set(rows_of().batch, 0, 1)), CU, CU, 1), ValueError,
     r"rows \(query spans\): rows / spans must be ordered"),
    ("span tiling", lambda: vl.from_row_spans(rows_of(q_start=_set(rows_of().q_start, 1, 17)), CU, CU, 1),
     ValueError, r"rows \(query spans\): spans of head 0, sequence 0 do not tile"),
    ("span end", lambda: vl.from_row_spans(rows_of(q_len=_set(rows_of().q_len, 2, 7)), CU, CU, 1), ValueError,
     r"rows \(query spans\): spans of head 0, sequence 0 end at 39, but the sequence has 40"),
    ("span missing", lambda: vl.from_row_spans(rows_of(vl.from_block_mask(np.ones((1, 3, 3), bool), [0, 40, 40],
                                                                        block_q=16, block_k=16)),
                                                [0, 40, 57], [0, 40, 57], 1),
     ValueError, r"rows \(query spans\): no span covers head 0, sequence 1 \(17 tokens\)"),
    ("layout ctor", lambda: BlockSparseLayout(), TypeError, r"built with an importer or a generator"),
    ("fa4 uniform beyond", lambda: vl.from_fa4(fa4_varlen(cu_block_idx_offsets=None, mask_block_idx=_set(
        np.zeros((1, 15), I32), (0, 12), 2), mask_block_cnt=_set(np.zeros((1, 5), I32), (0, 4), 1),
        full_block_idx=np.zeros((1, 15), I32)), CU, CU), ValueError,
     r"mask_block_idx: key block 2 is beyond the 2 key blocks of its sequence"),
    ("kb range guard", lambda: BlockSparseLayout._build(
        np.array([0, 32], I32), np.array([0, 32], I32), 1, "broadcast",
        partition.fixed_partition(np.array([0, 32], I32), 16, 1, "q"),
        partition.fixed_partition(np.array([0, 32], I32), 16, 1, "k"), np.array([0]), np.array([2]), np.array([True]),
        None, 16, 16), ValueError, r"key block index 2 out of range for head 0, sequence 0, which has 2 key blocks"),
    ("token_mask b", lambda: lay().token_mask(5, 0), ValueError, r"b: expected a sequence index in \[0, 2\)"),
    ("token_mask hl", lambda: lay().token_mask(0, 1), ValueError, r"hl: expected a layout head in \[0, 1\)"),
    ("head_map nonpositive", lambda: lay().head_map(0, 1), ValueError, r"num_heads_q: expected a positive int"),
    ("head_map kv bool", lambda: lay().head_map(2, True), ValueError, r"num_heads_kv: expected a positive int"),
    ("head_map ratio", lambda: lay().head_map(6, 4), ValueError, r"num_heads_q: 6 query heads is not a multiple"),
    ("head_map per_q", lambda: vl.dense(CU, block_q=16, block_k=16, num_heads=2).head_map(4, 2), ValueError,
     r"num_heads_q: the layout has 2 per-query-head patterns but num_heads_q = 4"),
    ("head_map per_kv", lambda: vl.dense(CU, block_q=16, block_k=16, num_heads=2, head_mode="per_kv_head")
     .head_map(4, 4), ValueError, r"num_heads_kv: the layout has 2 per-KV-head patterns but num_heads_kv = 4"),
    ("head_dim", lambda: lay().check_compatible(2, 1, head_dim=0), ValueError, r"head_dim: expected a positive int"),
    ("head_dim_v", lambda: lay().check_compatible(2, 1, head_dim=8, head_dim_v=-1), ValueError,
     r"head_dim_v: expected a positive int"),
    ("int32 q", lambda: lay().check_compatible(2**20, 1, head_dim=128), ValueError,
     r"q: total_q \* num_heads_q \* head_dim elements = \d+ exceeds the int32 range"),
    ("int32 k", lambda: lay().check_compatible(2**16, 2**16, head_dim=2**10), ValueError, r"q: |k: "),
    ("int32 lse", lambda: lay().check_compatible(2**26, 1), ValueError, r"lse: total_q \* num_heads_q"),
    ("num_pairs heads", lambda: lay().num_pairs(num_heads_q=2), ValueError, r"num_heads_q / num_heads_kv: give both"),
    ("with_mask", lambda: lay().with_mask("causal"), TypeError, r"mask: expected an ElementMask"),
    ("dup both", lambda: vl.from_fa4(fa4_varlen(mask_block_cnt=_set(np.zeros((1, 5), I32), (0, 0), 1)), CU, CU),
     ValueError, r"key block 0 is listed both as full and as partial for head 0, sequence 0, query block 0"),
    ("head_mode value", lambda: vl.causal(CU, head_mode="per_head"), ValueError, r"head_mode: expected one of"),
    ("head_mode broadcast", lambda: vl.dense(CU, num_heads=2, head_mode="broadcast", block_q=16, block_k=16),
     ValueError, r"head_mode: 'broadcast' needs exactly 1 layout head, the input has 2"),
    # ---- mask
    ("mask causal type", lambda: vl.from_block_mask(B1, CU, block_q=16, block_k=16,
                                                    element_mask=ElementMask(causal=1)),
     TypeError, r"mask.causal: expected a bool"),
    ("mask window", lambda: vl.from_block_mask(B1, CU, block_q=16, block_k=16, window=(-2, 3)), ValueError,
     r"mask.window_left: expected an int >= -1"),
    ("mask window right", lambda: vl.from_block_mask(B1, CU, block_q=16, block_k=16, window=(3, 1.5)), ValueError,
     r"mask.window_right: expected an int >= -1"),
    ("mask sinks", lambda: vl.from_block_mask(B1, CU, block_q=16, block_k=16,
                                              element_mask=ElementMask(window_left=4, num_sink_tokens=-1)),
     ValueError, r"mask.num_sink_tokens: expected an int in \[0, 2\*\*31 - 1\], got -1"),
    ("mask docs pair", lambda: vl.from_block_mask(B1, CU, block_q=16, block_k=16,
                                                  element_mask=ElementMask(doc_ids_q=np.zeros(57, int))),
     ValueError, r"mask.doc_ids_q / mask.doc_ids_k: give both or neither"),
    ("mask docs int32", lambda: vl.document(CU, doc_ids_q=np.full(57, 2**40), block_q=16, block_k=16), ValueError,
     r"mask.doc_ids_q: document ids must fit in int32"),
    ("mask token heads", lambda: vl.from_block_mask(B1, CU, block_q=16, block_k=16, element_mask=ElementMask(
        token_mask=np.ones((2, 57, 3), bool), token_block_k=16)), ValueError,
     r"mask.token_mask: expected shape \[Hm, total_q, max_nb\] with Hm = 1 or the 1 layout heads"),
    ("mask token shape", lambda: vl.from_block_mask(B1, CU, block_q=16, block_k=16, element_mask=ElementMask(
        token_mask=np.ones((1, 57, 2), bool), token_block_k=16)), ValueError,
     r"mask.token_mask: expected shape \[1, 57, >= 3\]"),
    ("mask token block", lambda: vl.from_block_mask(B1, CU, block_q=16, block_k=16, element_mask=ElementMask(
        token_mask=np.ones((1, 57, 3), bool), token_block_k=10)), ValueError, r"mask.token_block_k: block size 10"),
    ("resolve mask type", lambda: vl.from_block_mask(B1, CU, block_q=16, block_k=16, element_mask="causal"),
     TypeError, r"mask: expected an ElementMask or None"),
    ("resolve causal type", lambda: vl.from_block_mask(B1, CU, block_q=16, block_k=16, causal="yes"), TypeError,
     r"causal: expected a bool"),
    ("resolve window", lambda: vl.from_block_mask(B1, CU, block_q=16, block_k=16, window=5), TypeError,
     r"window: expected a \(left, right\) pair"),
    # ---- generators
    ("gen heads", lambda: vl.causal(CU, num_heads=0), ValueError, r"num_heads: expected a positive int"),
    ("gen window", lambda: vl.sliding_window(CU, window_left=-3), ValueError, r"window_left: expected an int >= -1"),
    ("gen window right", lambda: vl.sliding_window(CU, window_left=3, window_right=None), ValueError,
     r"window_right: expected an int >= -1"),
    ("gen sinks", lambda: vl.attention_sinks(CU, sink_blocks=-1), ValueError, r"sink_blocks: expected a "
                                                                             r"non-negative int"),
    ("gen sinks causal", lambda: vl.attention_sinks(CU, sink_blocks=1, causal="no"), TypeError,
     r"causal: expected a bool"),
    ("gen sinks both", lambda: vl.attention_sinks(CU, sink_blocks=1, num_sink_tokens=4), ValueError,
     r"num_sink_tokens / sink_blocks: give one of them"),
    ("gen sinks missing", lambda: vl.attention_sinks(CU, window_left=8), ValueError,
     r"num_sink_tokens: required \(or the sink_blocks shorthand\)"),
    ("gen density type", lambda: vl.random_blocks(CU, density="x"), TypeError, r"density: expected a float"),
    ("gen density range", lambda: vl.random_blocks(CU, density=1.5), ValueError, r"density: expected a float in"),
    ("topk k", lambda: vl.topk_blocks(np.zeros((1, 5, 3)), CU, k=-1, block_q=16, block_k=16), ValueError,
     r"k: expected a non-negative int"),
    ("topk dtype", lambda: vl.topk_blocks(np.zeros((1, 5, 3), bool), CU, k=1, block_q=16, block_k=16), TypeError,
     r"scores: expected a float array"),
    ("topk nan", lambda: vl.topk_blocks(np.full((1, 5, 3), np.nan), CU, k=1, block_q=16, block_k=16), ValueError,
     r"scores: NaN scores cannot be ranked"),
    ("topk shape3", lambda: vl.topk_blocks(np.zeros((1, 4, 3)), CU, k=1, block_q=16, block_k=16), ValueError,
     r"scores: expected shape \[H, 5, >= 3\]"),
    ("topk shape4", lambda: vl.topk_blocks(np.zeros((3, 1, 3, 3)), CU, k=1, block_q=16, block_k=16), ValueError,
     r"scores: expected shape \[2 \(or 1\), H, >= 3, >= 3\]"),
    ("topk ndim", lambda: vl.topk_blocks(np.zeros((5, 3)), CU, k=1, block_q=16, block_k=16), ValueError,
     r"scores: expected a 3-D or 4-D score tensor"),
    ("topk int32", lambda: vl.topk_blocks(np.broadcast_to(np.zeros(1), (2**16, 2**16, 1)), CU, k=1), ValueError,
     r"scores: number of cells = 4294967296 exceeds the int32 range"),
    # ---- from_block_mask
    ("bm block pair", lambda: vl.from_seer_2d(np.ones((2, 1, 3, 3), bool), CU, block_size=(16, 16, 16)),
     ValueError, r"block_size: expected an int or a \(block_q, block_k\) pair"),
    ("bm padding arg", lambda: vl.from_block_mask(B1, CU, block_q=16, block_k=16, padding="drop"), ValueError,
     r"padding: expected 'error' or 'ignore'"),
    ("bm codes", lambda: vl.from_block_mask(np.full((1, 5, 3), 3), CU, block_q=16, block_k=16), ValueError,
     r"mask: integer block codes must be 0 \(skip\), 1 \(partial\) or 2 \(full\); found 3 at \(0, 0, 0\)"),
    ("bm dtype", lambda: vl.from_block_mask(np.ones((1, 5, 3)), CU, block_q=16, block_k=16), TypeError,
     r"mask: expected a bool or integer block mask, got dtype float64"),
    ("bm shape3", lambda: vl.from_block_mask(np.ones((1, 4, 3), bool), CU, block_q=16, block_k=16), ValueError,
     r"mask: expected shape \[H, 5, 5\] \(packed block-diagonal grid\) or \[H, 5, 3\]"),
    ("bm cross seq", lambda: vl.from_block_mask(np.ones((1, 5, 5), bool), CU, block_q=16, block_k=16), ValueError,
     r"mask: set cell \(0, 0, 3\) pairs a query block of sequence 0 with a key block of sequence 1"),
    ("bm local beyond", lambda: vl.from_block_mask(np.ones((1, 5, 3), bool), CU, block_q=16, block_k=16),
     ValueError, r"mask: set cell \(0, 3, 2\) is beyond the key blocks of sequence 1 \(2 blocks\)"),
    ("bm shape4", lambda: vl.from_block_mask(np.ones((3, 1, 3, 3), bool), CU, block_q=16, block_k=16), ValueError,
     r"mask: expected shape \[2 \(or 1\), H, >= 3, >= 3\] \(padded per sequence\)"),
    ("bm padded beyond", lambda: vl.from_block_mask(np.ones((2, 1, 3, 3), bool), CU, block_q=16, block_k=16),
     ValueError, r"mask: set cell \(1, 0, 0, 2\) is outside sequence 1 \(2 x 2 blocks\)"),
    ("bm ndim", lambda: vl.from_block_mask(np.ones(5, bool), CU, block_q=16, block_k=16), ValueError,
     r"mask: expected a 2-D, 3-D or 4-D block mask"),
    # ---- ordered lists (FA4)
    ("fa4 negative count", lambda: vl.from_fa4(fa4_varlen(mask_block_cnt=_set(np.zeros((1, 5), I32), (0, 1), -1)),
                                               CU, CU), ValueError, r"mask_block_cnt: negative count -1 at \(0, 1\)"),
    ("fa4 count too big", lambda: vl.from_fa4(fa4_varlen(mask_block_cnt=_set(np.zeros((1, 5), I32), (0, 3), 3)),
                                              CU, CU), ValueError,
     r"mask_block_cnt: count 3 at \(0, 3\) exceeds the 2 key blocks"),
    ("fa4 index range", lambda: vl.from_fa4(fa4_varlen(full_block_idx=_set(np.zeros((1, 13), I32), 0, 3)), CU, CU),
     ValueError, r"full_block_idx: index 3 at \(0, 0\) is out of range \[0, 3\)"),
    ("fa4 unsorted", lambda: vl.from_fa4(fa4_varlen(full_block_cnt=_set(np.zeros((1, 5), I32), (0, 0), 2),
                                                    full_block_idx=_set(np.zeros((1, 13), I32), (0, [0, 1]), [2, 1])),
                                         CU, CU), ValueError,
     r"full_block_idx: indices of a row must be sorted ascending.*allow_unsorted=True"),
    ("fa4 duplicate", lambda: vl.from_fa4(fa4_varlen(full_block_cnt=_set(np.zeros((1, 5), I32), (0, 0), 2),
                                                     full_block_idx=_set(np.zeros((1, 13), I32), (0, [0, 1]), [1, 1])),
                                          CU, CU), ValueError, r"full_block_idx: duplicate index 1 in row \(0, 0\)"),
    ("fa4 dup after sort", lambda: vl.from_fa4(fa4_varlen(full_block_cnt=_set(np.zeros((1, 5), I32), (0, 0), 3),
                                                          full_block_idx=_set(np.zeros((1, 13), I32), (0, [0, 1, 2]),
                                                                              [2, 1, 2])),
                                               CU, CU, allow_unsorted=True), ValueError,
     r"full_block_idx: duplicate index 2"),
    ("export width", lambda: vl.from_block_mask(B1, CU, block_q=16, block_k=16).to_fa4(varlen=False, width=1),
     ValueError, r"full_block_cnt: row \(0, 0, 0\) keeps 3 blocks but the index width is 1"),
    ("export pad", lambda: lay().to_fa4(pad="ones"), ValueError, r"pad: expected 'zeros' or 'complement'"),
    ("fa4 ndim", lambda: vl.from_fa4(fa4_varlen(mask_block_cnt=np.zeros((1, 1, 5), I32)), CU, CU), ValueError,
     r"mask_block_cnt / mask_block_idx: expected 2-D counts and 2-D indices"),
    ("fa4 batch dim", lambda: vl.from_fa4(fa4_batched(mask_block_cnt=np.zeros((3, 1, 3), I32),
                                                      mask_block_idx=np.zeros((3, 1, 3, 3), I32)), CU), ValueError,
     r"mask_block_cnt: batch dimension 3 is neither 1 nor the 2 sequences"),
    ("fa4 m blocks", lambda: vl.from_fa4(fa4_batched(mask_block_cnt=np.zeros((2, 1, 2), I32),
                                                     mask_block_idx=np.zeros((2, 1, 2, 3), I32)), CU), ValueError,
     r"mask_block_cnt: 2 query blocks per sequence, but a sequence of cu_seqlens_q has 3 blocks of 16"),
    ("fa4 row beyond", lambda: vl.from_fa4(fa4_batched(mask_block_cnt=_set(np.zeros((2, 1, 3), I32), (1, 0, 2), 1)),
                                           CU), ValueError,
     r"mask_block_cnt: row \(1, 0, 2\) lies beyond its sequence's query blocks"),
    ("fa4 col beyond", lambda: vl.from_fa4(fa4_batched(mask_block_cnt=_set(np.zeros((2, 1, 3), I32), (1, 0, 0), 1),
                                                       mask_block_idx=_set(np.zeros((2, 1, 3, 3), I32),
                                                                           (1, 0, 0, 0), 2)), CU),
     ValueError, r"mask_block_idx: key block 2 is beyond the 2 key blocks of its sequence"),
    ("fa4 required", lambda: vl.from_fa4({"mask_block_cnt": np.zeros((1, 5), I32)}, CU, CU), ValueError,
     r"bst: mask_block_cnt and mask_block_idx are required"),
    ("fa4 full pair", lambda: vl.from_fa4(fa4_varlen(full_block_idx=None), CU, CU), ValueError,
     r"bst: full_block_cnt and full_block_idx must be given together"),
    ("fa4 block size", lambda: vl.from_fa4(fa4_varlen(block_size=None), CU, CU), ValueError,
     r"block_size: FA4 tensors do not carry their block size"),
    ("fa4 varlen cu_q", lambda: vl.from_fa4(fa4_varlen()), ValueError, r"cu_seqlens_q: required for varlen FA4"),
    ("fa4 varlen cu_k", lambda: vl.from_fa4(fa4_varlen(), CU), ValueError, r"cu_seqlens_k: give cu_seqlens_k or "
                                                                          r"seqlen_k"),
    ("fa4 seqlen_k", lambda: vl.from_fa4(fa4_varlen(), CU, seqlen_k=-2), ValueError,
     r"seqlen_k: expected a non-negative int"),
    ("fa4 cu_total", lambda: vl.from_fa4(fa4_varlen(cu_total_m_blocks=np.array([0, 2, 5])), CU, CU), ValueError,
     r"cu_total_m_blocks: expected the cumulative query-block counts \[0, 3, 5\]"),
    ("fa4 cnt shape", lambda: vl.from_fa4(fa4_varlen(mask_block_cnt=np.zeros((1, 4), I32)), CU, CU), ValueError,
     r"mask_block_cnt: expected shape \[H, 5\] \(total_m_blocks\)"),
    ("fa4 idx heads", lambda: vl.from_fa4(fa4_varlen(mask_block_idx=np.zeros((2, 13), I32)), CU, CU), ValueError,
     r"mask_block_idx: expected 1 heads like mask_block_cnt"),
    ("fa4 offsets", lambda: vl.from_fa4(fa4_varlen(cu_block_idx_offsets=np.array([0, 9, 14])), CU, CU), ValueError,
     r"cu_block_idx_offsets: expected the cumulative M_b \* N_b \[0, 9, 13\]"),
    ("fa4 offsets int32", lambda: vl.from_fa4(fa4_varlen(
        mask_block_cnt=np.zeros((1, 2**20), I32), cu_total_m_blocks=np.array([0, 2**20]),
        mask_block_idx=np.zeros((1, 1), I32), full_block_cnt=None, full_block_idx=None),
        [0, 2**24], [0, 2**24]), ValueError,
     r"cu_block_idx_offsets: total_n_blocks \(sum of M_b \* N_b\) = 1099511627776 exceeds the int32 range"),
    ("fa4 idx width", lambda: vl.from_fa4(fa4_varlen(mask_block_idx=np.zeros((1, 12), I32)), CU, CU), ValueError,
     r"mask_block_idx: expected shape \[H, 13\] \(total_n_blocks\)"),
    ("fa4 uniform multiple", lambda: vl.from_fa4(fa4_varlen(cu_block_idx_offsets=None,
                                                            mask_block_idx=np.zeros((1, 12), I32)), CU, CU),
     ValueError, r"mask_block_idx: without cu_block_idx_offsets the index width 12 must be a multiple of "
                 r"total_m_blocks = 5"),
    ("fa4 uniform slots", lambda: vl.from_fa4(fa4_varlen(cu_block_idx_offsets=None,
                                                         mask_block_idx=np.zeros((1, 10), I32)), CU, CU),
     ValueError, r"mask_block_idx: 2 index slots per query block, but a sequence has 3 key blocks"),
    ("fa4 full shape varlen", lambda: vl.from_fa4(fa4_varlen(full_block_cnt=np.zeros((2, 5), I32)), CU, CU),
     ValueError, r"full_block_cnt / full_block_idx: expected shapes \(1, 5\) / \(1, 13\)"),
    ("fa4 batched idx shape", lambda: vl.from_fa4(fa4_batched(mask_block_idx=np.zeros((2, 1, 2, 3), I32)), CU),
     ValueError, r"mask_block_idx: expected shape \[2, 1, 3, W\] like mask_block_cnt"),
    ("fa4 full shape batched", lambda: vl.from_fa4(fa4_batched(full_block_cnt=np.zeros((2, 1, 3), I32),
                                                               full_block_idx=np.zeros((2, 1, 3, 2), I32)), CU),
     ValueError, r"full_block_cnt / full_block_idx: expected shapes \(2, 1, 3\) / \(2, 1, 3, 3\)"),
    ("fa4 batched seqlen int32", lambda: vl.from_fa4(fa4_batched(), seqlen_q=2**31), ValueError,
     r"seqlen_q: total tokens \(batch \* seqlen\) = 4294967296 exceeds the int32 range"),
    ("to_fa4 variable", lambda: vl.from_flashinfer(**fi_args()).to_fa4(), ValueError,
     r"layout: to_fa4 needs fixed block sizes"),
    ("to_fa4 bcast lengths", lambda: lay().to_fa4(varlen=False, broadcast_batch=True), ValueError,
     r"broadcast_batch: a batch-broadcast export needs sequences of equal lengths"),
    ("to_fa4 bcast pattern", lambda: vl.random_blocks([0, 64, 128], density=0.5, seed=3, block_q=16, block_k=16)
     .to_fa4(varlen=False, broadcast_batch=True), ValueError,
     r"broadcast_batch: sequence 1 has a different pattern than sequence 0"),
    ("to_fa4 include_full batched", lambda: lay().to_fa4(varlen=False, include_full=False), ValueError,
     r"include_full: the layout has full blocks"),
    ("to_fa4 include_full varlen", lambda: lay().to_fa4(include_full=False), ValueError,
     r"include_full: the layout has full blocks"),
    ("to_fa4 width uniform", lambda: lay().to_fa4(uniform_k=True, width=1), ValueError,
     r"width: 1 slots per query block cannot hold a sequence of 3 key blocks"),
    ("to_fa4 num_m_blocks", lambda: lay().to_fa4(varlen=False, num_m_blocks=2), ValueError,
     r"num_m_blocks: 2 is less than the 3 query blocks"),
    ("export heads multiple", lambda: vl.dense(CU, block_q=16, block_k=16, num_heads=2, head_mode="per_kv_head")
     .to_fa4(num_heads_q=5), ValueError, r"num_heads_q: expected a positive multiple of the layout's 2 heads"),
    ("export heads per_q", lambda: vl.dense(CU, block_q=16, block_k=16, num_heads=2).to_flex(num_heads_q=4),
     ValueError, r"num_heads_q: the layout has 2 per-query-head patterns, got 4"),
    # ---- FlexAttention
    ("flex lead dims", lambda: vl.from_flex(flex(kv_num_blocks=np.zeros((1, 1, 1, 3), I32))), ValueError,
     r"kv_num_blocks / kv_indices: expected \[\.\.\., num_q_blocks\] counts"),
    ("flex idx shape", lambda: vl.from_flex(flex(kv_indices=np.zeros((1, 1, 2, 3), I32))), ValueError,
     r"kv_indices: expected shape \(1, 1, 3\) \+ \(W,\) like kv_num_blocks"),
    ("flex both", lambda: vl.from_flex(flex(), kv_num_blocks=np.zeros((1, 1, 3), I32)), ValueError,
     r"kv_num_blocks: given both in block_mask and as a keyword"),
    ("flex required", lambda: vl.from_flex(None), ValueError, r"kv_num_blocks / kv_indices: required"),
    ("flex full pair", lambda: vl.from_flex(flex(full_kv_indices=None)), ValueError,
     r"full_kv_num_blocks / full_kv_indices: give both or neither"),
    ("flex full shape", lambda: vl.from_flex(flex(full_kv_num_blocks=np.zeros((1, 2, 3), I32),
                                                  full_kv_indices=np.zeros((1, 2, 3, 3), I32))), ValueError,
     r"full_kv_num_blocks / full_kv_indices: expected shapes \(1, 1, 3\) / \(1, 1, 3, 3\)"),
    ("flex seq_lengths type", lambda: vl.from_flex(flex(seq_lengths=5)), TypeError,
     r"seq_lengths: expected a \(q_len, kv_len\) pair"),
    ("flex seq_lengths rows", lambda: vl.from_flex(flex(seq_lengths=(100, 48))), ValueError,
     r"kv_num_blocks: 3 query blocks do not match seq_lengths\[0\] = 100 with Q_BLOCK = 16"),
    ("flex grid keys", lambda: vl.from_flex(flex(), [0, 40], [0, 100]), ValueError,
     r"kv_indices: the grid has 3 key blocks, but a sequence of cu_seqlens_k has 7 blocks of 16"),
    ("flex packed cu", lambda: vl.from_flex(flex(), packed=True), ValueError,
     r"cu_seqlens_q: required with packed=True"),
    ("flex packed batch", lambda: vl.from_flex(flex(kv_num_blocks=np.zeros((2, 1, 3), I32),
                                                    kv_indices=np.zeros((2, 1, 3, 3), I32),
                                                    full_kv_num_blocks=None, full_kv_indices=None),
                                               [0, 20, 48], packed=True), ValueError,
     r"kv_num_blocks: a packed grid has batch dimension 1, got 2"),
    ("flex packed cover", lambda: vl.from_flex(flex(), [0, 20, 60], packed=True), ValueError,
     r"seq_lengths: the packed grid \(48, 48\) does not cover the 60 query / 60 key tokens"),
    ("to_flex block size", lambda: lay().to_flex(BLOCK_SIZE=32), ValueError,
     r"BLOCK_SIZE: a per-batch export uses the layout's blocks \(16, 16\)"),
    ("to_flex seq_lengths", lambda: lay().to_flex(seq_lengths=(16, 16)), ValueError,
     r"seq_lengths: \(16, 16\) is shorter than the longest sequence"),
    ("to_flex packed var", lambda: vl.from_flashinfer(**fi_args()).to_flex(packed=True), ValueError,
     r"BLOCK_SIZE: required to export a variable-span layout onto a packed grid"),
    ("to_flex packed q cross", lambda: lay().to_flex(packed=True), ValueError,
     r"BLOCK_SIZE: a query span of the layout crosses a packed block of 16 tokens"),
    ("to_flex packed k cross", lambda: vl.dense([0, 16, 32], [0, 20, 52], block_q=16, block_k=16).to_flex(
        packed=True, BLOCK_SIZE=(16, 32)), ValueError, r"BLOCK_SIZE: a key span of the layout crosses a packed block "
                                                       r"of 32 tokens"),
    ("to_flex packed full", lambda: vl.dense([0, 32], block_q=16, block_k=16).to_flex(packed=True,
                                                                                     include_full=False),
     ValueError, r"include_full: the layout has full blocks"),
    # ---- SeerAttention
    ("seer1d shape", lambda: vl.from_seer_1d(np.ones((2, 1, 39, 3), bool), CU, block_size=16), ValueError,
     r"mask: expected shape \[2 \(or 1\), H, >= 40, >= 3\] \(batch, heads, query tokens, key blocks of 16\)"),
    ("seer1d padding", lambda: vl.from_seer_1d(np.ones((2, 1, 40, 3), bool), CU, block_size=16, padding="error"),
     ValueError, r"mask: set entries outside the sequences' query tokens / key blocks \(padding\)"),
    ("seer1d padding bcast", lambda: vl.from_seer_1d(np.ones((1, 1, 41, 3), bool), CU, block_size=16,
                                                     padding="error"),
     ValueError, r"mask: set entries outside the sequences'"),
    ("seer1d token mask", lambda: vl.from_seer_1d(np.ones((2, 1, 40, 3), bool), CU, block_size=16,
                                                  element_mask=ElementMask(token_mask=np.ones((1, 57, 3), bool),
                                                                           token_block_k=16)),
     ValueError, r"element_mask: from_seer_1d builds the token mask itself"),
    # ---- FlashInfer
    ("fi row shape", lambda: vl.from_flashinfer(**fi_args(block_row_sz=np.array([[7]]))), ValueError,
     r"block_row_sz: expected shape \(1, 2\) to match block_mask_map"),
    ("fi col shape", lambda: vl.from_flashinfer(**fi_args(block_col_sz=np.array([[7, 0, 1]]))), ValueError,
     r"block_col_sz: expected shape \(1, 2\) to match block_mask_map"),
    ("fi positive", lambda: vl.from_flashinfer(**fi_args(block_col_sz=np.array([[7, 0]]))), ValueError,
     r"block_col_sz: block sizes must be positive, got 0 at \(0, 1\)"),
    ("fi sums", lambda: vl.from_flashinfer(**fi_args(block_mask_map=np.ones((2, 2, 2), bool),
                                                     block_row_sz=np.array([[3, 4], [3, 5]]),
                                                     block_col_sz=np.array([[5, 2], [5, 2]]))), ValueError,
     r"block_row_sz: every head's sizes must sum to the same length, got \[7, 8\]"),
    ("fi int32", lambda: vl.from_flashinfer(**fi_args(block_row_sz=np.array([[2**31, 4]]))), ValueError,
     r"block_row_sz: total length 2147483652 exceeds the int32 range"),
    ("fi cu totals", lambda: vl.from_flashinfer(**fi_args(), cu_seqlens_q=[0, 3, 8]), ValueError,
     r"block_row_sz / block_col_sz: sizes sum to 7 query / 7 key tokens, cu_seqlens hold 8 / 8"),
    ("to_flashinfer counts", lambda: vl.from_flashinfer(np.ones((2, 2, 2), bool), np.array([[3, 4], [4, 3]]),
                                                        np.array([[5, 2], [5, 2]]), [0, 3, 7]).to_flashinfer(),
     ValueError, r"layout: FlashInfer needs the same number of query spans and of key spans in every head"),
    # ---- from_row_spans
    ("rows num_heads", lambda: vl.from_row_spans(rows_of(), CU, CU, 0), ValueError,
     r"num_heads: expected a positive int"),
    ("rows missing", lambda: vl.from_row_spans(object(), CU, CU, 1), TypeError, r"rows.head: missing"),
    ("rows lengths", lambda: vl.from_row_spans(rows_of(q_len=rows_of().q_len[:-1]), CU, CU, 1), ValueError,
     r"rows.q_len: expected 5 rows like rows.head"),
    ("rows ent_ptr", lambda: vl.from_row_spans(rows_of(ent_ptr=rows_of().ent_ptr[::-1]), CU, CU, 1), ValueError,
     r"rows.ent_ptr: expected non-decreasing CSR offsets"),
    ("rows entries", lambda: vl.from_row_spans(rows_of(k_len=rows_of().k_len[:-1]), CU, CU, 1), ValueError,
     r"rows.k_len: expected \d+ entries \(rows.ent_ptr\[-1\]\)"),
    ("rows n_full", lambda: vl.from_row_spans(rows_of(n_full=rows_of().n_full + 5), CU, CU, 1), ValueError,
     r"rows.n_full: must lie in \[0, entries of the row\]"),
    ("rows head", lambda: vl.from_row_spans(rows_of(head=rows_of().head + 1), CU, CU, 1), ValueError,
     r"rows.head: layout heads must lie in \[0, 1\)"),
    ("rows batch", lambda: vl.from_row_spans(rows_of(batch=rows_of().batch + 1), CU, CU, 1), ValueError,
     r"rows.batch: sequence indices must lie in \[0, 2\)"),
    ("rows block_q", lambda: vl.from_row_spans(rows_of(), CU, CU, 1, block_q=32), ValueError,
     r"block_q: the rows are not the fixed query blocks of 32 tokens"),
    ("rows k span", lambda: vl.from_row_spans(rows_of(k_len=_set(rows_of().k_len, 0, 99)), CU, CU, 1), ValueError,
     r"rows.k_start / rows.k_len: entry 0 spans \[0, 99\) outside its sequence's 40 keys"),
    ("rows unsorted", lambda: vl.from_row_spans(_unsorted_rows(), [0, 48], [0, 48], 1), ValueError,
     r"rows.k_start: entries of a row's full / partial group must be sorted by k_start"),
    ("rows overlap", lambda: vl.from_row_spans(_overlap_rows(), [0, 48], [0, 48], 1), ValueError,
     r"rows.k_start: entries 0 and 1 of a row overlap"),
    ("rows block_k", lambda: vl.from_row_spans(rows_of(), CU, CU, 1, block_k=32), ValueError,
     r"block_k: the entries' key spans are not the fixed key blocks of 32 tokens"),
    ("rows partition overlap", lambda: vl.from_row_spans(_cross_overlap_rows(), [0, 48], [0, 48], 1), ValueError,
     r"rows.k_start / rows.k_len: key spans of a \(head, sequence\) overlap without being identical"),
    ("rows same start", lambda: vl.from_row_spans(_same_start_rows(), [0, 48], [0, 48], 1), ValueError,
     r"rows.k_len: two entries share a k_start with different lengths"),
    # ---- reference
    ("ref dtype", lambda: ref.attention_forward(np.zeros((57, 1, 4), bool), *qkv()[1:], lay()), TypeError,
     r"q: expected a floating-point array"),
    ("ref ndim", lambda: ref.attention_forward(np.zeros((57, 4)), *qkv()[1:], lay()), ValueError,
     r"q: expected a 3-D array"),
    ("ref layout", lambda: ref.attention_forward(*qkv(), "layout"), TypeError, r"layout: expected a BlockSparseLayout"),
    ("ref q tokens", lambda: ref.attention_forward(qkv()[0][:-1], *qkv()[1:], lay()), ValueError,
     r"q: expected 57 tokens"),
    ("ref k tokens", lambda: ref.attention_forward(qkv()[0], qkv()[1][:-1], qkv()[2], lay()), ValueError,
     r"k / v: expected 57 tokens"),
    ("ref v heads", lambda: ref.attention_forward(*qkv()[:2], np.zeros((57, 2, 4)), lay()), ValueError,
     r"v: expected 1 KV heads like k"),
    ("ref head dim", lambda: ref.attention_forward(qkv()[0], np.zeros((57, 1, 3)), np.zeros((57, 1, 3)), lay()),
     ValueError, r"k: expected head dim 4 like q"),
    ("ref gqa", lambda: ref.attention_forward(np.zeros((57, 3, 4)), np.zeros((57, 2, 4)), np.zeros((57, 2, 4)),
                                              lay()), ValueError, r"num_heads_q: 3 query heads is not a multiple"),
    ("ref bwd shapes", lambda: ref.attention_backward(np.zeros((57, 2, 3)), *qkv(), np.zeros((57, 2, 4)),
                                                      np.zeros((2, 57)), lay()), ValueError,
     r"dout / out: expected shape \(57, 2, 4\)"),
    ("ref bwd lse", lambda: ref.attention_backward(np.zeros((57, 2, 4)), *qkv(), np.zeros((57, 2, 4)),
                                                   np.zeros((57, 2)), lay()), ValueError,
     r"lse: expected shape \(2, 57\)"),
    ("ref pool1d block", lambda: ref.attention_pooling_1d(*qkv()[:2], vl.from_flashinfer(
        np.ones((1, 1, 1), bool), [[57]], [[57]], CU, CU)), ValueError,
     r"block_k: required \(positive\) for a layout with variable key spans"),
    ("ref pool2d block", lambda: ref.attention_pooling_2d(*qkv()[:2], vl.from_flashinfer(
        np.ones((1, 1, 1), bool), [[57]], [[57]], CU, CU), block_k=16), ValueError,
     r"block_q / block_k: required \(positive\) for a layout with variable spans"),
    ("ref decode layout", lambda: ref.decode(np.zeros((2, 1, 4)), *qkv()[1:], lay()), ValueError,
     r"layout: a decode layout has one query token per sequence"),
    ("ref decode q", lambda: ref.decode(np.zeros((3, 1, 4)), np.zeros((57, 1, 4)), np.zeros((57, 1, 4)),
                                        vl.dense([0, 1, 2], CU, block_q=16, block_k=16)), ValueError,
     r"q: expected \[2, Hq, D\] \(one token per sequence\)"),
    ("ref merge shapes", lambda: ref.merge_states(np.zeros((2, 5, 1, 4)), np.zeros((2, 5, 1))), ValueError,
     r"lse_parts: expected shape \(2, 1, 5\) to match out_parts"),
    ("ref merge nan", lambda: ref.merge_states(np.zeros((2, 5, 1, 4)), np.full((2, 1, 5), np.nan)), ValueError,
     r"lse_parts: NaN or \+inf log-sum-exp values"),
]


def _unsorted_rows():
    return RowSpans(head=np.array([0]), batch=np.array([0]), q_start=np.array([0]), q_len=np.array([48]),
                    ent_ptr=np.array([0, 2]), n_full=np.array([2]), k_start=np.array([16, 0]),
                    k_len=np.array([16, 16]))


def _overlap_rows():
    return RowSpans(head=np.array([0]), batch=np.array([0]), q_start=np.array([0]), q_len=np.array([48]),
                    ent_ptr=np.array([0, 2]), n_full=np.array([0]), k_start=np.array([0, 8]),
                    k_len=np.array([16, 16]))


def _cross_overlap_rows():
    return RowSpans(head=np.array([0, 0]), batch=np.array([0, 0]), q_start=np.array([0, 16]),
                    q_len=np.array([16, 32]), ent_ptr=np.array([0, 1, 2]), n_full=np.array([1, 1]),
                    k_start=np.array([0, 8]), k_len=np.array([16, 16]))


def _same_start_rows():
    return RowSpans(head=np.array([0, 0]), batch=np.array([0, 0]), q_start=np.array([0, 16]),
                    q_len=np.array([16, 32]), ent_ptr=np.array([0, 1, 2]), n_full=np.array([1, 1]),
                    k_start=np.array([0, 0]), k_len=np.array([16, 8]))


@pytest.mark.parametrize("name,fn,exc,pattern", CASES, ids=[c[0] for c in CASES])
def test_validation_error(name, fn, exc, pattern):
    with pytest.raises(exc, match=pattern):
        fn()


# ---- guards that need more than 2^31 elements: exercised with a lowered int32 limit


def test_int32_guards_with_lowered_limit(monkeypatch):
    def limit(v):
        monkeypatch.setattr(host, "INT32_MAX", v)
        monkeypatch.setattr(maskmod, "INT32_MAX", v)

    limit(100)
    with pytest.raises(ValueError, match=r"cu_seqlens_q: number of blocks \(all heads\) = \d+ exceeds the int32"):
        partition.fixed_partition(np.array([0, 90], np.int32), 16, 20, "cu_seqlens_q")
    with pytest.raises(ValueError, match=r"cu_seqlens_k: number of \(query block, key block\) cells"):
        common.all_cells(np.array([0, 90], np.int32), np.array([0, 90], np.int32), 16, 16, 4)
    with pytest.raises(ValueError, match=r"layout: number of kept blocks = \d+ exceeds the int32"):
        vl.dense([0, 90], block_q=16, block_k=16, num_heads=4)
    with pytest.raises(ValueError, match=r"mask.token_mask: \d+ elements exceed the int32 range"):
        vl.dense([0, 90], block_q=16, block_k=16, element_mask=ElementMask(token_mask=np.ones((1, 90, 6), bool),
                                                                          token_block_k=16))
    with pytest.raises(ValueError, match=r"mask_block_idx: total index slots = \d+ exceeds the int32 range"):
        vl.dense([0, 90], block_q=16, block_k=16).to_fa4(uniform_k=True, width=20)
    limit(150)
    with pytest.raises(ValueError, match=r"key spans: number of spans = 202 exceeds the int32"):
        vl.from_flashinfer(np.ones((2, 1, 101), bool), [[101], [101]], [[1] * 101] * 2)
    limit(300)
    with pytest.raises(ValueError, match=r"cu_block_idx_offsets: total_n_blocks \(sum of M_b \* N_b\) = 361"):
        vl.causal([0, 290], block_q=16, block_k=16).to_fa4()


def test_duplicate_entries_guard():
    cu = np.array([0, 32], np.int32)
    qp = partition.fixed_partition(cu, 16, 1, "q")
    with pytest.raises(ValueError, match=r"key block 1 is listed twice for head 0, sequence 0, query block 0"):
        BlockSparseLayout._build(cu, cu, 1, "broadcast", qp, qp, np.array([0, 0]), np.array([1, 1]),
                                 np.array([True, True]), None, 16, 16)


# ---- coverage of the raise sites (line tracer; no coverage package needed)


def _has_raises(module) -> bool:
    return "raise ValueError" in inspect.getsource(module) or "raise TypeError" in inspect.getsource(module)


def _raise_lines(module):
    tree = ast.parse(inspect.getsource(module))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            f = node.exc.func
            if isinstance(f, ast.Name) and f.id in ("ValueError", "TypeError"):
                out.add(node.lineno)
    assert out, module.__name__
    return out


def test_every_raise_site_is_exercised(monkeypatch):
    modules = [m for m in LAYOUT_MODULES if _has_raises(m)] + [ref]
    files = {m.__file__: m for m in modules}
    hit: set[tuple[str, int]] = set()

    def tracer(frame, event, arg):
        if frame.f_code.co_filename in files:
            if event == "line":
                hit.add((frame.f_code.co_filename, frame.f_lineno))
            return tracer
        return tracer if event == "call" else None

    sys.settrace(tracer)
    try:
        for _, fn, exc, pattern in CASES:
            with pytest.raises(exc, match=pattern):
                fn()
        with monkeypatch.context() as mp:
            test_int32_guards_with_lowered_limit(mp)
        test_duplicate_entries_guard()
    finally:
        sys.settrace(None)
    missing = []
    for m in modules:
        for ln in sorted(_raise_lines(m)):
            # a raise statement may span lines; the tracer reports its first line
            if (m.__file__, ln) not in hit:
                missing.append(f"{m.__name__}:{ln}")
    assert not missing, f"raise sites never exercised: {missing}"
