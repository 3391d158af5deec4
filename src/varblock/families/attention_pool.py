"""Runtime bindings of the attention-pooling QK^T kernels (``varblock/kernels/attention_pool.py``, portable, and
``attention_pool_sm90.py``, Hopper). ``varblock.families.FAMILIES["attention_pool"]`` lists the Hopper family
first; ``varblock.attention_pooling`` asks them in turn (``families.choose``) with a :class:`PoolingProblem`.

Both kernels walk the attention forward's work list, so ``bind`` starts from the portable forward's binding (the
plan's tables, masks and strides; V / O are not parameters of these kernels) and adds the pooling map. The reduce
kernels (2D map, group pooling) belong to the portable family and serve both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from varblock.families.attention_fwd_mma import BINDING as FWD_MMA
from varblock.families.base import ATTENTION_DTYPES, FamilyBinding

#: build arch of the Hopper family
SM90_ARCH = "sm90"
#: the Hopper kernel pools per 64-key half of a chunk: chunk starts and pooling blocks must be multiples of it
SM90_HALF = 64


@dataclass(frozen=True)
class PoolingProblem:
    """The static facts a pooling family decides on: the plan's arch, head dim and dtype, the alignment of the work
    list's chunk starts (the layout's key block, or the plan's ``tile_n`` for dense plans), the pooling ``block_k``
    and whether the layout has variable (FlashInfer) spans. The portable kernel pools whole chunks (``block_k`` a
    multiple of ``key_align``); the sm90 kernel pools 64-key halves (both multiples of 64)."""

    arch: str
    head_dim: int
    dtype: str
    key_align: int
    block_k: int
    variable_spans: bool = False


class AttentionPoolMma(FamilyBinding):
    """Portable mma.sync pooling kernel (every arch): one CTA per tile (``persistent = 0``)."""

    name = "attention_pool"
    op = "attention_pool"
    pointers = ("q", "k", "lse", "pool")
    #: whether the qk kernel also writes the raw 2D map (then the 2D reduce only normalises it)
    writes_2d = False

    def supports(self, problem: PoolingProblem) -> str | None:
        if problem.block_k % problem.key_align:
            return (f"block_k: {problem.block_k} must be a multiple of the plan's key block / chunk alignment "
                    f"{problem.key_align} (the portable kernel pools whole chunks)")
        return self._supports_built(problem)

    def _supports_built(self, problem: PoolingProblem) -> str | None:
        """The checks every pooling family makes: fixed blocks, a known dtype, a built qk variant."""
        if problem.variable_spans:
            return "layout: needs fixed block sizes (not variable FlashInfer spans)"
        if problem.dtype not in ATTENTION_DTYPES:
            return f"dtype: {problem.dtype} is not supported; supported: {ATTENTION_DTYPES}"
        if self.entry(problem.arch, problem.dtype, problem.head_dim) is None:
            built = sorted({k.get("head_dim") for k in self.built_keys(problem.arch) if k.get("stage") == "qk"})
            return f"head_dim: no {self.name} kernel is built for d{problem.head_dim} on {problem.arch}; built: {built}"
        return None

    def entry(self, arch: str, dtype: str, head_dim: int) -> dict[str, Any] | None:
        """The built qk variant for ``arch``, ``dtype`` and ``head_dim`` (or None)."""
        return self.variant(arch, {"stage": "qk", "dtype": dtype, "head_dim": head_dim})

    def bind(self, plan: Any, arrays: Mapping[str, Any], scalars: Mapping[str, Any]) -> dict[str, Any]:
        """The qk kernel's parameters: the forward binding's values (V / O stand-ins are dropped by the packer) and
        the pooling map ``arrays["pool"]`` ([Hq, total_q, nb] float32); ``scalars``: ``softmax_scale``,
        ``block_k``."""
        qa, ka, la, pa = (arrays[n] for n in ("q", "k", "lse", "pool"))
        values = FWD_MMA.bind(plan, {"q": qa, "k": ka, "v": ka, "o": qa, "lse": la}, scalars)
        values.update(pool=pa.ptr, pool_stride_head=pa.strides[0], pool_stride_tok=pa.strides[1],
                      pool_block_k=int(scalars["block_k"]), persistent=0, num_ctas=plan.num_tiles, tile_counter=0,
                      debug_counts=0)
        return values


class AttentionPoolSm90(AttentionPoolMma):
    """Hopper pooling kernel (TMA + wgmma, sm_90a): persistent grid of one CTA per SM pulling tiles."""

    name = "attention_pool_sm90"
    pointers = ("q", "k", "lse", "pool", "pool2d")
    writes_2d = True

    def supports(self, problem: PoolingProblem) -> str | None:
        if problem.arch != SM90_ARCH:
            return f"arch: needs sm90 (Hopper), got {problem.arch}"
        if problem.key_align % SM90_HALF:
            return (f"layout: key blocks of {problem.key_align} tokens; the sm90 kernel needs chunk starts at "
                    f"multiples of {SM90_HALF}")
        if problem.block_k % SM90_HALF:
            return f"block_k: {problem.block_k} is not a multiple of {SM90_HALF}"
        return self._supports_built(problem)  # (64-key halves: block_k need not be a multiple of the key block)

    def bind(self, plan: Any, arrays: Mapping[str, Any], scalars: Mapping[str, Any]) -> dict[str, Any]:
        """As the portable binding, plus the TMA descriptors' extents, the persistent schedule
        (``scalars["num_sms"]`` CTAs at most; the op supplies ``tile_counter``) and the raw 2D map
        ``arrays["pool2d"]`` ([B, Ho, MB, NB] float32; ``scalars``: ``block_q``, ``group``)."""
        values = super().bind(plan, arrays, scalars)
        p2 = arrays["pool2d"]
        values.update(pool2d=p2.ptr, pool2d_stride_b=p2.strides[0], pool2d_stride_h=p2.strides[1],
                      pool2d_stride_m=p2.strides[2], pool_block_q=int(scalars["block_q"]),
                      pool_group=int(scalars["group"]))
        qa, ka = arrays["q"], arrays["k"]
        # a descriptor needs extents >= 1; with no keys no tile has a chunk, so K is never read
        values["total_k"], values["num_heads_kv"] = max(1, int(ka.shape[0])), int(ka.shape[1])
        values["total_q"], values["num_heads_q"] = max(1, int(qa.shape[0])), int(qa.shape[1])
        values["persistent"] = 1
        values["num_ctas"] = max(1, min(plan.num_tiles, int(scalars["num_sms"])))
        return values


BINDING_MMA = AttentionPoolMma()
BINDING_SM90 = AttentionPoolSm90()
