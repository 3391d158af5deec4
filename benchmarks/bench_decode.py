"""Block-sparse decode bandwidth, side by side in one run: varblock.decode (paged and contiguous cache), SeerAttention's
Triton sparse decode, FlexAttention decode and torch SDPA (dense), on the same K/V and the same kept blocks.

    PYTHONPATH=src python benchmarks/bench_decode.py [--iters 30] [--q-tokens 1] [--seer-path .seer] [--no-flex]
                                                     [--json out.json] [--csv out.csv] [--dry-run]

Shapes (issue 12): Hq 64 / Hkv 8, d128, bf16, 64-token blocks, ``--q-tokens`` new tokens per sequence (default 1):
batch 64 x 32k, 1 x 128k, 256 x 2k at density 1.0 and 0.25 (a random 25% of each (sequence, KV head)'s blocks,
shared by the query heads of the group). One K/V per shape: varblock reads it as a paged cache
([num_pages, 64, Hkv, D], pages in random order); the contiguous caches the others need are gathered from the same
pages ([B, L, Hkv, D] for varblock-contiguous and SeerAttention, [B, Hkv, L, D] for FlexAttention and SDPA).
Columns:

* varblock: ``varblock.decode`` over the paged cache; ``varblock-contig``: over the contiguous ``[B*L, Hkv, D]``.
* seer: ``block_sparse_flash_decode_gqa_mask`` (``block_sparse_flash_decode_varlen_mask.py``) with the
  ``[B, Hkv, num_blocks]`` mask of the same kept blocks (one query token per sequence only).
* flex: ``flex_attention`` (torch.compile) with a BlockMask holding the same kept 64-key blocks per query head
  (q_len = ``--q-tokens``; with more than one token, blocks that reach past ``L - q_tokens`` carry the
  bottom-right causal mask_mod); the query-length-1 path is FlexAttention's decoding kernel.
* sdpa: ``scaled_dot_product_attention`` on the dense cache (density 1.0 only).

Effective bandwidth = (kept K and V bytes + q bytes + out bytes) / time; CUDA events around 10 back-to-back calls
(the Python launch cost of one call overlaps the previous kernel), median of ``--iters`` after warm-up. Every
anchor column runs in try/except: a failure prints one line and leaves an n/a cell. Each cell's note carries the
largest difference of its output from varblock's (the same kept blocks give the same result).
``--dry-run`` builds every layout, the Seer masks and the Flex block lists on the CPU (no GPU, no torch) and checks
they hold the same kept blocks.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from anchors import DEFAULT_SEER_PATH, load_seer, make_row, seer_decode_mask, write_json  # noqa: E402

from varblock.layout import decode as LD  # noqa: E402

HQ, HKV, D, BLOCK, PAGE = 64, 8, 128, 64, 64
SHAPES = ((64, 32768), (1, 131072), (256, 2048))
DENSITIES = (1.0, 0.25)
ITEMSIZE = 2  # bf16
SYSTEMS = ("varblock", "varblock-contig", "seer", "flex", "sdpa")
BAR_DENSE_TBS, BAR_SPARSE_TBS, BAR_SEER, BAR_SEER_SPARSE = 3.8, 3.4, 1.0, 1.2


class NotApplicable(Exception):
    """A system cannot run this case (the message says why); the cell is n/a."""


# ------------------------------------------------------------------------------------------------ host side


def decode_layout(rng: np.random.Generator, B: int, L: int, density: float) -> LD.DecodeLayout:
    """Kept 64-key blocks per (sequence, KV head): all of them at density 1.0, else a random ``density`` share."""
    kv = np.full(B, L)
    if density >= 1.0:
        return LD.dense_decode(kv, block_size=BLOCK, num_heads=HKV)
    nb = -(-L // BLOCK)
    keep = max(1, int(round(density * nb)))
    rows = np.repeat(np.arange(B * HKV), keep)
    blocks = np.concatenate([rng.permutation(nb)[:keep] for _ in range(B * HKV)])
    return LD.from_block_lists(rows, blocks, kv_lens=kv, block_size=BLOCK, num_heads=HKV)


def flex_kv_lists(lay: LD.DecodeLayout, num_heads_q: int, q_tokens: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """FlexAttention BlockMask lists of a decode layout: ``(kv_num, kv_idx, full_num, full_idx)``, int32
    ``[B, Hq, 1]`` and ``[B, Hq, 1, num_blocks]`` (one 128-query block holds the ``q_tokens`` new tokens). A kept
    block is full when every new token sees all its keys (its last key ``<= L - q_tokens``), else partial (the
    causal mask_mod applies); each KV head's list is repeated over its query heads."""
    if lay.head_mode != "per_kv_head" or num_heads_q % lay.num_heads:
        raise ValueError("lay: expected a per_kv_head layout whose heads divide num_heads_q")
    B, H, bs = lay.batch_size, lay.num_heads, lay.block_size
    nblk = int(-(-int(lay.kv_lens.max()) // bs)) if B else 0
    rows = np.repeat(np.arange(B * H, dtype=np.int64), np.diff(lay.indptr))
    blk = lay.blocks.astype(np.int64)
    last_key = np.minimum((blk + 1) * bs, lay.kv_lens[rows // H]) - 1
    full = last_key <= lay.kv_lens[rows // H] - q_tokens
    out = []
    for sel in (~full, full):
        num = np.zeros(B * H, np.int32)
        np.add.at(num, rows[sel], 1)
        idx = np.zeros((B * H, max(nblk, 1)), np.int32)
        r, b = rows[sel], blk[sel]
        first = np.concatenate([[0], np.cumsum(num)[:-1]])
        idx[r, np.arange(r.size) - first[r]] = b  # rows stay sorted by block inside each (row) run
        rep = num_heads_q // H
        out += [np.repeat(num.reshape(B, H, 1), rep, axis=1), np.repeat(idx.reshape(B, H, 1, -1), rep, axis=1)]
    return out[0], out[1], out[2], out[3]


def kept_bytes(lay: LD.DecodeLayout, q_tokens: int) -> int:
    """Bytes a decode step must move: kept K and V plus q and out."""
    return int(lay.kept_keys().sum()) * D * 2 * ITEMSIZE + 2 * lay.batch_size * q_tokens * HQ * D * ITEMSIZE


def check_same_blocks(lay: LD.DecodeLayout, q_tokens: int) -> str:
    """Rebuild the layout from the Seer mask and from the Flex lists; ValueError unless both equal ``lay``."""
    seer = LD.from_seer_decode_mask(seer_decode_mask(lay), kv_lens=lay.kv_lens, block_size=lay.block_size)
    if not (np.array_equal(seer.indptr, lay.indptr) and np.array_equal(seer.blocks, lay.blocks)):
        raise ValueError("seer_decode_mask does not hold the layout's kept blocks")
    kn, ki, fn, fi = flex_kv_lists(lay, HQ, q_tokens)
    g = HQ // lay.num_heads
    rows, blocks = [], []
    for num, idx in ((kn, ki), (fn, fi)):
        n = num[:, ::g, 0].reshape(-1)
        flat = idx[:, ::g, 0].reshape(n.size, -1)
        r = np.repeat(np.arange(n.size), n)
        rows.append(r)
        blocks.append(flat[r, np.arange(r.size) - np.repeat(np.cumsum(n) - n, n)])
    flex = LD.from_block_lists(np.concatenate(rows), np.concatenate(blocks), kv_lens=lay.kv_lens,
                               block_size=lay.block_size, num_heads=lay.num_heads)
    if not (np.array_equal(flex.indptr, lay.indptr) and np.array_equal(flex.blocks, lay.blocks)):
        raise ValueError("flex_kv_lists do not hold the layout's kept blocks")
    return f"{int(fn.sum()) // g} full + {int(kn.sum()) // g} partial flex blocks per KV head list"


def dry_run(args: argparse.Namespace) -> int:
    """Build every layout / mask / list of the run on the CPU and check they agree; no GPU."""
    rng = np.random.default_rng(0)
    for B, L in SHAPES:
        for dens in DENSITIES:
            lay = decode_layout(rng, B, L, dens)
            what = check_same_blocks(lay, args.q_tokens)
            print(f"{B:>4} x {L // 1024:>4}k density {dens:.2f}: {lay.blocks.size} kept blocks "
                  f"(density {lay.density():.3f}), {kept_bytes(lay, args.q_tokens) / 2**30:.2f} GiB per step, "
                  f"seer mask {seer_decode_mask(lay).shape}; {what}")
    seer = Path(args.seer_path) / "seer_attn" / "kernels" / "varlen" / "block_sparse_flash_decode_varlen_mask.py"
    print(f"seer source: {seer} ({'present' if seer.is_file() else 'MISSING'})")
    return 0


# ------------------------------------------------------------------------------------------------ GPU side


def _time(torch: Any, fn: Callable[[], Any], iters: int, reps: int = 10) -> float:
    """Median milliseconds per call of ``fn``: ``reps`` back-to-back calls between two CUDA events, ``iters``
    times, after 3 warm-up calls."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(reps):
            fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / reps)
    return statistics.median(times)


class Caches:
    """One shape's q and K/V: the paged cache varblock reads, and contiguous copies of the same values made on
    first use (``bld`` = [B, L, Hkv, D], ``bhld`` = [B, Hkv, L, D])."""

    def __init__(self, torch: Any, rng: np.random.Generator, B: int, L: int, q_tokens: int) -> None:
        self.torch, self.B, self.L, self.n = torch, B, L, q_tokens
        pages = B * L // PAGE
        self.k = torch.randn(pages, PAGE, HKV, D, device="cuda", dtype=torch.bfloat16)
        self.v = torch.randn_like(self.k)
        self.pt = torch.from_numpy(rng.permutation(pages).astype(np.int32).reshape(B, L // PAGE)).cuda()
        self.q = torch.randn(B * q_tokens, HQ, D, device="cuda", dtype=torch.bfloat16)
        self._bld: tuple[Any, Any] | None = None
        self._bhld: tuple[Any, Any] | None = None

    def bld(self) -> tuple[Any, Any]:
        if self._bld is None:
            idx = self.pt.long()
            self._bld = tuple(x[idx].reshape(self.B, self.L, HKV, D) for x in (self.k, self.v))
        return self._bld

    def bhld(self) -> tuple[Any, Any]:
        if self._bhld is None:
            self._bhld = tuple(x.transpose(1, 2).contiguous() for x in self.bld())
        return self._bhld

    def q4(self) -> Any:
        """q as [B, Hq, q_tokens, D] (FlexAttention / SDPA)."""
        return self.q.view(self.B, self.n, HQ, D).transpose(1, 2)


def run_varblock(c: Caches, lay: LD.DecodeLayout, iters: int, contiguous: bool) -> tuple[float, Any, str]:
    import varblock
    from varblock.decode_plan import abi

    cu_q = np.arange(c.B + 1, dtype=np.int32) * c.n
    t0 = time.perf_counter()
    common = dict(num_heads_q=HQ, num_heads_kv=HKV, head_dim=D, layout=lay)
    if contiguous:
        cu_k = np.arange(c.B + 1, dtype=np.int64) * c.L
        plan = varblock.plan_decode(cu_q, cu_seqlens_k=cu_k.astype(np.int32), **common)
        k, v = (x.view(c.B * c.L, HKV, D) for x in c.bld())
    else:
        plan = varblock.plan_decode(cu_q, kv_lens=np.full(c.B, c.L), page_table=c.pt, page_size=PAGE, **common)
        k, v = c.k, c.v
    plan_ms = (time.perf_counter() - t0) * 1e3
    out = c.torch.empty_like(c.q)
    ms = _time(c.torch, lambda: varblock.decode(c.q, k, v, plan, out=out), iters)
    splits = int(plan.worklist.items[:, abi.ITEM_NUM_SPLITS].max(initial=1))
    return ms, out, f"{plan.num_items} items, max {splits} splits, host plan {plan_ms:.1f} ms"


def run_seer(mod: Any, c: Caches, lay: LD.DecodeLayout, iters: int) -> tuple[float, Any, str]:
    if c.n != 1:
        raise NotApplicable("SeerAttention's decode kernel takes one query token per sequence")
    torch = c.torch
    k, v = c.bld()
    mask = torch.from_numpy(seer_decode_mask(lay)).cuda()
    lens = torch.full((c.B,), c.L, dtype=torch.int32, device="cuda")
    fn = lambda: mod.block_sparse_flash_decode_gqa_mask(c.q, k, v, lens, c.L, mask, BLOCK)  # noqa: E731
    ms = _time(torch, fn, iters)
    return ms, fn(), "contiguous [B, L, Hkv, D] cache"


def flex_block_mask(torch: Any, lay: LD.DecodeLayout, q_tokens: int) -> Any:
    """FlexAttention BlockMask of the layout's kept blocks (:func:`flex_kv_lists`) for ``q_tokens`` new tokens."""
    from torch.nn.attention.flex_attention import BlockMask

    L = int(lay.kv_lens.max())
    kn, ki, fn, fi = (torch.from_numpy(a).cuda() for a in flex_kv_lists(lay, HQ, q_tokens))
    shift = L - q_tokens

    def causal(b, h, q_idx, kv_idx):  # noqa: ANN001, ANN202 - FlexAttention's mask_mod signature
        return kv_idx <= q_idx + shift

    # one new token sees every key: all blocks are full and Flex's own no-op mask_mod (one compiled kernel per
    # shape) is enough; with more tokens the partial blocks need the bottom-right causal mask
    return BlockMask.from_kv_blocks(kn, ki, fn, fi, BLOCK_SIZE=(128, BLOCK), mask_mod=causal if q_tokens > 1 else None,
                                    seq_lengths=(q_tokens, L))


def run_flex(flex: Any, c: Caches, lay: LD.DecodeLayout, iters: int) -> tuple[float, Any, str]:
    k, v = c.bhld()
    q4 = c.q4()
    bm = flex_block_mask(c.torch, lay, c.n)
    fn = lambda: flex(q4, k, v, block_mask=bm, enable_gqa=True)  # noqa: E731
    ms = _time(c.torch, fn, iters)
    out = fn().transpose(1, 2).reshape(c.B * c.n, HQ, D)
    return ms, out, f"BlockMask {tuple(bm.kv_indices.shape)}, block {bm.BLOCK_SIZE}"


def run_sdpa(c: Caches, dens: float, iters: int) -> tuple[float, Any, str]:
    if dens < 1.0:
        raise NotApplicable("SDPA has no block sparsity (dense rows only)")
    import torch.nn.functional as F

    k, v = c.bhld()
    q4 = c.q4()
    kw: dict[str, Any] = {}
    if c.n > 1:
        from torch.nn.attention.bias import causal_lower_right

        kw["attn_mask"] = causal_lower_right(c.n, c.L)
    fn = lambda: F.scaled_dot_product_attention(q4, k, v, enable_gqa=True, **kw)  # noqa: E731
    ms = _time(c.torch, fn, iters)
    return ms, fn().transpose(1, 2).reshape(c.B * c.n, HQ, D), "contiguous [B, Hkv, L, D] cache, dense"


def _diff(out: Any, ref: Any) -> str:
    try:
        return f"; max|out - varblock| {float((out.float() - ref.float()).abs().max()):.2e}"
    except Exception as ex:  # shapes differ: say so rather than fail the row
        return f"; no comparison ({type(ex).__name__})"


def _cell(name: str, fn: Callable[[], tuple[float, Any, str]], ref: Any, nbytes: int) -> dict[str, Any]:
    """Run one system's measurement; an exception becomes an n/a cell with a one-line reason."""
    try:
        ms, out, note = fn()
    except Exception as ex:  # any anchor failure: report and keep going
        why = str(ex).strip().splitlines()[0][:200] if str(ex).strip() else ""
        print(f"    {name}: n/a ({type(ex).__name__}: {why})", flush=True)
        return {"ms": None, "tbs": None, "out": None, "note": f"n/a: {type(ex).__name__}: {why}"}
    if ref is not None and out is not None and name != "varblock":
        note += _diff(out, ref)
    return {"ms": ms, "tbs": nbytes / ms / 1e9, "out": out, "note": note}


def run_shape(args: argparse.Namespace, torch: Any, rng: np.random.Generator, B: int, L: int, seer: Any,
              flex: Any) -> list[dict[str, Any]]:
    """All densities and systems of one shape; returns result rows (anchors.make_row)."""
    c = Caches(torch, rng, B, L, args.q_tokens)
    rows = []
    for dens in DENSITIES:
        lay = decode_layout(rng, B, L, dens)
        nbytes = kept_bytes(lay, args.q_tokens)
        cells: dict[str, dict[str, Any]] = {}
        cells["varblock"] = _cell("varblock", lambda: run_varblock(c, lay, args.iters, False), None, nbytes)
        ref = cells["varblock"]["out"]
        cells["varblock-contig"] = _cell("varblock-contig", lambda: run_varblock(c, lay, args.iters, True), ref,
                                         nbytes)
        cells["seer"] = _cell("seer", lambda: run_seer(_need(seer, "seer"), c, lay, args.iters), ref, nbytes)
        cells["flex"] = _cell("flex", lambda: run_flex(_need(flex, "flex"), c, lay, args.iters), ref, nbytes)
        cells["sdpa"] = _cell("sdpa", lambda: run_sdpa(c, dens, args.iters), ref, nbytes)
        line = "  ".join(f"{s} {_fmt(cells[s]['ms'], 8, 3)} ms {_fmt(cells[s]['tbs'], 5, 2)} TB/s" for s in SYSTEMS)
        print(f"{B:>4} x {L // 1024:>4}k {dens:>5.2f} | {line}", flush=True)
        for s in SYSTEMS:
            cl = cells[s]
            rows.append(make_row("decode", f"{B}x{L // 1024}k", s, causal=args.q_tokens > 1, density=dens,
                                 block=BLOCK, head_dim=D, ms=cl["ms"], tbps=cl["tbs"], note=cl["note"]))
        del cells
        torch.cuda.empty_cache()
    return rows


def _need(obj: Any, name: str) -> Any:
    """``obj``, or NotApplicable when that anchor could not be loaded."""
    if obj is None:
        raise NotApplicable(f"{name} not loaded (see the line printed at start)")
    return obj


def _fmt(x: float | None, w: int, p: int) -> str:
    return f"{'n/a':>{w}}" if x is None else f"{x:{w}.{p}f}"


def check_bars(rows: list[dict[str, Any]]) -> bool:
    """Print the issue-12 bars that one run can check; True when all that could be checked hold."""
    by = {(r["workload"], r["density"], r["system"]): r for r in rows}
    ok = True
    for (w, dens, s), r in sorted(by.items()):
        if s != "varblock" or r["tbps"] is None:
            continue
        need = BAR_DENSE_TBS if dens >= 1.0 else BAR_SPARSE_TBS
        seer = by.get((w, dens, "seer"), {}).get("ms")
        ratio = seer / r["ms"] if seer else None
        need_r = BAR_SEER if dens >= 1.0 else BAR_SEER_SPARSE
        good = r["tbps"] >= need and (ratio is None or ratio >= need_r)
        ok &= good
        rtxt = f"{ratio:.2f}x SeerAttention (bar {need_r})" if ratio is not None else "SeerAttention n/a"
        print(f"bar {w:>8} density {dens:.2f}: varblock {r['tbps']:.2f} TB/s (bar {need}), {rtxt} -> "
              f"{'OK' if good else 'NOT MET'}")
    return ok


def load_seer_decode(seer_path: str) -> Any:
    """SeerAttention's decode module. It imports ``einops`` at top level for its self-test's reference only; when
    einops is not installed, a stand-in (whose functions raise) is in ``sys.modules`` for the import alone."""
    try:
        return load_seer("block_sparse_flash_decode_varlen_mask", seer_path)
    except ModuleNotFoundError as ex:
        if ex.name != "einops":
            raise
    import types

    def unavailable(*_a: Any, **_k: Any) -> Any:
        raise RuntimeError("einops stand-in: only SeerAttention's self-test reference uses einops")

    stand_in = types.ModuleType("einops")
    stand_in.rearrange = stand_in.einsum = unavailable  # type: ignore[attr-defined]
    sys.modules["einops"] = stand_in
    try:
        return load_seer("block_sparse_flash_decode_varlen_mask", seer_path)
    finally:
        sys.modules.pop("einops", None)


def _load_anchors(args: argparse.Namespace, torch: Any) -> tuple[Any, Any]:
    seer = flex = None
    if args.q_tokens == 1:
        try:
            seer = load_seer_decode(args.seer_path)
        except Exception as ex:  # report, keep going without the column
            print(f"seer: not loaded ({type(ex).__name__}: {ex})", flush=True)
    if not args.no_flex:
        try:
            from torch.nn.attention.flex_attention import flex_attention

            flex = torch.compile(flex_attention, dynamic=False)
        except Exception as ex:  # report, keep going without the column
            print(f"flex: not loaded ({type(ex).__name__}: {ex})", flush=True)
    return seer, flex


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--q-tokens", type=int, default=1, help="new tokens per sequence (1-16)")
    ap.add_argument("--seer-path", default=str(DEFAULT_SEER_PATH))
    ap.add_argument("--no-flex", action="store_true")
    ap.add_argument("--json", default=None, help="write the rows (benchmarks/anchors.py schema) here")
    ap.add_argument("--plot", default=None, metavar="DIR", help="also write DIR/decode.png (benchmarks/plots.py)")
    ap.add_argument("--csv", default=None)
    ap.add_argument("--dry-run", action="store_true", help="build and cross-check the masks on the CPU only")
    args = ap.parse_args()
    if not 1 <= args.q_tokens <= 16:
        ap.error(f"--q-tokens: expected 1..16, got {args.q_tokens}")
    if args.iters < 1:
        ap.error(f"--iters: expected >= 1, got {args.iters}")
    if args.dry_run:
        return dry_run(args)
    import torch

    import varblock

    rng = np.random.default_rng(0)
    seer, flex = _load_anchors(args, torch)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, varblock {varblock.__version__}: Hq {HQ} / "
          f"Hkv {HKV}, d{D}, bf16, {BLOCK}-token blocks, page {PAGE}, {args.q_tokens} new token(s) per sequence",
          flush=True)
    rows: list[dict[str, Any]] = []
    for B, L in SHAPES:
        rows += run_shape(args, torch, rng, B, L, seer, flex)
        torch.cuda.empty_cache()  # this shape's caches are gone with run_shape's frame
    ok = check_bars(rows)
    if args.json:
        write_json(args.json, rows, {"bench": "decode", "device": torch.cuda.get_device_name(),
                                     "torch": torch.__version__, "q_tokens": args.q_tokens})
    if args.plot:
        import plots

        plots.write_plots(rows, args.plot)
    if args.csv:
        with open(args.csv, "w") as f:
            f.write("workload,density,system,ms,tbps,note\n")
            for r in rows:
                f.write(f"{r['workload']},{r['density']},{r['system']},{r['ms']},{r['tbps']},\"{r['note']}\"\n")
    print(f"bars (issue 12): {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
