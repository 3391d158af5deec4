"""The manifest's tiny expression language (grid formulas, requirement values).

An expression is an int, a name (looked up in a dict of parameter values) or ``[op, a, b]`` with op one of
``cdiv, mul, add, sub, max, min``. It is data, so the manifest stays JSON and the runtime never evaluates code.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_OPS = {
    "cdiv": lambda a, b: -(-a // b),
    "mul": lambda a, b: a * b,
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "max": max,
    "min": min,
}


def evaluate(expr: Any, values: Mapping[str, Any]) -> int:
    """Evaluate ``expr`` against ``values`` (integers only)."""
    if isinstance(expr, bool):
        raise TypeError("booleans are not expressions")
    if isinstance(expr, int):
        return expr
    if isinstance(expr, str):
        try:
            return int(values[expr])
        except KeyError:
            raise KeyError(f"expression names {expr!r}, which is not among the launch values") from None
    if isinstance(expr, (list, tuple)) and len(expr) == 3 and expr[0] in _OPS:
        return int(_OPS[expr[0]](evaluate(expr[1], values), evaluate(expr[2], values)))
    raise ValueError(f"malformed expression {expr!r}")
