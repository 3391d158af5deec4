"""Cold-start breakdown: what the first varblock call spends its time on (fresh process, torch already imported)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))


def step(label, fn):
    t = time.perf_counter()
    r = fn()
    print(f"{label:45s} {1e3 * (time.perf_counter() - t):8.1f} ms", flush=True)
    return r


def main():
    x = torch.zeros(1, device="cuda")
    torch.cuda.synchronize()
    step("import cuda.bindings.driver", lambda: __import__("cuda.bindings.driver"))
    step("import cuda.core", lambda: __import__("cuda.core"))
    from cuda.core import Device

    d = step("cuda.core Device(0)", lambda: Device(0))
    step("Device.set_current()", d.set_current)
    step("Device.compute_capability", lambda: d.compute_capability)
    step("Device.properties.multiprocessor_count", lambda: d.properties.multiprocessor_count)
    step("Device.allocate(1 KB)", lambda: d.allocate(1024, stream=d.default_stream))
    step("import varblock", lambda: __import__("varblock"))
    del x


if __name__ == "__main__":
    main()
