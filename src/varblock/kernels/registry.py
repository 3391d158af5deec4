"""Variant registry: what build_kernels.py compiles and what the manifest records.

This module is plain Python (no cutlass import) so that the build script can list variants, and tests can check
the registry, without compiling anything. Each kernel family lives in its own module of this package and exposes:

* ``FAMILY``: a :class:`Family` (name, the modules whose source stamps the cubins, the variants per arch);
* ``compile_args(variant)`` -> ``(host_jit_function, args)`` for ``cute.compile`` (build time, imports cutlass);
* ``capture_cases(variant)`` -> list of ``{param name: value}`` dicts for the launch-capture check.

Kernel ABI convention: every kernel parameter is a raw global pointer or a scalar (``Param``), and the host
``@cute.jit`` function takes exactly the kernel's parameters in the same order and launches the kernel once.
The runtime packs the same values in the same order; launch capture proves it byte for byte.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

#: kinds of kernel parameters and their sizes in bytes: scalars and pointers; ``tensormap`` (a 128-byte TMA
#: descriptor, built by the runtime from the param's ``recipe``); ``i32xN`` (N int32 values, e.g. the extents of a
#: TMA coordinate tensor; ``recipe = {"fields": [expr, ...]}``). See varblock.runtime.tensormap.
PARAM_SIZES = {"ptr": 8, "i32": 4, "u32": 4, "i64": 8, "f32": 4, "u8": 1, "tensormap": 128,
               **{f"i32x{n}": 4 * n for n in range(1, 9)}}
STRUCT_KINDS = frozenset(k for k in PARAM_SIZES if k == "tensormap" or k.startswith("i32x"))

#: build arch name -> CuTe DSL target (CUTE_DSL_ARCH) and the compute capabilities its cubins run on
ARCHES: dict[str, dict[str, Any]] = {
    "sm80": {"target": "sm_80", "runs_on": [(8, 0), (8, 6), (8, 7), (8, 9)]},
    "sm90": {"target": "sm_90a", "runs_on": [(9, 0)]},
    "sm100": {"target": "sm_100f", "runs_on": [(10, 0), (10, 3)]},
    "sm120": {"target": "sm_120f", "runs_on": [(12, 0), (12, 1)]},
}
DEFAULT_ARCHES = ("sm80", "sm90", "sm100", "sm120")


@dataclass(frozen=True)
class Param:
    """One kernel parameter: a global pointer (``align`` = alignment the kernel assumes), a scalar, or a by-value
    struct computed from other values by ``recipe`` (``tensormap``, ``i32xN``)."""

    name: str
    kind: str
    align: int = 0
    recipe: Any = None

    def __post_init__(self) -> None:
        if self.kind not in PARAM_SIZES:
            raise ValueError(f"param {self.name}: unknown kind {self.kind!r}")
        if (self.recipe is not None) != (self.kind in STRUCT_KINDS):
            raise ValueError(f"param {self.name}: kind {self.kind!r} {'needs' if self.recipe is None else 'takes no'} "
                             f"recipe")

    @property
    def size(self) -> int:
        return PARAM_SIZES[self.kind]


def pointer_requires(params: Sequence[Param]) -> tuple[dict[str, Any], ...]:
    """Requirement entries (see :class:`Variant`): each pointer parameter's address a multiple of its ``align``
    (pointers aligned to 1 byte need none)."""
    return tuple({"what": f"{p.name} address", "value": p.name, "divisible_by": p.align}
                 for p in params if p.kind == "ptr" and p.align > 1)


@dataclass(frozen=True)
class Variant:
    """One compiled kernel: a family at one static configuration for one arch.

    ``grid`` is a 3-list of expressions over parameter values (see ``varblock.runtime.expr``);
    ``requires`` lists static input requirements as ``{"what", "value": expr, one of divisible_by/equals/range}``.
    ``key`` holds the static configuration the runtime selects on (dtype, head_dim, ...), JSON-able.
    """

    family: str
    name: str
    arch: str
    key: dict[str, Any]
    params: tuple[Param, ...]
    block: tuple[int, int, int]
    grid: tuple[Any, Any, Any]
    requires: tuple[dict[str, Any], ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)
    #: the host ``@cute.jit`` function's arguments when they differ from ``params`` (a TMA kernel's host function
    #: takes pointers and sizes and builds the descriptors); the runtime computes ``params`` from these values
    host_params: tuple[Param, ...] = ()

    def manifest_entry(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "name": self.name,
            "arch": self.arch,
            "key": dict(self.key),
            "params": [{"name": p.name, "kind": p.kind, "size": p.size, "align": p.align,
                        **({"recipe": p.recipe} if p.recipe is not None else {})} for p in self.params],
            "block": list(self.block),
            "grid": list(self.grid),
            "requires": [dict(r) for r in self.requires],
            "extra": dict(self.extra),
        }


@dataclass(frozen=True)
class Family:
    """A kernel family as the build sees it; the one place that says what a family provides.

    * ``name``: the family's name in the manifest (and of its runtime binding in ``varblock.families``);
    * ``module``: the family module (plain Python: no cutlass at import). Besides ``FAMILY`` it defines
      ``compile_args(variant) -> (host_jit_function, args)`` for ``cute.compile`` (imports cutlass: build time
      only) and ``capture_cases(variant) -> [{param name: value}, ...]`` for the launch-capture check;
    * ``variants(arch)``: its variants for a build arch;
    * ``sources``: the files whose bytes stamp its cubins (with the shared build helpers);
    * ``arches``: the build arches it is built for (default: every arch in ``ARCHES``).
    """

    name: str
    module: str
    variants: Callable[[str], list[Variant]]
    sources: tuple[str, ...] = ()
    arches: tuple[str, ...] = tuple(ARCHES)

    def variants_for(self, arch: str) -> list[Variant]:
        """The family's variants for ``arch`` (none where it is not built), checked to belong to it."""
        if arch not in ARCHES:
            raise ValueError(f"unknown arch {arch!r}; known: {', '.join(ARCHES)}")
        if arch not in self.arches:
            return []
        vs = self.variants(arch)
        bad = [v.name for v in vs if v.family != self.name or v.arch != arch]
        if bad:
            raise ValueError(f"kernel family {self.name}: variants {bad} name another family or arch")
        return vs

    def compile_args(self, variant: Variant) -> tuple[Callable, list[Any]]:
        """``(host_jit_function, args)`` for ``cute.compile`` (imports cutlass)."""
        return self._hook("compile_args")(variant)

    def capture_cases(self, variant: Variant) -> list[dict[str, Any]]:
        """Argument sets (fake device addresses) for the launch-capture check."""
        return self._hook("capture_cases")(variant)

    def _hook(self, name: str) -> Callable:
        import importlib

        fn = getattr(importlib.import_module(self.module), name, None)
        if not callable(fn):
            raise TypeError(f"kernel family {self.name}: module {self.module} defines no {name}(variant)")
        return fn


#: kernel family modules, in build order (each defines FAMILY)
FAMILY_MODULES = (
    "varblock.kernels.merge_states",
    "varblock.kernels.attention_fwd_mma",
    "varblock.kernels.attention_fwd_sm90",
    "varblock.kernels.attention_prepare",
    "varblock.kernels.attention_bwd_mma",
    "varblock.kernels.decode_fwd",
    "varblock.kernels.decode_prepare",
    "varblock.kernels.tma_copy",
    "varblock.kernels.layout_device",
    "varblock.kernels.attention_pool",
    "varblock.kernels.attention_pool_sm90",
)


def families() -> list[Family]:
    """Import each family module's FAMILY. Family modules import cutlass lazily (inside compile_args)."""
    import importlib

    return [importlib.import_module(m).FAMILY for m in FAMILY_MODULES]


def all_variants(arch: str) -> list[Variant]:
    out: list[Variant] = []
    for fam in families():
        out.extend(fam.variants_for(arch))
    names = [v.name for v in out]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ValueError(f"duplicate variant names for {arch}: {sorted(dup)}")
    return out
