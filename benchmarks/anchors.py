"""Anchor loaders and shared helpers of the benchmarks: FA4, SeerAttention's Triton kernels, the CUDA-event timer
and the JSON row schema.

Host-side conversions (``fa4_fields``, ``seer_block_mask_2d``, ``seer_decode_mask``) need only NumPy and varblock's
layouts, so ``--dry-run`` benchmarks and the CPU tests exercise them; ``torch`` is imported only by the functions
that put tensors on a device or time them.

* FA4 (flash-attn-4): ``load_fa4()``, ``fa4_block_sparse(layout, device, num_heads_q)`` (the layout's kept blocks
  through ``varblock.layout.to_fa4``; FA4 indexes query heads).
* SeerAttention (microsoft/SeerAttention ``seer_attn/kernels/varlen``): ``load_seer(module, seer_path)``,
  ``seer_block_mask_2d`` (the ``[B, Hq, nb, nb]`` mask of ``block_sparse_attn_varlen_2d``),
  ``seer_decode_mask`` (the ``[B, Hkv, num_blocks]`` mask of ``block_sparse_flash_decode_varlen_mask``).
  ``attn_pooling_qkv_varlen_1d.attn_pooling_qkv_varlen`` takes no mask (dense causal pooling), so it needs none.
* ``bench(fn)``: CUDA-event median in ms after warm-up; ``bench_interleaved(fns)``: the same for several systems
  timed round robin (same clock mix for each under the GPU's power cap).
* ``make_row`` / ``write_json`` / ``read_json``: one row per measured cell (:data:`ROW_KEYS`).
"""

from __future__ import annotations

import importlib
import json
import math
import sys
import types
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

from varblock.layout import BlockSparseLayout, FA4BlockSparse  # noqa: E402
from varblock.layout.decode import DecodeLayout  # noqa: E402

DEFAULT_SEER_PATH = ROOT / ".seer"
SEER_PACKAGE = "seer_attn.kernels.varlen"
WORKLOADS: dict[str, tuple[list[int], int, int]] = {
    "W1": ([512, 1024, 2048, 4096, 8192, 1536, 3072, 6144], 32, 8),
    "W2": ([32768], 16, 16),
    "W3": ([512] * 64, 16, 16),
}
"""The issues' workloads W1-W3: (sequence lengths, query heads, KV heads); importable without torch."""

# ------------------------------------------------------------------------------------------------------ timing


def bench(fn: Callable[[], Any], warmup: int = 3, rep: int = 10) -> float:
    """Median time of ``fn()`` in ms over ``rep`` CUDA-event-timed calls, after ``warmup`` untimed calls."""
    import torch

    if warmup < 0 or rep < 1:
        raise ValueError(f"warmup / rep: expected warmup >= 0 and rep >= 1, got {warmup} / {rep}")
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(rep):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e))
    return float(np.median(times))


def bench_interleaved(fns: dict[str, Callable[[], Any]], warmup: int = 3, rep: int = 10) -> dict[str, float]:
    """Median time in ms of every ``fns[name]()``, timed round robin (one call of each per round, the starting
    system rotating): under a sustained load the H200 lowers its clock to its power cap (1650-1700 MHz against
    1980 MHz, throttle reason sw_power_cap, measured with nvidia-smi), so systems timed one after the other would
    see different clocks; interleaved, each sees the same mix."""
    import torch

    if warmup < 0 or rep < 1:
        raise ValueError(f"warmup / rep: expected warmup >= 0 and rep >= 1, got {warmup} / {rep}")
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    torch.cuda.synchronize()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rep):
        for n in names[r % len(names):] + names[:r % len(names)]:
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fns[n]()
            e.record()
            torch.cuda.synchronize()
            times[n].append(s.elapsed_time(e))
    return {n: float(np.median(t)) for n, t in times.items()}


# ------------------------------------------------------------------------------------------------------ FA4


def load_fa4() -> tuple[Callable[..., Any], type]:
    """``(flash_attn_varlen_func, BlockSparseTensorsTorch)`` of FA4 (flash-attn-4), or ImportError saying why."""
    try:
        from flash_attn.cute.block_sparsity import BlockSparseTensorsTorch
        from flash_attn.cute.interface import flash_attn_varlen_func
    except Exception as ex:  # ImportError, or a broken install failing at import time
        raise ImportError(f"FA4 (flash-attn-4, flash_attn.cute) is not importable: {type(ex).__name__}: {ex}. "
                          "See shared/anchors/fa4_on_device.md for installing it on the GPU machine.") from ex
    return flash_attn_varlen_func, BlockSparseTensorsTorch


def fa4_fields(layout: BlockSparseLayout, num_heads_q: int) -> FA4BlockSparse:
    """FA4 varlen block-sparse fields (NumPy int32) holding exactly the layout's kept blocks, one list per query
    head (a ``per_kv_head`` layout is repeated over its GQA groups, a ``broadcast`` one over all heads)."""
    if not isinstance(layout, BlockSparseLayout):
        raise TypeError(f"layout: expected a BlockSparseLayout, got {type(layout).__name__}")
    if not layout.is_fixed:
        raise ValueError("layout: FA4 block sparsity needs fixed block sizes; this layout has variable spans")
    f = layout.to_fa4(varlen=True, uniform_k=False, include_full=True, num_heads_q=num_heads_q)
    if f.mask_block_cnt.shape[0] == 1 and num_heads_q > 1:  # broadcast layout: FA4 wants H lists
        f = f._replace(**{n: np.repeat(getattr(f, n), num_heads_q, axis=0) for n in
                          ("mask_block_cnt", "mask_block_idx", "full_block_cnt", "full_block_idx")})
    return f


def fa4_to_torch(fields: FA4BlockSparse, device: Any) -> Any:
    """FA4 ``BlockSparseTensorsTorch`` on ``device`` from host fields (int32, contiguous)."""
    import torch

    _, bst_type = load_fa4()
    t = {n: torch.from_numpy(np.ascontiguousarray(getattr(fields, n), dtype=np.int32)).to(device) for n in
         ("mask_block_cnt", "mask_block_idx", "full_block_cnt", "full_block_idx", "cu_total_m_blocks",
          "cu_block_idx_offsets")}
    return bst_type(**t, block_size=tuple(int(x) for x in fields.block_size))


def fa4_block_sparse(layout: BlockSparseLayout, device: Any, num_heads_q: int) -> Any:
    """FA4 ``BlockSparseTensorsTorch`` on ``device`` with exactly the layout's kept blocks (``fa4_fields``).
    Partial (``mask_*``) blocks need FA4's ``mask_mod``; non-causal random layouts have none."""
    return fa4_to_torch(fa4_fields(layout, num_heads_q), device)


# ------------------------------------------------------------------------------------------------------ Seer


def _flash_attn_stand_in() -> types.ModuleType:
    """A ``flash_attn`` module whose ``flash_attn_varlen_func`` raises: Seer's modules import it at top level and
    call it only in their ``__main__`` self-tests."""

    def flash_attn_varlen_func(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("flash_attn stand-in: the benchmarks never call flash_attn_varlen_func through Seer")

    mod = types.ModuleType("flash_attn")
    mod.flash_attn_varlen_func = flash_attn_varlen_func  # type: ignore[attr-defined]
    return mod


def load_seer(module: str, seer_path: str | Path | None = None) -> types.ModuleType:
    """Import ``<seer_path>/seer_attn/kernels/varlen/<module>.py`` as ``seer_attn.kernels.varlen.<module>`` (so
    its relative imports work). A stand-in ``flash_attn`` module is in ``sys.modules`` during the import only;
    whatever was there before (FA4's package, or nothing) is restored afterwards."""
    if not isinstance(module, str) or not module.isidentifier():
        raise ValueError(f"module: expected a module name such as 'block_sparse_attn_varlen_2d', got {module!r}")
    root = Path(seer_path) if seer_path is not None else DEFAULT_SEER_PATH
    src = root / "seer_attn" / "kernels" / "varlen" / f"{module}.py"
    if not src.is_file():
        raise ImportError(f"seer_path: {src} does not exist (give the folder holding seer_attn/, e.g. .seer)")
    root_s = str(root.resolve())
    if root_s not in sys.path:
        sys.path.insert(0, root_s)
    prev = sys.modules.get("flash_attn")
    sys.modules["flash_attn"] = _flash_attn_stand_in()
    try:
        return importlib.import_module(f"{SEER_PACKAGE}.{module}")
    finally:
        if prev is None:
            sys.modules.pop("flash_attn", None)
        else:
            sys.modules["flash_attn"] = prev


def seer_block_mask_2d(layout: BlockSparseLayout, num_heads_q: int, num_heads_kv: int) -> np.ndarray:
    """bool ``[B, Hq, nb, nb]`` (``nb = ceil(max_seqlen / block)``, padded with False) for
    ``block_sparse_attn_varlen_2d``: True where the layout keeps the (query block, key block) of a query head.

    Seer's forward is causal with square blocks and ``seqlen_q == seqlen_k``: it visits key blocks up to the
    diagonal and masks the diagonal one. So the layout must be causal, with ``block_q == block_k`` and equal query
    and key lengths; then both compute the same pairs."""
    if not isinstance(layout, BlockSparseLayout):
        raise TypeError(f"layout: expected a BlockSparseLayout, got {type(layout).__name__}")
    if not layout.is_fixed or layout.block_q != layout.block_k:
        raise ValueError("layout: SeerAttention's 2D mask needs square fixed blocks (block_q == block_k)")
    if not layout.mask.causal:
        raise ValueError("layout: SeerAttention's 2D kernel is causal only; build the layout with causal=True")
    if not np.array_equal(layout.seqlens_q, layout.seqlens_k):
        raise ValueError("layout: SeerAttention's 2D kernel needs seqlen_q == seqlen_k for every sequence")
    head_map = layout.head_map(num_heads_q, num_heads_kv)
    bs = layout.block_q
    B = layout.batch_size
    nb = int(-(-int(layout.seqlens_q.max()) // bs)) if B else 0
    per_layout_head = np.zeros((B, layout.num_heads, nb, nb), dtype=np.bool_)
    for b in range(B):
        for hl in range(layout.num_heads):
            codes = layout.block_codes(b, hl)
            per_layout_head[b, hl, :codes.shape[0], :codes.shape[1]] = codes > 0
    return np.ascontiguousarray(per_layout_head[:, head_map])


def seer_decode_mask(layout: DecodeLayout) -> np.ndarray:
    """bool ``[B, Hkv, num_blocks]`` for ``block_sparse_flash_decode_gqa_mask`` (``num_blocks`` from the longest
    KV length): True where the decode layout reads the block. Seer's decode mask is per KV head, so the layout
    must be ``per_kv_head``."""
    if not isinstance(layout, DecodeLayout):
        raise TypeError(f"layout: expected a DecodeLayout, got {type(layout).__name__}")
    if layout.head_mode != "per_kv_head":
        raise ValueError(f"layout: SeerAttention's decode mask is per KV head; got head_mode {layout.head_mode!r}")
    B, H, bs = layout.batch_size, layout.num_heads, layout.block_size
    nblk = int(-(-int(layout.kv_lens.max()) // bs)) if B else 0
    out = np.zeros((B * H, nblk), dtype=np.bool_)
    rows = np.repeat(np.arange(B * H, dtype=np.int64), np.diff(layout.indptr))
    out[rows, layout.blocks.astype(np.int64)] = True
    return out.reshape(B, H, nblk)


# ------------------------------------------------------------------------------------------------------ Flex


def _ragged_arange(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(segment, position) of every element of segments with ``counts`` elements."""
    counts = counts.astype(np.int64)
    seg = np.repeat(np.arange(counts.shape[0], dtype=np.int64), counts)
    starts = np.cumsum(counts) - counts
    return seg, np.arange(seg.shape[0], dtype=np.int64) - starts[seg]


def packed_cell_codes(layout: BlockSparseLayout, block: int) -> np.ndarray:
    """int8 ``[layout heads, nb, nb]`` over the packed tokens at ``block`` x ``block`` cells (``nb = total / block``):
    0 = not kept, 1 = partial (the element mask applies), 2 = full. Each entry (fixed or variable span) becomes the
    cells it covers, so spans, sequence starts and the packed length must be multiples of ``block``."""
    if not isinstance(layout, BlockSparseLayout):
        raise TypeError(f"layout: expected a BlockSparseLayout, got {type(layout).__name__}")
    if isinstance(block, bool) or not isinstance(block, (int, np.integer)) or block < 1:
        raise ValueError(f"block: expected a positive int, got {block!r}")
    total = int(layout.cu_seqlens_q[-1])
    if total != int(layout.cu_seqlens_k[-1]) or total % block:
        raise ValueError(f"layout: packed cells need total_q == total_k, a multiple of block = {block}; got "
                         f"{total} / {int(layout.cu_seqlens_k[-1])}")
    rs = layout.rows()
    e_row = np.repeat(np.arange(rs.num_rows, dtype=np.int64), np.diff(rs.ent_ptr))
    b = rs.batch[e_row]
    q0 = layout.cu_seqlens_q[b].astype(np.int64) + rs.q_start[e_row]
    k0 = layout.cu_seqlens_k[b].astype(np.int64) + rs.k_start
    ql, kl = rs.q_len[e_row].astype(np.int64), rs.k_len.astype(np.int64)
    if any(((x % block) != 0).any() for x in (q0, k0, ql, kl)):
        raise ValueError(f"layout: every span and sequence start must be a multiple of block = {block}")
    nq, nk = ql // block, kl // block
    e, pos = _ragged_arange(nq * nk)
    nb = total // block
    code = np.zeros((layout.num_heads, nb, nb), dtype=np.int8)
    code[rs.head[e_row[e]], q0[e] // block + pos // nk[e], k0[e] // block + pos % nk[e]] = \
        np.where(layout.entry_is_full()[e], 2, 1)
    return code


def same_cells(a: BlockSparseLayout, b: BlockSparseLayout, num_heads_q: int, num_heads_kv: int, block: int) -> bool:
    """Whether two layouts keep the same packed cells, full or partial alike, for every query head (each through its
    own head map: e.g. a ``per_kv_head`` layout against its per-query-head export read back)."""
    ca, cb = packed_cell_codes(a, block), packed_cell_codes(b, block)
    return bool(np.array_equal(ca[a.head_map(num_heads_q, num_heads_kv)], cb[b.head_map(num_heads_q, num_heads_kv)]))


def flex_block_lists(layout: BlockSparseLayout, num_heads_q: int, num_heads_kv: int, block: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """FlexAttention ``BlockMask.from_kv_blocks`` lists over the packed tokens, at ``block`` x ``block`` cells
    (:func:`packed_cell_codes`): ``(partial_cnt [Hq, nb], partial_idx [Hq, nb, nb], full_cnt, full_idx)`` int32.
    Partial cells (e.g. a causal diagonal block) are those the ``mask_mod`` applies to. Indices follow Flex's own
    convention: kept cells ascending, then the other cells ascending."""
    head_map = layout.head_map(num_heads_q, num_heads_kv)
    code = packed_cell_codes(layout, block)
    out = []
    for want in (1, 2):
        kept = code == want
        cnt = kept.sum(axis=-1, dtype=np.int32)
        idx = np.argsort(~kept, axis=-1, kind="stable").astype(np.int32)
        out += [np.ascontiguousarray(cnt[head_map]), np.ascontiguousarray(idx[head_map])]
    return out[0], out[1], out[2], out[3]


def _causal_mask_mod(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
    """Flex ``mask_mod``: causal over packed positions (one function object, so compiled kernels are reused)."""
    return q_idx >= kv_idx


def flex_block_mask(layout: BlockSparseLayout, num_heads_q: int, num_heads_kv: int, block: int, device: Any,
                    causal: bool) -> Any:
    """FlexAttention ``BlockMask`` on ``device`` with the layout's kept cells (:func:`flex_block_lists`); partial
    cells get ``mask_mod`` = causal over the packed positions when ``causal`` (sequences start on block
    boundaries, so it equals per-sequence bottom-right causal on a diagonal cell of equal-length sequences)."""
    import torch
    from torch.nn.attention.flex_attention import BlockMask

    total = int(layout.cu_seqlens_q[-1])
    pc, pi, fc, fi = (torch.from_numpy(a)[None].to(device) for a in
                      flex_block_lists(layout, num_heads_q, num_heads_kv, block))
    kw: dict[str, Any] = {"BLOCK_SIZE": block, "seq_lengths": (total, total)}
    if causal:
        kw["mask_mod"] = _causal_mask_mod
    return BlockMask.from_kv_blocks(pc, pi, fc, fi, **kw)


# ------------------------------------------------------------------------------------------------------ rows

ROW_KEYS = ("bench", "workload", "system", "causal", "density", "block", "head_dim", "ms", "tflops", "tbps",
            "note")
"""Keys of one result row: ``tflops`` (compute-bound kinds) or ``tbps`` (bandwidth-bound, e.g. decode) is set,
the other is None; ``ms``/``tflops``/``tbps`` are None for an n/a cell, whose ``note`` says why."""


def _num_or_none(x: Any, name: str) -> float | None:
    if x is None:
        return None
    if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a number or None, got {type(x).__name__}")
    x = float(x)
    return None if math.isnan(x) else x


def make_row(bench: str, workload: str, system: str, *, causal: bool, density: float | None, block: Any,
             head_dim: int, ms: float | None, tflops: float | None = None, tbps: float | None = None,
             note: str = "") -> dict[str, Any]:
    """One result row (NaN becomes None); TypeError / ValueError naming a bad field."""
    for nm, v in (("bench", bench), ("workload", workload), ("system", system), ("note", note)):
        if not isinstance(v, str):
            raise TypeError(f"{nm}: expected a str, got {type(v).__name__}")
    if not bench or not system:
        raise ValueError("bench / system: must not be empty")
    if isinstance(block, (tuple, list)):
        block = "x".join(str(int(b)) for b in block)
    if not isinstance(block, (int, str)) or isinstance(block, bool):
        raise TypeError(f"block: expected an int, a 'RxC' str or a pair, got {block!r}")
    if isinstance(head_dim, bool) or not isinstance(head_dim, (int, np.integer)) or head_dim < 1:
        raise ValueError(f"head_dim: expected a positive int, got {head_dim!r}")
    row = {"bench": bench, "workload": workload, "system": system, "causal": bool(causal),
           "density": _num_or_none(density, "density"), "block": block, "head_dim": int(head_dim),
           "ms": _num_or_none(ms, "ms"), "tflops": _num_or_none(tflops, "tflops"),
           "tbps": _num_or_none(tbps, "tbps"), "note": note}
    if row["tflops"] is not None and row["tbps"] is not None:
        raise ValueError("tflops / tbps: give one of them, not both")
    return row


def check_row(row: Any) -> dict[str, Any]:
    """Validate a row read back from JSON (same keys as :func:`make_row` writes)."""
    if not isinstance(row, dict):
        raise TypeError(f"row: expected a dict, got {type(row).__name__}")
    missing = [k for k in ROW_KEYS if k not in row]
    if missing:
        raise ValueError(f"row: missing keys {missing} (schema: {list(ROW_KEYS)})")
    return make_row(row["bench"], row["workload"], row["system"], causal=row["causal"], density=row["density"],
                    block=row["block"], head_dim=row["head_dim"], ms=row["ms"], tflops=row["tflops"],
                    tbps=row["tbps"], note=row["note"])


def write_json(path: str | Path, rows: Iterable[dict[str, Any]], meta: dict[str, Any] | None = None) -> Path:
    """Write ``{"meta": ..., "rows": [...]}`` (rows validated) to ``path``; return the path."""
    checked = [check_row(r) for r in rows]
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps({"meta": meta or {}, "rows": checked}, indent=1) + "\n")
    return p


def read_json(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a results file written by :func:`write_json` (or a bare list of rows), validated."""
    data = json.loads(Path(path).read_text())
    rows: Sequence[Any] = data["rows"] if isinstance(data, dict) else data
    if not isinstance(rows, list):
        raise ValueError(f"path: {path} holds no list of rows")
    return [check_row(r) for r in rows]


__all__ = ["bench", "load_fa4", "fa4_fields", "fa4_to_torch", "fa4_block_sparse", "load_seer", "seer_block_mask_2d",
           "seer_decode_mask", "packed_cell_codes", "same_cells", "flex_block_lists", "flex_block_mask",
           "ROW_KEYS", "make_row", "check_row", "write_json", "read_json"]
