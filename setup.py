"""Packs the built cubins (cubins/manifest.json, cubins/<arch>/variants.json, *.cubin) into the wheel (varblock/cubins).

Build them first (`python build_kernels.py`), then `python -m build --wheel`. The kernel sources
(varblock.kernels) are build-time only and stay out of the wheel."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildPyWithCubins(build_py):
    def run(self) -> None:
        super().run()
        src = ROOT / "cubins"
        if not (src / "manifest.json").is_file():
            self.warn("cubins/manifest.json not found: this build carries no kernels (run build_kernels.py first)")
            return
        dst = Path(self.build_lib) / "varblock" / "cubins"
        dst.mkdir(parents=True, exist_ok=True)
        self.copy_file(str(src / "manifest.json"), str(dst / "manifest.json"))
        for cubin in sorted([*src.glob("*/*.cubin"), *src.glob("*/variants.json")]):
            (dst / cubin.parent.name).mkdir(exist_ok=True)
            self.copy_file(str(cubin), str(dst / cubin.parent.name / cubin.name))


setup(cmdclass={"build_py": BuildPyWithCubins})
