"""Portable varlen block-sparse attention backward: warp-level MMA (mma.sync m16n8k16), CuTe DSL, three launches.

One source for every arch in ``registry.ARCHES``. FA2-style: one CTA per key/value work tile, walking only the
query chunks that keep that key span (the key-block-major index, ``varblock.bwd_worklist``), so the cost follows the
kept blocks. The three kernels (one family; the variant key ``kind`` tells them apart):

* ``preprocess`` (per dtype): for every (query token, query head) row ``dpsum = sum_d dO * O`` (fp32),
  ``lse_log2 = LSE * log2(e)`` (``+inf`` where the forward's LSE is ``-inf``: such rows then give P = 0 and zero
  gradients), and the row of the fp32 dQ accumulator set to 0. One warp per row.
* ``main`` (per dtype and head dim): tile ``t`` of ``tiles[t] = (batch, head, k_start, k_len, chunk_begin,
  n_full, n_partial, n_left)`` loads K, V of keys ``[k_start, k_start + k_len)`` (``k_len <= tile_n``) of KV head
  ``(head * heads_per_tile) // qhead_per_kvhead`` once, then for each of its chunks ``chunks[chunk_begin + i] =
  (q_start, q_len)`` (``q_len <= tile_m``; chunk ``i`` partial iff ``i < n_left or i >= n_left + n_full``, as in
  the forward) and each query head ``hq = head * heads_per_tile + g`` (``g < heads_per_tile``, inner loop):
  ``S = Q K^T``, ``P = exp2(S * scale_log2 - lse_log2)`` (element mask on partial chunks, ``k_len`` tail always),
  ``dP = dO V^T``, ``dS = P * (dP - dpsum)``, ``dV += P^T dO``, ``dK += dS^T Q`` in registers, and
  ``dQ += dS K`` added to the fp32 accumulator ``dq_accum [Hq, total_q, D]``: on sm90/sm100 the step's dQ tile
  goes through shared memory into one bulk reduce-add (``cp.reduce.async.bulk .add.f32``, the chunk's rows are
  contiguous), elsewhere with per-element fp32 atomics. Deterministic mode (``dq_sem != 0``): the contributions to
  each (query head, chunk) are added one tile at a time in the order of the tile table, each contributor waiting
  for its turn on a per-(query head, chunk) semaphore (``dq_order[c] = (semaphore, turn, contributors)``; the last
  contributor resets the semaphore to 0, so it is ready for the next launch). The semaphore is polled before the
  dQ GEMM, taken after the dQ barrier and released after the next (P / dS) barrier once the add has completed
  (the last step's in the epilogue). Tiles wait only for tiles with a smaller index, which were scheduled before
  them, and hold a semaphore only while waiting on their own work: no deadlock. At the end the tile
  stores its fp32 dK (unscaled) and dV to ``dk_accum`` / ``dv_accum [total_k, num_tile_heads, D]`` at head
  ``head`` (a tile with no chunk stores zeros).
* ``postprocess`` (per dtype; like the preprocess, 16-byte vectors: 16-byte aligned arrays, strides and head dim
  multiples of 8 elements): ``dq = dq_accum * softmax_scale``, ``dk = softmax_scale * sum_g dk_accum[:, h * G' +
  g]``, ``dv = sum_g dv_accum[:, h * G' + g]`` with ``G' = num_tile_heads / Hkv`` (GQA groups processed one query
  head per tile are summed here), converted to the output dtype. One warp per row.

Element mask of partial chunks (query ``i``, key ``j`` relative to their sequences, ``off = len_k - len_q``), as the
forward: ``(window_left < 0 or j >= i + off - window_left or j < num_sink_tokens) and (window_right < 0 or j <= i +
off + window_right)``, with ``mask_flags & MASK_DOC`` ``doc_q[tq] == doc_k[tk]``, with ``mask_flags & MASK_TOKEN``
``tok_mask[hq // tok_head_div, tq, j // tok_block_k] != 0``.

Kernel ABI: raw global pointers and scalars in the order of the ``*_PARAMS`` tuples; entry ``vb_<variant>_0``.
This module imports ``cutlass`` only inside functions, so the registry can list variants without the DSL.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

from varblock import abi
from varblock.abi import MASK_DOC, MASK_TOKEN

from . import common
from .registry import ARCHES, Family, Param, Variant, pointer_requires

FAMILY_NAME = "attention_bwd_mma"
#: (short name used in variant names, dtype name used in keys)
DTYPES = (("fp16", "float16"), ("bf16", "bfloat16"))
#: warps of the one-warp-per-row pre/post-processing kernels
AUX_WARPS = 4

#: dynamic shared memory per CTA, bytes. sm80 cubins also run on sm86/sm89 (99 KB), sm120 has 99 KB.
SMEM_LIMIT = {"sm80": 99 * 1024, "sm90": 227 * 1024, "sm100": 227 * 1024, "sm120": 99 * 1024}


class TileConfig:
    """Static shape of a main-kernel variant: ``tile_m`` query rows per step, ``tile_n`` key rows per CTA,
    ``num_warps``, the warp grids (rows, cols) of the two MMA tilings: ``sdp`` for ``S``/``dP`` (tile_m x tile_n)
    and ``dQ`` (tile_m x D), ``dkv`` for ``dV``/``dK`` (tile_n x D), and how dQ reaches its accumulator."""

    def __init__(self, tile_m: int, tile_n: int, num_warps: int, sdp: tuple[int, int], dkv: tuple[int, int],
                 dq_bufs: int, stages: int = 1):
        self.tile_m, self.tile_n, self.num_warps, self.sdp, self.dkv = tile_m, tile_n, num_warps, sdp, dkv
        #: fp32 dQ tiles in shared memory for the bulk reduce-add (sm90+), 0 = per-element fp32 atomics
        self.dq_bufs = dq_bufs
        #: Q / dO shared-memory stages (2: the next step's loads overlap the whole step; needs dq_bufs > 0)
        self.stages = stages


#: per head dim, for the 227 KB parts (sm90, sm100)
_TILES_BIG = {
    64: TileConfig(64, 128, 8, (2, 4), (4, 2), 2, 2),
    96: TileConfig(64, 128, 8, (4, 2), (4, 2), 2, 2),
    128: TileConfig(64, 128, 8, (2, 4), (4, 2), 2, 2),
    192: TileConfig(64, 64, 8, (4, 2), (4, 2), 2),
    256: TileConfig(64, 64, 8, (4, 2), (4, 2), 1),
}
#: for the 99 KB parts (sm80 and its sm86/sm89 users, sm120): d192/d256 do not fit one K/V tile + Q/dO/P/dS
_TILES_SMALL = {
    64: TileConfig(64, 128, 8, (2, 4), (4, 2), 0),
    96: TileConfig(64, 64, 8, (4, 2), (4, 2), 0),
    128: TileConfig(64, 64, 8, (4, 2), (4, 2), 0),
}
HEAD_DIMS_BY_ARCH = {"sm80": (64, 96, 128), "sm90": (64, 96, 128, 192, 256), "sm100": (64, 96, 128, 192, 256),
                     "sm120": (64, 96, 128)}
#: the narrow (64-key) main variants, built beside the 128-key default where that default is 128 keys wide: for
#: layouts of 64-key blocks that do not pair into 128-key tiles (the plan's tile choice, ``bwd_tile_choice``).
#: Warp grids 2 x 4 for both tilings: per 64 x 64 step the five GEMMs read ~384 KB of shared memory through
#: ldmatrix (d128), two thirds of a 64 x 128 step's 576 KB, for half its MMAs.
NARROW_TILE_N = 64
_TILES_NARROW = {
    64: TileConfig(64, NARROW_TILE_N, 8, (2, 4), (2, 4), 2, 2),
    128: TileConfig(64, NARROW_TILE_N, 8, (2, 4), (2, 4), 2, 2),
}
NARROW_ARCHES = ("sm90", "sm100")

_DT_BYTES = 2
_VEC = 8  #: Q, K, V, dO element strides must be multiples of 8 (16-byte vectors)

#: main kernel parameters, in ABI order
MAIN_PARAMS: tuple[Param, ...] = (
    Param("q", "ptr", 16),  # [total_q, Hq, D]
    Param("k", "ptr", 16),  # [total_k, Hkv, D]
    Param("v", "ptr", 16),  # [total_k, Hkv, D]
    Param("dout", "ptr", 16),  # [total_q, Hq, D]
    Param("lse_log2", "ptr", 4),  # fp32 [Hq, total_q] (preprocess output; +inf = empty row)
    Param("dpsum", "ptr", 4),  # fp32 [Hq, total_q]
    Param("dq_accum", "ptr", 16),  # fp32 [Hq, total_q, D] compact, zeroed by preprocess
    Param("dk_accum", "ptr", 16),  # fp32 [total_k, num_tile_heads, D] compact
    Param("dv_accum", "ptr", 16),  # fp32 [total_k, num_tile_heads, D] compact
    Param("cu_seqlens_q", "ptr", 4),
    Param("cu_seqlens_k", "ptr", 4),
    Param("tiles", "ptr", 4),  # int32 [num_tiles, 8]
    Param("chunks", "ptr", 4),  # int32 [C, 2] (q_start, q_len)
    Param("doc_q", "ptr", 4),
    Param("doc_k", "ptr", 4),
    Param("tok_mask", "ptr", 1),
    Param("q_stride_tok", "i64"),
    Param("q_stride_head", "i64"),
    Param("k_stride_tok", "i64"),
    Param("k_stride_head", "i64"),
    Param("v_stride_tok", "i64"),
    Param("v_stride_head", "i64"),
    Param("do_stride_tok", "i64"),
    Param("do_stride_head", "i64"),
    Param("stat_stride_head", "i64"),  # head stride of lse_log2 / dpsum
    Param("tm_stride_head", "i64"),
    Param("tm_stride_tok", "i64"),
    Param("tm_stride_blk", "i64"),
    Param("num_tiles", "i32"),
    Param("num_heads_q", "i32"),
    Param("num_tile_heads", "i32"),  # heads of dk_accum / dv_accum (= Hq / heads_per_tile)
    Param("softmax_scale_log2", "f32"),
    Param("window_left", "i32"),
    Param("window_right", "i32"),
    Param("num_sink_tokens", "i32"),
    Param("qhead_per_kvhead", "i32"),
    Param("heads_per_tile", "i32"),
    Param("tok_block_k", "i32"),
    Param("tok_head_div", "i32"),
    Param("mask_flags", "i32"),
    Param("dq_order", "ptr", 4),  # int32 [C, 3] (semaphore, turn, contributors) per chunk; read if dq_sem != 0
    Param("dq_sem", "ptr", 4),  # int32 [Hq, num_sems], zero between launches; 0 = not deterministic
    Param("total_q", "i32"),  # token extent of dq_accum [Hq, total_q, D]
    Param("num_sems", "i32"),
)

PRE_PARAMS: tuple[Param, ...] = (
    Param("out", "ptr", 16),  # [total_q, Hq, D]
    Param("dout", "ptr", 16),  # [total_q, Hq, D]
    Param("lse", "ptr", 4),  # fp32 [Hq, total_q] natural log (forward output)
    Param("lse_log2", "ptr", 4),  # fp32 [Hq, total_q] out
    Param("dpsum", "ptr", 4),  # fp32 [Hq, total_q] out
    Param("dq_accum", "ptr", 16),  # fp32 [Hq, total_q, D] compact, zeroed
    Param("o_stride_tok", "i64"),
    Param("o_stride_head", "i64"),
    Param("do_stride_tok", "i64"),
    Param("do_stride_head", "i64"),
    Param("lse_stride_head", "i64"),
    Param("stat_stride_head", "i64"),
    Param("total_q", "i32"),
    Param("num_heads_q", "i32"),
    Param("head_dim", "i32"),
)

POST_PARAMS: tuple[Param, ...] = (
    Param("dq_accum", "ptr", 16),
    Param("dk_accum", "ptr", 16),
    Param("dv_accum", "ptr", 16),
    Param("dq", "ptr", 16),  # [total_q, Hq, D]
    Param("dk", "ptr", 16),  # [total_k, Hkv, D]
    Param("dv", "ptr", 16),
    Param("dq_stride_tok", "i64"),
    Param("dq_stride_head", "i64"),
    Param("dk_stride_tok", "i64"),
    Param("dk_stride_head", "i64"),
    Param("dv_stride_tok", "i64"),
    Param("dv_stride_head", "i64"),
    Param("total_q", "i32"),
    Param("total_k", "i32"),
    Param("num_heads_q", "i32"),
    Param("num_heads_kv", "i32"),
    Param("num_tile_heads", "i32"),
    Param("head_dim", "i32"),
    Param("softmax_scale", "f32"),
)

_ROWS_PRE = ["mul", "total_q", "num_heads_q"]
_ROWS_POST = ["add", ["mul", "total_q", "num_heads_q"], ["mul", "total_k", "num_heads_kv"]]


def tile_config(arch: str, head_dim: int, narrow: bool = False) -> TileConfig:
    """The main kernel's static shape for ``arch`` and ``head_dim`` (``narrow``: the 64-key variant's)."""
    if narrow:
        return _TILES_NARROW[head_dim]
    big = SMEM_LIMIT[arch] > 128 * 1024
    return (_TILES_BIG if big else _TILES_SMALL)[head_dim]


def main_configs(arch: str, head_dim: int) -> list[tuple[str, TileConfig]]:
    """(variant-name suffix, tile shape) of every main variant built for ``arch`` and ``head_dim``: the default,
    then the narrow 64-key one where it is built."""
    out = [("", tile_config(arch, head_dim))]
    if arch in NARROW_ARCHES and head_dim in _TILES_NARROW and out[0][1].tile_n > NARROW_TILE_N:
        out.append((f"_n{NARROW_TILE_N}", tile_config(arch, head_dim, narrow=True)))
    return out


def smem_bytes(cfg: TileConfig, head_dim: int) -> int:
    """Dynamic shared memory of a main variant: sQ, sdO [stages, tile_m, D], sK, sV [tile_n, D], sP, sdS [tile_m,
    tile_n] (each 1024-byte aligned), then fp32 LSE / dPsum and int32 doc ids per query row and stage, int32 doc
    ids per key column,
    then ``dq_bufs`` fp32 dQ tiles [tile_m, D] (1024-byte aligned; 16 bytes when there are none); rounded up to
    1024 bytes."""

    def up(x: int, a: int) -> int:
        return (x + a - 1) // a * a

    m, n, d, st = cfg.tile_m, cfg.tile_n, head_dim, cfg.stages
    off = 0
    for size, align in ((st * m * d * _DT_BYTES, 1024), (st * m * d * _DT_BYTES, 1024), (n * d * _DT_BYTES, 1024),
                        (n * d * _DT_BYTES, 1024), (m * n * _DT_BYTES, 1024), (m * n * _DT_BYTES, 1024),
                        (4 * st * m, 16), (4 * st * m, 16), (4 * st * m, 16), (4 * n, 16),
                        (max(4 * cfg.dq_bufs * m * d, 16), 1024)):
        off = up(off, align) + size
    return up(off, 1024)


def _main_requires() -> tuple[dict[str, Any], ...]:
    req = list(pointer_requires(MAIN_PARAMS))
    for s in ("q_stride_tok", "q_stride_head", "k_stride_tok", "k_stride_head", "v_stride_tok", "v_stride_head",
              "do_stride_tok", "do_stride_head"):
        req.append({"what": f"{s} multiple of {_VEC} elements (16 bytes)", "value": s, "divisible_by": _VEC})
    req.append({"what": "num_tiles >= 0", "value": "num_tiles", "range": [0, 2**31 - 1]})
    for s in ("num_heads_q", "num_tile_heads", "qhead_per_kvhead", "heads_per_tile", "tok_block_k", "tok_head_div"):
        req.append({"what": f"{s} >= 1", "value": s, "range": [1, 2**31 - 1]})
    for w in ("window_left", "window_right"):
        req.append({"what": f"{w} in [-1, 2**30]", "value": w, "range": [-1, 2**30]})
    req.append({"what": "num_sink_tokens in [0, 2**30]", "value": "num_sink_tokens", "range": [0, 2**30]})
    req.append({"what": "mask_flags in 0..3", "value": "mask_flags", "range": [0, 3]})
    req.append({"what": "total_q >= 0", "value": "total_q", "range": [0, 2**31 - 1]})
    req.append({"what": "num_sems >= 0", "value": "num_sems", "range": [0, 2**31 - 1]})
    return tuple(req)


def _aux_requires(params: tuple[Param, ...], rows: Any) -> tuple[dict[str, Any], ...]:
    req = list(pointer_requires(params))
    req.append({"what": "rows fit in int32", "value": rows, "range": [0, 2**31 - 1]})
    req.append({"what": f"head_dim multiple of {_VEC}", "value": "head_dim", "divisible_by": _VEC})
    for p in params:
        if p.kind == "i64" and p.name.split("_")[0] in ("o", "do", "dq", "dk", "dv"):
            req.append({"what": f"{p.name} multiple of {_VEC} elements (16 bytes)", "value": p.name,
                        "divisible_by": _VEC})
    return tuple(req)


def variant_name(kind: str, dtype: str, head_dim: int | None = None) -> str:
    tail = f"_d{head_dim}" if head_dim is not None else ""
    return f"{FAMILY_NAME}_{kind}_{dtype}{tail}"


def variants(arch: str) -> list[Variant]:
    if arch not in ARCHES:
        raise ValueError(f"unknown arch {arch!r}")
    out = []
    for dtype, dtype_name in DTYPES:
        for kind, params, rows in (("preprocess", PRE_PARAMS, _ROWS_PRE), ("postprocess", POST_PARAMS, _ROWS_POST)):
            out.append(Variant(
                family=FAMILY_NAME, name=variant_name(kind, dtype), arch=arch,
                key={"kind": kind, "dtype": dtype_name}, params=params, block=(32 * AUX_WARPS, 1, 1),
                grid=(["cdiv", rows, AUX_WARPS], 1, 1), requires=_aux_requires(params, rows),
                extra={"entry": f"vb_{variant_name(kind, dtype)}_0"},
            ))
        for d, (suffix, cfg) in ((hd, c) for hd in HEAD_DIMS_BY_ARCH[arch] for c in main_configs(arch, hd)):
            smem = smem_bytes(cfg, d)
            assert smem <= SMEM_LIMIT[arch], (arch, d, smem)
            name = variant_name("main", dtype, d) + suffix
            out.append(Variant(
                family=FAMILY_NAME, name=name, arch=arch,
                key={"kind": "main", "dtype": dtype_name, "head_dim": d, "tile_n": cfg.tile_n},
                params=MAIN_PARAMS, block=(32 * cfg.num_warps, 1, 1), grid=("num_tiles", 1, 1),
                requires=_main_requires(),
                extra={"tile_m": cfg.tile_m, "tile_n": cfg.tile_n, "num_warps": cfg.num_warps,
                       "warps_sdp": list(cfg.sdp), "warps_dkv": list(cfg.dkv), "dq_bufs": cfg.dq_bufs,
                       "stages": cfg.stages, "smem_bytes": smem,
                       "entry": f"vb_{name}_0", "mask_flags": {"doc": MASK_DOC, "token": MASK_TOKEN}},
            ))
    return out


FAMILY = Family(
    name=FAMILY_NAME,
    module=__name__,
    variants=variants,
    sources=(__file__, str(Path(__file__).with_name("_attn_bwd_mma_impl.py")),
             str(Path(__file__).with_name("_attn_bwd_aux_impl.py")), abi.__file__, *common.SOURCES),
)


# ----------------------------------------------------------------------------------------------------------------
# Build time (imports cutlass)
# ----------------------------------------------------------------------------------------------------------------


def _fake_args(variant: Variant) -> list[Any]:
    import cutlass

    from ._dsl import dsl_dtype
    from .common.signature import fake_args

    dtype = dsl_dtype(variant.key["dtype"])
    pointee = {p.name: cutlass.Float32 for p in variant.params if p.kind == "ptr"}
    pointee.update(dict.fromkeys(("q", "k", "v", "dout", "out", "dq", "dk", "dv"), dtype), tok_mask=cutlass.Uint8)
    pointee.update(dict.fromkeys(("cu_seqlens_q", "cu_seqlens_k", "tiles", "chunks", "doc_q", "doc_k", "dq_order",
                                  "dq_sem"), cutlass.Int32))
    return fake_args(variant.params, pointee)


def compile_args(variant: Variant):
    """``(host_jit_function, args)`` for ``cute.compile``; fake (null) pointers and placeholder scalars."""
    kind = variant.key["kind"]
    if kind == "main":
        e = variant.extra
        host = _make_main(variant.name, variant.key["dtype"], variant.key["head_dim"], e["tile_m"], e["tile_n"],
                          e["num_warps"], tuple(e["warps_sdp"]), tuple(e["warps_dkv"]), e["dq_bufs"], e["stages"])
    else:
        host = _make_aux(kind, variant.name, variant.key["dtype"])
    return host, _fake_args(variant)


def capture_cases(variant: Variant) -> list[dict[str, Any]]:
    """A few realistic parameter sets (fake pointers) for the launch-capture check."""
    base = 0x7F0000000000
    cases = []
    shapes = [(1, 1, 1, 1, 1, 1), (37, 8, 2, 1000, 3000, 4), (513, 32, 8, 65536, 65536, 1), (0, 16, 16, 5, 7, 1)]
    d = variant.key.get("head_dim", 128)
    for i, (nt, hq, hkv, tq, tk, hpt) in enumerate(shapes):
        c: dict[str, Any] = {}
        for j, p in enumerate(variant.params):
            if p.kind == "ptr":
                c[p.name] = base + (i << 36) + (j << 30)
        g = hq // hkv
        nth = hq // hpt
        kind = variant.key["kind"]
        if kind == "main":
            c.update(q_stride_tok=hq * d, q_stride_head=d, k_stride_tok=hkv * d, k_stride_head=d,
                     v_stride_tok=2 * hkv * d + 8 * i, v_stride_head=d, do_stride_tok=hq * d, do_stride_head=d,
                     stat_stride_head=tq, tm_stride_head=tq * 64, tm_stride_tok=64, tm_stride_blk=1, num_tiles=nt,
                     num_heads_q=hq, num_tile_heads=nth, softmax_scale_log2=(1.0 / math.sqrt(d)) * math.log2(math.e),
                     window_left=[-1, 127, 0, 5][i], window_right=[-1, 0, -1, 3][i], num_sink_tokens=[0, 4, 0, 1][i],
                     qhead_per_kvhead=g, heads_per_tile=hpt, tok_block_k=64, tok_head_div=1 if i % 2 else g,
                     mask_flags=i % 4, total_q=tq, num_sems=[1, 40, 2000, 0][i])
            if i % 2:
                c["dq_sem"] = 0  # not deterministic
        elif kind == "preprocess":
            c.update(o_stride_tok=hq * d, o_stride_head=d, do_stride_tok=hq * d + 8, do_stride_head=d,
                     lse_stride_head=tq + i, stat_stride_head=tq, total_q=tq, num_heads_q=hq, head_dim=d)
        else:
            c.update(dq_stride_tok=hq * d, dq_stride_head=d, dk_stride_tok=hkv * d, dk_stride_head=d,
                     dv_stride_tok=hkv * d + 8, dv_stride_head=d, total_q=tq, total_k=tk, num_heads_q=hq,
                     num_heads_kv=hkv, num_tile_heads=nth, head_dim=d, softmax_scale=1.0 / math.sqrt(d))
        cases.append(c)
    return cases


@functools.cache
def _make_main(name: str, dtype_name: str, D: int, tile_m: int, tile_n: int, num_warps: int,
               sdp: tuple[int, int], dkv: tuple[int, int], dq_bufs: int, stages: int):
    from ._attn_bwd_mma_impl import make_host

    return make_host(name, MAIN_PARAMS, dtype_name, D, tile_m, tile_n, num_warps, sdp, dkv, dq_bufs, stages)


@functools.cache
def _make_aux(kind: str, name: str, dtype_name: str):
    from ._attn_bwd_aux_impl import make_postprocess, make_preprocess

    if kind == "preprocess":
        return make_preprocess(name, PRE_PARAMS, dtype_name, AUX_WARPS)
    return make_postprocess(name, POST_PARAMS, dtype_name, AUX_WARPS)
