"""One case per function of varblock.layout that accepts arrays: each builds a layout from random NumPy inputs passed
through ``wrap`` (identity, a CUDA stand-in, a torch / CuPy / JAX GPU array), so that tests can check that every
input kind gives the same layout as NumPy inputs."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np

import varblock.layout as vl
from varblock.layout import ElementMask, RowSpans

Wrap = Callable[[np.ndarray], Any]
LENS = (70, 0, 33, 128)  # varlen batch with an empty sequence and a partial last block
BLOCK = 32


def cu_of(lens) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)


def _blocks(lens, bs=BLOCK) -> np.ndarray:
    return -(-np.asarray(lens) // bs)


def _random_layout(rng: np.random.Generator, heads: int = 2) -> vl.BlockSparseLayout:
    cu = cu_of(LENS)
    M = _blocks(LENS)
    codes = rng.integers(0, 3, size=(len(LENS), heads, int(M.max()), int(M.max())), dtype=np.int8)
    return vl.from_block_mask(codes, cu, block_q=BLOCK, block_k=BLOCK, causal=True, padding="ignore")


def _wrap_fields(obj: Any, wrap: Wrap) -> SimpleNamespace:
    """A FA4 / FlexAttention-like object whose array fields are wrapped (other fields as they are)."""
    items = obj._asdict().items() if hasattr(obj, "_asdict") else obj.items()
    return SimpleNamespace(**{k: (wrap(v) if isinstance(v, np.ndarray) else v) for k, v in items})


def block_mask_bool(rng, wrap):
    M = _blocks(LENS)
    mask = rng.random((len(LENS), 2, int(M.max()), int(M.max()))) < 0.5
    return vl.from_block_mask(wrap(mask), wrap(cu_of(LENS)), block_q=BLOCK, block_k=BLOCK, causal=True,
                              padding="ignore")


def block_mask_codes_with_documents(rng, wrap):
    cu = cu_of(LENS)
    TM = int(_blocks(LENS).sum())
    codes = rng.integers(0, 3, size=(2, TM, int(_blocks(LENS).max())), dtype=np.int8)
    M = _blocks(LENS)
    for b, (m0, m) in enumerate(zip(np.cumsum(M) - M, M)):
        codes[:, m0:m0 + m, M[b]:] = 0
    docs = (np.arange(cu[-1]) // 20).astype(np.int32)
    emask = ElementMask(doc_ids_q=wrap(docs), doc_ids_k=wrap(docs))
    return vl.from_block_mask(wrap(codes), wrap(cu), wrap(cu), block_q=BLOCK, block_k=BLOCK, element_mask=emask)


def fa4_varlen(rng, wrap):
    lay = _random_layout(rng)
    fields = _wrap_fields(lay.to_fa4(), wrap)
    return vl.BlockSparseLayout.from_fa4(fields, wrap(cu_of(LENS)), wrap(cu_of(LENS)), causal=True)


def fa4_batched(rng, wrap):
    lay = _random_layout(rng)
    fields = _wrap_fields(lay.to_fa4(varlen=False), wrap)
    return vl.from_fa4(fields, wrap(cu_of(LENS)), causal=True)


def flex_per_batch(rng, wrap):
    lay = _random_layout(rng)
    bm = _wrap_fields(lay.to_flex(), wrap)
    return vl.BlockSparseLayout.from_flex(bm, wrap(cu_of(LENS)), causal=True)


def flex_packed(rng, wrap):
    cu = cu_of(LENS)
    nb = int(-(-cu[-1] // 16))
    dense = rng.random((1, 2, nb, nb)) < 0.4
    cnt = dense.sum(axis=-1).astype(np.int32)
    idx = np.argsort(~dense, axis=-1, kind="stable").astype(np.int32)  # kept blocks first, ascending
    return vl.from_flex(None, wrap(cu), packed=True, BLOCK_SIZE=16, kv_num_blocks=wrap(cnt), kv_indices=wrap(idx),
                        causal=True)


def seer_2d(rng, wrap):
    M = _blocks(LENS, 64)
    mask = rng.random((len(LENS), 2, int(M.max()), int(M.max()))) < 0.5
    return vl.from_seer_2d(wrap(mask), wrap(cu_of(LENS)), block_size=64)


def seer_1d(rng, wrap):
    mask = rng.random((len(LENS), 2, max(LENS), int(_blocks(LENS).max()))) < 0.3
    return vl.BlockSparseLayout.from_seer_1d(wrap(mask), wrap(cu_of(LENS)), block_size=BLOCK)


def flashinfer(rng, wrap):
    total = int(sum(LENS))
    rows = np.array([[100, 31, 100], [31, 100, 100]], dtype=np.int32)
    cols = np.array([[50, 50, 131], [16, 200, 15]], dtype=np.int32)
    assert rows.sum(axis=1).tolist() == [total] * 2 and cols.sum(axis=1).tolist() == [total] * 2
    mask = rng.random((2, 3, 3)) < 0.6
    return vl.from_flashinfer(wrap(mask), wrap(rows), wrap(cols), wrap(cu_of(LENS)), causal=True)


def row_spans(rng, wrap):
    rs = _random_layout(rng).rows()
    wrapped = RowSpans(**{f: wrap(np.array(getattr(rs, f), dtype=np.int32)) for f in
                          ("head", "batch", "q_start", "q_len", "ent_ptr", "n_full", "k_start", "k_len")})
    return vl.BlockSparseLayout.from_row_spans(wrapped, wrap(cu_of(LENS)), wrap(cu_of(LENS)), 2, causal=True)


def generators_band(rng, wrap):
    cu = wrap(cu_of(LENS))
    w = int(rng.integers(1, 60))
    return [vl.causal(cu, block_q=BLOCK, block_k=BLOCK), vl.sliding_window(cu, window_left=w, block_q=BLOCK,
                                                                          block_k=BLOCK),
            vl.attention_sinks(cu, sink_blocks=1, window_left=w, block_q=BLOCK, block_k=BLOCK),
            vl.random_blocks(cu, density=0.5, num_heads=2, seed=int(rng.integers(1 << 30)), block_q=BLOCK,
                             block_k=BLOCK)]


def generator_document(rng, wrap):
    docs = np.sort(rng.integers(0, 4, size=int(sum(LENS)))).astype(np.int32)
    return vl.document(wrap(cu_of(LENS)), doc_ids_q=wrap(docs), block_q=BLOCK, block_k=BLOCK, causal=True)


def generator_topk(rng, wrap):
    M = _blocks(LENS)
    scores = rng.standard_normal((2, int(M.sum()), int(M.max()))).astype(np.float32)
    return vl.topk_blocks(wrap(scores), wrap(cu_of(LENS)), k=2, block_q=BLOCK, block_k=BLOCK, causal=True)


def generator_dense_token_mask(rng, wrap):
    tok = rng.random((1, int(sum(LENS)), int(_blocks(LENS).max()))) < 0.5
    return vl.dense(wrap(cu_of(LENS)), block_q=BLOCK, block_k=BLOCK,
                    element_mask=ElementMask(token_mask=wrap(tok), token_block_k=BLOCK))


CASES: dict[str, Callable[[np.random.Generator, Wrap], Any]] = {
    f.__name__: f for f in (block_mask_bool, block_mask_codes_with_documents, fa4_varlen, fa4_batched,
                            flex_per_batch, flex_packed, seer_2d, seer_1d, flashinfer, row_spans, generators_band,
                            generator_document, generator_topk, generator_dense_token_mask)
}


def build(case: str, seed: int, wrap: Wrap) -> list[vl.BlockSparseLayout]:
    """The layout(s) of ``case`` for inputs drawn with ``seed`` and passed through ``wrap``."""
    out = CASES[case](np.random.default_rng(seed), wrap)
    return out if isinstance(out, list) else [out]


def assert_same(got: list[vl.BlockSparseLayout], want: list[vl.BlockSparseLayout]) -> None:
    assert len(got) == len(want) and any(w.num_entries for w in want)
    for g, w in zip(got, want):
        assert g.equals(w), (g, w)
