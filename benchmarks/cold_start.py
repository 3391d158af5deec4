"""Cold start: import varblock + load the module + first launch, in a fresh process (inputs made beforehand).

    python benchmarks/cold_start.py        # prints one line per phase, in milliseconds
"""

from __future__ import annotations

import time

import torch


def main() -> None:
    op = torch.randn(4, 4096, 8, 128, device="cuda", dtype=torch.float32)
    lp = torch.randn(4, 8, 4096, device="cuda")
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    import varblock

    t1 = time.perf_counter()
    out, lse = varblock.merge_states(op, lp, out_dtype="bfloat16")
    torch.cuda.synchronize()
    t2 = time.perf_counter()
    out, lse = varblock.merge_states(op, lp, out_dtype="bfloat16")
    torch.cuda.synchronize()
    t3 = time.perf_counter()
    n = 1000
    c0 = time.process_time()
    w0 = time.perf_counter()
    for _ in range(n):
        varblock.merge_states(op, lp, out=out, lse=lse)
    w1 = time.perf_counter()
    c1 = time.process_time()
    torch.cuda.synchronize()
    print(f"cold start: import {1e3 * (t1 - t0):.1f} ms, first call (manifest + module load + launch + sync) "
          f"{1e3 * (t2 - t1):.1f} ms, total {1e3 * (t2 - t0):.1f} ms; warm call + sync {1e3 * (t3 - t2):.2f} ms")
    print(f"host overhead, merge_states with preallocated outputs: {1e6 * (c1 - c0) / n:.1f} us CPU / call, "
          f"{1e6 * (w1 - w0) / n:.1f} us wall / call ({n} calls)")


if __name__ == "__main__":
    main()
