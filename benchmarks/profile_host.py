"""Where the host time of an attention call goes (component micro-timings, microseconds per call)."""

from __future__ import annotations

import cProfile
import pstats
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import varblock  # noqa: E402
from varblock.runtime import device as dev  # noqa: E402
from varblock.runtime.params import check_requires, launch_args  # noqa: E402
from varblock.runtime.select import variant_for  # noqa: E402
from varblock.runtime.tensors import as_device_array  # noqa: E402


def t(label, fn, n=2000):
    fn()
    c0 = time.perf_counter()
    for _ in range(n):
        fn()
    print(f"{label:50s} {1e6 * (time.perf_counter() - c0) / n:8.2f} us")


def main():
    cu = np.array([0, 128, 384], np.int32)
    q = torch.randn(384, 8, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(384, 2, 128, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    p = varblock.plan(cu, num_heads_q=8, num_heads_kv=2, head_dim=128, causal=True)
    out = varblock.attention(q, k, v, p)
    entry = variant_for("attention_fwd_mma", 0, {"dtype": "bfloat16", "head_dim": 128})
    t("as_device_array(q)", lambda: as_device_array(q, "q"))
    t("q.__dlpack__()", lambda: q.__dlpack__())
    t("torch attrs (data_ptr, shape, stride, dtype)", lambda: (q.data_ptr(), q.shape, q.stride(), q.dtype))
    t("stream_for(None, like=q)", lambda: dev.stream_for(None, 0, like=q))
    t("torch.cuda.current_stream().cuda_stream", lambda: torch.cuda.current_stream().cuda_stream)
    t("variant_for", lambda: variant_for("attention_fwd_mma", 0, {"dtype": "bfloat16", "head_dim": 128}))
    values = {pp["name"]: 0 for pp in entry["params"]}
    values.update(num_tiles=1, qhead_per_kvhead=1, pack_gqa=1, tok_block_k=1, tok_head_div=1,
                  softmax_scale_log2=1.0)
    t("check_requires", lambda: check_requires(entry["requires"], values))
    t("launch_args", lambda: launch_args(entry["params"], values))
    from cuda.core import LaunchConfig, launch

    t("LaunchConfig()", lambda: LaunchConfig(grid=(4, 1, 1), block=(128, 1, 1), shmem_size=1000))
    kern, _ = dev.kernel(0, entry, varblock.runtime.manifest.load_manifest()["_dir"])
    st = dev.stream_for(None, 0, like=q)
    cfg = LaunchConfig(grid=(p.num_tiles, 1, 1), block=tuple(entry["block"]),
                       shmem_size=entry["dynamic_smem_bytes"])
    import varblock.ops.attention as A

    captured = {}
    orig = A.launch_variant
    A.launch_variant = lambda e, o, s, v: (captured.update(v), orig(e, o, s, v))
    varblock.attention(q, k, v, p, out=out)
    A.launch_variant = orig
    args = launch_args(entry["params"], captured)
    torch.cuda.synchronize()
    t("cuda.core launch (prebuilt args)", lambda: launch(st, cfg, kern, *args), n=500)
    torch.cuda.synchronize()
    t("varblock.attention (out= given)", lambda: varblock.attention(q, k, v, p, out=out), n=500)
    torch.cuda.synchronize()
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(300):
        varblock.attention(q, k, v, p, out=out)
    pr.disable()
    torch.cuda.synchronize()
    pstats.Stats(pr).sort_stats("tottime").print_stats(18)


if __name__ == "__main__":
    main()
