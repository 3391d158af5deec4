"""``varblock.plan_device``: a block-sparse attention plan built ON THE GPU from a device block mask (or top-k block
indices) and device ``cu_seqlens``, with no host synchronisation; ``rebuild`` refreshes it in place (same buffers,
no allocation, capturable in a CUDA graph with the attention call that follows).

The plan is an ordinary :class:`varblock.plan.Plan` (``on_device=True``): the forward kernel reads its tile count
from the status word, which the layout kernels write (``num_tiles = 0`` on any error, so a failed build computes
nothing and the outputs keep O = 0 only where written; check :func:`status` when inputs are untrusted). Its buffers
also hold the layout rows / entries and the key-major columns / entries (``varblock.device_layout.codes``).
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

from varblock import families
from varblock.abi import (
    CHUNK_WIDTH,
    HEAD_MODE_BROADCAST,
    HEAD_MODE_PER_KV_HEAD,
    HEAD_MODE_PER_Q_HEAD,
    MASK_TOKEN,
    TILE_WIDTH,
)
from varblock.device_layout.builder import BuildInputs, DeviceLayoutBuilder, describe_status
from varblock.device_layout.model import DeviceLayoutArrays, Geometry
from varblock.device_layout.sources import resolve_source
from varblock.families.base import AttentionProblem
from varblock.layout._host import check_block_size
from varblock.plan.core import Plan
from varblock.plan.host import band
from varblock.plan.schedule import choose_schedule
from varblock.plan.seqlens import device_seqlens
from varblock.runtime.device import stream_for
from varblock.runtime.select import arch_for_device
from varblock.worklist import WorkList

OP = "attention_fwd"
_builders: weakref.WeakKeyDictionary[Plan, DeviceLayoutBuilder] = weakref.WeakKeyDictionary()


def plan_device(*, cu_seqlens_q: Any, cu_seqlens_k: Any = None, num_heads_q: int, num_heads_kv: int | None = None,
                head_dim: int, mask: Any = None, topk_indices: Any = None, topk_counts: Any = None,
                fa4: Any = None, flex: Any = None, seer_1d: Any = None, num_key_blocks: int | None = None,
                block_q: int | None = None,
                block_k: int | None = None,
                head_mode: str | None = None, causal: bool = False, window: tuple[int, int] | None = None,
                max_kept_blocks: int | None = None, pack_gqa: bool | None = None, dtype: str | None = None,
                backend: str = "auto", stream: Any = None) -> Plan:
    """Plan block-sparse attention from a sparsity pattern that lives on the GPU, built there.

    Args:
        cu_seqlens_q, cu_seqlens_k: device int32 ``[B+1]`` (``cu_seqlens_k`` defaults to ``cu_seqlens_q``).
        mask: device block mask ``[B or 1, H, MB, NB]`` padded per sequence (``MB >= ceil(len_q / block_q)``,
            ``NB >= ceil(len_k / block_k)`` for every sequence): bool = kept blocks, classified against the
            causal / window band (full where it allows every pair, dropped where none); int8 / uint8 / int32 =
            codes 0 skip, 1 partial, 2 full, taken as given. Cells beyond a sequence's blocks are ignored.
        topk_indices: instead of ``mask``, device int32 ``[B or 1, H, MB, K]`` key-block indices per query block
            (duplicates merge), with optional ``topk_counts`` int32 ``[B or 1, H, MB]`` (slots ``k >= count``
            are ignored); ``num_key_blocks`` (NB, default MB) bounds the indices. Kept blocks are classified
            like a bool mask.
        fa4: instead, FA4 ``BlockSparseTensorsTorch`` fields on the GPU (object or dict; batched form
            ``mask_block_cnt [B or 1, H, M]``, ``mask_block_idx [B or 1, H, M, W]``, optional ``full_block_*``):
            ``mask_*`` blocks partial, ``full_*`` full, as given; lists ascending, indices ``< N_b`` (``NB`` =
            ``num_key_blocks``, default ``W``). Block sizes from ``block_size`` unless given.
        flex: instead, a FlexAttention ``BlockMask`` (per batch: ``kv_num_blocks [B or 1, H, MQ]``,
            ``kv_indices [.., NK]``, optional ``full_kv_*``, ``BLOCK_SIZE``): like ``fa4``; blocks beyond a
            sequence are padding (dropped, as ``from_flex(padding='ignore')``).
        seer_1d: instead, a SeerAttention 1D token mask ``[B or 1, H, T, NB]`` bool (query token x key block of
            ``block_k`` tokens, ``T >= len_q``; default blocks 64, ``H`` KV heads): a block pair is kept when some
            query token of the block selects the key block, full when all do and the band allows every pair; the
            mask becomes the attention kernels' token mask (as ``from_seer_1d``).
        head_mode: how the mask's ``H`` heads map to query heads (default: ``broadcast`` for 1 head,
            ``per_q_head`` for ``num_heads_q``, ``per_kv_head`` for ``num_heads_kv``).
        max_kept_blocks: capacity in kept blocks (default: every cell). More kept blocks than this is reported in
            the status word (error ``capacity``, nothing written), never truncated.
        block_q, block_k: block sizes (default 128, or those the FA4 / FlexAttention object carries).
        causal, window, pack_gqa, dtype, backend: as :func:`varblock.plan`.
        stream: the stream the build runs on (default: the current stream of ``cu_seqlens_q``'s framework).
    """
    hkv = int(num_heads_q if num_heads_kv is None else num_heads_kv)
    hq = int(num_heads_q)
    if hq < 1 or hkv < 1 or hq % hkv:
        raise ValueError(f"num_heads_q: {hq} must be a positive multiple of num_heads_kv = {hkv}")
    source = resolve_source(mask, topk_indices, topk_counts, fa4, flex, num_key_blocks, seer_1d)
    carried = source.block_size or (128, 128)
    bq = check_block_size(carried[0] if block_q is None else block_q, "block_q")
    bk = check_block_size(carried[1] if block_k is None else block_k, "block_k")
    bm, h, mb, nb = source.shape
    q_tokens = 0
    if source.kind == "token":  # the grid's query blocks come from the mask's T query tokens
        q_tokens, mb = mb, -(-mb // bq)
    src = source.inputs
    # a head count matching several meanings takes the simplest: broadcast, then per query head
    mode = head_mode or {hkv: HEAD_MODE_PER_KV_HEAD, hq: HEAD_MODE_PER_Q_HEAD, 1: HEAD_MODE_BROADCAST}.get(h, "")
    if not mode:
        raise ValueError(f"mask: {h} heads match neither num_heads_q = {hq}, num_heads_kv = {hkv} nor 1")
    cq, ck = device_seqlens(cu_seqlens_q, cu_seqlens_k if cu_seqlens_k is not None else cu_seqlens_q)
    ordinal = cq.device_id
    batch = cq.shape[0] - 1
    arch = arch_for_device(ordinal)
    wl, wr = band(causal, window)
    group = hq // hkv
    kinds = frozenset(k for k, on in (("causal", wr == 0), ("window", wl >= 0 or wr > 0), ("token", src.token))
                      if on)
    packs = pack_gqa or (pack_gqa is None and src.token and group > 1)
    feats = {"block_sparse", "device_plan", "persistent"} | ({"pack_gqa"} if packs else set())
    problem = AttentionProblem(arch, int(head_dim), hq, hkv, dtype, kinds, frozenset(feats), pack_gqa, "persistent")
    binding, declined = families.choose(OP, problem, backend)
    tile_m, tile_n = binding.tile_config(arch, int(head_dim))
    shareable = group > 1 and mode != HEAD_MODE_PER_Q_HEAD and group <= tile_m
    if pack_gqa and not shareable:
        raise ValueError("pack_gqa: needs GQA and a mask shared by each group (per_kv_head or broadcast)")
    # pack-GQA when asked, and by default for token masks (as the host plan: the group's union stays small)
    g = group if shareable and (pack_gqa or (pack_gqa is None and src.token)) else 1
    cells = batch * h * mb * nb  # every cell of every sequence: the most kept blocks there can be
    cap = cells if max_kept_blocks is None else int(max_kept_blocks)
    if max_kept_blocks is not None and (isinstance(max_kept_blocks, bool) or cap < 0):
        raise ValueError(f"max_kept_blocks: expected an int >= 0, got {max_kept_blocks!r}")
    cap = min(cap, cells)
    geo = Geometry(batch=batch, mask_batch=bm, num_layout_heads=h, mb=mb, nb=nb, block_q=bq, block_k=bk,
                   tile_m=tile_m, tile_n=tile_n, num_heads_q=hq, num_heads_kv=hkv, head_mode=mode, pack_gqa=g,
                   window_left=wl, window_right=wr, max_entries=cap, q_tokens=q_tokens)
    st = stream_for(stream, ordinal, like=cu_seqlens_q)
    builder = DeviceLayoutBuilder(geo, ordinal, st, topk_k=src.k, full_k=src.k2, token=src.token)
    bufs = {**builder.buffers, "tile_counters": Plan.new_tile_counters(ordinal, st)}  # incl. cu_seqlens copies
    empty = WorkList(tiles=_zeros(TILE_WIDTH), chunks=_zeros(CHUNK_WIDTH), tile_m=tile_m, tile_n=tile_n, pack_gqa=g)
    p = Plan(cu_seqlens_q=None, cu_seqlens_k=None, num_heads_q=hq, num_heads_kv=hkv, head_dim=int(head_dim),
             layout=None, device_id=ordinal, arch=arch, family=binding.name, declined=dict(declined), tile_m=tile_m,
             tile_n=tile_n, worklist=empty, window_left=wl, window_right=wr, mask_flags=0, tok_block_k=1,
             tok_head_div=1, buffers=bufs, on_device=True, max_tiles=max(geo.max_tiles, 1), prepare_stream=st)
    if src.token:  # the packed token mask [H, B * T, NB] is the element mask of partial entries
        p.mask_flags, p.tok_block_k = MASK_TOKEN, bk
        p.tok_strides = (batch * q_tokens * nb, nb, 1)
        p.tok_head_div = hq if h == 1 else {HEAD_MODE_PER_Q_HEAD: 1, HEAD_MODE_PER_KV_HEAD: group,
                                            HEAD_MODE_BROADCAST: hq}[mode]
    _builders[p] = builder
    _launch(p, builder, src, cq.ptr, ck.ptr, st)
    choose_schedule(p, binding, "persistent")
    return p


def _zeros(width: int) -> np.ndarray:
    return np.zeros((0, width), np.int32)


def _launch(p: Plan, builder: DeviceLayoutBuilder, src: BuildInputs, cu_q: int, cu_k: int, st: Any) -> None:
    """Run the layout kernels on ``st`` (stream-ordered; no sync) from the caller's ``cu_seqlens``; the scan kernel
    copies them into the plan's buffers (no memcpy nodes in a captured graph)."""
    src.cu_q, src.cu_k = cu_q, cu_k
    builder.build(src, st)
    p.prepare_stream = st
    p.prepare_event = st.record()


def _builder(plan: Any) -> DeviceLayoutBuilder:
    b = _builders.get(plan) if isinstance(plan, Plan) else None
    if b is None:
        raise TypeError("plan: expected a plan made by varblock.plan_device")
    return b


def rebuild(plan: Plan, *, cu_seqlens_q: Any, cu_seqlens_k: Any = None, mask: Any = None, topk_indices: Any = None,
            topk_counts: Any = None, fa4: Any = None, flex: Any = None, seer_1d: Any = None,
            stream: Any = None) -> None:
    """Rebuild ``plan``'s layout in place from new device inputs of the same kind and shapes as the plan's (same
    batch size, cell grid, slots). No allocation and no host synchronisation: capturable in a CUDA graph."""
    b = _builder(plan)
    g = b.geo
    source = resolve_source(mask, topk_indices, topk_counts, fa4, flex, g.nb, seer_1d)
    if (source.kind == "token") != b.token:
        raise ValueError("rebuild: the plan was made " + ("from" if b.token else "without") + " a token mask "
                         "(seer_1d=); its source kind cannot change")
    if source.kind in ("topk", "lists") and not b.topk_k:
        raise ValueError("rebuild: this plan was made from a mask (it has no index-list buffers); make one with "
                         "plan_device(topk_indices= / fa4= / flex=)")
    want = (g.mask_batch, g.num_layout_heads, g.q_tokens if b.token else g.mb, g.nb)
    if source.shape != want:
        raise ValueError(f"{source.kind}: expected a cell grid {want} like the plan's, got {source.shape}")
    src = source.inputs
    if src.indices and (src.k, src.k2) != (b.topk_k, b.full_k):
        raise ValueError(f"{source.kind}: the plan was made for ({b.topk_k}, {b.full_k}) index slots per row, got "
                         f"({src.k}, {src.k2})")
    cq, ck = device_seqlens(cu_seqlens_q, cu_seqlens_k if cu_seqlens_k is not None else cu_seqlens_q)
    if cq.shape[0] - 1 != g.batch:
        raise ValueError(f"cu_seqlens_q: expected {g.batch + 1} entries like the plan's, got {cq.shape[0]}")
    st = stream_for(stream, cq.device_id, like=cu_seqlens_q)
    _launch(plan, b, src, cq.ptr, ck.ptr, st)
    plan.revision += 1


def status(plan: Plan) -> dict[str, Any]:
    """The plan's status word, decoded (a synchronous read: for checks, not for the hot path)."""
    from varblock.device_layout.codes import ERROR_NAMES, STATUS_DETAIL, STATUS_ERROR

    s = _builder(plan).read_status()
    code = int(s[STATUS_ERROR])
    return {"ok": code == 0, "error": ERROR_NAMES.get(code, str(code)), "detail": int(s[STATUS_DETAIL]),
            "message": describe_status(s), "words": s}


def check(plan: Plan) -> None:
    """ValueError describing the error when the plan's last build failed (a synchronous read)."""
    st = status(plan)
    if not st["ok"]:
        raise ValueError(f"plan_device: the device layout build failed: {st['message']}")


def tables(plan: Plan) -> DeviceLayoutArrays:
    """Host copies of every table the layout kernels wrote (synchronous; tests and debugging)."""
    return _builder(plan).to_host()


def geometry(plan: Plan) -> Geometry:
    """The static description the plan's layout kernels were launched with (what the NumPy model takes)."""
    return _builder(plan).geo
