"""Runtime binding of the Hopper warp-specialized forward (``varblock/kernels/attention_fwd_sm90.py``).

TMA + wgmma, sm90 only, head dims 64, 96 and 128 (whatever the manifest has built). Same work list, masks, schedules
and pack-GQA as the portable family, whose binding it extends: its kernel additionally takes the extents its TMA
descriptors describe (``total_q``, ``num_heads_q``, ``total_k``, ``num_heads_kv``); the runtime encodes the
descriptors from the manifest's recipes (``runtime/tensormap.py``) and launches from parameter bytes
(``runtime/struct_launch.py``).

It declines, with the reason, what it does not run: other arches, head dims not built, cubins without it. Listed
after the portable family in ``varblock.families.FAMILIES`` until it has passed the GPU suite (docs/hopper.md);
``backend="attention_fwd_sm90"`` selects it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from varblock.families.attention_fwd_mma import AttentionFwdMma
from varblock.families.base import AttentionProblem

#: build arch this family exists for
ARCH = "sm90"
#: head dims its kernel source supports (the manifest says which are built)
HEAD_DIMS = (64, 96, 128)


class AttentionFwdSm90(AttentionFwdMma):
    """Warp-specialized Hopper forward: producer warpgroup (TMA K/V, cp.async Q), two wgmma consumer warpgroups."""

    name = "attention_fwd_sm90"
    op = "attention_fwd"
    #: ``scheduler="auto"`` on host plans (plan/schedule.py): one CTA fits per SM (200 KB of shared memory at d128),
    #: so only the persistent loop overlaps one tile's epilogue with the next tile's loads
    auto_scheduler = "persistent"

    def head_dims(self) -> tuple[int, ...]:
        return HEAD_DIMS

    def supports(self, problem: AttentionProblem) -> str | None:
        if problem.arch != ARCH:
            return f"arch: needs sm90 (Hopper), got {problem.arch}"
        return super().supports(problem)

    def bind(self, plan: Any, arrays: Mapping[str, Any], scalars: Mapping[str, Any]) -> dict[str, Any]:
        values = super().bind(plan, arrays, scalars)
        ka = arrays["k"]
        # a descriptor needs extents >= 1; with no keys no tile has a chunk, so K / V are never read
        values["total_k"], values["num_heads_kv"] = max(1, int(ka.shape[0])), int(ka.shape[1])
        qa = arrays["q"]
        values["total_q"], values["num_heads_q"] = max(1, int(qa.shape[0])), int(qa.shape[1])
        return values


BINDING = AttentionFwdSm90()
