"""Decode plan sweep: ``varblock.decode`` over a set of plan configurations for the benchmark shapes, to set the plan's
heuristic (``varblock/decode_plan/cost.py``) from measurements.

    PYTHONPATH=src python benchmarks/decode_sweep.py [--json out.json] [--iters 10] [--reps 10] [--no-graph]
                                                     [--caches paged,contig] [--budget 90] [--dry-run]

Inputs are those of ``benchmarks/bench_decode.py`` (its helpers, same seed): Hq 64 / Hkv 8, d128, bf16, one new token,
64-token blocks, pages of 64 in random order; batch 64 x 32k, 1 x 128k, 256 x 2k at density 1.0 and 0.25.
Configurations per cell (``plan_decode`` keywords):

* ``auto``: the plan's own choice (what ``bench_decode.py`` measures);
* ``s=N``: ``num_splits=N`` for N in ``SPLITS`` where every split still reads at least 2 chunks of the longest
  (sequence, KV head) and the list has at most ``MAX_ITEMS_PER_SLOT`` items per CTA slot;
* grid, for every split choice whose list has more items than CTAs: ``1/item`` (``persistent=False``: one CTA per
  item, the hardware hands CTAs to free slots), ``pers`` (``persistent=True``: a persistent grid of one CTA per slot,
  SMs x CTAs per SM by occupancy) and ``pers1`` (``persistent=True, num_sms=SMs``: one CTA per SM);
* cache: ``paged`` (the benchmark's page table) and ``contig`` (the same values as a contiguous ``[B*L, Hkv, D]``);
* per shape, density 0.00: a layout with no kept block (``auto``): the floor of launch, item metadata and epilogue.

Columns: ms per call (CUDA events around 10 back-to-back eager calls, median of ``--iters``; the Python cost of a
call overlaps the previous kernel), TB/s on kept bytes (K and V of the kept blocks, q, out), ``graph``: ms per call
replaying one CUDA graph of 10 calls, for calls under 1 ms (no host cost: a gap between the two columns is launch
overhead), ``hostus``: host microseconds per eager call (when it exceeds the kernel time, the eager column measures
the host), items, CTAs, largest split count. Then the best configuration per cell and cache (docs/decode.md,
"Tuning", says which constant in ``cost.py`` each choice sets). Every configuration runs in try/except (one line,
then the next); a configuration whose plan equals one already measured in its cell (e.g. ``s=1`` when the plan
chooses no split) is skipped. About 30-60 s on an H200; past ``--budget`` seconds (default 90) only ``auto auto``
is measured.
``--dry-run`` (CPU) prints the configurations with the item and CTA counts of a 132 SM x 2 CTA GPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_decode import BLOCK, DENSITIES, HKV, HQ, PAGE, SHAPES, Caches, decode_layout, kept_bytes  # noqa: E402

from varblock.layout import decode as LD  # noqa: E402

#: forced split counts tried where they apply
SPLITS = (1, 2, 4, 8, 16, 24, 33, 48, 64, 96, 128)
#: fewest chunks of the longest group a forced split must read
MIN_CHUNKS = 2
#: most items per CTA slot a forced split count may create (more only adds ramps)
MAX_ITEMS_PER_SLOT = 16
#: the dry run's GPU: H200 SMs and decode CTAs per SM (shared memory bound), chunk keys of the sm90 d128 variant
DRY_SMS, DRY_PER_SM, DRY_TILE_N, DRY_TILE_M = 132, 2, 64, 16
#: the CUDA-graph column only for calls shorter than this (longer ones cannot be host bound)
GRAPH_BELOW_MS = 1.0
GRIDS = ("auto", "1/item", "pers", "pers1")
CACHES = ("paged", "contig")


@dataclass(frozen=True)
class Config:
    """One plan configuration: ``splits`` (None = the plan's choice), ``grid`` (one of ``GRIDS``)."""

    splits: int | None
    grid: str

    @property
    def name(self) -> str:
        return f"{'auto' if self.splits is None else f's={self.splits}'} {self.grid}"

    def plan_kwargs(self, num_sms: int) -> dict[str, Any]:
        """``plan_decode`` keywords of this configuration on a GPU of ``num_sms`` SMs."""
        kw: dict[str, Any] = {"num_splits": self.splits}
        if self.grid == "1/item":
            kw["persistent"] = False
        elif self.grid == "pers":
            kw["persistent"] = True
        elif self.grid == "pers1":
            kw.update(persistent=True, num_sms=num_sms)
        elif self.grid != "auto":
            raise ValueError(f"grid: expected one of {GRIDS}, got {self.grid!r}")
        return kw


def group_chunks(lay: LD.DecodeLayout) -> np.ndarray:
    """Chunks per (sequence, KV head) group: kept 64-key blocks (one chunk each with 64-key chunks)."""
    return np.diff(lay.indptr).astype(np.int64)


def split_counts(g_chunks: np.ndarray, slots: int) -> list[int]:
    """The forced split counts that apply to groups of ``g_chunks`` chunks on ``slots`` CTA slots."""
    longest = int(g_chunks.max(initial=0))
    out = []
    for s in SPLITS:
        items = int(np.minimum(s, np.maximum(g_chunks, 1)).sum())
        if s == 1 or (longest >= MIN_CHUNKS * s and items <= MAX_ITEMS_PER_SLOT * slots):
            out.append(s)
    return out


def configs(g_chunks: np.ndarray, slots: int) -> list[Config]:
    """Every configuration of one cell: ``auto`` and each forced split count, each with the plan's grid, plus the
    three forced grids when the split gives more items than slots (the auto split's forced grids too)."""
    out = [Config(None, "auto")]
    out += [Config(None, g) for g in GRIDS[1:]]
    for s in split_counts(g_chunks, slots):
        items = int(np.minimum(s, np.maximum(g_chunks, 1)).sum())
        out.append(Config(s, "auto"))
        if items > slots:
            out += [Config(s, g) for g in GRIDS[1:]]
    return out


# ------------------------------------------------------------------------------------------------ dry run (CPU)


def dry_run() -> int:
    """Configurations of every cell with the items / CTAs the host plan gives on 132 SMs x 2 CTAs."""
    from varblock.decode_plan import abi
    from varblock.decode_plan.worklist import build_worklist

    rng = np.random.default_rng(0)
    slots = DRY_SMS * DRY_PER_SM
    for B, L in SHAPES:
        for dens in DENSITIES:
            lay = decode_layout(rng, B, L, dens)
            cfgs = configs(group_chunks(lay), slots)
            print(f"{B:>4} x {L // 1024:>4}k {dens:.2f}: {len(cfgs)} configurations x {len(CACHES)} caches")
            for c in cfgs:
                kw = c.plan_kwargs(DRY_SMS)
                sms, per_sm = (kw.pop("num_sms"), 1) if "num_sms" in kw else (DRY_SMS, DRY_PER_SM)
                wl = build_worklist(np.arange(B + 1), np.full(B, L), num_heads_q=HQ, num_heads_kv=HKV,
                                    tile_m=DRY_TILE_M, tile_n=DRY_TILE_N, layout=lay, num_sms=sms,
                                    ctas_per_sm=per_sm, **kw)
                splits = int(wl.items[:, abi.ITEM_NUM_SPLITS].max(initial=1))
                print(f"    {c.name:<14} items {wl.num_items:>6}  ctas {wl.grid:>6}  splits {splits:>4}")
    return 0


# ------------------------------------------------------------------------------------------------ GPU


def _events_ms(torch: Any, fn: Callable[[], Any], iters: int, reps: int) -> tuple[float, float]:
    """``(ms, host_us)``: median GPU ms per call of ``fn`` (``reps`` calls between two events, ``iters`` times,
    after 3 warm-up calls) and median host microseconds per call (the CPU time of issuing the ``reps`` calls)."""
    for _ in range(3):
        fn()
    times, host = [], []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        host.append((time.perf_counter() - t0) * 1e6 / reps)
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / reps)
    return statistics.median(times), statistics.median(host)


def _graph_ms(torch: Any, fn: Callable[[], Any], iters: int, reps: int) -> float:
    """Median ms per call replaying one CUDA graph of ``reps`` calls of ``fn``, ``iters`` times."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            fn()
    return _events_ms(torch, graph.replay, iters, 1)[0] / reps


@dataclass
class Row:
    """One measured configuration (``ms`` None: it failed, ``error`` says why)."""

    shape: str
    density: float
    config: str
    cache: str
    ms: float | None
    tbps: float | None
    graph_ms: float | None
    host_us: float | None
    items: int
    ctas: int
    splits: int
    error: str = ""


def _plan(varblock: Any, c: Caches, lay: LD.DecodeLayout, cache: str, kw: dict[str, Any]) -> Any:
    common = dict(num_heads_q=HQ, num_heads_kv=HKV, head_dim=128, layout=lay, **kw)
    cu_q = np.arange(c.B + 1, dtype=np.int32) * c.n
    if cache == "contig":
        cu_k = (np.arange(c.B + 1, dtype=np.int64) * c.L).astype(np.int32)
        return varblock.plan_decode(cu_q, cu_seqlens_k=cu_k, **common)
    return varblock.plan_decode(cu_q, kv_lens=np.full(c.B, c.L), page_table=c.pt, page_size=PAGE, **common)


def measure(args: argparse.Namespace, torch: Any, c: Caches, lay: LD.DecodeLayout, cfg: Config, cache: str,
            nbytes: int, num_sms: int, seen: dict[bytes, str]) -> Row | None:
    """One configuration of one cell; any failure becomes a row with ``error`` and one printed line. A plan equal
    to one already measured (``seen``: work list bytes -> configuration, per cell and cache) is skipped (None)."""
    import varblock
    from varblock.decode_plan import abi

    shape = f"{c.B}x{c.L // 1024}k"
    dens = round(float(lay.density()), 2)
    row = Row(shape, dens, cfg.name, cache, None, None, None, None, 0, 0, 0)
    try:
        plan = _plan(varblock, c, lay, cache, cfg.plan_kwargs(num_sms))
        key = plan.num_ctas.to_bytes(8, "little") + plan.worklist.items.tobytes()
        if key in seen:
            return None
        seen[key] = cfg.name
        row.items, row.ctas = plan.num_items, plan.num_ctas
        row.splits = int(plan.worklist.items[:, abi.ITEM_NUM_SPLITS].max(initial=1))
        k, v = (c.k, c.v) if cache == "paged" else (x.view(c.B * c.L, HKV, -1) for x in c.bld())
        out = torch.empty_like(c.q)

        def fn() -> Any:
            return varblock.decode(c.q, k, v, plan, out=out)

        row.ms, row.host_us = _events_ms(torch, fn, args.iters, args.reps)
        row.tbps = nbytes / row.ms / 1e9
        if not args.no_graph and row.ms < GRAPH_BELOW_MS:
            try:
                row.graph_ms = _graph_ms(torch, fn, args.iters, args.reps)
            except Exception as ex:  # the eager number stands; say why the graph one is missing
                row.error = f"graph: {type(ex).__name__}: {str(ex).strip()[:120]}"
    except Exception as ex:  # report, keep going with the next configuration
        row.error = f"{type(ex).__name__}: {str(ex).strip().splitlines()[0][:160] if str(ex).strip() else ''}"
    print(_fmt_row(row), flush=True)
    return row


def _fmt(x: float | None, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def _fmt_row(r: Row) -> str:
    err = f"  ({r.error})" if r.error else ""
    return (f"{r.shape:>8} {r.density:>5.2f} {r.config:<14} {r.cache:<6} {_fmt(r.ms, '8.4f'):>8} "
            f"{_fmt(r.tbps, '5.2f'):>5} {_fmt(r.graph_ms, '8.4f'):>8} {_fmt(r.host_us, '6.1f'):>6} {r.items:>6} "
            f"{r.ctas:>6} {r.splits:>5}{err}")


HEADER = (f"{'shape':>8} {'dens':>5} {'config':<14} {'cache':<6} {'ms':>8} {'TB/s':>5} {'graph':>8} {'hostus':>6} "
          f"{'items':>6} {'ctas':>6} {'split':>5}")


def summarize(rows: list[Row]) -> list[str]:
    """Per (shape, density, cache): the best configuration and the plan's own (``auto auto``), as text lines."""
    lines = []
    cells: dict[tuple[str, float, str], list[Row]] = {}
    for r in rows:
        cells.setdefault((r.shape, r.density, r.cache), []).append(r)
    for (shape, dens, cache), rs in cells.items():
        ok = [r for r in rs if r.ms is not None]
        if not ok:
            lines.append(f"{shape:>8} {dens:.2f} {cache:<6}: every configuration failed")
            continue
        best = min(ok, key=lambda r: r.ms)
        auto = next((r for r in ok if r.config == "auto auto"), None)
        gain = f", {auto.ms / best.ms - 1:+.1%} over auto ({auto.tbps:.2f} TB/s, {auto.items} items, " \
               f"{auto.ctas} ctas, {auto.splits} splits)" if auto is not None else ", auto n/a"
        lines.append(f"{shape:>8} {dens:.2f} {cache:<6}: best {best.config:<14} {best.ms:.4f} ms {best.tbps:.2f} "
                     f"TB/s ({best.items} items, {best.ctas} ctas, {best.splits} splits){gain}")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=10, help="event pairs per configuration (median)")
    ap.add_argument("--reps", type=int, default=10, help="back-to-back calls per event pair")
    ap.add_argument("--no-graph", action="store_true", help="skip the CUDA-graph column")
    ap.add_argument("--budget", type=float, default=90.0,
                    help="seconds; past it only the plan's own configuration ('auto auto') is measured")
    ap.add_argument("--caches", default=",".join(CACHES), help="comma list of paged,contig")
    ap.add_argument("--json", default=None, help="write {meta, rows} here")
    ap.add_argument("--dry-run", action="store_true", help="list the configurations on the CPU (no GPU)")
    args = ap.parse_args()
    if args.iters < 1 or args.reps < 1:
        ap.error("--iters / --reps: expected >= 1")
    caches = [x for x in args.caches.split(",") if x]
    if not caches or any(x not in CACHES for x in caches):
        ap.error(f"--caches: expected a comma list of {CACHES}, got {args.caches!r}")
    if args.dry_run:
        return dry_run()
    import torch

    t0 = time.perf_counter()
    num_sms = torch.cuda.get_device_properties(0).multi_processor_count
    print(f"{torch.cuda.get_device_name()}, {num_sms} SMs: Hq {HQ} / Hkv {HKV}, d128, bf16, {BLOCK}-token blocks, "
          f"page {PAGE}, 1 new token; {args.reps} calls x {args.iters} timings per configuration", flush=True)
    print(HEADER, flush=True)
    rng = np.random.default_rng(0)  # the same draws as bench_decode.py: caches, then the layouts of each shape
    rows: list[Row] = []
    slots_guess = 2 * num_sms
    for B, L in SHAPES:
        c = Caches(torch, rng, B, L, 1)
        for dens in DENSITIES:
            lay = decode_layout(rng, B, L, dens)
            nbytes = kept_bytes(lay, 1)
            seen: dict[str, dict[bytes, str]] = {cache: {} for cache in caches}
            for cfg in configs(group_chunks(lay), slots_guess):
                if time.perf_counter() - t0 > args.budget and cfg.name != "auto auto":
                    continue  # over budget: the plan's own choice only
                for cache in caches:
                    row = measure(args, torch, c, lay, cfg, cache, nbytes, num_sms, seen[cache])
                    if row is not None:
                        rows.append(row)
        # the floor: no kept block (every item reads nothing): launch, item metadata, epilogue
        empty = LD.from_block_lists([], [], kv_lens=np.full(B, L), block_size=BLOCK, num_heads=HKV)
        for cache in caches:
            rows.append(measure(args, torch, c, empty, Config(None, "auto"), cache, kept_bytes(empty, 1), num_sms,
                                {}))
        del c
        torch.cuda.empty_cache()
    print("\nbest per cell and cache (the plan's heuristic is 'auto auto'):")
    for line in summarize(rows):
        print(line)
    spent = time.perf_counter() - t0
    print(f"sweep: {len(rows)} rows in {spent:.0f} s" + (f" (over the {args.budget:.0f} s budget: later cells "
                                                          f"measured 'auto auto' only)" if spent > args.budget else ""))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"meta": {"bench": "decode_sweep", "device": torch.cuda.get_device_name(),
                                                        "sms": num_sms, "iters": args.iters, "reps": args.reps},
                                               "rows": [asdict(r) for r in rows]}, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
