"""`import varblock` must not import a GPU framework or the compiler (DESIGN.md section 4)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"


def test_import_varblock_imports_no_framework():
    code = ("import sys, varblock; "
            "bad = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'cupy', 'jax', 'jaxlib', 'cutlass'}); "
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == ""


def test_runtime_never_imports_kernel_sources():
    """Only build_kernels.py and build tests import varblock.kernels."""
    for path in (SRC / "varblock").rglob("*.py"):
        if "kernels" in path.parts:
            continue
        text = path.read_text()
        assert "varblock.kernels" not in text, f"{path} imports varblock.kernels"
        assert "import cutlass" not in text, f"{path} imports cutlass"
