"""`import varblock` must not import a GPU framework or the compiler (DESIGN.md section 4)."""

from __future__ import annotations

import ast
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


def test_import_varblock_leaves_cuda_python_for_the_first_call():
    """cuda.core / cuda.bindings cost most of the cold start: importing varblock must not load them."""
    code = "import sys, varblock; print(sorted(m for m in sys.modules if m == 'cuda' or m.startswith('cuda.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "[]"


def _imported_modules(path: Path, root: Path = SRC) -> set[str]:
    """Every module an ``import`` / ``from ... import`` statement of the file names (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    pkg = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
    return names


def test_runtime_never_imports_kernel_sources():
    """Only build_kernels.py and build tests import varblock.kernels (or cutlass)."""
    for path in (SRC / "varblock").rglob("*.py"):
        if "kernels" in path.relative_to(SRC).parts:
            continue
        bad = {m for m in _imported_modules(path) if m.split(".")[0] == "cutlass" or m.startswith("varblock.kernels")}
        assert not bad, f"{path} imports {sorted(bad)}"


def test_import_checker_sees_relative_and_absolute_imports(tmp_path):
    """The checker above is not blind: it resolves relative imports and sees function-local ones."""
    f = tmp_path / "varblock" / "ops" / "probe.py"
    f.parent.mkdir(parents=True)
    f.write_text("from ..kernels import registry\n\ndef g():\n    import cutlass.cute\n")
    got = _imported_modules(f, tmp_path)
    assert "varblock.kernels.registry" in got and "cutlass.cute" in got


def test_public_names_resolve_and_the_rest_loads_lazily():
    """Every name of ``varblock.__all__`` resolves; ops off the forward path are imported on first access."""
    code = ("import sys, varblock; lazy = sorted(varblock._LAZY); "
            "early = [n for n in lazy if varblock._LAZY[n][0] in sys.modules]; "
            "missing = [n for n in varblock.__all__ if getattr(varblock, n, None) is None]; "
            "print(early, missing, callable(varblock.decode), hasattr(varblock.reference, 'attention_forward'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "[] [] True True"
