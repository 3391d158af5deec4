"""Runtime binding of the portable attention forward (``varblock/kernels/attention_fwd_mma.py``).

mma.sync, one source for every arch: it supports every mask kind and layout feature, so it is the last entry of the
``attention_fwd`` list (the fallback everywhere). It declines only head dims or dtypes that are not built.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from varblock import abi
from varblock.families.base import FEATURES, MASK_KINDS, AttentionFamily, AttentionProblem


class AttentionFwdMma(AttentionFamily):
    """Portable FA2-style forward: every arch, every mask kind, pack-GQA, both schedulers, device plans."""

    name = "attention_fwd_mma"
    op = "attention_fwd"
    pointers = ("q", "k", "v", "o", "lse", "tile_counter")
    mask_kinds = MASK_KINDS
    features = FEATURES

    def head_dims(self) -> tuple[int, ...]:
        return tuple(abi.HEAD_DIMS[self.name])

    def supports(self, problem: AttentionProblem) -> str | None:
        d = problem.head_dim
        if d not in self.head_dims():
            return f"head_dim: {d} is not supported; supported: {self.head_dims()}"
        if problem.dtype is not None and problem.dtype not in self.dtypes:
            return f"dtype: {problem.dtype} is not supported; supported: {self.dtypes}"
        lacking = (problem.mask_kinds - self.mask_kinds) | (problem.features - self.features)
        if lacking:
            return f"does not support {sorted(lacking)}"
        key: dict[str, Any] = {"head_dim": d} if problem.dtype is None else {"head_dim": d, "dtype": problem.dtype}
        e = self.variant(problem.arch, key)
        if e is None:
            return (f"head_dim: no kernel is built for {key} on {problem.arch}; built head dims: "
                    f"{sorted({k['head_dim'] for k in self.built_keys(problem.arch)})}")
        names = {p["name"] for p in e["params"]}
        if "sinks" in problem.mask_kinds and "num_sink_tokens" not in names:
            return "the built kernels take no num_sink_tokens (token-level sinks); rebuild the cubins"
        if problem.scheduler == "persistent" and "persistent" not in names:
            return "scheduler: the built kernels have no persistent schedule; rebuild the cubins"
        return None

    def bind(self, plan: Any, arrays: Mapping[str, Any], scalars: Mapping[str, Any]) -> dict[str, Any]:
        qa, ka, va, oa, la = (arrays[n] for n in ("q", "k", "v", "o", "lse"))
        total_q, hq, _ = qa.shape
        ts = plan.tok_strides
        values: dict[str, Any] = {
            "q": qa.ptr, "k": ka.ptr, "v": va.ptr, "o": oa.ptr, "lse": la.ptr,
            "cu_seqlens_q": plan.ptr("cu_seqlens_q"), "cu_seqlens_k": plan.ptr("cu_seqlens_k"),
            "tiles": plan.ptr("tiles"), "chunks": plan.ptr("chunks"), "doc_q": plan.ptr("doc_q"),
            "doc_k": plan.ptr("doc_k"), "tok_mask": plan.ptr("tok_mask"),
            "lse_stride_head": la.strides[0] if hq > 1 else total_q,
            "tm_stride_head": ts[0], "tm_stride_tok": ts[1], "tm_stride_blk": ts[2],
            "num_tiles": plan.num_tiles, "softmax_scale_log2": float(scalars["softmax_scale"]) * abi.LOG2E,
            "window_left": plan.window_left, "window_right": plan.window_right,
            "num_sink_tokens": plan.num_sink_tokens,
            "qhead_per_kvhead": plan.num_heads_q // plan.num_heads_kv, "pack_gqa": plan.pack_gqa,
            "tok_block_k": plan.tok_block_k, "tok_head_div": plan.tok_head_div, "mask_flags": plan.mask_flags,
            "num_tiles_ptr": plan.ptr("status") if plan.on_device else 0, "tile_counter": 0,
            "persistent": int(plan.scheduler == "persistent"), "num_ctas": plan.num_ctas,
            "debug_counts": plan.debug_counts.ptr if plan.debug_counts is not None else 0,
        }
        for arr, prefix in ((qa, "q"), (ka, "k"), (va, "v"), (oa, "o")):
            values[f"{prefix}_stride_tok"], values[f"{prefix}_stride_head"] = _token_head_strides(arr)
        return values


def _token_head_strides(arr: Any) -> tuple[int, int]:
    """(token, head) element strides of a ``[tokens, heads, D]`` array; an extent-1 mode may carry any stride
    (DLPack canonicalises it), so it gets the compact one."""
    tok, head = arr.strides[0], arr.strides[1]
    if arr.shape[0] <= 1:
        tok = arr.shape[1] * arr.shape[2]
    if arr.shape[1] <= 1:
        head = arr.shape[2]
    return tok, head


BINDING = AttentionFwdMma()
