"""Forward attention side by side in one run: both varblock families, FlexAttention, FA4 and SeerAttention.

    python benchmarks/bench_attention.py --suite full [--seer-path .seer] [--json out.json]   # issue 10's cells
    python benchmarks/bench_attention.py [--workloads W1,W2,W3] [--densities 1.0,0.5,0.1] [--causal both]
        [--head-dim 128] [--block 128] [--backends ...] [--no-flex] [--no-fa4] [--no-seer] [--reps 10]
    python benchmarks/bench_attention.py --suite full --dry-run      # CPU: every layout / mask / export, no launch

Workloads (shared/anchors.md): W1 8 mixed sequences Hq32/Hkv8, W2 1x32k H16, W3 64x512 H16, and VB (16k tokens,
one sequence, Hq32/Hkv8, per-KV-head row and column spans drawn from {64, 128, 192}, FlashInfer-style, built with
``varblock.layout.from_flashinfer``). Random kept blocks at the given density (the diagonal always kept), one
pattern per KV head shared by its GQA group, bf16. Every system gets exactly the same kept blocks: FA4 through
``layout.to_fa4`` (dense causal FA4 for causal rows at density 1.0, where it is the same work), FlexAttention a
BlockMask of the layout's cells, SeerAttention's ``block_sparse_attn_varlen_2d`` the dense per-sequence mask (causal
rows only: that kernel is causal). TFLOP/s = 4 * D * kept pairs (causal diagonal blocks count their allowed pairs)
/ time, CUDA-event median after warm-up; each anchor's first output is compared with varblock's (``note``).
A column that cannot run prints one line with the reason and shows n/a; it never stops the run. FlashInfer is not
on the GPU machine: its variable-block numbers are issue 10's measurement, not this run's.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import anchors as A  # noqa: E402
from anchors import bench, bench_interleaved  # noqa: E402,F401  (bench re-exported: bench_backward / bench_pooling import it)
from forward_report import FLASHINFER, VB_BLOCK, VB_SIZES, bar_checks, summary_table, w2_scaling  # noqa: E402,F401

import varblock  # noqa: E402
from varblock import layout as L  # noqa: E402

WORKLOADS = {**A.WORKLOADS, "VB": ([16384], 32, 8)}  # VB: variable blocks, one sequence of 16k tokens
D = 128
BS = 128
FA4_BLOCK = 128  # FA4's sm90 varlen block sparsity: block_size == (tile_m, tile_n) = (128, 128) at d64 / d128
SEER_MODULE = "block_sparse_attn_varlen_2d"
SEER_HEAD_DIMS = (64, 128, 256)
FLASHINFER_CITED = {0.5: 342.0, 0.1: 278.0}  # issue 10: FlashInfer 0.5.3 variable blocks, VB, d128 (not this run)
SUITE_NOTE = "issue 10's FlashInfer measurement (VariableBlockSparseAttentionWrapper), not this run"


@dataclass(frozen=True)
class Cell:
    """One benchmark configuration; ``block`` None = variable spans (VB)."""

    workload: str
    causal: bool
    densities: tuple[float, ...]
    head_dim: int
    block: int | None


SUITES: dict[str, tuple[Cell, ...]] = {
    "full": (
        Cell("W1", False, (1.0, 0.5, 0.1), 128, 128),
        Cell("W2", False, (1.0, 0.5, 0.1), 128, 128),
        Cell("W3", False, (1.0, 0.5, 0.1), 128, 128),
        Cell("W1", True, (1.0, 0.5, 0.1), 128, 128),
        Cell("W1", False, (1.0, 0.5), 64, 128),
        Cell("W1", True, (1.0, 0.5, 0.1), 128, 64),
        Cell("VB", False, (0.5, 0.1), 128, None),
    ),
}


# ------------------------------------------------------------------------------------------------------ layouts


def cu_seqlens(workload: str) -> np.ndarray:
    """int32 cumulative lengths of a workload."""
    lens = WORKLOADS[workload][0]
    return np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)


def variable_spans(total: int, rng: np.random.Generator) -> np.ndarray:
    """Sizes from :data:`VB_SIZES` in random order summing to ``total`` (a multiple of 64): equal counts of each
    size, the remainder filled largest size first (so every head gets the same number of spans)."""
    if total < 0 or total % 64:
        raise ValueError(f"total: expected a non-negative multiple of 64 tokens, got {total}")
    n, rest = divmod(total, sum(VB_SIZES))
    sizes = list(VB_SIZES) * n
    for s in sorted(VB_SIZES, reverse=True):
        while rest >= s:
            sizes.append(s)
            rest -= s
    return rng.permutation(np.array(sizes, dtype=np.int64))


def variable_layout(total: int, num_heads_kv: int, density: float, seed: int = 1) -> L.BlockSparseLayout:
    """VB: one sequence of ``total`` tokens, per-KV-head row / column spans from :data:`VB_SIZES`, each block kept
    with probability ``density`` plus every block the diagonal crosses (no empty row), via ``from_flashinfer``."""
    rng = np.random.default_rng(seed)
    rows = np.stack([variable_spans(total, rng) for _ in range(num_heads_kv)])
    cols = np.stack([variable_spans(total, rng) for _ in range(num_heads_kv)])
    r0, c0 = np.cumsum(rows, 1) - rows, np.cumsum(cols, 1) - cols
    diag = (r0[:, :, None] < (c0 + cols)[:, None, :]) & (c0[:, None, :] < (r0 + rows)[:, :, None])
    keep = (rng.random(diag.shape) < density) | diag
    return L.from_flashinfer(keep, rows, cols)


def make_layout(cell: Cell, density: float) -> L.BlockSparseLayout:
    """The kept blocks of one (cell, density) point, per KV head."""
    cu = cu_seqlens(cell.workload)
    hkv = WORKLOADS[cell.workload][2]
    if cell.block is None:
        if cell.causal:
            raise ValueError("causal: the variable-block workload is non-causal (FlashInfer's measurement)")
        return variable_layout(int(cu[-1]), hkv, density)
    return L.random_blocks(cu, cu, density=density, num_heads=hkv, head_mode="per_kv_head", causal=cell.causal,
                           seed=1, block_q=cell.block, block_k=cell.block)


def flex_block_mask(lay: L.BlockSparseLayout, hq: int, hkv: int, total: int, causal: bool, bs: int = BS) -> Any:
    """FlexAttention BlockMask of the layout on the current CUDA device (kept for bench_backward's call)."""
    if total != int(lay.cu_seqlens_q[-1]):
        raise ValueError(f"total: expected the layout's {int(lay.cu_seqlens_q[-1])} packed tokens, got {total}")
    return A.flex_block_mask(lay, hq, hkv, bs, "cuda", causal)


# ------------------------------------------------------------------------------------------------------ columns


@dataclass
class Point:
    """One (cell, density) point: its layout, problem and (on a GPU) tensors and varblock's reference output."""

    cell: Cell
    density: float
    layout: L.BlockSparseLayout
    hq: int
    hkv: int
    flops: float
    tensors: Any = None  # (q, k, v, cu_device, max_seqlen) on a GPU run
    ref: Any = None  # the fastest varblock family's output


class NotApplicable(Exception):
    """A column that cannot run this point (the message says why)."""


def fa4_host_input(pt: Point) -> tuple[str, Any]:
    """('dense_causal' | 'sparse', FA4 fields or None), or NotApplicable with the reason."""
    lay, cell = pt.layout, pt.cell
    if not lay.is_fixed:
        raise NotApplicable("FA4 block sparsity takes fixed block sizes; variable spans are not expressible")
    if cell.causal:
        if pt.density < 1.0:
            raise NotApplicable("causal diagonal blocks are partial: FA4 would need a CuTe mask_mod; only dense "
                                "causal FA4 (density 1.0) is the same work")
        return "dense_causal", None
    if cell.block != FA4_BLOCK:
        raise NotApplicable(f"FA4's sm90 varlen block sparsity needs {FA4_BLOCK}x{FA4_BLOCK} blocks "
                            f"(block_size == (tile_m, tile_n)); got {cell.block}x{cell.block}")
    return "sparse", A.fa4_fields(lay, pt.hq)


def seer_host_input(pt: Point) -> np.ndarray:
    """SeerAttention's 2D mask for this point, or NotApplicable with the reason."""
    if not pt.cell.causal:
        raise NotApplicable("SeerAttention's block_sparse_attn_varlen_2d is causal only")
    if pt.cell.block is None:
        raise NotApplicable("SeerAttention takes square fixed blocks")
    if pt.cell.head_dim not in SEER_HEAD_DIMS:
        raise NotApplicable(f"SeerAttention's kernel takes head dims {SEER_HEAD_DIMS}")
    return A.seer_block_mask_2d(pt.layout, pt.hq, pt.hkv)


def flex_host_input(pt: Point) -> tuple:
    """Flex lists at the layout's block (64 for variable spans: VB's sizes are multiples of 64)."""
    return A.flex_block_lists(pt.layout, pt.hq, pt.hkv, pt.cell.block or 64)


def run_fa4(pt: Point, fa4_fn: Callable[..., Any]) -> Callable[[], Any]:
    """FA4 call on this point's tensors."""
    kind, fields = fa4_host_input(pt)
    q, k, v, cu, mx = pt.tensors
    common = dict(cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=mx, max_seqlen_k=mx)
    if kind == "dense_causal":
        return lambda: fa4_fn(q, k, v, causal=True, **common)
    bst = A.fa4_to_torch(fields, q.device)
    return lambda: fa4_fn(q, k, v, block_sparse_tensors=bst, **common)


def run_seer(pt: Point, seer: Any) -> Callable[[], Any]:
    """SeerAttention forward (``blocksparse_flash_attn_varlen_fwd``; its wrapper copies cu_seqlens to the host)."""
    import torch

    mask = torch.from_numpy(seer_host_input(pt)).to(pt.tensors[0].device)
    q, k, v, cu, mx = pt.tensors
    scale = 1.0 / math.sqrt(pt.cell.head_dim)
    return lambda: seer.blocksparse_flash_attn_varlen_fwd(q, k, v, cu, cu, mx, scale, mask,
                                                          block_size=pt.cell.block)


def flex_kernel_options(block: int) -> dict[str, Any]:
    """Flex's tiles must divide the mask's blocks; its default forward tile is 128 rows, so smaller blocks get
    64 x 64 tiles (past that torch raises "Q and KV block size must be divisible by BLOCK_M and BLOCK_N")."""
    return {} if block >= 128 else {"kernel_options": {"BLOCK_M": 64, "BLOCK_N": 64}}


def run_flex(pt: Point, flex: Any) -> Callable[[], Any]:
    """FlexAttention (torch.compile'd) with the layout's BlockMask; output back to [total, H, D]."""
    q, k, v, _, _ = pt.tensors
    g = pt.cell.block or 64
    bm = A.flex_block_mask(pt.layout, pt.hq, pt.hkv, g, q.device, pt.cell.causal)
    qf, kf, vf = (x.transpose(0, 1)[None] for x in (q, k, v))
    kw = dict(flex_kernel_options(g), enable_gqa=pt.hq != pt.hkv)
    return lambda: flex(qf, kf, vf, block_mask=bm, **kw)[0].transpose(0, 1)


# ------------------------------------------------------------------------------------------------------ running


@dataclass
class Context:
    """What stays loaded across points: args, anchors (None: off or failed to load, reason printed)."""

    args: argparse.Namespace
    backends: list[str]
    rows: list[dict[str, Any]]
    flex: Any = None
    fa4: Any = None
    seer: Any = None
    off: dict[str, str] | None = None  # system -> why the whole column is off


def _row(pt: Point, system: str, ms: float | None, note: str) -> dict[str, Any]:
    c = pt.cell
    tf = pt.flops / ms / 1e9 if ms is not None and ms > 0 else None
    return A.make_row("forward", c.workload, system, causal=c.causal, density=pt.density,
                      block=c.block if c.block is not None else VB_BLOCK,
                      head_dim=c.head_dim, ms=ms, tflops=tf, note=note)


def _emit(ctx: Context, pt: Point, system: str, ms: float | None, note: str) -> None:
    r = _row(pt, system, ms, note)
    ctx.rows.append(r)
    tf = f"{r['tflops']:7.1f} TFLOP/s" if r["tflops"] is not None else "    n/a"
    t = f"{ms:8.3f} ms" if ms is not None else "      n/a"
    print(f"  {system:28s} {t} {tf}  {note}", flush=True)


def _rel_diff(out: Any, ref: Any) -> str:
    if ref is None:
        return ""
    o = out[0] if isinstance(out, tuple) else out
    d = float((o.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-30))
    return f"rel. diff vs varblock {d:.1e}"


def build_column(ctx: Context, pt: Point, system: str, make: Callable[[], Callable[[], Any]],
                 cols: dict[str, Any]) -> None:
    """Build one column and make its first call (JIT / autotune); ``cols[system]`` becomes ``(fn, output)``, or a
    note (n/a with the reason) when it cannot run: one broken anchor never stops the run."""
    if ctx.off and system in ctx.off:
        cols[system] = ctx.off[system]
        return
    try:
        fn = make()
        out = fn()
        out = out[0] if isinstance(out, tuple) else out
        cols[system] = (fn, out.clone())
    except NotApplicable as ex:
        cols[system] = f"n/a: {ex}"
    except Exception as ex:
        first = str(ex).splitlines()[0][:200] if str(ex) else ""
        cols[system] = f"failed: {type(ex).__name__}: {first}"


def run_point(ctx: Context, pt: Point) -> None:
    """Every column of one point on the GPU, timed interleaved (``anchors.bench_interleaved``); the fastest
    varblock family's output is the reference the anchors' outputs are compared with."""
    import torch

    q, k, v, cu, _ = pt.tensors
    cu_np = cu_seqlens(pt.cell.workload)
    cols: dict[str, Any] = {}
    for b in ctx.backends:
        def make(b: str = b) -> Callable[[], Any]:
            try:
                p = varblock.plan(cu_np, cu_np, num_heads_q=pt.hq, num_heads_kv=pt.hkv,
                                  head_dim=pt.cell.head_dim, layout=pt.layout, backend=b)
            except ValueError as ex:  # the family declines this problem
                raise NotApplicable(f"declined: {ex}") from ex
            out = torch.empty_like(q)
            return lambda: varblock.attention(q, k, v, p, out=out)

        build_column(ctx, pt, f"varblock:{b}", make, cols)
    anchors = {"flex": (ctx.args.no_flex, lambda: run_flex(pt, ctx.flex)),
               "fa4": (ctx.args.no_fa4, lambda: run_fa4(pt, ctx.fa4)),
               "seer": (ctx.args.no_seer, lambda: run_seer(pt, ctx.seer))}
    for name, (off, make_anchor) in anchors.items():
        if not off:
            build_column(ctx, pt, name, make_anchor, cols)
    ready = {n: c[0] for n, c in cols.items() if isinstance(c, tuple)}
    try:
        ms = bench_interleaved(ready, warmup=ctx.args.warmup, rep=ctx.args.reps) if ready else {}
    except Exception as ex:  # a column failing only when timed: time the others alone
        print(f"  interleaved timing failed ({type(ex).__name__}: {ex}); timing each column alone", flush=True)
        ms = {}
        for n, fn in ready.items():
            try:
                ms[n] = bench(fn, warmup=ctx.args.warmup, rep=ctx.args.reps)
            except Exception as ex2:
                cols[n] = f"failed: {type(ex2).__name__}: {str(ex2).splitlines()[0][:200] if str(ex2) else ''}"
    vb = [n for n in ms if n.startswith("varblock")]
    pt.ref = cols[min(vb, key=ms.__getitem__)][1] if vb else None
    for n, c in cols.items():
        if isinstance(c, str) or n not in ms:
            _emit(ctx, pt, n, None, c if isinstance(c, str) else "")
        else:
            _emit(ctx, pt, n, ms[n], "" if n.startswith("varblock") else _rel_diff(c[1], pt.ref))
    if pt.cell.workload == "VB" and pt.density in FLASHINFER_CITED:
        tf = FLASHINFER_CITED[pt.density]
        ctx.rows.append(A.make_row("forward", "VB", FLASHINFER, causal=False, density=pt.density, block=VB_BLOCK,
                                   head_dim=pt.cell.head_dim, ms=None, tflops=tf, note=SUITE_NOTE))
        print(f"  {FLASHINFER:28s}       n/a {tf:7.1f} TFLOP/s  {SUITE_NOTE}", flush=True)


def roundtrip(pt: Point, system: str) -> str:
    """CPU check of one column's host input: read it back with varblock's importer for that format and compare
    the kept cells with the point's layout. Returns a note; NotApplicable when the column does not run."""
    cu, c, lay = cu_seqlens(pt.cell.workload), pt.cell, pt.layout
    g = c.block or 64
    if system == "flex":
        pc, pi, fc, fi = flex_host_input(pt)
        back = L.from_flex(kv_num_blocks=pc[None], kv_indices=pi[None], full_kv_num_blocks=fc[None],
                           full_kv_indices=fi[None], BLOCK_SIZE=g, packed=True, cu_seqlens_q=cu,
                           cu_seqlens_k=cu, causal=c.causal, head_mode="per_q_head")
        what = f"Flex lists {pi.shape} at {g}x{g}"
    elif system == "fa4":
        kind, fields = fa4_host_input(pt)
        if kind == "dense_causal":
            back, what = L.causal(cu, cu, block_q=g, block_k=g), "dense causal FA4"
        else:
            back = L.from_fa4(fields, cu, cu)
            what = f"FA4 fields cnt {fields.full_block_cnt.shape} idx {fields.full_block_idx.shape}"
    else:
        mask = seer_host_input(pt)
        back = L.from_seer_2d(mask, cu, cu, block_size=g, head_mode="per_q_head")
        what = f"Seer mask {mask.shape}"
    same = A.same_cells(lay, back, pt.hq, pt.hkv, g)
    return f"dry-run: {what}, same kept cells as varblock's layout: {'yes' if same else 'MISMATCH'}"


def dry_run_point(ctx: Context, pt: Point) -> None:
    """CPU: build every anchor column's host input and check it against the layout (n/a reasons as on a GPU)."""
    for system in ("flex", "fa4", "seer"):
        try:
            _emit(ctx, pt, system, None, roundtrip(pt, system))
        except NotApplicable as ex:
            _emit(ctx, pt, system, None, f"n/a: {ex}")


def _raise_recompile_limits(torch: Any) -> None:
    """One compiled Flex serves every shape of the suite: lift dynamo's per-function recompile limits (past them
    it would fall back to eager Flex, which materialises the scores)."""
    cfg = torch._dynamo.config
    for name, at_least in (("recompile_limit", 64), ("cache_size_limit", 64), ("accumulated_recompile_limit", 512),
                           ("accumulated_cache_size_limit", 512)):
        try:
            if hasattr(cfg, name):
                setattr(cfg, name, max(int(getattr(cfg, name)), at_least))
        except Exception as ex:  # a renamed / read-only knob: keep going
            print(f"flex: could not raise torch._dynamo.config.{name}: {ex}", flush=True)


def load_anchors(ctx: Context) -> None:
    """Load Flex / FA4 / Seer once; a failure turns that column off with the reason (printed once)."""
    ctx.off = {}
    if not ctx.args.no_flex:
        try:
            import torch
            from torch.nn.attention.flex_attention import flex_attention

            _raise_recompile_limits(torch)
            ctx.flex = torch.compile(flex_attention, dynamic=False)
        except Exception as ex:
            ctx.off["flex"] = f"failed to load: {type(ex).__name__}: {ex}"
    if not ctx.args.no_fa4:
        try:
            ctx.fa4 = A.load_fa4()[0]
        except ImportError as ex:
            ctx.off["fa4"] = f"failed to load: {ex}"
    if not ctx.args.no_seer:
        try:
            ctx.seer = A.load_seer(SEER_MODULE, ctx.args.seer_path)
        except Exception as ex:
            ctx.off["seer"] = f"failed to load: {type(ex).__name__}: {ex}"
    for s, why in ctx.off.items():
        print(f"{s}: {why}", flush=True)


def make_point(cell: Cell, density: float, on_gpu: bool) -> Point:
    """A point's layout, kept-pair FLOPs and, on a GPU, fresh bf16 tensors."""
    lens, hq, hkv = WORKLOADS[cell.workload]
    lay = make_layout(cell, density)
    pt = Point(cell, density, lay, hq, hkv, 4.0 * cell.head_dim * lay.num_pairs(hq, hkv))
    if on_gpu:
        import torch

        total, d = sum(lens), cell.head_dim
        q = torch.randn(total, hq, d, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(total, hkv, d, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(total, hkv, d, device="cuda", dtype=torch.bfloat16)
        pt.tensors = (q, k, v, torch.from_numpy(cu_seqlens(cell.workload)).cuda(), max(lens))
    return pt


# ------------------------------------------------------------------------------------------------------ CLI


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line arguments (``--suite full`` replaces the workload / density / causal / d / block options)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", choices=sorted(SUITES), help="run a predefined set of cells (issue 10's bar)")
    ap.add_argument("--workloads", default="W1,W2,W3")
    ap.add_argument("--densities", default="1.0,0.5,0.1")
    ap.add_argument("--causal", choices=("no", "yes", "both"), default="both")
    ap.add_argument("--head-dim", type=int, default=D)
    ap.add_argument("--block", type=int, default=BS, help="block size of the random layouts (VB ignores it)")
    ap.add_argument("--backends", default=None, help="varblock families (default: every attention_fwd family)")
    ap.add_argument("--no-flex", action="store_true")
    ap.add_argument("--no-fa4", action="store_true")
    ap.add_argument("--no-seer", action="store_true")
    ap.add_argument("--seer-path", default=str(A.DEFAULT_SEER_PATH), help="folder holding seer_attn/")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--json", default=None, help="write every row here (benchmarks/anchors.py schema)")
    ap.add_argument("--plot", default=None, help="also write <dir>/forward.png (benchmarks/plots.py; matplotlib)")
    ap.add_argument("--dry-run", action="store_true", help="CPU only: build every input, launch nothing")
    args = ap.parse_args(argv)
    if args.reps < 1 or args.warmup < 0:
        ap.error("--reps must be >= 1 and --warmup >= 0")
    for w in args.workloads.split(","):
        if w not in WORKLOADS:
            ap.error(f"--workloads: unknown workload {w!r} (known: {', '.join(WORKLOADS)})")
    try:
        dens = [float(x) for x in args.densities.split(",")]
    except ValueError:
        ap.error(f"--densities: expected comma-separated floats, got {args.densities!r}")
    if any(not 0.0 < x <= 1.0 for x in dens):
        ap.error("--densities: each density must be in (0, 1]")
    if args.head_dim < 1 or args.block < 16 or args.block % 16:
        ap.error("--head-dim must be positive and --block a positive multiple of 16")
    return args


def cells_from_args(args: argparse.Namespace) -> list[Cell]:
    """The cells to run: the suite's, or the cross product of the individual options."""
    if args.suite:
        return list(SUITES[args.suite])
    dens = tuple(float(x) for x in args.densities.split(","))
    causal = {"no": (False,), "yes": (True,), "both": (False, True)}[args.causal]
    return [Cell(w, c, dens, args.head_dim, None if w == "VB" else args.block)
            for w in args.workloads.split(",") for c in causal if not (w == "VB" and c)]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cells = cells_from_args(args)
    backends = (args.backends.split(",") if args.backends
                else list(varblock.families.family_names("attention_fwd")))
    ctx = Context(args, backends, [])
    meta: dict[str, Any] = {"argv": list(sys.argv[1:] if argv is None else argv), "varblock": varblock.__version__,
                            "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "dry_run": args.dry_run}
    if not args.dry_run:
        import torch

        torch.manual_seed(0)
        meta.update(device=torch.cuda.get_device_name(), torch=torch.__version__)
        load_anchors(ctx)
    print(json.dumps(meta), flush=True)
    t0 = time.time()
    for cell in cells:
        for density in cell.densities:
            pt = make_point(cell, density, on_gpu=not args.dry_run)
            blk = f"{cell.block}x{cell.block}" if cell.block else "variable"
            print(f"{cell.workload} causal={cell.causal} d{cell.head_dim} block {blk} density {density} "
                  f"(kept {pt.layout.density():.3f}, {pt.flops / 1e12:.2f} TFLOP)  [{time.time() - t0:.0f} s]",
                  flush=True)
            (dry_run_point if args.dry_run else run_point)(ctx, pt)
            pt.tensors = pt.ref = None
    print("\n" + summary_table(ctx.rows))
    for line in w2_scaling(ctx.rows) + bar_checks(ctx.rows):
        print(line)
    print(f"\nFlashInfer (issue 10, not this run): W1 packed at 128x128 blocks 477 / 400 / 207 TFLOP/s at density "
          f"1.0 / 0.5 / 0.1; variable blocks {FLASHINFER_CITED[0.5]:.0f} / {FLASHINFER_CITED[0.1]:.0f} at 0.5 / 0.1. "
          f"Total {time.time() - t0:.0f} s.", flush=True)
    if args.json:
        print(f"wrote {A.write_json(args.json, ctx.rows, meta)}")
    if args.plot:
        import plots

        plots.write_plots(ctx.rows, args.plot)
    bad = [r for r in ctx.rows if "MISMATCH" in r["note"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
