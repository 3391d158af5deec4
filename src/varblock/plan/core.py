"""The :class:`Plan`: the work description of one batch shape and the device buffers that hold it.

A plan depends on the batch (cu_seqlens), the layout and mask, the head counts, the head dimension (which, with the
chosen kernel family, fixes the tile sizes) and the device's arch; not on the dtype or the data. It holds nothing
about launches: prepared launches, fast paths, per-stream counter slots and stream readiness belong to the ops
layer (``varblock.ops.state``).
"""

from __future__ import annotations

import itertools
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from varblock.abi import TILE_COUNTER_WIDTH
from varblock.layout import BlockSparseLayout
from varblock.runtime.memory import DeviceBuffer
from varblock.worklist import WorkList

_uids = itertools.count(1)
#: uid -> live plan (weak: a plan goes away when its owner drops it), see :meth:`Plan.by_uid`
_live: weakref.WeakValueDictionary[int, Plan] = weakref.WeakValueDictionary()


@dataclass(eq=False)
class Plan:
    """Metadata and device buffers for one batch shape (see the module docstring and docs/attention.md).

    ``family`` is the kernel family chosen to run it and ``declined`` the reasons of the families preferred to it
    that could not (``{family: reason}``).
    """

    cu_seqlens_q: np.ndarray | None
    cu_seqlens_k: np.ndarray | None
    num_heads_q: int
    num_heads_kv: int
    head_dim: int
    layout: BlockSparseLayout | None
    device_id: int
    arch: str
    family: str
    tile_m: int
    tile_n: int
    worklist: WorkList
    window_left: int
    window_right: int
    mask_flags: int
    tok_block_k: int
    tok_head_div: int
    buffers: dict[str, DeviceBuffer] = field(default_factory=dict, repr=False)
    declined: dict[str, str] = field(default_factory=dict)
    num_sink_tokens: int = 0
    tok_strides: tuple[int, int, int] = (0, 0, 0)
    #: "persistent" (a grid of num_ctas CTAs pulls tiles with atomicAdd) or "single" (one CTA per tile)
    scheduler: str = "single"
    num_ctas: int = 0
    debug_counts: DeviceBuffer | None = field(default=None, repr=False)
    #: device plans: the work list was built on the GPU by the prepare kernel (no host copy of cu_seqlens)
    on_device: bool = False
    max_tiles: int = 0
    totals: tuple[int | None, int | None] = (None, None)
    #: device plans: the stream the prepare kernel ran on and an event recorded after it
    prepare_stream: Any = field(default=None, repr=False)
    prepare_event: Any = field(default=None, repr=False)
    #: bumped whenever something a prepared launch captured changes (the ops layer then prepares again)
    revision: int = 0
    #: process-unique integer naming this plan: framework adapters (varblock.torch, varblock.jax) pass it through
    #: traced graphs in place of the plan object and look the plan up with :meth:`Plan.by_uid`
    uid: int = field(default_factory=lambda: next(_uids), repr=False)

    def __post_init__(self) -> None:
        _live[self.uid] = self

    @staticmethod
    def by_uid(uid: int) -> Plan:
        """The live plan whose ``uid`` is ``uid``; ValueError when no such plan exists (any more)."""
        plan = _live.get(uid)
        if plan is None:
            raise ValueError(f"plan_id: no live varblock plan has uid {uid} (was the plan garbage-collected? keep a "
                             f"reference to it while graphs that use it can run)")
        return plan

    #: tile counter slots in ``buffers["tile_counters"]`` (one {next, done} pair of int32 per stream)
    MAX_STREAMS = 64
    COUNTER_BYTES = 4 * TILE_COUNTER_WIDTH

    @classmethod
    def new_tile_counters(cls, ordinal: int, stream: Any = None) -> DeviceBuffer:
        """Zeroed tile counters for every stream slot (stream-ordered on ``stream`` when given)."""
        return DeviceBuffer.zeros(ordinal, cls.COUNTER_BYTES * cls.MAX_STREAMS, stream)

    def enable_tile_counts(self) -> DeviceBuffer:
        """Debugging aid: from now on every launch adds 1 to ``counts[tile]`` for each tile it processes; returns
        the device buffer (int32 [num_tiles]; read it with ``.to_host(numpy.int32, plan.num_tiles)``)."""
        self.debug_counts = DeviceBuffer.zeros(self.device_id, 4 * max(self.num_tiles, 1))
        self.revision += 1
        return self.debug_counts

    @property
    def total_q(self) -> int | None:
        """Query tokens (None for a device plan made without ``total_q``)."""
        return self.totals[0] if self.on_device else int(self.cu_seqlens_q[-1])

    @property
    def total_k(self) -> int | None:
        return self.totals[1] if self.on_device else int(self.cu_seqlens_k[-1])

    @property
    def batch_size(self) -> int:
        if self.on_device:
            return self.buffers["cu_seqlens_q"].nbytes // 4 - 1
        return int(self.cu_seqlens_q.shape[0] - 1)

    @property
    def num_tiles(self) -> int:
        """Tiles of the work list (for a device plan: its capacity; the kernel reads the count on the GPU)."""
        return self.max_tiles if self.on_device else self.worklist.num_tiles

    @property
    def pack_gqa(self) -> int:
        return self.worklist.pack_gqa

    def ptr(self, name: str) -> int:
        """Device address of buffer ``name`` (0 when the plan has none: the kernel does not read it)."""
        b = self.buffers.get(name)
        return 0 if b is None else b.ptr

    def counter_ptr(self, slot: int) -> int:
        """Address of tile counter ``slot`` (zeroed at plan creation; the kernel resets it after every launch)."""
        if not 0 <= slot < self.MAX_STREAMS:
            raise ValueError(f"slot: expected 0 <= slot < {self.MAX_STREAMS}, got {slot}")
        return self.buffers["tile_counters"].ptr + self.COUNTER_BYTES * slot

    def flops(self) -> float:
        """Forward FLOPs on computed pairs (4 * D per pair)."""
        if self.layout is None:
            raise ValueError("plan: a device plan has no host layout to count pairs from")
        return 4.0 * self.head_dim * self.layout.num_pairs(self.num_heads_q, self.num_heads_kv)
