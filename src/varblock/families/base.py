"""What a kernel family binding is: the problem it is asked about, and the protocol it implements.

A *binding* is the runtime side of one kernel family (the build side lives in ``varblock.kernels``): it says
whether it can run a problem (``supports``), which tile sizes its kernels use, and how a plan plus the call's arrays
become the kernel's named parameters (``bind``). ``varblock.families`` keeps, per op, an ordered list of bindings
(fastest first) and picks the first that supports the problem.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from varblock.runtime.manifest import available_keys, find_variant

#: element-mask kinds a problem may need (``AttentionProblem.mask_kinds``)
MASK_KINDS = frozenset({"causal", "window", "doc", "token", "sinks"})
#: the input dtypes of the attention ops (a family may build fewer: it declines the others)
ATTENTION_DTYPES = ("bfloat16", "float16")
#: layout / plan features a problem may need (``AttentionProblem.features``)
FEATURES = frozenset({"block_sparse", "variable_spans", "pack_gqa", "device_plan", "persistent"})


@dataclass(frozen=True)
class AttentionProblem:
    """The static facts of an attention problem a family decides on (no data, no pointers).

    ``dtype`` is None while unknown (a plan serves fp16 and bf16 alike unless told otherwise); ``pack_gqa`` is the
    caller's request (None: automatic).
    """

    arch: str
    head_dim: int
    num_heads_q: int
    num_heads_kv: int
    dtype: str | None = None
    mask_kinds: frozenset[str] = field(default_factory=frozenset)
    features: frozenset[str] = field(default_factory=frozenset)
    pack_gqa: bool | None = None
    scheduler: str = "auto"

    def __post_init__(self) -> None:
        bad = (set(self.mask_kinds) - MASK_KINDS) | (set(self.features) - FEATURES)
        if bad:
            raise ValueError(f"AttentionProblem: unknown mask kinds or features {sorted(bad)}")


class FamilyBinding(ABC):
    """The runtime side of one kernel family (see the module docstring and docs/families.md).

    Class attributes: ``name`` (the kernel family's name in the manifest; also what ``backend=`` names), ``op``
    (``"attention_fwd"``, ...), ``pointers`` (the per-call pointer parameters, in the order the op passes them;
    every other parameter is fixed when a launch is prepared).
    """

    name: str = ""
    op: str = ""
    pointers: tuple[str, ...] = ()

    @abstractmethod
    def supports(self, problem: Any) -> str | None:
        """None when this family can run ``problem``, else a short human reason naming what it lacks."""

    @abstractmethod
    def bind(self, plan: Any, arrays: Mapping[str, Any], scalars: Mapping[str, Any]) -> dict[str, Any]:
        """Every kernel parameter (name -> value) for ``plan``, the call's ``arrays`` (name -> DeviceArray) and
        ``scalars`` (name -> number). Values a variant does not take are ignored by the packer."""

    # ---- manifest lookups shared by every family
    def variant(self, arch: str, key: Mapping[str, Any]) -> dict[str, Any] | None:
        """The built variant of this family for ``arch`` whose key matches every item of ``key`` (or None)."""
        return find_variant(self.name, arch, dict(key))

    def built_keys(self, arch: str) -> list[dict[str, Any]]:
        return available_keys(self.name, arch)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} ({self.op})>"


class AttentionFamily(FamilyBinding):
    """A family of attention kernels keyed by ``dtype`` and ``head_dim`` whose variants record their tile sizes in
    ``extra`` (``tile_m``, ``tile_n``): what plans need to build a work list for them."""

    dtypes: tuple[str, ...] = ATTENTION_DTYPES

    def entry(self, arch: str, head_dim: int, dtype: str | None = None) -> dict[str, Any] | None:
        """A built variant (any of ``dtypes`` when ``dtype`` is None: tile sizes, block and occupancy do not depend
        on it)."""
        for dt in (dtype,) if dtype is not None else self.dtypes:
            e = self.variant(arch, {"dtype": dt, "head_dim": head_dim})
            if e is not None:
                return e
        return None

    def tile_config(self, arch: str, head_dim: int) -> tuple[int, int]:
        """(tile_m, tile_n) of the built variants for ``arch`` and ``head_dim``."""
        e = self.entry(arch, head_dim)
        if e is None:
            raise ValueError(f"head_dim: no {self.name} kernel is built for head_dim={head_dim} on {arch}")
        return int(e["extra"]["tile_m"]), int(e["extra"]["tile_n"])
