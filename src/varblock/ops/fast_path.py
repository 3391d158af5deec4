"""The torch fast path shared by the ops: a call whose argument signature a plan has already validated and prepared
only changes pointers (aliasing checked here, alignment by the prepared launch), outputs and the stream."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from varblock.ops.checks import check_no_alias


def fast_call(hit: tuple, inputs: Sequence[Any], names: Sequence[str], out: Any, lse: Any, return_lse: bool,
              launch: Callable[[tuple[int, ...]], None]) -> Any:
    """Run a recorded launch ``hit = (prepared, out shape, lse shape, byte spans of (*inputs, out, lse))`` on torch
    tensors: refuse given outputs that alias the inputs or each other, allocate the missing outputs, and call
    ``launch(pointers)`` (the caller picks the stream) with the inputs' pointers followed by out's and lse's."""
    _, oshape, lshape, spans = hit
    ptrs = [t.data_ptr() for t in inputs]
    if out is not None or lse is not None:
        ins = [(n, (p, p + s)) for n, p, s in zip(names, ptrs, spans)]
        given = [(n, (t.data_ptr(), t.data_ptr() + s)) for n, t, s in (("out", out, spans[-2]), ("lse", lse, spans[-1]))
                 if t is not None]
        check_no_alias(given, ins)
    q = inputs[0]
    if out is None or lse is None:
        import torch

        if out is None:
            out = torch.empty(oshape, dtype=q.dtype, device=q.device)
        if lse is None:
            lse = torch.empty(lshape, dtype=torch.float32, device=q.device)
    launch((*ptrs, out.data_ptr(), lse.data_ptr()))
    return (out, lse) if return_lse else out
