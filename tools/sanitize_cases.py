"""Smoke cases of tools/sanitize.py: per kernel family, one function that launches the family's kernels on small
inputs covering its code paths (odd and empty lengths, GQA, each mask kind / source / split mode / head dim).

Shapes are tiny on purpose: compute-sanitizer slows kernels 10-100x. Every function takes the ``torch`` module
(inputs are torch tensors on the current GPU) and checks that its outputs hold no NaN; ``SMOKE`` maps each kernel
family of ``varblock.kernels.registry`` to its function. Families built for sm90 only print a line and return
elsewhere.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

LENS = [1, 3, 113, 0, 200]
_T0 = time.perf_counter()


def _cu(lens: Any) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(np.asarray(lens, dtype=np.int64))]).astype(np.int32)


def _qkv(torch: Any, tq: int, tk: int, hq: int, hkv: int, d: int, dtype: str = "bfloat16") -> tuple[Any, Any, Any]:
    dt = getattr(torch, dtype)
    return (torch.randn(tq, hq, d, device="cuda").to(dt), torch.randn(tk, hkv, d, device="cuda").to(dt),
            torch.randn(tk, hkv, d, device="cuda").to(dt))


def _dev(torch: Any, a: np.ndarray) -> Any:
    return torch.from_numpy(np.ascontiguousarray(a)).cuda()


def _check_finite(torch: Any, what: str, *xs: Any) -> None:
    """Raise when an output holds a NaN (LSEs may hold -inf: rows with no key); print a progress line."""
    torch.cuda.synchronize()
    for x in xs:
        if torch.isnan(x.float()).any():
            raise RuntimeError(f"{what}: NaN in the output")
    print(f"  [{time.perf_counter() - _T0:7.1f} s] {what}: ok", flush=True)


def _on_sm90(torch: Any, family: str) -> bool:
    """True on an sm90 GPU; elsewhere say that ``family`` (built for sm90 only) is skipped."""
    if tuple(torch.cuda.get_device_capability()) == (9, 0):
        return True
    print(f"  {family}: not an sm90 GPU, skipped", flush=True)
    return False


# ------------------------------------------------------------------------------------------------ forward
def _attention_layouts(L: Any) -> list[tuple[str, Any, int, int]]:
    """(name, layout, Hq, Hkv) covering every mask kind of the forward."""
    cu = _cu(LENS)
    cu_k = _cu([5, 1, 300, 0, 64])
    rng = np.random.default_rng(0)
    t = max(LENS)
    m1d = rng.random((len(LENS), 2, t, (t + 63) // 64)) < 0.4
    doc = np.concatenate([np.repeat(np.arange(3), [n // 3, n // 3, n - 2 * (n // 3)]) for n in LENS]).astype(np.int32)
    row = np.array([[100, 28, 300], [128, 128, 172]])
    col = np.array([[64, 200, 164], [1, 255, 172]])
    return [
        ("random per_kv_head causal", L.random_blocks(cu, cu, density=0.5, num_heads=2, head_mode="per_kv_head",
                                                      causal=True, seed=1), 8, 2),
        ("random per_q_head q!=k", L.random_blocks(cu, cu_k, density=0.5, num_heads=4, head_mode="per_q_head",
                                                   causal=True, seed=2, block_q=64, block_k=64), 4, 1),
        ("sliding window", L.sliding_window(cu, cu, window_left=32, window_right=0, num_heads=1), 4, 4),
        ("sinks + window", L.attention_sinks(cu, cu, sink_blocks=1, window_left=32, causal=True, num_heads=1,
                                             block_q=64, block_k=64), 4, 2),
        ("document", L.document(cu, cu, doc_ids_q=doc, causal=True, num_heads=1), 4, 2),
        ("seer 1d token mask", L.from_seer_1d(m1d, cu, cu, block_size=64, head_mode="per_kv_head"), 8, 2),
        ("flashinfer variable blocks", L.from_flashinfer(np.random.default_rng(2).random((2, 3, 3)) < 0.6, row,
                                                         col, _cu([428]), _cu([428])), 4, 2),
    ]


def smoke_attention(torch: Any, backend: str = "auto") -> None:
    """The forward: dense / causal x d64 / d128 x both schedulers, every mask kind, pack-GQA fp16."""
    import varblock
    from varblock import layout as L

    cu = _cu(LENS)
    tq = int(cu[-1])
    for sched in ("single", "persistent"):
        for causal in (False, True):
            for d in (64, 128):
                q, k, v = _qkv(torch, tq, tq, 8, 2, d)
                p = varblock.plan(cu, num_heads_q=8, num_heads_kv=2, head_dim=d, causal=causal, scheduler=sched,
                                  backend=backend)
                o = varblock.attention(q, k, v, p)
                _check_finite(torch, f"dense causal={causal} d={d} {sched}", o)
        for name, lay, hq, hkv in _attention_layouts(L):
            cq, ck = lay.cu_seqlens_q, lay.cu_seqlens_k
            q, k, v = _qkv(torch, int(cq[-1]), int(ck[-1]), hq, hkv, 128)
            p = varblock.plan(cq, ck, num_heads_q=hq, num_heads_kv=hkv, head_dim=128, layout=lay, scheduler=sched,
                              backend=backend)
            o, lse = varblock.attention(q, k, v, p, return_lse=True)
            _check_finite(torch, f"{name} {sched}", o)
    # pack-GQA, fp16, d96 (d64 for the Hopper family, which has no d96)
    d = 64 if backend == "attention_fwd_sm90" else 96
    q, k, v = _qkv(torch, tq, tq, 8, 2, d, "float16")
    o = varblock.attention(q, k, v, varblock.plan(cu, num_heads_q=8, num_heads_kv=2, head_dim=d, causal=True,
                                                   pack_gqa=True, backend=backend))
    _check_finite(torch, f"pack-gqa fp16 d{d}", o)


def smoke_attention_sm90(torch: Any) -> None:
    """The Hopper forward on the same cases (sm90 only: elsewhere it has no kernels)."""
    if _on_sm90(torch, "attention_fwd_sm90"):
        smoke_attention(torch, backend="attention_fwd_sm90")


def smoke_prepare(torch: Any) -> None:
    """Device plans: the prepare kernel builds the work list on the GPU, the forward reads its tile count."""
    import varblock

    cu = _dev(torch, _cu(LENS))
    tq = int(_cu(LENS)[-1])
    for causal, window in ((False, None), (True, None), (True, (40, 0))):
        q, k, v = _qkv(torch, tq, tq, 8, 2, 128)
        p = varblock.plan(cu, num_heads_q=8, num_heads_kv=2, head_dim=128, causal=causal, window=window,
                          max_seqlen_q=max(LENS), total_q=tq)
        o = varblock.attention(q, k, v, p)
        _check_finite(torch, f"device plan causal={causal} window={window}", o)


def smoke_merge_states(torch: Any) -> None:
    """merge_states: S = 1..4 partials, fp32 / bf16 / fp16, empty partials (LSE -inf), fp32 -> bf16 output."""
    import varblock

    for s, t, h, d, dt in ((1, 3, 2, 64, "float32"), (4, 113, 3, 128, "bfloat16"), (3, 1, 1, 256, "float16")):
        parts = torch.randn(s, t, h, d, device="cuda").to(getattr(torch, dt))
        lse = torch.randn(s, h, t, device="cuda")
        lse[0, :, : max(1, t // 3)] = float("-inf")
        o, ls = varblock.merge_states(parts, lse)
        _check_finite(torch, f"merge_states S={s} {dt}", o)
    parts = torch.randn(2, 77, 4, 128, device="cuda")
    o, _ = varblock.merge_states(parts, torch.randn(2, 4, 77, device="cuda"), out_dtype="bfloat16")
    _check_finite(torch, "merge_states fp32 -> bf16", o)


# ------------------------------------------------------------------------------------------------ backward
def backward_cases(L: Any) -> list[tuple[str, Any, int, int, int, str, bool]]:
    """(name, layout, Hq, Hkv, head dim, dtype, deterministic) for the backward."""
    cu, cu_k, long = _cu(LENS), _cu([5, 1, 300, 0, 64]), _cu([1, 12000])
    causal = L.causal(cu, cu, num_heads=1)
    rnd = L.random_blocks(cu, cu, density=0.5, num_heads=2, head_mode="per_kv_head", causal=True, seed=1,
                          block_q=64, block_k=64)
    return [
        ("dense d64", L.dense(cu, cu, num_heads=1), 8, 2, 64, "bfloat16", False),
        ("causal d128 fp16", causal, 8, 2, 128, "float16", False),
        ("causal d128 fp16 deterministic", causal, 8, 2, 128, "float16", True),
        ("random blocks GQA 4", rnd, 8, 2, 128, "bfloat16", False),
        ("random blocks GQA 4 deterministic", rnd, 8, 2, 128, "bfloat16", True),
        ("random per_q_head q!=k deterministic", L.random_blocks(cu, cu_k, density=0.5, num_heads=4,
                                                                 head_mode="per_q_head", causal=True, seed=2,
                                                                 block_q=64, block_k=64), 4, 2, 64, "float16", True),
        ("window 64 + 5 sink tokens", L.sliding_window(cu, cu, window_left=64, window_right=0, num_sink_tokens=5,
                                                       block_q=64, block_k=64, num_heads=1), 4, 1, 64, "bfloat16",
         False),
        ("causal d256 fp16", causal, 4, 4, 256, "float16", False),
        # 188 key tiles x 2 KV heads >= 2 per SM: a tile holds the whole GQA group (dK/dV summed in registers)
        ("window on 12k tokens, GQA group per tile, deterministic",
         L.sliding_window(long, long, window_left=64, window_right=0, block_q=64, block_k=64, num_heads=1), 4, 2,
         64, "bfloat16", True),
    ]


def smoke_backward(torch: Any) -> None:
    """attention_backward (preprocess, main, postprocess) after the forward, on every case of backward_cases."""
    import varblock
    from varblock import layout as L

    big_smem = torch.cuda.get_device_capability()[0] in (9, 10)  # d192 / d256 are built for sm90 / sm100 only
    for name, lay, hq, hkv, d, dt, det in backward_cases(L):
        if d > 128 and not big_smem:
            print(f"  backward {name}: d{d} is not built for this arch, skipped", flush=True)
            continue
        cq, ck = lay.cu_seqlens_q, lay.cu_seqlens_k
        q, k, v = _qkv(torch, int(cq[-1]), int(ck[-1]), hq, hkv, d, dt)
        p = varblock.plan(cq, ck, num_heads_q=hq, num_heads_kv=hkv, head_dim=d, layout=lay)
        o, lse = varblock.attention(q, k, v, p, return_lse=True)
        grads = varblock.attention_backward(torch.randn_like(o), q, k, v, o, lse, p, deterministic=det)
        _check_finite(torch, f"backward {name}", *grads)


# ------------------------------------------------------------------------------------------------ decode
#: (name, new tokens, KV lengths, page size (None: contiguous cache), Hq, Hkv, head dim, layout kind, num_splits,
#: causal); tile_m 16 when new tokens x GQA group <= 16, else 64
DECODE_CASES: list[tuple[str, list[int], list[int], int | None, int, int, int, str, int | None, bool]] = [
    ("paged ps16 GQA4 1 token dense d128", [1, 1, 0, 1], [1, 113, 0, 300], 16, 8, 2, 128, "dense", None, True),
    ("paged ps1 GQA4 3 tokens seer mask d64", [3, 1, 3], [3, 77, 200], 1, 8, 2, 64, "seer", None, True),
    ("contiguous GQA8 3 tokens per_q_head d64 (64-row tiles)", [3, 2, 3], [5, 130, 64], None, 16, 2, 64,
     "per_q_head", None, True),
    ("paged ps16 4096 keys top-k, 5 forced splits", [1, 1], [4096, 1000], 16, 8, 2, 128, "topk", 5, True),
    ("paged ps16 4096 keys dense, auto splits", [1, 3], [4096, 33], 16, 8, 2, 128, "dense", None, True),
    ("paged ps16 4096 keys window + sinks d256", [1, 2], [4096, 37], 16, 4, 1, 256, "window", None, True),
    ("contiguous non-causal empty caches", [1, 2, 0], [0, 17, 0], None, 8, 2, 128, "dense", None, False),
]


def decode_cache(n_q: list[int], kv: list[int], page_size: int | None, rng: np.random.Generator) -> dict[str, Any]:
    """Host arrays of one decode batch: cu_q, kv (int32), and a shuffled page table (unused entries -1) with the
    cache's page count, or cu_k and the cache's row count (3 spare rows)."""
    kv_a = np.asarray(kv, dtype=np.int32)
    out: dict[str, Any] = {"cu_q": _cu(n_q), "kv": kv_a}
    if page_size is None:
        out["cu_k"] = _cu(kv_a)
        out["rows"] = int(kv_a.sum()) + 3
        return out
    pages = -(-kv_a // page_size)
    n_pages = int(pages.sum()) + 2
    perm = rng.permutation(n_pages).astype(np.int32)
    pt = np.full((len(kv_a), int(pages.max(initial=0)) + 1), -1, dtype=np.int32)
    starts = np.concatenate([[0], np.cumsum(pages)])
    for b in range(len(kv_a)):
        pt[b, :pages[b]] = perm[starts[b]:starts[b + 1]]
    out["page_table"], out["rows"] = pt, n_pages
    return out


def decode_layout(kind: str, rng: np.random.Generator, kv: np.ndarray, hq: int, hkv: int) -> Any:
    """A host DecodeLayout of ``kind`` (dense -> None)."""
    from varblock.layout import decode as LD

    if kind == "dense":
        return None
    if kind in ("seer", "per_q_head"):
        bs, heads = (32, hkv) if kind == "seer" else (16, hq)
        nb = LD.num_blocks(kv, bs)
        width = int(nb.max(initial=0)) + 1
        m = (rng.random((len(kv), heads, width)) < 0.5) & (np.arange(width)[None, :] < nb[:, None])[:, None, :]
        return LD.from_seer_decode_mask(m, kv_lens=kv, block_size=bs,
                                        head_mode="per_kv_head" if kind == "seer" else "per_q_head")
    if kind == "topk":
        nb = LD.num_blocks(kv, 64)
        idx = np.full((len(kv), hkv, 6), -1, dtype=np.int32)  # the last slot stays -1 (padding)
        for b, h in np.ndindex(len(kv), hkv):
            sel = rng.permutation(int(nb[b]))[:5]
            idx[b, h, :sel.size] = sel
        return LD.from_topk_indices(idx, kv_lens=kv, block_size=64)
    return LD.window_sinks(kv, block_size=64, window=300, sinks=4, num_heads=hkv)


def _decode_inputs(torch: Any, c: dict[str, Any], hq: int, hkv: int, d: int, page_size: int | None,
                   dtype: str = "bfloat16") -> tuple[Any, Any, Any]:
    dt = getattr(torch, dtype)
    cache = (c["rows"], page_size, hkv, d) if page_size else (c["rows"], hkv, d)
    return (torch.randn(int(c["cu_q"][-1]), hq, d, device="cuda").to(dt),
            torch.randn(*cache, device="cuda").to(dt), torch.randn(*cache, device="cuda").to(dt))


def smoke_decode(torch: Any) -> None:
    """decode_fwd over host plans: paged (page sizes 1, 16) and contiguous caches, GQA 4 / 8, 1-3 new tokens, both
    row tiles, every importer, forced and automatic split-KV; twice per plan (split counters reset)."""
    import varblock

    rng = np.random.default_rng(0)
    for name, n_q, kv, ps, hq, hkv, d, kind, splits, causal in DECODE_CASES:
        c = decode_cache(n_q, kv, ps, rng)
        lay = decode_layout(kind, rng, c["kv"], hq, hkv)
        cache_kw = ({"kv_lens": c["kv"], "page_table": c["page_table"], "page_size": ps} if ps
                    else {"cu_seqlens_k": c["cu_k"]})
        kw = dict(num_heads_q=hq, num_heads_kv=hkv, head_dim=d, layout=lay, causal=causal, num_splits=splits,
                  **cache_kw)
        q, kc, vc = _decode_inputs(torch, c, hq, hkv, d, ps)
        # num_sms=2: a persistent grid of 2 CTAs (cross-item prefetch) when there are more than 2 items
        for sms in (None, 2):
            p = varblock.plan_decode(c["cu_q"], num_sms=sms, persistent=True if sms else None, **kw)
            for _ in range(2):
                o, lse = varblock.decode(q, kc, vc, p, return_lse=True)
            _check_finite(torch, f"decode {name}" + (" (persistent grid)" if sms else ""), o, lse)


def _check_decode_status(plan: Any, what: str) -> None:
    n, err = plan.status()
    if err:
        raise RuntimeError(f"{what}: the device-built decode plan reports error {err} ({n} items)")


def smoke_decode_prepare(torch: Any) -> None:
    """decode_prepare: device-built decode plans (dense paged with forced splits; top-k with counts over a
    contiguous cache, 3 new tokens, automatic splits), rebuilt by plan.prepare() after an in-place length update,
    and decode over each."""
    import varblock

    rng = np.random.default_rng(1)
    hq, hkv, d, ps, max_kv = 8, 2, 128, 16, 4096
    c = decode_cache([1, 1, 0, 1], [4096, 3, 0, 1], ps, rng)
    kv_d = _dev(torch, c["kv"])  # the page table has max_kv / page_size + 1 columns (unused entries -1)
    p = varblock.plan_decode(_dev(torch, c["cu_q"]), kv_lens=kv_d, page_table=_dev(torch, c["page_table"]),
                             page_size=ps,
                             num_heads_q=hq, num_heads_kv=hkv, head_dim=d, max_kv_len=max_kv,
                             total_q=int(c["cu_q"][-1]), num_splits=4)
    q, kc, vc = _decode_inputs(torch, c, hq, hkv, d, ps)
    for step, what in enumerate(("dense paged, 4 splits", "after prepare() with a new length")):
        if step:
            kv_d[0] = 1000
            p.prepare()
        o, lse = varblock.decode(q, kc, vc, p, return_lse=True)
        _check_decode_status(p, what)
        _check_finite(torch, f"device decode plan {what}", o, lse)
    # top-k block indices (unique per row, -1 = none) with counts, contiguous cache, up to 3 new tokens
    c = decode_cache([3, 1, 2], [700, 3, 150], None, rng)
    nb = -(-c["kv"] // 64)
    idx = np.full((3, hkv, 4), -1, dtype=np.int32)
    for b, h in np.ndindex(3, hkv):
        sel = rng.permutation(int(nb[b]))[:4]
        idx[b, h, :sel.size] = sel
    cnt = rng.integers(0, 5, size=(3, hkv)).astype(np.int32)
    p = varblock.plan_decode(_dev(torch, c["cu_q"]), cu_seqlens_k=_dev(torch, c["cu_k"]), num_heads_q=hq,
                             num_heads_kv=hkv, head_dim=d, max_kv_len=1000, max_q_tokens=3,
                             total_q=int(c["cu_q"][-1]), block_indices=_dev(torch, idx),
                             block_counts=_dev(torch, cnt), block_size=64)
    q, kc, vc = _decode_inputs(torch, c, hq, hkv, d, None, "float16")
    o, lse = varblock.decode(q, kc, vc, p, return_lse=True)
    _check_decode_status(p, "top-k")
    _check_finite(torch, "device decode plan top-k, contiguous, 3 tokens", o, lse)


# ------------------------------------------------------------------------------------------------ pooling
def smoke_pool(torch: Any, backend: str = "attention_pool") -> None:
    """attention_pooling (qk kernel of ``backend``, 2D reduce, GQA 1D reduce) after the portable forward:
    per-query-head and group-shared layouts, GQA pooling, pooled blocks larger than the layout's, pack-GQA, a
    device plan."""
    import varblock
    from varblock import layout as L

    cu = _cu(LENS)
    tq = int(cu[-1])
    cases = [
        ("per_q_head causal d64 fp16", L.random_blocks(cu, cu, density=0.5, num_heads=8, head_mode="per_q_head",
                                                       causal=True, block_q=64, block_k=64, seed=3), 8, 2, 64,
         "float16", {}),
        ("per_kv_head d128, GQA pooling", L.random_blocks(cu, cu, density=0.4, num_heads=2, head_mode="per_kv_head",
                                                          block_q=64, block_k=64, seed=4), 8, 2, 128, "bfloat16",
         {"pool_gqa": True}),
        ("causal 128-blocks pooled at 256", L.causal(cu, cu, block_q=128, block_k=128, num_heads=1), 4, 4, 64,
         "bfloat16", {"block_q": 256, "block_k": 256}),
    ]
    for name, lay, hq, hkv, d, dt, kw in cases:
        q, k, v = _qkv(torch, tq, tq, hq, hkv, d, dt)
        p = varblock.plan(cu, cu, num_heads_q=hq, num_heads_kv=hkv, head_dim=d, layout=lay,
                          backend="attention_fwd_mma")
        _, lse = varblock.attention(q, k, v, p, return_lse=True)
        _check_finite(torch, f"pooling {name}", *varblock.attention_pooling(q, k, lse, p, per_sequence=False,
                                                                             backend=backend, **kw))
    q, k, v = _qkv(torch, tq, tq, 8, 2, 128)
    p = varblock.plan(cu, num_heads_q=8, num_heads_kv=2, head_dim=128, causal=True, pack_gqa=True,
                      backend="attention_fwd_mma")
    _, lse = varblock.attention(q, k, v, p, return_lse=True)
    _check_finite(torch, "pooling pack-GQA dense causal, GQA pooling",
                  *varblock.attention_pooling(q, k, lse, p, per_sequence=False, pool_gqa=True, backend=backend))
    mask = np.random.default_rng(5).random((len(LENS), 2, 4, 4)) < 0.5
    p = varblock.plan_device(mask=_dev(torch, mask), cu_seqlens_q=_dev(torch, cu), num_heads_q=8, num_heads_kv=2,
                             head_dim=128, block_q=64, block_k=64, causal=True, backend="attention_fwd_mma")
    _, lse = varblock.attention(q, k, v, p, return_lse=True)
    _check_finite(torch, "pooling over a device plan", *varblock.attention_pooling(q, k, lse, p, per_sequence=False,
                                                                                   backend=backend))


def smoke_pool_sm90(torch: Any) -> None:
    """The Hopper pooling kernel (sm90 only) on the same cases, then over plans of the sm90 forward (a host plan
    with its 128 x 128 tiles, bf16 d128 causal, pooled at 64 and 128; a device plan)."""
    if not _on_sm90(torch, "attention_pool_sm90"):
        return
    import varblock

    smoke_pool(torch, backend="attention_pool_sm90")
    cu = _cu(LENS)
    tq = int(cu[-1])
    q, k, v = _qkv(torch, tq, tq, 8, 2, 128)
    p = varblock.plan(cu, num_heads_q=8, num_heads_kv=2, head_dim=128, causal=True, backend="attention_fwd_sm90")
    _, lse = varblock.attention(q, k, v, p, return_lse=True)
    for bk in (64, 128):
        _check_finite(torch, f"pooling sm90 over an sm90 plan, block {bk}",
                      *varblock.attention_pooling(q, k, lse, p, block_k=bk, per_sequence=False,
                                                  backend="attention_pool_sm90"))
    mask = np.random.default_rng(7).random((len(LENS), 2, 4, 4)) < 0.5
    p = varblock.plan_device(mask=_dev(torch, mask), cu_seqlens_q=_dev(torch, cu), num_heads_q=8, num_heads_kv=2,
                             head_dim=128, block_q=64, block_k=64, causal=True, backend="attention_fwd_sm90")
    _, lse = varblock.attention(q, k, v, p, return_lse=True)
    _check_finite(torch, "pooling sm90 over an sm90 device plan",
                  *varblock.attention_pooling(q, k, lse, p, per_sequence=False, backend="attention_pool_sm90"))


# ------------------------------------------------------------------------------------------------ device layouts
def _causal_lists(nb: np.ndarray, heads: int, width: int) -> tuple[np.ndarray, ...]:
    """FA4 / Flex style block lists of a causal layout: per query block m the diagonal block partial, blocks < m
    full (ascending, zero padded; rows past a sequence empty). Returns (partial cnt, idx, full cnt, idx)."""
    B = len(nb)
    pc, fc = np.zeros((B, heads, width), np.int32), np.zeros((B, heads, width), np.int32)
    pi, fi = np.zeros((B, heads, width, width), np.int32), np.zeros((B, heads, width, width), np.int32)
    for b, m in np.ndindex(B, width):
        if m < nb[b]:
            pc[b, :, m], pi[b, :, m, 0] = 1, m
            fc[b, :, m], fi[b, :, m, :m] = m, np.arange(m)
    return pc, pi, fc, fi


def device_layout_sources(rng: np.random.Generator) -> list[tuple[str, dict[str, Any], int, int, dict[str, Any]]]:
    """(name, source keyword -> host array / dict of host arrays, Hq, Hkv, other plan_device keywords) over LENS
    with 64-token blocks: every source kind and cells variant (bool, int8 / int32 codes, top-k, FA4, Flex,
    SeerAttention 1D token masks)."""
    nb = -(-np.asarray(LENS) // 64)
    B, mb, t = len(LENS), int(nb.max()), max(LENS)
    idx = np.stack([rng.integers(0, max(int(n), 1), size=(2, mb, 3)) for n in nb]).astype(np.int32)
    pc, pi, fc, fi = _causal_lists(nb, 2, mb)
    causal = {"causal": True}
    return [
        ("bool mask per_kv_head causal", {"mask": rng.random((B, 2, mb, mb)) < 0.5}, 8, 2, causal),
        ("int8 codes, batch-broadcast", {"mask": rng.integers(0, 3, (1, 1, mb, mb)).astype(np.int8)}, 4, 2, {}),
        ("int32 codes per_q_head, window", {"mask": rng.integers(0, 3, (B, 4, mb, mb)).astype(np.int32)}, 4, 2,
         {"window": (40, 0)}),
        ("top-k + counts, pack-GQA", {"topk_indices": idx,
                                      "topk_counts": rng.integers(0, 4, (B, 2, mb)).astype(np.int32),
                                      "num_key_blocks": mb}, 8, 2, {"causal": True, "pack_gqa": True}),
        ("FA4 lists", {"fa4": {"mask_block_cnt": pc, "mask_block_idx": pi, "full_block_cnt": fc,
                               "full_block_idx": fi, "block_size": (64, 64)}}, 4, 2, causal),
        ("Flex lists", {"flex": {"kv_num_blocks": pc, "kv_indices": pi, "full_kv_num_blocks": fc,
                                 "full_kv_indices": fi, "BLOCK_SIZE": (64, 64)}}, 4, 2, causal),
        ("seer 1D token mask", {"seer_1d": rng.random((B, 2, t, mb)) < 0.3}, 8, 2, causal),
    ]


def _on_device(torch: Any, src: dict[str, Any]) -> dict[str, Any]:
    """Host arrays of a source (also inside a dict source) copied to the GPU; other values kept."""
    def conv(x: Any) -> Any:
        return _dev(torch, x) if isinstance(x, np.ndarray) else x

    return {k: ({f: conv(x) for f, x in v.items()} if isinstance(v, dict) else conv(v)) for k, v in src.items()}


def smoke_layout_device(torch: Any) -> None:
    """layout_device: plan_device from each source (status checked), attention through each plan; a rebuild in
    place from a new mask, attention again."""
    import varblock
    from varblock import device_layout as dl

    rng = np.random.default_rng(6)
    cu, tq = _dev(torch, _cu(LENS)), int(_cu(LENS)[-1])
    first = None
    for name, src, hq, hkv, kw in device_layout_sources(rng):
        p = varblock.plan_device(**_on_device(torch, src), cu_seqlens_q=cu, num_heads_q=hq, num_heads_kv=hkv,
                                 head_dim=128, block_q=64, block_k=64, **kw)
        dl.check(p)
        q, k, v = _qkv(torch, tq, tq, hq, hkv, 128)
        _check_finite(torch, f"device layout {name}", varblock.attention(q, k, v, p))
        first = first or (p, src, (q, k, v))
    p, src, (q, k, v) = first
    dl.rebuild(p, mask=_dev(torch, ~src["mask"]), cu_seqlens_q=cu)
    dl.check(p)
    _check_finite(torch, "device layout rebuilt in place", varblock.attention(q, k, v, p))


# ------------------------------------------------------------------------------------------------ TMA copy
#: odd row counts and widths (not multiples of the tile), rows of whole 16-byte units
TMA_SHAPES = [(1, 8), (3, 72), (113, 200), (130, 40)]


def smoke_tma_copy(torch: Any) -> None:
    """tma_copy (sm90 only) on odd shapes in every dtype, compact and with padded row strides; bit-exact."""
    if not _on_sm90(torch, "tma_copy"):
        return
    from varblock.ops.tma_copy import tma_copy

    for dt in ("bfloat16", "float16", "float32"):
        for rows, cols in TMA_SHAPES:
            for pad in (0, 16):
                src = torch.randn(rows, cols + pad, device="cuda").to(getattr(torch, dt))[:, :cols]
                buf = torch.full((rows + 1, cols + pad), float("nan"), device="cuda").to(src.dtype)
                tma_copy(src, buf[:rows, :cols])
                torch.cuda.synchronize()
                if not torch.equal(src, buf[:rows, :cols]) or not torch.isnan(buf[rows:]).all():
                    raise RuntimeError(f"tma_copy {dt} {rows}x{cols} pad {pad}: wrong copy or a write outside dst")
        print(f"  [{time.perf_counter() - _T0:7.1f} s] tma_copy {dt}: ok", flush=True)


#: kernel family name -> smoke function (every registered family needs one)
SMOKE: dict[str, Callable[[Any], None]] = {
    "attention_fwd_mma": smoke_attention,
    "attention_fwd_sm90": smoke_attention_sm90,
    "attention_prepare": smoke_prepare,
    "merge_states": smoke_merge_states,
    "attention_bwd_mma": smoke_backward,
    "decode_fwd": smoke_decode,
    "decode_prepare": smoke_decode_prepare,
    "attention_pool": smoke_pool,
    "attention_pool_sm90": smoke_pool_sm90,
    "layout_device": smoke_layout_device,
    "tma_copy": smoke_tma_copy,
}
