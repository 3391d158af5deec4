"""A kernel's parameter list declared once: the ``registry.Param`` tuple of its family.

:func:`jit_host` builds the host ``@cute.jit`` function whose signature is that list (names, DSL types, order),
and hands the kernel a :class:`types.SimpleNamespace` of the values: the DSL flattens a namespace argument to one
kernel parameter per value, in insertion order, so the kernel's ``.param`` list is the declared one (launch
capture in ``build_kernels.py`` checks it byte for byte).
"""

# (no `from __future__ import annotations`: the DSL reads the signature's annotations as objects)
import inspect
from collections.abc import Callable, Sequence
from types import SimpleNamespace

import cutlass.cute as cute
from cutlass import Float32, Int32, Int64, Uint8, Uint32

#: DSL type of each ``Param.kind``
DSL_TYPES = {"ptr": cute.Pointer, "i32": Int32, "u32": Uint32, "i64": Int64, "f32": Float32, "u8": Uint8}


def signature_of(params: Sequence) -> inspect.Signature:
    """The Python signature ``(name: DSL type, ...)`` of a Param list."""
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    return inspect.Signature([inspect.Parameter(p.name, kind, annotation=DSL_TYPES[p.kind]) for p in params])


def jit_host(params: Sequence, launch: Callable[[SimpleNamespace], None], name: str = "host"):
    """``@cute.jit`` host function taking exactly ``params`` (in order); it calls ``launch(namespace)``, which
    launches the kernel with the namespace as its single argument."""
    names = tuple(p.name for p in params)

    def host(*args):
        launch(SimpleNamespace(**dict(zip(names, args, strict=True))))

    host.__signature__ = signature_of(params)
    host.__name__ = host.__qualname__ = name
    return cute.jit(host)


def fake_args(params: Sequence, pointee: dict | None = None) -> list:
    """Compile-time stand-ins for ``params``: null global pointers (element type from ``pointee`` by name, Int32
    otherwise; the Param's alignment) and scalars 1 / 1.0 (the values are supplied at launch)."""
    from cutlass.cute.runtime import nullptr

    pointee = pointee or {}
    args = []
    for p in params:
        if p.kind == "ptr":
            args.append(nullptr(pointee.get(p.name, Int32), cute.AddressSpace.gmem, assumed_align=p.align or 4))
        else:
            args.append(DSL_TYPES[p.kind](1.0 if p.kind == "f32" else 1))
    return args
