"""``attention_backward``: gradients of varlen block-sparse attention (the portable ``attention_bwd_mma`` family).

Three launches on the caller's stream: preprocess (dPsum, LSE in base 2, zeroed fp32 dQ accumulator), main (one CTA
per key/value tile walking only the query chunks that keep it), postprocess (dQ scale and convert, dK/dV group sums).
The backward work list is built from ``plan.layout`` the first time a plan is used here and cached with it (weakly:
it goes away with the plan).
"""

from __future__ import annotations

import weakref
from typing import Any

from varblock import abi, families
from varblock.bwd_tile_choice import KeyTileChoice, choose_key_tile
from varblock.bwd_worklist import BwdWorkList, build_bwd_worklist
from varblock.families.attention_bwd_mma import BINDING
from varblock.families.base import AttentionProblem
from varblock.ops.checks import check_no_alias, extent, softmax_scale_value
from varblock.plan import Plan
from varblock.plan.host import mask_kinds
from varblock.runtime import arrays
from varblock.runtime.device import stream_for
from varblock.runtime.launch import PreparedLaunch
from varblock.runtime.select import variant_for
from varblock.runtime.tensors import (
    DeviceArray,
    as_device_array,
    check_aligned,
    check_dtype,
    check_inner_contiguous,
    check_ndim,
    check_same_device,
    check_shape,
)

FAMILY = BINDING.name
OP = BINDING.op
_PRE_POINTERS = ("out", "dout", "lse", "lse_log2", "dpsum", "dq_accum")
_POST_POINTERS = ("dq_accum", "dk_accum", "dv_accum", "dq", "dk", "dv")
_DTYPES = ("bfloat16", "float16")
#: tiles per SM below which a GQA layout shared by the group is split per query head (more CTAs, fp32 dK/dV sums)
_MIN_TILES_PER_SM = 2
_MAX_STREAMS = 16
#: (tile order, chunk order) of the work list per mode (default, deterministic). Longest tiles first in both: on an
#: H200 (W1, d128, bf16) the deterministic mode took 8.6-9.7x the default's time on causal with shortest first. The
#: deterministic mode walks each tile's query chunks by decreasing position (full ones, then partial ones), so the
#: tiles adding dQ to one query span reach it at about the same step of their walks (exactly so for dense and
#: causal layouts), and spreads equal-length tiles of one (head, sequence) apart in the launch order: the schedule
#: model (tests/_bwd_schedule_model.py, docs/backward.md) puts it at 1.03-1.17x the default on W1-W3, against
#: 1.3-3.6x for the first version's walk (measured 1.33-3.5x)
TILE_ORDER = {False: ("longest_first", "ascending"), True: ("longest_first_interleaved", "descending")}
#: whether plans may choose the narrow 64-key main variant (``varblock.bwd_tile_choice``) where it is built
NARROW_TILES = True
NARROW_TILE_N = 64


class _BwdState:
    """What the backward remembers about a plan: its work lists (per tile order) with their device copies, prepared
    launches, per-stream scratch buffers and semaphores."""

    def __init__(self, revision: int, hpt: int) -> None:
        self.revision = revision
        self.heads_per_tile = hpt
        #: the main kernel's key tile width and why (``varblock.bwd_tile_choice``), set on first use
        self.choice: KeyTileChoice | None = None
        #: (tile order, chunk order) -> (work list, its device buffers)
        self.lists: dict[tuple[str, str], tuple[BwdWorkList, dict[str, Any]]] = {}
        self.launches: dict[tuple, tuple[PreparedLaunch, PreparedLaunch, PreparedLaunch]] = {}
        #: stream handle -> fp32 scratch buffers (see ``_workspace``)
        self.workspace: dict[int, dict[str, Any]] = {}
        #: stream handle -> the deterministic mode's semaphores (zero between launches: the kernel resets them)
        self.semaphores: dict[int, Any] = {}


_states: weakref.WeakKeyDictionary[Plan, _BwdState] = weakref.WeakKeyDictionary()


def attention_backward(dout: Any, q: Any, k: Any, v: Any, out: Any, lse: Any, plan: Plan, *,
                       softmax_scale: float | None = None, deterministic: bool = False, dq: Any = None,
                       dk: Any = None, dv: Any = None, stream: Any = None) -> tuple[Any, Any, Any]:
    """Gradients of :func:`varblock.attention` with respect to q, k, v.

    Args:
        dout: ``[total_q, Hq, D]`` gradient of the forward's output (dtype of q).
        q, k, v: the forward's inputs (``[total_q, Hq, D]``, ``[total_k, Hkv, D]``), bfloat16/float16, last dim
            contiguous, other strides multiples of 8 elements, 16-byte aligned.
        out, lse: the forward's output ``[total_q, Hq, D]`` and natural-log LSE ``[Hq, total_q]`` float32
            (token dimension contiguous; rows with LSE = -inf get zero gradients).
        plan: the host plan the forward ran with (its layout and element mask are used; a device plan has no host
            layout and is refused).
        softmax_scale: the forward's (default ``1/sqrt(D)``); must be positive.
        deterministic: add the dQ contributions of the key/value tiles in a fixed order (per-(query head, query
            span) semaphores, in the order tiles are scheduled), so results are bit-identical from run to run;
            otherwise they are added as the tiles finish (faster; fp32 rounding varies between runs).
        dq, dk, dv: optional preallocated outputs (dtype of q, shapes of q / k / v, last dim contiguous, 16-byte
            aligned, other strides multiples of 8 elements; must not overlap the inputs or each other).
        stream: stream to run on (default: the current stream of the inputs' framework).

    Returns:
        ``(dq, dk, dv)`` as the caller's array type. GQA: ``dk``/``dv`` sum over the query heads of each group.
    """
    if not isinstance(plan, Plan):
        raise TypeError(f"plan: expected a varblock Plan, got {type(plan).__name__}")
    if plan.layout is None or plan.on_device:
        raise ValueError("plan: a device plan (work list built on the GPU) has no host layout; the backward needs "
                         "a plan made from host cu_seqlens or a layout")
    if not isinstance(deterministic, bool):
        raise TypeError(f"deterministic: expected a bool, got {type(deterministic).__name__}")
    ins = _inputs(dout, q, k, v, out)
    doa, qa, ka, va, oa = ins
    ordinal = check_same_device(list(ins))
    _check_against_plan(plan, qa, ka, va, ordinal)
    total_q, hq, d = qa.shape
    check_shape(doa, (total_q, hq, d), "= [total_q, num_heads_q, head_dim] like q")
    check_shape(oa, (total_q, hq, d), "= [total_q, num_heads_q, head_dim] like q")
    la = as_device_array(lse, "lse")
    check_dtype(la, ("float32",))
    check_shape(la, (hq, total_q), "= [num_heads_q, total_q]")
    if total_q > 1 and la.strides[1] != 1:
        raise ValueError(f"lse: the token dimension must be contiguous, got strides {la.strides}")
    check_same_device([qa, la])
    scale = softmax_scale_value(softmax_scale, d, positive=True)
    problem = AttentionProblem(plan.arch, d, hq, ka.shape[1], qa.dtype, mask_kinds(plan.layout.mask))
    families.choose(OP, problem)  # a ValueError naming what no backward family supports
    st = stream_for(stream, ordinal, like=q)
    grads = _outputs(q, ins, (dq, dk, dv), ordinal, st)
    state = _state(plan)
    order = TILE_ORDER[deterministic]
    wl, bufs = _worklist(state, plan, order)
    ws = _workspace(state, plan, st)
    sem = _semaphores(state, plan, st) if deterministic else None
    key = (order, qa.dtype, qa.strides, ka.strides, va.strides, doa.strides, oa.strides, la.strides,
           tuple(g[1].strides for g in grads), scale)
    launches = state.launches.get(key)
    if launches is None:
        launches = _prepare(plan, wl, bufs, ins, la, [g[1] for g in grads], ws, scale, ordinal)
        state.launches[key] = launches
    pre, main, post = launches
    ptrs = {n: a.ptr for n, a in ws.items()}
    pre(st, (oa.ptr, doa.ptr, la.ptr, ptrs["lse_log2"], ptrs["dpsum"], ptrs["dq_accum"]))
    main(st, (qa.ptr, ka.ptr, va.ptr, doa.ptr, ptrs["lse_log2"], ptrs["dpsum"], ptrs["dq_accum"],
              ptrs["dk_accum"], ptrs["dv_accum"], sem.ptr if sem is not None else 0))
    post(st, (ptrs["dq_accum"], ptrs["dk_accum"], ptrs["dv_accum"], *(g[1].ptr for g in grads)))
    return grads[0][0], grads[1][0], grads[2][0]


# ------------------------------------------------------------------------------------------------ arguments
def _inputs(dout: Any, q: Any, k: Any, v: Any, out: Any) -> tuple[DeviceArray, ...]:
    arrs = tuple(as_device_array(x, n) for x, n in ((dout, "dout"), (q, "q"), (k, "k"), (v, "v"), (out, "out")))
    for a in arrs:
        check_dtype(a, _DTYPES)
        check_ndim(a, 3, "[total_tokens, num_heads, head_dim]")
        check_inner_contiguous(a)
        check_aligned(a, 16)
    dts = {a.name: a.dtype for a in arrs}
    if len(set(dts.values())) != 1:
        raise TypeError(f"dout, q, k, v, out: dtypes must match, got {dts}")
    return arrs


def _check_against_plan(plan: Plan, qa: DeviceArray, ka: DeviceArray, va: DeviceArray, ordinal: int) -> None:
    if plan.device_id != ordinal:
        raise ValueError(f"plan: made for cuda:{plan.device_id}, but q is on cuda:{ordinal}")
    check_shape(qa, (plan.total_q, plan.num_heads_q, plan.head_dim), "= [total_q, num_heads_q, head_dim] of the plan")
    check_shape(ka, (plan.total_k, plan.num_heads_kv, plan.head_dim), "= [total_k, num_heads_kv, head_dim] of the plan")
    check_shape(va, (plan.total_k, plan.num_heads_kv, plan.head_dim), "= [total_k, num_heads_kv, head_dim] of the plan")


def _outputs(q: Any, ins: tuple[DeviceArray, ...], given: tuple[Any, Any, Any], ordinal: int, st: Any
             ) -> list[tuple[Any, DeviceArray]]:
    """(array, description) of dq, dk, dv: allocated in q's framework unless given; given ones checked."""
    _, qa, ka, _, _ = ins
    shapes = {"dq": qa.shape, "dk": ka.shape, "dv": ka.shape}
    res = []
    for name, g in zip(("dq", "dk", "dv"), given):
        if g is None:
            res.append(arrays.empty_array(q, name, shapes[name], qa.dtype, ordinal, st))
            continue
        a = as_device_array(g, name)
        check_dtype(a, (qa.dtype,))
        check_shape(a, shapes[name], f"= {'q' if name == 'dq' else 'k'}'s shape")
        check_inner_contiguous(a)
        check_aligned(a, 16)
        res.append((g, a))
    check_same_device([qa] + [a for _, a in res])
    mine = [(a.name, extent(a)) for (g, a), x in zip(res, given) if x is not None]
    if mine:
        check_no_alias(mine, [(a.name, extent(a)) for a in ins])
    return res


# ------------------------------------------------------------------------------------------------ work list
def _heads_per_tile(plan: Plan) -> int:
    """The GQA group per CTA (dK/dV summed in registers) for layouts shared by the group, unless that leaves too
    few CTAs to fill the GPU; else 1 (one query head per CTA, group sums in the postprocess)."""
    group = plan.num_heads_q // plan.num_heads_kv
    lay = plan.layout
    if group == 1 or lay.head_mode == abi.HEAD_MODE_PER_Q_HEAD:
        return 1
    from varblock.runtime.device import device

    kpart = lay.key_partition
    n_keys_tiles = int(((kpart.length.astype("int64") + _tile_n(plan) - 1) // _tile_n(plan)).sum())
    per_head = n_keys_tiles // max(lay.num_heads, 1)
    sms = int(device(plan.device_id).properties.multiprocessor_count)
    return group if per_head * plan.num_heads_kv >= _MIN_TILES_PER_SM * sms else 1


def _main_entry(plan: Plan) -> dict[str, Any]:
    """A built main variant for the plan's head dim (tile sizes do not depend on the dtype)."""
    e = BINDING.main_entry(plan.arch, plan.head_dim)
    if e is None:
        raise ValueError(f"head_dim: no {FAMILY} kernel is built for head_dim={plan.head_dim} on {plan.arch}")
    return e


def _tile_n(plan: Plan) -> int:
    return int(_main_entry(plan)["extra"]["tile_n"])


def _state(plan: Plan) -> _BwdState:
    s = _states.get(plan)
    if s is None or s.revision != plan.revision:
        s = _BwdState(plan.revision, _heads_per_tile(plan))
        _states[plan] = s
    return s


def _build(plan: Plan, cols: Any, hpt: int, order: tuple[str, str], entry: dict[str, Any]) -> BwdWorkList:
    """The work list of ``plan`` (key-major columns ``cols``) for the main variant ``entry`` in ``order``."""
    lay = plan.layout
    return build_bwd_worklist(cols, plan.cu_seqlens_q, plan.cu_seqlens_k, num_heads_q=plan.num_heads_q,
                              num_heads_kv=plan.num_heads_kv, head_mode=lay.head_mode, num_layout_heads=lay.num_heads,
                              tile_m=int(entry["extra"]["tile_m"]), tile_n=int(entry["extra"]["tile_n"]),
                              heads_per_tile=hpt, band=lay.mask.band, num_sink_tokens=int(plan.num_sink_tokens),
                              tile_order=order[0], chunk_order=order[1],
                              opaque_mask=lay.mask.doc_ids_q is not None or lay.mask.token_mask is not None)


def _choose(state: _BwdState, plan: Plan) -> tuple[KeyTileChoice, dict[int, BwdWorkList]]:
    """The key tile width of ``plan`` (cached on ``state``) and the default-order work lists built to choose it."""
    entries = BINDING.main_entries(plan.arch, plan.head_dim)
    if not entries:
        _main_entry(plan)  # raises the ValueError naming head_dim
    default = max(entries)
    narrow = NARROW_TILE_N if NARROW_TILES and NARROW_TILE_N in entries and default > NARROW_TILE_N else None
    cols = plan.layout.transposed()
    built: dict[int, BwdWorkList] = {}

    def build(tile_n: int) -> BwdWorkList:
        if tile_n not in built:
            built[tile_n] = _build(plan, cols, state.heads_per_tile, TILE_ORDER[False], entries[tile_n])
        return built[tile_n]

    choice = choose_key_tile(cols.k_len, default, narrow, build)
    state.choice = choice
    return choice, built


def _worklist(state: _BwdState, plan: Plan, order: tuple[str, str]) -> tuple[BwdWorkList, dict[str, Any]]:
    """The work list of ``plan`` in ``order`` = (tile order, chunk order) at the plan's key tile width, and its
    device copy (built on first use)."""
    hit = state.lists.get(order)
    if hit is None:
        from varblock.runtime.memory import DeviceBuffer

        built: dict[int, BwdWorkList] = {}
        choice = state.choice
        if choice is None:
            choice, built = _choose(state, plan)
        wl = built.get(choice.tile_n) if order == TILE_ORDER[False] else None
        if wl is None:
            wl = _build(plan, plan.layout.transposed(), state.heads_per_tile, order,
                        BINDING.main_entries(plan.arch, plan.head_dim)[choice.tile_n])
        bufs = {"tiles": DeviceBuffer.from_host(plan.device_id, wl.tiles),
                "chunks": DeviceBuffer.from_host(plan.device_id, wl.chunks),
                "dq_order": DeviceBuffer.from_host(plan.device_id, wl.dq_order)}
        hit = state.lists[order] = (wl, bufs)
    return hit


def bwd_worklist(plan: Plan, deterministic: bool = False) -> BwdWorkList:
    """The backward work list of ``plan`` (built and cached on first use)."""
    return _worklist(_state(plan), plan, TILE_ORDER[bool(deterministic)])[0]


def bwd_tile_choice(plan: Plan) -> KeyTileChoice:
    """The key tile width the backward uses for ``plan`` and the reason (``varblock.bwd_tile_choice``)."""
    state = _state(plan)
    if state.choice is None:
        _worklist(state, plan, TILE_ORDER[False])  # chooses the width and keeps the chosen default-order list
    return state.choice or _choose(state, plan)[0]


# ------------------------------------------------------------------------------------------------ launches
def _workspace(state: _BwdState, plan: Plan, st: Any) -> dict[str, Any]:
    """The fp32 scratch buffers of stream ``st`` (one set per stream, allocated stream-ordered on first use and
    kept with the plan: calls on one stream reuse them in stream order, and CUDA graphs see fixed addresses)."""
    handle = int(st.handle)
    ws = state.workspace.get(handle)
    if ws is None:
        from varblock.runtime.memory import DeviceBuffer

        if len(state.workspace) >= _MAX_STREAMS:
            raise RuntimeError(f"plan: attention_backward used from more than {_MAX_STREAMS} streams; make one plan "
                               "per group of streams")
        tq, tk, hq, d = plan.total_q, plan.total_k, plan.num_heads_q, plan.head_dim
        n_th = plan.num_heads_q // state.heads_per_tile
        sizes = {"lse_log2": hq * tq, "dpsum": hq * tq, "dq_accum": tq * hq * d, "dk_accum": tk * n_th * d,
                 "dv_accum": tk * n_th * d}
        ws = {n: DeviceBuffer(plan.device_id, 4 * max(c, 1), st) for n, c in sizes.items()}
        state.workspace[handle] = ws
    return ws


def _semaphores(state: _BwdState, plan: Plan, st: Any) -> Any:
    """int32 [Hq, num_sems] semaphores of stream ``st``, zeroed once (stream-ordered); each launch leaves them 0."""
    handle = int(st.handle)
    sem = state.semaphores.get(handle)
    if sem is None:
        from varblock.runtime.memory import DeviceBuffer

        n_sems = _worklist(state, plan, TILE_ORDER[True])[0].num_sems
        sem = DeviceBuffer.zeros(plan.device_id, 4 * max(plan.num_heads_q * n_sems, 1), st)
        state.semaphores[handle] = sem
    return sem


def _prepare(plan: Plan, wl: BwdWorkList, bufs: dict[str, Any], ins: tuple[DeviceArray, ...], la: DeviceArray,
             grads: list[DeviceArray], ws: dict[str, Any], scale: float, ordinal: int
             ) -> tuple[PreparedLaunch, PreparedLaunch, PreparedLaunch]:
    """The three launches of one argument signature; parameter values from the family binding."""
    doa, qa, ka, va, oa = ins
    arrays = {"q": qa, "k": ka, "v": va, "dout": doa, "out": oa, "lse": la, "dq": grads[0], "dk": grads[1],
              "dv": grads[2], **ws, **bufs}
    scalars = {"softmax_scale": scale, "num_tiles": wl.num_tiles, "num_tile_heads": wl.num_tile_heads,
               "heads_per_tile": wl.heads_per_tile, "num_sems": wl.num_sems}
    b = BINDING
    dt, d = qa.dtype, qa.shape[2]
    e_pre = variant_for(FAMILY, ordinal, {"kind": "preprocess", "dtype": dt})
    e_main = variant_for(FAMILY, ordinal, dict(BINDING.main_entries(plan.arch, d, dt)[wl.tile_n]["key"]))
    e_post = variant_for(FAMILY, ordinal, {"kind": "postprocess", "dtype": dt})
    what = "attention_backward"
    return (PreparedLaunch(e_pre, ordinal, b.bind_preprocess(arrays), what=what, pointers=_PRE_POINTERS),
            PreparedLaunch(e_main, ordinal, b.bind(plan, arrays, scalars), what=what, pointers=b.pointers),
            PreparedLaunch(e_post, ordinal, b.bind_postprocess(arrays, scalars), what=what,
                           pointers=_POST_POINTERS))
