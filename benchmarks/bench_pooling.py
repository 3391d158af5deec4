"""Attention pooling (SeerAttention gate distillation): varblock's forward + fused pooling next to SeerAttention's own
Triton pipeline, on workloads W1-W3 (benchmarks/anchors.py), same inputs.

    PYTHONPATH=src python benchmarks/bench_pooling.py [--workloads W1,W2,W3] [--seer-path .seer] [--block 64]
                                                      [--backend auto] [--rep 10] [--json PATH] [--dry-run]

Dense causal attention (what SeerAttention distils from), bf16, d128, pooling blocks of ``--block`` tokens.

* varblock: the forward with LSE (``--backend``, default the family ``varblock.plan`` picks), then
  ``varblock.attention_pooling`` (1D and 2D maps from that LSE; 1D packed ``[Hq, total_q, max_nb]``).
* SeerAttention, the pipeline of its gate training (``seer_attn/kernels/varlen``): ``attn_pooling_qkv_varlen``
  (``attn_pooling_qkv_varlen_1d.py``: its forward fused with the 1D map ``[B, Hq, max_t, nb]``, bf16) and for
  the 2D map ``maxpool_varlen`` (``pooling_varlen.py``) over the query tokens of that 1D map (gathered from its
  padded rows into the packed ``[total_q, Hq, nb]`` the kernel takes), each block row divided by its sum.

Ratios: pooling / forward (bar: <= 0.6) and SeerAttention (forward + 1D + 2D) / varblock (forward + pooling)
(bar: >= 1.5). The notes hold the largest difference of SeerAttention's maps from varblock's (same inputs, so both
compute the same maps up to bf16 rounding), each side's 1D map against the exact float64 map on sampled rows (the
first and last 256 query rows of up to 4 sequences: which side a difference comes from, and where), and the
pooling time per stage (zeroing, qk kernel with its QK^T rate, 2D reduce), each printed as it is measured.
CUDA-event median after warm-up; each Seer step in try/except (n/a
cell, one-line reason). ``--dry-run`` checks the host-side inputs (workloads, Seer's power-of-two key-block
count, the pack index) without a GPU.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from anchors import DEFAULT_SEER_PATH, WORKLOADS, bench, load_seer, make_row, write_json  # noqa: E402

D = 128
POOL_BAR, SEER_BAR = 0.6, 1.5


def cu_of(workload: str) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(WORKLOADS[workload][0])]).astype(np.int32)


def pack_index(cu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sequence, position) of every packed token: the rows of Seer's padded ``[B, H, max_t, nb]`` map that hold
    the packed tokens, in packed order."""
    lens = np.diff(cu.astype(np.int64))
    seq = np.repeat(np.arange(lens.size), lens)
    return seq, np.arange(seq.size) - np.repeat(cu[:-1].astype(np.int64), lens)


def seer_key_blocks(cu: np.ndarray, block: int) -> int:
    """Key blocks of Seer's maps (``ceil(max_t / block)``); its ``maxpool_varlen`` loads them with ``tl.arange``,
    so the count must be a power of two (ValueError otherwise)."""
    nb = -(-int(np.diff(cu).max()) // block)
    if nb & (nb - 1):
        raise ValueError(f"block: SeerAttention's maxpool_varlen needs a power-of-two key-block count, got {nb}")
    return nb


def dry_run(args: argparse.Namespace) -> int:
    for name in args.workloads.split(","):
        cu = cu_of(name)
        seq, pos = pack_index(cu)
        if not (np.array_equal(cu[seq] + pos, np.arange(cu[-1])) and (pos < np.diff(cu)[seq]).all()):
            raise ValueError(f"{name}: pack index does not cover the packed tokens")
        _, hq, hkv = WORKLOADS[name]
        mx = int(np.diff(cu).max())
        nb = seer_key_blocks(cu, args.block)
        print(f"{name}: {cu.size - 1} sequences, {int(cu[-1])} tokens, Hq {hq} / Hkv {hkv}; Seer 1D map "
              f"[{cu.size - 1}, {hq}, {mx}, {nb}] bf16 = {(cu.size - 1) * hq * mx * nb * 2 / 2**20:.0f} MiB, 2D "
              f"[{cu.size - 1}, {hq}, {nb}, {nb}]; pack index OK")
    for mod in ("attn_pooling_qkv_varlen_1d", "pooling_varlen"):
        f = Path(args.seer_path) / "seer_attn" / "kernels" / "varlen" / f"{mod}.py"
        print(f"seer source: {f} ({'present' if f.is_file() else 'MISSING'})")
    return 0


class SeerPipeline:
    """SeerAttention's forward + 1D map and the 2D map from it, on one workload's inputs."""

    def __init__(self, torch: Any, seer_path: str, q: Any, k: Any, v: Any, cu: np.ndarray, block: int) -> None:
        self.torch = torch
        self.f1d = load_seer("attn_pooling_qkv_varlen_1d", seer_path).attn_pooling_qkv_varlen
        self.maxpool = load_seer("pooling_varlen", seer_path).maxpool_varlen
        self.q, self.k, self.v, self.block = q, k, v, block
        self.cu = torch.from_numpy(cu).cuda()
        self.max_t = int(np.diff(cu).max())
        seer_key_blocks(cu, block)
        seq, pos = pack_index(cu)
        self.seq, self.pos = (torch.from_numpy(x).cuda() for x in (seq, pos))

    def one_d(self) -> tuple[Any, Any]:
        """(out, 1D map [B, Hq, max_t, nb] bf16): Seer's fused forward + 1D pooling."""
        return self.f1d(self.q, self.k, self.v, self.cu, self.max_t, D ** -0.5, self.block)

    def two_d(self, pool1d: Any) -> Any:
        """Row-normalised 2D map [B, Hq, ceil(max_t / block), nb] from the 1D map, by Seer's maxpool_varlen."""
        packed = pool1d.permute(0, 2, 1, 3)[self.seq, self.pos]  # [total_q, Hq, nb]
        m = self.maxpool(packed, self.cu, self.max_t, self.block).float()
        return m / m.sum(dim=-1, keepdim=True).clamp_min(1e-30)


def sample_windows(cu: np.ndarray, rows: int = 256, max_seqs: int = 4) -> list[tuple[int, int, int]]:
    """``(sequence, first row, end row)`` of the rows the exact check covers: the first and the last ``rows``
    query tokens of up to ``max_seqs`` sequences (first, last and two between). Causal rows ``< r1`` need only keys
    ``< r1``, so each window is exact with an ``[H, rows, r1]`` score matrix."""
    lens = np.diff(cu.astype(np.int64))
    picks = sorted({0, lens.size - 1, lens.size // 3, 2 * lens.size // 3}) if lens.size else []
    out = []
    for b in picks[:max_seqs]:
        n = int(lens[b])
        for r0, r1 in {(0, min(n, rows)), (max(0, n - rows), n)}:
            if r1 > r0:
                out.append((b, r0, r1))
    return sorted(out)


def exact_1d_window(torch: Any, q: Any, k: Any, start: int, r0: int, r1: int, block: int) -> Any:
    """Float64 1D map of query rows ``r0 .. r1 - 1`` of the causal sequence starting at packed token ``start``:
    ``[Hq, r1 - r0, ceil(r1 / block)]`` (per row and key block the largest softmax probability)."""
    hq, hkv = q.shape[1], k.shape[1]
    qs = q[start + r0:start + r1].double()
    ks = k[start:start + r1].double().repeat_interleave(hq // hkv, dim=1)
    s = torch.einsum("qhd,khd->hqk", qs, ks) * (D ** -0.5)
    i = torch.arange(r0, r1, device=q.device)[:, None]
    j = torch.arange(r1, device=q.device)[None, :]
    p = torch.softmax(s.masked_fill(j > i, float("-inf")), dim=-1)
    nb = -(-r1 // block)
    p = torch.nn.functional.pad(p, (0, nb * block - r1))
    return p.reshape(hq, r1 - r0, nb, block).amax(dim=-1)


def exact_check(torch: Any, q: Any, k: Any, cu: np.ndarray, block: int, maps: dict[str, Any]) -> str:
    """Each 1D map (``[Hq, total_q, >= nb]`` float) against the float64 map on :func:`sample_windows`: the largest
    error of each, and where the largest one lies (sequence, head, row, key block; block - row // block = 0 is
    the diagonal block)."""
    worst = {name: (0.0, None) for name in maps}
    for b, r0, r1 in sample_windows(cu):
        start = int(cu[b])
        ref = exact_1d_window(torch, q, k, start, r0, r1, block)
        for name, m in maps.items():
            got = m[:, start + r0:start + r1, :ref.shape[-1]].double()
            err = (got - ref).abs()
            e = float(err.max())
            if e > worst[name][0]:
                h, r, c = (int(x) for x in np.unravel_index(int(err.argmax()), tuple(err.shape)))
                worst[name] = (e, (b, h, r0 + r, c, float(got[h, r, c]), float(ref[h, r, c])))
    parts = []
    for name, (e, at) in worst.items():
        where = "" if at is None else (f" at seq {at[0]} head {at[1]} row {at[2]} block {at[3]} (diagonal "
                                       f"{at[3] - at[2] // block:+d}): {at[4]:.4f} vs exact {at[5]:.4f}")
        parts.append(f"max|{name} - exact| {e:.1e}{where}")
    return "; ".join(parts)


def _diff_notes(seer: SeerPipeline, p1: Any, ours1: Any, ours2: Any, cu: np.ndarray) -> str:
    """Largest |Seer - varblock| of the 1D map (packed tokens) and of the 2D map (each sequence's blocks), and each
    side's 1D map against the exact float64 map on sampled rows (which side a difference comes from)."""
    s1 = p1.permute(0, 2, 1, 3)[seer.seq, seer.pos].float().transpose(0, 1)  # [Hq, total_q, nb]
    nb = min(s1.shape[-1], ours1.shape[-1])
    d1 = float((s1[..., :nb] - ours1[..., :nb]).abs().max())
    s2 = seer.two_d(p1)
    d2 = 0.0
    for b, n in enumerate(np.diff(cu)):
        m = -(-int(n) // seer.block)
        d2 = max(d2, float((s2[b, :, :m, :m] - ours2[b, :, :m, :m]).abs().max()))
    note = f"max|seer - varblock| 1D {d1:.1e}, 2D {d2:.1e}"
    try:
        note += "; " + exact_check(seer.torch, seer.q, seer.k, cu, seer.block, {"varblock": ours1, "seer": s1})
    except Exception as ex:  # the diagnostic must not cost the row
        note += f"; exact check n/a: {type(ex).__name__}: {(str(ex).strip().splitlines() or [''])[0][:160]}"
    return note


def stage_times(torch: Any, plan: Any, q: Any, k: Any, lse: Any, rep: int) -> str:
    """Where the pooling time goes: the map's zeroing, the qk kernel and the 2D reduce kernel timed alone (the
    recipe the op keeps for these torch arguments), and the qk kernel's rate against half the forward's FLOPs."""
    from varblock.ops.state import state_of
    from varblock.runtime.device import stream_for

    recipes = [r for key, r in state_of(plan).fast_paths.items() if key[0] == "attention_pooling"]
    if len(recipes) != 1 or recipes[0].qk is None:
        return f"stages n/a: {len(recipes)} pooling recipes kept for the plan"
    r = recipes[0]
    pool = torch.zeros(r.pool_shape, dtype=torch.float32, device=q.device)
    raw = torch.zeros(r.out_2d_shape, dtype=torch.float32, device=q.device)  # the raw 2D map (sm90 kernel)
    out2 = torch.empty(r.out_2d_shape, dtype=torch.float32, device=q.device)
    st = stream_for(None, r.ordinal, like=q)
    counter = state_of(r.plan).counter_ptr(r.plan, int(st.handle)) if r.persistent else 0
    maps = (pool.data_ptr(), raw.data_ptr()) if r.raw_2d else (pool.data_ptr(),)
    ptrs = (q.data_ptr(), k.data_ptr(), lse.data_ptr(), *maps, counter)
    src_2d = raw if r.raw_2d else pool
    t_zero = bench(lambda: pool.zero_(), rep=rep)
    t_qk = bench(lambda: r.qk(st, ptrs), rep=rep)  # (max-accumulates into maps already written: same work)
    t_red = bench(lambda: r.reduce_2d(st, (src_2d.data_ptr(), out2.data_ptr())), rep=rep)
    note = (f"stages: zero 1D map {t_zero:.3f} ms ({pool.numel() * 4 / t_zero / 1e9:.2f} TB/s), qk {t_qk:.3f} ms"
            f"{' (+ raw 2D map)' if r.raw_2d else ''}")
    try:
        note += f" ({plan.flops() / 2 / t_qk / 1e9:.0f} TFLOP/s of QK^T)"
    except ValueError:
        pass
    return note + f", reduce2d {t_red:.3f} ms ({'normalises the raw 2D map' if r.raw_2d else 'reads the 1D map'})"


def run_workload(torch: Any, args: argparse.Namespace, name: str) -> list[dict[str, Any]]:
    import varblock

    lens, hq, hkv = WORKLOADS[name]
    cu = cu_of(name)
    total, bs = int(cu[-1]), args.block
    q, k, v = (torch.randn(total, h, D, device="cuda", dtype=torch.bfloat16) for h in (hq, hkv, hkv))
    plan = varblock.plan(cu, cu, num_heads_q=hq, num_heads_kv=hkv, head_dim=D, causal=True, backend=args.backend)
    out, lse = varblock.attention(q, k, v, plan, return_lse=True)
    t_fwd = bench(lambda: varblock.attention(q, k, v, plan, out=out, lse=lse, return_lse=True), rep=args.rep)

    def pool() -> tuple[Any, Any]:
        return varblock.attention_pooling(q, k, lse, plan, block_q=bs, block_k=bs, per_sequence=False)

    t_pool = bench(pool, rep=args.rep)
    try:
        pool_note = f"pool/fwd {t_pool / t_fwd:.2f}; " + stage_times(torch, plan, q, k, lse, args.rep)
    except Exception as ex:  # a diagnostic only
        pool_note = f"pool/fwd {t_pool / t_fwd:.2f}; stages n/a: {type(ex).__name__}: {str(ex)[:160]}"
    print(f"    {name}: {pool_note}", flush=True)
    row = dict(causal=True, density=1.0, block=bs, head_dim=D)
    try:
        fwd_note = f"forward family {plan.family}, {plan.flops() / t_fwd / 1e9:.0f} TFLOP/s"
    except ValueError:  # a plan without a host layout cannot count its pairs
        fwd_note = f"forward family {plan.family}"
    rows = [make_row("pooling", name, "varblock-fwd", ms=t_fwd, note=fwd_note, **row),
            make_row("pooling", name, "varblock-pool", ms=t_pool, note=pool_note, **row),
            make_row("pooling", name, "varblock-fwd+pool", ms=t_fwd + t_pool, **row)]
    seer_ms: dict[str, float | None] = {"seer-1d": None, "seer-2d": None}
    notes = {"seer-1d": "fused forward + 1D map", "seer-2d": "gather + maxpool_varlen + row normalise"}
    try:
        seer = SeerPipeline(torch, args.seer_path, q, k, v, cu, bs)
        seer_ms["seer-1d"] = bench(seer.one_d, rep=args.rep)
        _, p1 = seer.one_d()
        seer_ms["seer-2d"] = bench(lambda: seer.two_d(p1), rep=args.rep)
        ours1, ours2 = pool()
        notes["seer-2d"] += "; " + _diff_notes(seer, p1, ours1, ours2, cu)
        print(f"    {name}: {notes['seer-2d']}", flush=True)
    except Exception as ex:  # Seer missing or failing: n/a cells with the reason
        why = f"n/a: {type(ex).__name__}: {(str(ex).strip().splitlines() or [''])[0][:200]}"
        print(f"    seer on {name}: {why}", flush=True)
        notes = {k_: (why if seer_ms[k_] is None else f"{notes[k_]}; {why}") for k_ in notes}
    total_seer = seer_ms["seer-1d"] + seer_ms["seer-2d"] if None not in seer_ms.values() else None
    for s, ms in seer_ms.items():
        rows.append(make_row("pooling", name, s, ms=ms, note=notes[s], **row))
    speed = f"seer/varblock {total_seer / (t_fwd + t_pool):.2f}x" if total_seer else "seer n/a"
    rows.append(make_row("pooling", name, "seer-total", ms=total_seer, note=speed, **row))
    print(f"{name:8} {t_fwd:8.3f} {t_pool:8.3f} {t_pool / t_fwd:9.2f} {_f(seer_ms['seer-1d'])} "
          f"{_f(seer_ms['seer-2d'])} {_f(total_seer)} "
          f"{(total_seer / (t_fwd + t_pool)) if total_seer else float('nan'):>14.2f}", flush=True)
    return rows


def _f(x: float | None) -> str:
    return f"{'n/a':>8}" if x is None else f"{x:8.3f}"


def check_bars(rows: list[dict[str, Any]]) -> bool:
    by = {(r["workload"], r["system"]): r["ms"] for r in rows}
    ok = True
    for w in dict.fromkeys(r["workload"] for r in rows):
        fwd, pool, seer = by[(w, "varblock-fwd")], by[(w, "varblock-pool")], by.get((w, "seer-total"))
        good = pool / fwd <= POOL_BAR
        line = f"{w}: pooling / forward {pool / fwd:.2f} (bar <= {POOL_BAR}) -> {'OK' if good else 'NOT MET'}"
        ok &= good
        if seer:
            sp = seer / (fwd + pool)
            ok &= sp >= SEER_BAR
            verdict = "OK" if sp >= SEER_BAR else "NOT MET"
            line += f"; SeerAttention / varblock {sp:.2f}x (bar >= {SEER_BAR}) -> {verdict}"
        print(line)
    return ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workloads", default="W1,W2,W3")
    ap.add_argument("--seer-path", default=str(DEFAULT_SEER_PATH))
    ap.add_argument("--block", type=int, default=64)
    ap.add_argument("--backend", default="auto", help="forward family for the plan ('auto': varblock.plan's pick)")
    ap.add_argument("--rep", type=int, default=10)
    ap.add_argument("--json", default=None, help="write the rows (benchmarks/anchors.py schema) here")
    ap.add_argument("--dry-run", action="store_true", help="check the host-side inputs; no GPU")
    args = ap.parse_args(argv)
    unknown = set(args.workloads.split(",")) - set(WORKLOADS)
    if unknown:
        ap.error(f"--workloads: unknown {sorted(unknown)}; choose from {sorted(WORKLOADS)}")
    if args.block < 16 or args.block % 16 or args.rep < 1:
        ap.error("--block must be a positive multiple of 16 and --rep >= 1")
    if args.dry_run:
        return dry_run(args)
    import torch

    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}: dense causal, bf16, d{D}, pooling blocks "
          f"{args.block}", flush=True)
    print(f"{'workload':8} {'fwd ms':>8} {'pool ms':>8} {'pool/fwd':>9} {'seer 1D':>8} {'seer 2D':>8} "
          f"{'seer ms':>8} {'seer/varblock':>14}")
    rows: list[dict[str, Any]] = []
    for name in args.workloads.split(","):
        rows += run_workload(torch, args, name)
        torch.cuda.empty_cache()
    ok = check_bars(rows)
    if args.json:
        write_json(args.json, rows, {"bench": "pooling", "device": torch.cuda.get_device_name(),
                                     "torch": torch.__version__})
    print(f"bars (issue 13): {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
