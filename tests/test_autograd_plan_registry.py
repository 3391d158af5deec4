"""The plan registry the framework adapters use (``Plan.uid`` / ``Plan.by_uid``, docs/autograd.md), on the CPU
without any framework: ids are unique, resolve to their live plan, and a collected plan is refused by name."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from varblock import layout as L
from varblock.plan import Plan


def _plan() -> Plan:
    cu = np.array([0, 40, 40, 97], np.int32)
    lay = L.causal(cu, cu, num_heads=1, block_q=16, block_k=16)
    return Plan(cu_seqlens_q=cu, cu_seqlens_k=cu, num_heads_q=2, num_heads_kv=1, head_dim=64, layout=lay,
                device_id=0, arch="sm90", family="attention_fwd_mma", tile_m=128, tile_n=128, worklist=None,
                window_left=-1, window_right=-1, mask_flags=0, tok_block_k=0, tok_head_div=1)


def test_uids_are_unique_and_resolve_to_their_plan():
    plans = [_plan() for _ in range(5)]
    assert len({p.uid for p in plans}) == 5 and all(isinstance(p.uid, int) for p in plans)
    assert all(Plan.by_uid(p.uid) is p for p in plans)


def test_a_collected_plan_is_refused():
    p = _plan()
    uid = p.uid
    del p
    gc.collect()
    with pytest.raises(ValueError, match=f"plan_id: no live varblock plan has uid {uid}"):
        Plan.by_uid(uid)


def test_the_registry_does_not_keep_plans_alive():
    import weakref

    p = _plan()
    ref = weakref.ref(p)
    del p
    gc.collect()
    assert ref() is None
