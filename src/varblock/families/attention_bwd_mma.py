"""Runtime binding of the portable attention backward (``varblock/kernels/attention_bwd_mma.py``).

mma.sync, one source for every arch: every mask kind and layout feature of a host plan. It declines device plans
(no host layout to build the key-major work list from) and head dims or dtypes that are not built for the arch.
The family has three kernels; ``bind`` gives the main kernel's parameters, ``bind_preprocess`` /
``bind_postprocess`` the other two. Array arguments are ``DeviceArray`` descriptions (or anything with ``ptr``,
``shape``, ``strides``); the fp32 scratch buffers and the work list's device copy are passed in ``arrays`` too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from varblock import abi
from varblock.families.base import ATTENTION_DTYPES, FEATURES, MASK_KINDS, AttentionProblem, FamilyBinding

_SCRATCH = ("lse_log2", "dpsum", "dq_accum", "dk_accum", "dv_accum")


def _st(a: Any, dim: int) -> int:
    """Element stride of a ``[tokens, heads, D]`` array along ``dim``, compact for extent-1 modes (DLPack may report
    any stride there)."""
    if a.shape[dim] <= 1:
        return a.shape[1] * a.shape[2] if dim == 0 else a.shape[2]
    return a.strides[dim]


class AttentionBwdMma(FamilyBinding):
    """Portable FA2-style backward: every arch, every mask kind, GQA groups per tile or per query head."""

    name = "attention_bwd_mma"
    op = "attention_bwd"
    #: the main kernel's per-call pointers, in the order ``attention_backward`` passes them
    pointers = ("q", "k", "v", "dout", *_SCRATCH, "dq_sem")
    mask_kinds = MASK_KINDS
    features = FEATURES - {"device_plan"}
    dtypes = ATTENTION_DTYPES

    def supports(self, problem: AttentionProblem) -> str | None:
        if "device_plan" in problem.features:
            return "a device plan has no host layout to build the key-major work list from; make the plan from " \
                   "host cu_seqlens or a layout"
        if problem.dtype is not None and problem.dtype not in self.dtypes:
            return f"dtype: {problem.dtype} is not supported; supported: {self.dtypes}"
        lacking = (problem.mask_kinds - self.mask_kinds) | (problem.features - self.features)
        if lacking:
            return f"does not support {sorted(lacking)}"
        if self.main_entry(problem.arch, problem.head_dim, problem.dtype) is None:
            built = sorted({k["head_dim"] for k in self.built_keys(problem.arch) if k.get("kind") == "main"})
            return f"head_dim: no backward kernel is built for head_dim={problem.head_dim} on {problem.arch}; " \
                   f"built head dims: {built}"
        return None

    def main_entry(self, arch: str, head_dim: int, dtype: str | None = None) -> dict[str, Any] | None:
        """The default (widest) built main variant (any dtype when ``dtype`` is None: the tile sizes do not depend
        on it)."""
        entries = self.main_entries(arch, head_dim, dtype)
        return entries[max(entries)] if entries else None

    def main_entries(self, arch: str, head_dim: int, dtype: str | None = None) -> dict[int, dict[str, Any]]:
        """The built main variants of one dtype (the first of ``dtypes`` that has any when ``dtype`` is None) by
        their ``tile_n``: the default and, where built, the narrow 64-key one."""
        for dt in (dtype,) if dtype is not None else self.dtypes:
            keys = [k for k in self.built_keys(arch)
                    if k.get("kind") == "main" and k.get("dtype") == dt and k.get("head_dim") == head_dim]
            found = [e for e in (self.variant(arch, k) for k in keys) if e is not None]
            if found:
                return {int(e["extra"]["tile_n"]): e for e in found}
        return {}

    def bind(self, plan: Any, arrays: Mapping[str, Any], scalars: Mapping[str, Any]) -> dict[str, Any]:
        """Main kernel. ``arrays``: q, k, v, dout, the scratch buffers (``lse_log2``, ``dpsum``, ``dq_accum``,
        ``dk_accum``, ``dv_accum``) and the work list's ``tiles``, ``chunks``, ``dq_order``; ``scalars``:
        ``softmax_scale`` and the work list's ``num_tiles``, ``num_tile_heads``, ``heads_per_tile``, ``num_sems``."""
        qa, ka, va, doa = (arrays[n] for n in ("q", "k", "v", "dout"))
        total_q, hq, _ = qa.shape
        ts = plan.tok_strides
        values: dict[str, Any] = {n: arrays[n].ptr for n in (*_SCRATCH, "tiles", "chunks", "dq_order")}
        values.update({
            "q": qa.ptr, "k": ka.ptr, "v": va.ptr, "dout": doa.ptr, "dq_sem": 0,
            "cu_seqlens_q": plan.ptr("cu_seqlens_q"), "cu_seqlens_k": plan.ptr("cu_seqlens_k"),
            "doc_q": plan.ptr("doc_q"), "doc_k": plan.ptr("doc_k"), "tok_mask": plan.ptr("tok_mask"),
            "q_stride_tok": _st(qa, 0), "q_stride_head": _st(qa, 1), "k_stride_tok": _st(ka, 0),
            "k_stride_head": _st(ka, 1), "v_stride_tok": _st(va, 0), "v_stride_head": _st(va, 1),
            "do_stride_tok": _st(doa, 0), "do_stride_head": _st(doa, 1), "stat_stride_head": total_q,
            "tm_stride_head": ts[0], "tm_stride_tok": ts[1], "tm_stride_blk": ts[2],
            "num_heads_q": hq, "softmax_scale_log2": float(scalars["softmax_scale"]) * abi.LOG2E,
            "window_left": plan.window_left, "window_right": plan.window_right,
            "num_sink_tokens": int(plan.num_sink_tokens), "qhead_per_kvhead": hq // ka.shape[1],
            "tok_block_k": max(int(plan.tok_block_k), 1), "tok_head_div": max(int(plan.tok_head_div), 1),
            "mask_flags": plan.mask_flags, "total_q": total_q,
        })
        for n in ("num_tiles", "num_tile_heads", "heads_per_tile", "num_sems"):
            values[n] = int(scalars[n])
        return values

    def bind_preprocess(self, arrays: Mapping[str, Any]) -> dict[str, Any]:
        """Preprocess kernel: ``out``, ``dout``, ``lse`` and the scratch buffers."""
        oa, doa, la = arrays["out"], arrays["dout"], arrays["lse"]
        total_q, hq, d = oa.shape
        return {"out": oa.ptr, "dout": doa.ptr, "lse": la.ptr, "lse_log2": arrays["lse_log2"].ptr,
                "dpsum": arrays["dpsum"].ptr, "dq_accum": arrays["dq_accum"].ptr, "o_stride_tok": _st(oa, 0),
                "o_stride_head": _st(oa, 1), "do_stride_tok": _st(doa, 0), "do_stride_head": _st(doa, 1),
                "lse_stride_head": la.strides[0] if hq > 1 else total_q, "stat_stride_head": total_q,
                "total_q": total_q, "num_heads_q": hq, "head_dim": d}

    def bind_postprocess(self, arrays: Mapping[str, Any], scalars: Mapping[str, Any]) -> dict[str, Any]:
        """Postprocess kernel: the scratch accumulators and ``dq``, ``dk``, ``dv``; ``scalars``: ``softmax_scale``,
        ``num_tile_heads``."""
        dqa, dka, dva = arrays["dq"], arrays["dk"], arrays["dv"]
        total_q, hq, d = dqa.shape
        return {"dq_accum": arrays["dq_accum"].ptr, "dk_accum": arrays["dk_accum"].ptr,
                "dv_accum": arrays["dv_accum"].ptr, "dq": dqa.ptr, "dk": dka.ptr, "dv": dva.ptr,
                "dq_stride_tok": _st(dqa, 0), "dq_stride_head": _st(dqa, 1), "dk_stride_tok": _st(dka, 0),
                "dk_stride_head": _st(dka, 1), "dv_stride_tok": _st(dva, 0), "dv_stride_head": _st(dva, 1),
                "total_q": total_q, "total_k": dka.shape[0], "num_heads_q": hq, "num_heads_kv": dka.shape[1],
                "num_tile_heads": int(scalars["num_tile_heads"]), "head_dim": d,
                "softmax_scale": float(scalars["softmax_scale"])}


BINDING = AttentionBwdMma()
