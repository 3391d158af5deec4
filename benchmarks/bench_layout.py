"""Host-side layout build time for workload W1 of shared/anchors.md (NumPy only, CPU).

W1: 8 sequences [512, 1024, 2048, 4096, 8192, 1536, 3072, 6144] (26 624 tokens), 32 query heads, 128 x 128 blocks,
random kept blocks at density 0.1 with the diagonal block always kept. The dense block mask is the packed
block-diagonal grid [32, 206, 206] (per-sequence blocks). Measured: ``BlockSparseLayout.from_block_mask`` +
``rows()`` (what the plan calls), median of repeated runs; the bar is 50 ms.

    PYTHONPATH=src python benchmarks/bench_layout.py [--repeat 30] [--json PATH]
    PYTHONPATH=src python benchmarks/bench_layout.py --device [--json PATH]   # GPU build time (bar 50 us)

``--device``: the device-side build (``device_layout.rebuild`` replayed from a CUDA graph, GPU time) next to the
host builders on the same mask: ``from_block_mask`` + ``rows()`` on a host copy, and the whole host path a caller
with a GPU mask takes (device-to-host copy, ``from_block_mask``, ``varblock.plan``; wall time). ``--json`` writes
the rows in benchmarks/anchors.py's schema (bench ``layout``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from anchors import make_row, write_json  # noqa: E402

from varblock.layout import BlockSparseLayout, to_fa4  # noqa: E402

W1_SEQLENS = [512, 1024, 2048, 4096, 8192, 1536, 3072, 6144]
BAR_MS = 50.0


def w1_block_mask(num_heads: int, density: float, block: int = 128, seed: int = 0):
    lens = np.array(W1_SEQLENS)
    cu = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
    nb = lens // block
    cu_nb = np.concatenate([[0], np.cumsum(nb)])
    T = int(cu_nb[-1])
    rng = np.random.default_rng(seed)
    seq = np.repeat(np.arange(len(lens)), nb)
    same_seq = seq[:, None] == seq[None, :]
    mask = (rng.random((num_heads, T, T)) < density) & same_seq[None]
    mask[:, np.arange(T), np.arange(T)] = True  # the diagonal block is always kept
    return mask, cu


def timeit(fn, repeat):
    fn()  # warm-up
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)) * 1e3, float(np.min(ts)) * 1e3


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--device", action="store_true", help="time the device-side build (torch + a GPU)")
    ap.add_argument("--json", default=None, help="write the rows (benchmarks/anchors.py schema) here")
    args = ap.parse_args()
    if args.repeat < 1:
        ap.error(f"--repeat: expected >= 1, got {args.repeat}")
    if args.device:
        return device_build(args.repeat, args.json)
    print(f"numpy {np.__version__}, {os.cpu_count()} CPUs")
    results, rows = [], []
    for heads, mode, causal in ((32, "per_q_head", False), (8, "per_kv_head", False), (32, "per_q_head", True)):
        mask, cu = w1_block_mask(heads, 0.1)

        def build(mask=mask, cu=cu, mode=mode, causal=causal):
            lay = BlockSparseLayout.from_block_mask(mask, cu, cu, block_q=128, block_k=128, head_mode=mode,
                                                    causal=causal)
            lay.rows()
            return lay

        med, best = timeit(build, args.repeat)
        lay = build()
        tag = f"W1 heads={heads} {mode}{' causal' if causal else ''}: mask {tuple(mask.shape)}"
        print(f"{tag}\n    from_block_mask + rows(): median {med:.2f} ms (best {best:.2f} ms); "
              f"{lay.num_rows} rows, {lay.num_entries} entries ({lay.num_full} full), density {lay.density():.3f}")
        results.append((tag, med))
        rows.append(_row(f"host {mode}", causal, med, f"from_block_mask + rows(), {heads} heads, best {best:.2f} ms"))
        med_t, _ = timeit(lambda lay=lay: BlockSparseLayout.transposed(_fresh(lay)), args.repeat)
        med_f, _ = timeit(lambda lay=lay: to_fa4(lay), args.repeat)
        print(f"    transposed(): {med_t:.2f} ms; to_fa4(): {med_f:.2f} ms")
    worst = max(m for _, m in results)
    ok = worst < BAR_MS
    print(f"W1 build (from_block_mask + rows()), worst case above: {worst:.2f} ms -> "
          f"{'under' if ok else 'OVER'} the {BAR_MS:.0f} ms bar")
    if args.json:
        write_json(args.json, rows, {"bench": "layout", "numpy": np.__version__, "cpus": os.cpu_count()})
    return 0 if ok else 1


def _row(system: str, causal: bool, ms: float, note: str) -> dict:
    return make_row("layout", "W1", system, causal=causal, density=0.1, block=128, head_dim=128, ms=ms, note=note)


DEVICE_BAR_US = 50.0


def w1_padded_mask(density: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """W1's mask padded per sequence, ``[8, 32, 64, 64]`` bool (per query head), and cu_seqlens."""
    mask_packed, cu = w1_block_mask(32, density)
    lens, nb = np.diff(cu), np.diff(cu) // 128
    cu_nb = np.concatenate([[0], np.cumsum(nb)])
    mb = int(nb.max())
    padded = np.zeros((len(lens), 32, mb, mb), bool)
    for b in range(len(lens)):
        padded[b, :, : nb[b], : nb[b]] = mask_packed[:, cu_nb[b]:cu_nb[b + 1], cu_nb[b]:cu_nb[b + 1]]
    return padded, cu


def _graph_build_us(torch, varblock, device_layout, m, c, causal: bool, repeat: int) -> tuple[float, str]:
    """GPU microseconds per ``device_layout.rebuild`` (CUDA events around ``repeat`` graph replays) and the
    plan's status message."""
    st = torch.cuda.Stream()
    with torch.cuda.stream(st):
        plan = varblock.plan_device(mask=m, cu_seqlens_q=c, num_heads_q=32, num_heads_kv=8, head_dim=128,
                                    causal=causal, stream=st)
        device_layout.check(plan)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=st):
            device_layout.rebuild(plan, mask=m, cu_seqlens_q=c, stream=st)
        t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        graph.replay()
        t0.record(st)
        for _ in range(repeat):
            graph.replay()
        t1.record(st)
        t1.synchronize()
    return t0.elapsed_time(t1) * 1e3 / repeat, device_layout.status(plan)["message"]


def device_build(repeat: int, json_path: str | None = None) -> int:
    """W1 at density 0.1 from the padded mask [8, 32, 64, 64] (per query head): the device build's GPU time
    (graph replays) next to the host builders' wall time on the same mask."""
    import torch

    import varblock
    from varblock import device_layout

    padded, cu = w1_padded_mask(0.1)
    worst, rows = 0.0, []
    for causal in (False, True):
        m, c = torch.from_numpy(padded).cuda(), torch.from_numpy(cu).cuda()
        us, msg = _graph_build_us(torch, varblock, device_layout, m, c, causal, repeat)
        worst = max(worst, us)

        def host_layout(mask=padded, causal=causal):
            lay = BlockSparseLayout.from_block_mask(mask, cu, cu, block_q=128, block_k=128, head_mode="per_q_head",
                                                    causal=causal)
            lay.rows()
            return lay

        def host_from_gpu(m=m, causal=causal):
            lay = host_layout(m.cpu().numpy(), causal)
            return varblock.plan(cu, cu, num_heads_q=32, num_heads_kv=8, head_dim=128, layout=lay)

        h_ms, _ = timeit(host_layout, min(repeat, 20))
        p_ms, _ = timeit(host_from_gpu, min(repeat, 20))
        print(f"W1 mask {tuple(padded.shape)}, causal={causal}: device build {us:.1f} us GPU per build (graph "
              f"replay, {repeat} runs; {msg}); host from_block_mask + rows() {h_ms:.2f} ms; host path from the GPU "
              f"mask (copy + layout + plan) {p_ms:.2f} ms", flush=True)
        rows += [_row("device", causal, us / 1e3, f"device_layout.rebuild GPU time, graph replay; {msg}"),
                 _row("host per_q_head", causal, h_ms, "from_block_mask + rows() on a host mask, wall"),
                 _row("host from GPU mask", causal, p_ms, "mask.cpu() + from_block_mask + varblock.plan, wall")]
    print(f"worst {worst:.1f} us -> {'under' if worst <= DEVICE_BAR_US else 'OVER'} the {DEVICE_BAR_US:.0f} us bar")
    if json_path:
        write_json(json_path, rows, {"bench": "layout", "device": torch.cuda.get_device_name()})
    return 0 if worst <= DEVICE_BAR_US else 1


def _fresh(lay):
    lay._cols = None  # measure the transposition itself, not the cache
    return lay


if __name__ == "__main__":
    raise SystemExit(main())
