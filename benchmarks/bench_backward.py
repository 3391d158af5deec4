"""Attention backward side by side in one run: varblock (default and deterministic), FlexAttention, FA4 and, on
SeerAttention's 64 x 64 cell, SeerAttention's Triton backward; same kept blocks everywhere.

    python benchmarks/bench_backward.py [--suite full|quick] [--workloads W1,W2,W3] [--densities 1.0,0.5,0.1]
                                        [--causal both|yes|no] [--no-flex] [--no-fa4] [--no-seer] [--no-check]
                                        [--no-deterministic] [--seer-path .seer] [--json PATH] [--rep 10] [--dry-run]

Problems: workloads W1-W3 (benchmarks/anchors.py) x densities x causal/not, random ``--block`` x ``--block`` blocks
(128) at the density (the diagonal always kept; causal layouts keep only blocks on or below it, the diagonal ones
partial), shared by the query heads of a GQA group, bf16, d128. Systems:

* varblock, varblock-det: ``varblock.attention_backward`` (``deterministic=False`` / ``True``).
* flex: ``torch.autograd.grad`` through FlexAttention's compiled forward (a BlockMask of the same cells; causal
  diagonal cells get the causal mask_mod), graph retained.
* fa4: FA4's varlen block-sparse backward (``flash_attn_varlen_func(..., block_sparse_tensors=...)``, the layout's
  blocks through ``varblock.layout.to_fa4``; causal rows also pass ``causal=True``), graph retained.
* seer (the extra cell ``W1 Hq=Hkv=32``, 64 x 64 blocks, causal, densities 1.0 and 0.5, as issue 11 measured):
  ``blocksparse_flash_attn_varlen_bwd`` of ``block_sparse_attn_varlen_2d.py`` with the ``[B, H, nb, nb]`` mask of
  the same blocks (its kernels are causal and need Hq == Hkv), next to varblock on the same layout.

Timed: the backward alone, CUDA-event median after warm-up. TFLOP/s = 10 * D per kept pair (2.5x the forward's
4 * D; a causal diagonal block counts its allowed pairs). Every system's gradients are also checked (unless
``--no-check``): a probe dO that is zero except on the first 512 query rows of sequence 0 gives dq of those rows
and dk/dv of sequence 0, compared with a float32 PyTorch reference of the same masked attention; the note of each
row holds max(|g - ref| / |ref|) over dq, dk, dv (Frobenius norms). Each anchor runs in try/except (n/a cell,
one-line reason). Bars of issue 11 checked at the end. ``--suite full`` is every problem above (about 3 minutes
on an H200, most of it FlexAttention's and FA4's compiles); ``--suite quick`` is W1 at densities 1.0 / 0.1.
``--dry-run`` builds every layout, FA4 field set, Seer mask, Flex list and probe mask on the CPU and checks them
against the layout (no GPU, no torch).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from anchors import (  # noqa: E402
    DEFAULT_SEER_PATH,
    WORKLOADS,
    bench,
    bench_interleaved,
    fa4_fields,
    load_fa4,
    load_seer,
    make_row,
    seer_block_mask_2d,
    write_json,
)

from varblock import layout as L  # noqa: E402

D = 128
PROBE_ROWS = 512
SEER_CELL = ("W1", 32, 32, 64, (1.0, 0.5))  # workload, Hq, Hkv, block, densities (issue 11's measurement)
SUITES = {"full": ("W1,W2,W3", "1.0,0.5,0.1", "both"), "quick": ("W1", "1.0,0.1", "both")}
BAR_SPARSE, BAR_DET, BAR_TFLOPS, BAR_SEER = 0.15, 1.3, 250.0, 1.5


@dataclass(frozen=True)
class Problem:
    """One measured problem: workload, heads, block size, causality, density and its layout."""

    workload: str
    hq: int
    hkv: int
    block: int
    causal: bool
    density: float
    cu: np.ndarray
    layout: Any
    flops: float  # backward FLOPs: 10 * D per kept (query, key) pair, summed over query heads
    seer_cell: bool = False

    @property
    def name(self) -> str:
        return self.workload if not self.seer_cell else f"{self.workload} Hq=Hkv={self.hq}"


def make_problem(workload: str, hq: int, hkv: int, block: int, causal: bool, density: float,
                 seer_cell: bool = False) -> Problem:
    lens = WORKLOADS[workload][0]
    cu = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
    lay = L.random_blocks(cu, cu, density=density, num_heads=hkv, head_mode="per_kv_head", causal=causal, seed=1,
                          block_q=block, block_k=block)
    return Problem(workload, hq, hkv, block, causal, density, cu, lay, 10.0 * D * lay.num_pairs(hq, hkv), seer_cell)


def problems(args: argparse.Namespace) -> list[Problem]:
    """The run's problems in order: the workload grid, then (unless --no-seer) SeerAttention's cell."""
    causals = {"both": (False, True), "yes": (True,), "no": (False,)}[args.causal]
    out = []
    for w in args.workloads.split(","):
        _, hq, hkv = WORKLOADS[w]
        for causal in causals:
            for dens in (float(x) for x in args.densities.split(",")):
                out.append(make_problem(w, hq, hkv, args.block, causal, dens))
    if not args.no_seer:
        w, hq, hkv, bs, dens_list = SEER_CELL
        dens_list = dens_list if args.suite == "full" else dens_list[:1]
        out += [make_problem(w, hq, hkv, bs, True, dens, seer_cell=True) for dens in dens_list]
    return out


def probe_mask(layout: Any, hl: int, rows: int) -> np.ndarray:
    """bool ``[rows, len_k]``: the pairs of the first ``rows`` query tokens of sequence 0 that layout head ``hl``
    attends (block codes, then the element mask on partial blocks); equals ``layout.token_mask(0, hl)[:rows]``
    without building the whole sequence's matrix."""
    codes = layout.block_codes(0, hl)
    lq, lk = int(layout.seqlens_q[0]), int(layout.seqlens_k[0])
    qi, kj = np.arange(min(rows, lq)), np.arange(lk)
    c = codes[(qi // layout.block_q)[:, None], (kj // layout.block_k)[None, :]]
    out = c == 2
    part = c == 1
    if part.any():
        out |= part & layout.mask.evaluate(qi[:, None], kj[None, :], head=hl, len_q=lq, len_k=lk,
                                           q0=int(layout.cu_seqlens_q[0]), k0=int(layout.cu_seqlens_k[0]))
    return out


# ------------------------------------------------------------------------------------------------ dry run


def _same_codes(p: Problem, mask: np.ndarray) -> bool:
    """Whether Seer's [B, Hq, nb, nb] mask keeps exactly the layout's blocks of every query head."""
    hm = p.layout.head_map(p.hq, p.hkv)
    for b in range(p.layout.batch_size):
        for h in range(p.hq):
            codes = p.layout.block_codes(b, int(hm[h])) > 0
            m = mask[b, h]
            if not (np.array_equal(m[:codes.shape[0], :codes.shape[1]], codes) and m.sum() == codes.sum()):
                return False
    return True


def dry_run(args: argparse.Namespace) -> int:
    """Every host-side input of the run built and checked against its layout; no GPU, no torch."""
    for p in problems(args):
        f = fa4_fields(p.layout, p.hq)
        kept = int(f.full_block_cnt.sum()) + int(f.mask_block_cnt.sum())
        if kept != p.layout.num_entries * (p.hq // p.layout.num_heads):
            raise ValueError(f"{p.name}: FA4 fields hold {kept} blocks, the layout {p.layout.num_entries}")
        extra = ""
        if p.seer_cell:
            ok = _same_codes(p, seer_block_mask_2d(p.layout, p.hq, p.hkv))
            if not ok:
                raise ValueError(f"{p.name}: the Seer mask does not hold the layout's blocks")
            extra = ", seer mask OK"
        try:
            from anchors import flex_block_lists

            pc, _, fc, _ = flex_block_lists(p.layout, p.hq, p.hkv, p.block)
            extra += f", flex {int(fc.sum())} full + {int(pc.sum())} partial cells"
        except ImportError:
            extra += ", flex lists: anchors.flex_block_lists not there"
        if int(p.layout.seqlens_q[0]) <= 8192:
            for hl in range(p.layout.num_heads):
                if not np.array_equal(probe_mask(p.layout, hl, PROBE_ROWS), p.layout.token_mask(0, hl)[:PROBE_ROWS]):
                    raise ValueError(f"{p.name}: probe mask of head {hl} differs from token_mask")
            extra += ", probe masks OK"
        print(f"{p.name:14s} block {p.block} causal={p.causal!s:5s} density {p.density:.1f}: {p.layout.num_entries} "
              f"entries, {p.flops / 1e12:.2f} TFLOP backward, FA4 {kept} blocks{extra}", flush=True)
    seer = Path(args.seer_path) / "seer_attn" / "kernels" / "varlen" / "block_sparse_attn_varlen_2d.py"
    print(f"seer source: {seer} ({'present' if seer.is_file() else 'MISSING'})")
    return 0


# ------------------------------------------------------------------------------------------------ GPU side


@dataclass
class Runner:
    """One system on one problem: ``timed()`` runs its backward once; ``grads(dout)`` returns (dq, dk, dv) as
    ``[tokens, heads, D]`` tensors for a given dO."""

    timed: Callable[[], Any]
    grads: Callable[[Any], tuple[Any, Any, Any]]
    note: str = ""


def varblock_runner(torch: Any, p: Problem, qkv: tuple, deterministic: bool) -> Runner:
    import varblock

    q, k, v = qkv
    plan = varblock.plan(p.cu, p.cu, num_heads_q=p.hq, num_heads_kv=p.hkv, head_dim=D, layout=p.layout)
    out, lse = varblock.attention(q, k, v, plan, return_lse=True)
    dout = torch.randn_like(out)
    bufs = [torch.empty_like(t) for t in qkv]

    def timed() -> Any:
        return varblock.attention_backward(dout, q, k, v, out, lse, plan, deterministic=deterministic,
                                           dq=bufs[0], dk=bufs[1], dv=bufs[2])

    def grads(d: Any) -> tuple[Any, Any, Any]:
        return varblock.attention_backward(d, q, k, v, out, lse, plan, deterministic=deterministic)

    from varblock.ops.attention_backward import bwd_tile_choice

    return Runner(timed, grads, bwd_tile_choice(plan).reason)


def flex_runner(torch: Any, flex: Any, p: Problem, qkv: tuple) -> Runner:
    from anchors import flex_block_mask

    bm = flex_block_mask(p.layout, p.hq, p.hkv, p.block, "cuda", p.causal)
    qf, kf, vf = (x.transpose(0, 1)[None].detach().requires_grad_() for x in qkv)
    out = flex(qf, kf, vf, block_mask=bm, enable_gqa=p.hq != p.hkv)
    dout = torch.randn_like(out)
    ins = (qf, kf, vf)

    def grads(d: Any) -> tuple[Any, Any, Any]:
        g = torch.autograd.grad(out, ins, d.transpose(0, 1)[None], retain_graph=True)
        return tuple(x[0].transpose(0, 1) for x in g)

    return Runner(lambda: torch.autograd.grad(out, ins, dout, retain_graph=True), grads)


def fa4_runner(torch: Any, fa4: Any, p: Problem, qkv: tuple) -> Runner:
    from anchors import fa4_block_sparse

    bst = fa4_block_sparse(p.layout, "cuda", p.hq)
    ins = tuple(x.detach().requires_grad_() for x in qkv)
    cu = torch.from_numpy(p.cu).cuda()
    mx = int(np.diff(p.cu).max())
    out = fa4(*ins, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=mx, max_seqlen_k=mx, causal=p.causal,
              block_sparse_tensors=bst)
    out = out[0] if isinstance(out, tuple) else out
    dout = torch.randn_like(out)

    def grads(d: Any) -> tuple[Any, Any, Any]:
        return torch.autograd.grad(out, ins, d, retain_graph=True)

    return Runner(lambda: torch.autograd.grad(out, ins, dout, retain_graph=True), grads,
                  "causal=True + block sparsity" if p.causal else "")


def seer_runner(torch: Any, mod: Any, p: Problem, qkv: tuple) -> Runner:
    if p.hq != p.hkv or not p.causal or p.block != 64:
        raise ValueError("SeerAttention's backward is causal, needs Hq == Hkv and is measured at 64 x 64 blocks")
    q, k, v = qkv
    mask = torch.from_numpy(seer_block_mask_2d(p.layout, p.hq, p.hkv)).cuda()
    cu = torch.from_numpy(p.cu).cuda()
    mx, scale = int(np.diff(p.cu).max()), D ** -0.5
    out, lse = mod.blocksparse_flash_attn_varlen_fwd(q, k, v, cu, cu, mx, scale, mask, p.block)
    dout = torch.randn_like(out)

    def grads(d: Any) -> tuple[Any, Any, Any]:
        return mod.blocksparse_flash_attn_varlen_bwd(d, q, k, v, out, lse, cu, cu, mx, scale, mask, p.block)

    return Runner(lambda: grads(dout), grads)


def reference_probe(torch: Any, p: Problem, qkv: tuple, dout: Any) -> tuple[Any, Any, Any]:
    """float32 (dq of the probe rows, dk and dv of sequence 0) for ``dout`` (zero outside the probe rows)."""
    q, k, v = qkv
    lq, lk = int(p.layout.seqlens_q[0]), int(p.layout.seqlens_k[0])
    r = min(PROBE_ROWS, lq)
    hm = p.layout.head_map(p.hq, p.hkv)
    group = p.hq // p.hkv
    qs, ks, vs, gs = q[:r].float(), k[:lk].float(), v[:lk].float(), dout[:r].float()
    dq, dk, dv = torch.zeros_like(qs), torch.zeros_like(ks), torch.zeros_like(vs)
    masks: dict[int, Any] = {}
    for h in range(p.hq):
        kh, hl = h // group, int(hm[h])
        if hl not in masks:
            masks[hl] = torch.from_numpy(probe_mask(p.layout, hl, r)).cuda()
        qh, kk, vv = (x.clone().requires_grad_() for x in (qs[:, h], ks[:, kh], vs[:, kh]))
        s = (qh @ kk.T) * D ** -0.5
        o = torch.softmax(s.masked_fill(~masks[hl], float("-inf")), dim=-1) @ vv
        a, b, c = torch.autograd.grad(o, (qh, kk, vv), gs[:, h])
        dq[:, h] += a
        dk[:, kh] += b
        dv[:, kh] += c
    return dq, dk, dv


def probe_error(torch: Any, p: Problem, qkv: tuple, runner: Runner, probe: tuple) -> float:
    """max over dq, dk, dv of |g - ref| / |ref| (Frobenius) on the probe (see the module docstring)."""
    dout, ref = probe
    dq, dk, dv = runner.grads(dout)
    r, lk = ref[0].shape[0], ref[1].shape[0]
    pairs = ((dq[:r], ref[0]), (dk[:lk], ref[1]), (dv[:lk], ref[2]))
    return max(float((a.float() - b).norm() / b.norm().clamp_min(1e-30)) for a, b in pairs)


def make_probe(torch: Any, p: Problem, qkv: tuple) -> tuple[Any, tuple[Any, Any, Any]]:
    q = qkv[0]
    dout = torch.zeros_like(q)
    r = min(PROBE_ROWS, int(p.layout.seqlens_q[0]))
    dout[:r] = torch.randn_like(q[:r])
    return dout, reference_probe(torch, p, qkv, dout)


def _why(ex: Exception) -> str:
    """``Type: first line of the message`` (at most 200 characters of it)."""
    return f"{type(ex).__name__}: {(str(ex).strip().splitlines() or [''])[0][:200]}"


def finish(torch: Any, name: str, runner: Runner | None, ms: float | None, note: str, p: Problem, qkv: tuple,
           probe: Any) -> dict[str, Any]:
    """The row of one timed system: check its gradients on the probe; a failed check keeps the time and says so
    in the note (a system that did not run has ``ms`` None and its reason in ``note``)."""
    if ms is not None and runner is not None:
        note = runner.note
        if probe is not None:
            sep = "; " if note else ""
            try:
                err = probe_error(torch, p, qkv, runner, probe)
                note += f"{sep}max rel err vs fp32 (seq 0, first {PROBE_ROWS} query rows) {err:.1e}"
            except Exception as ex:  # the time stands; the check could not run
                note += f"{sep}gradient check failed: {_why(ex)}"
    tf = p.flops / ms / 1e9 if ms else None
    return make_row("backward", p.name, name, causal=p.causal, density=p.density, block=p.block, head_dim=D, ms=ms,
                    tflops=tf, note=note)


def time_all(runners: dict[str, Runner], rep: int, notes: dict[str, str], p: Problem) -> dict[str, float]:
    """Times of every runner, interleaved (``anchors.bench_interleaved``); if that fails, each alone (a runner
    that fails then gets its reason in ``notes``)."""
    try:
        return bench_interleaved({n: r.timed for n, r in runners.items()}, warmup=3, rep=rep) if runners else {}
    except Exception as ex:
        print(f"    interleaved timing failed ({_why(ex)}); timing each system alone", flush=True)
    out = {}
    for n, r in runners.items():
        try:
            out[n] = bench(r.timed, warmup=3, rep=rep)
        except Exception as ex:
            print(f"    {n} on {p.name} causal={p.causal} density={p.density}: n/a ({_why(ex)})", flush=True)
            notes[n] = f"n/a: {_why(ex)}"
    return out


def run_problem(torch: Any, args: argparse.Namespace, p: Problem, qkv: tuple, anchors: dict[str, Any]
                ) -> list[dict[str, Any]]:
    probe = None
    if not args.no_check:
        try:
            probe = make_probe(torch, p, qkv)
        except Exception as ex:  # no reference: time without the check
            print(f"    reference for {p.name} causal={p.causal} density={p.density} failed ({_why(ex)})", flush=True)
    makers: dict[str, Callable[[], Runner]] = {"varblock": lambda: varblock_runner(torch, p, qkv, False)}
    if not args.no_deterministic:
        makers["varblock-det"] = lambda: varblock_runner(torch, p, qkv, True)
    if p.seer_cell:
        makers["seer"] = lambda: seer_runner(torch, _need(anchors, "seer"), p, qkv)
    else:
        if not args.no_flex:
            makers["flex"] = lambda: flex_runner(torch, _need(anchors, "flex"), p, qkv)
        if not args.no_fa4:
            makers["fa4"] = lambda: fa4_runner(torch, _need(anchors, "fa4"), p, qkv)
    runners: dict[str, Runner] = {}
    notes: dict[str, str] = {}
    for name, mk in makers.items():
        try:
            runners[name] = mk()
        except Exception as ex:  # any anchor failure: one line, n/a cell, keep going
            print(f"    {name} on {p.name} causal={p.causal} density={p.density}: n/a ({_why(ex)})", flush=True)
            notes[name] = f"n/a: {_why(ex)}"
    ms = time_all(runners, args.rep, notes, p)
    rows = [finish(torch, n, runners.get(n), ms.get(n), notes.get(n, ""), p, qkv, probe) for n in makers]
    cells = "   ".join(f"{r['system']} {_f(r['ms'], 8, 3)} ms {_f(r['tflops'], 6, 1)} TF/s" for r in rows)
    print(f"{p.name:14s} causal={p.causal!s:5s} density={p.density:.1f}  {cells}", flush=True)
    return rows


def _need(anchors: dict[str, Any], name: str) -> Any:
    if anchors.get(name) is None:
        raise RuntimeError(f"{name} not loaded: {anchors.get(name + '_why', 'disabled')}")
    return anchors[name]


def _f(x: float | None, w: int, p: int) -> str:
    return f"{'n/a':>{w}}" if x is None else f"{x:{w}.{p}f}"


def _compiled_flex(torch: Any) -> Any:
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def load_anchors(torch: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The anchor callables that loaded; for the others None and ``<name>_why`` (printed once)."""
    out: dict[str, Any] = {}
    loaders = {
        "flex": (args.no_flex, lambda: _compiled_flex(torch)),
        "fa4": (args.no_fa4, lambda: load_fa4()[0]),
        "seer": (args.no_seer, lambda: load_seer("block_sparse_attn_varlen_2d", args.seer_path)),
    }
    for name, (skip, load) in loaders.items():
        out[name] = None
        if skip:
            out[name + "_why"] = "disabled by a --no-* flag"
            continue
        try:
            out[name] = load()
        except Exception as ex:  # report once, the column becomes n/a
            out[name + "_why"] = f"{type(ex).__name__}: {ex}"
            print(f"{name}: not loaded ({out[name + '_why']})", flush=True)
    return out


# ------------------------------------------------------------------------------------------------ report


def report(rows: list[dict[str, Any]]) -> bool:
    """Markdown table by problem, then the issue-11 bars one run can check; True when all checked bars hold."""
    systems = list(dict.fromkeys(r["system"] for r in rows))
    keys = list(dict.fromkeys((r["workload"], r["causal"], r["density"], r["block"]) for r in rows))
    by = {(r["workload"], r["causal"], r["density"], r["block"], r["system"]): r for r in rows}
    print("\n| workload | block | causal | density | " + " | ".join(f"{s} ms | {s} TFLOP/s" for s in systems) + " |")
    print("|---|---:|---|---:|" + "---:|" * (2 * len(systems)))
    for k in keys:
        cells = [by.get((*k, s), {}) for s in systems]
        print(f"| {k[0]} | {k[3]} | {k[1]} | {k[2]:.1f} | " + " | ".join(
            f"{_f(c.get('ms'), 0, 3).strip()} | {_f(c.get('tflops'), 0, 1).strip()}" for c in cells) + " |")
    notes = [r for r in rows if r["note"]]
    if notes:
        print("\nnotes:")
        for r in notes:
            print(f"  {r['workload']} causal={r['causal']} density={r['density']} {r['system']}: {r['note']}")
    return check_bars(by, keys)


def check_bars(by: dict, keys: list) -> bool:
    ok, lines = True, []

    def ms(w, c, d, b, s):  # noqa: ANN001, ANN202
        return (by.get((w, c, d, b, s)) or {}).get("ms")

    for w, c, _, b in {(k[0], k[1], None, k[3]) for k in keys}:
        t1, t01 = ms(w, c, 1.0, b, "varblock"), ms(w, c, 0.1, b, "varblock")
        if w == "W2" and not c and t1 and t01:
            good = t01 / t1 <= BAR_SPARSE
            ok &= good
            lines.append(f"W2 non-causal time(0.1) / time(1.0) = {t01 / t1:.3f} (bar <= {BAR_SPARSE})"
                         f" -> {'OK' if good else 'NOT MET'}")
    for k in keys:
        r = by.get((*k, "varblock")) or {}
        t, td = r.get("ms"), ms(*k, "varblock-det")
        if t and td and td / t > BAR_DET:
            ok = False
            lines.append(f"{k[0]} causal={k[1]} density={k[2]}: deterministic / default = {td / t:.2f} "
                         f"(bar <= {BAR_DET}) -> NOT MET")
        if k[0] in ("W1", "W2") and k[2] == 1.0 and r.get("tflops") and "Hq=" not in k[0]:
            good = r["tflops"] >= BAR_TFLOPS
            ok &= good
            lines.append(f"{k[0]} causal={k[1]} density 1.0: {r['tflops']:.1f} TFLOP/s (bar >= {BAR_TFLOPS:.0f})"
                         f" -> {'OK' if good else 'NOT MET'}")
        ts = ms(*k, "seer")
        if t and ts:
            good = ts / t >= BAR_SEER
            ok &= good
            lines.append(f"{k[0]} {k[3]}x{k[3]} density {k[2]}: SeerAttention / varblock = {ts / t:.2f}x "
                         f"(bar >= {BAR_SEER}) -> {'OK' if good else 'NOT MET'}")
    dets = [ms(*k, "varblock-det") / ms(*k, "varblock") for k in keys if ms(*k, "varblock-det") and ms(*k, "varblock")]
    if dets:
        lines.append(f"deterministic / default over all problems: {min(dets):.2f}-{max(dets):.2f}x (bar <= {BAR_DET})")
    print("\nbars (issue 11):\n  " + "\n  ".join(lines or ["nothing measured"]))
    return ok


# ------------------------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", choices=sorted(SUITES), default="full")
    ap.add_argument("--workloads", default=None, help="comma list (default: the suite's)")
    ap.add_argument("--densities", default=None, help="comma list (default: the suite's)")
    ap.add_argument("--causal", choices=("both", "yes", "no"), default=None)
    for flag in ("flex", "fa4", "seer", "deterministic", "check"):
        ap.add_argument(f"--no-{flag}", action="store_true")
    ap.add_argument("--seer-path", default=str(DEFAULT_SEER_PATH))
    ap.add_argument("--block", type=int, default=128, help="block size of the workload grid (Seer's cell is 64)")
    ap.add_argument("--rep", type=int, default=10, help="timed repetitions per measurement (median)")
    ap.add_argument("--json", default=None, help="write the rows (benchmarks/anchors.py schema) here")
    ap.add_argument("--plot", default=None, metavar="DIR", help="also write DIR/backward.png (benchmarks/plots.py)")
    ap.add_argument("--dry-run", action="store_true", help="build and check every host-side input; no GPU")
    args = ap.parse_args(argv)
    w, d, c = SUITES[args.suite]
    args.workloads = args.workloads or w
    args.densities = args.densities or d
    args.causal = args.causal or c
    unknown = set(args.workloads.split(",")) - set(WORKLOADS)
    if unknown:
        ap.error(f"--workloads: unknown {sorted(unknown)}; choose from {sorted(WORKLOADS)}")
    try:
        dens = [float(x) for x in args.densities.split(",")]
    except ValueError:
        ap.error(f"--densities: expected comma-separated floats, got {args.densities!r}")
    if any(not 0.0 <= x <= 1.0 or math.isnan(x) for x in dens):
        ap.error(f"--densities: each must lie in [0, 1], got {args.densities!r}")
    if args.rep < 1 or args.block < 16 or args.block % 16:
        ap.error("--rep must be >= 1 and --block a positive multiple of 16")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        return dry_run(args)
    import torch

    import varblock

    torch.manual_seed(0)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, varblock {varblock.__version__}, d{D}, bf16, "
          f"backward, suite {args.suite}", flush=True)
    anchors = load_anchors(torch, args)
    rows: list[dict[str, Any]] = []
    qkv, key = None, None
    for p in problems(args):
        if key != (p.workload, p.hq, p.hkv):
            qkv = None
            torch.cuda.empty_cache()
            total = int(p.cu[-1])
            qkv = tuple(torch.randn(total, h, D, device="cuda", dtype=torch.bfloat16) for h in (p.hq, p.hkv, p.hkv))
            key = (p.workload, p.hq, p.hkv)
        rows += run_problem(torch, args, p, qkv, anchors)
    ok = report(rows)
    if args.json:
        write_json(args.json, rows, {"bench": "backward", "device": torch.cuda.get_device_name(),
                                     "torch": torch.__version__, "suite": args.suite})
    if args.plot:
        import plots

        plots.write_plots(rows, args.plot)
    print(f"\nbars: {'met' if ok else 'NOT met'} (where measured)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
