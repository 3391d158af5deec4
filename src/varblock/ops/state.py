"""What the ops layer remembers about a plan between calls: prepared launches, validated fast-path signatures,
per-stream tile-counter slots and the streams already ordered after a device plan's prepare kernel.

Kept outside the :class:`~varblock.plan.Plan` (which describes work, not launches) in a weak mapping, so it goes
away with its plan. A plan's ``revision`` changes when something a prepared launch captured changes (e.g.
``enable_tile_counts``); the state is then started afresh.
"""

from __future__ import annotations

import weakref
from typing import Any

from varblock.plan import Plan


class PlanState:
    """Per-plan launch caches of the ops layer."""

    __slots__ = ("revision", "launches", "fast_paths", "counter_slots", "ready_streams")

    def __init__(self, revision: int) -> None:
        self.revision = revision
        #: prepared launches keyed by (variant, strides, scalars)
        self.launches: dict[tuple, Any] = {}
        #: argument signatures already validated by an op -> what its fast path needs
        self.fast_paths: dict[tuple, Any] = {}
        #: stream handle -> tile counter slot of the plan
        self.counter_slots: dict[int, int] = {}
        #: streams already ordered after a device plan's prepare kernel
        self.ready_streams: set[int] = set()

    def counter_ptr(self, plan: Plan, stream_handle: int) -> int:
        """Address of ``stream_handle``'s tile counter in ``plan`` (a slot per stream, assigned on first use; the
        kernel resets its counter after every launch, so nothing is cleared per call, also inside CUDA graphs)."""
        slot = self.counter_slots.get(stream_handle)
        if slot is None:
            if len(self.counter_slots) >= plan.MAX_STREAMS:
                raise RuntimeError(f"plan: used from more than {plan.MAX_STREAMS} streams; make one plan per group "
                                   "of streams")
            slot = self.counter_slots[stream_handle] = len(self.counter_slots)
        return plan.counter_ptr(slot)

    def wait_ready(self, plan: Plan, stream: Any) -> None:
        """Order ``stream`` after the prepare kernel of a device plan (once per stream)."""
        if plan.on_device:
            handle = int(stream.handle)
            if handle not in self.ready_streams:
                if handle != int(plan.prepare_stream.handle):
                    stream.wait(plan.prepare_event)
                self.ready_streams.add(handle)


_states: weakref.WeakKeyDictionary[Plan, PlanState] = weakref.WeakKeyDictionary()


def state_of(plan: Plan) -> PlanState:
    """The ops state of ``plan`` (new when the plan's revision changed; counter slots and ready streams are kept:
    they describe the plan's buffers, not a prepared launch)."""
    s = _states.get(plan)
    if s is None or s.revision != plan.revision:
        fresh = PlanState(plan.revision)
        if s is not None:
            fresh.counter_slots, fresh.ready_streams = s.counter_slots, s.ready_streams
        _states[plan] = s = fresh
    return s
