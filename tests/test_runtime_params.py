"""CPU tests of the manifest expression language, parameter packing and requirement checks."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from varblock.runtime.expr import evaluate
from varblock.runtime.params import check_requires, grid_of, launch_args, pack_bytes

PARAMS = [{"name": "p", "kind": "ptr"}, {"name": "n", "kind": "i32"}, {"name": "s", "kind": "i64"},
          {"name": "x", "kind": "f32"}, {"name": "u", "kind": "u32"}, {"name": "b", "kind": "u8"}]
VALUES = {"p": 0x7F00_0000_1230, "n": -5, "s": 3 << 40, "x": 0.125, "u": 7, "b": 255}


def test_evaluate():
    v = {"a": 10, "b": 3}
    assert evaluate(4, v) == 4
    assert evaluate("a", v) == 10
    assert evaluate(["cdiv", "a", "b"], v) == 4
    assert evaluate(["mul", ["add", "a", 1], ["sub", "b", 1]], v) == 22
    assert evaluate(["max", "a", ["min", "b", 2]], v) == 10


@pytest.mark.parametrize("bad", [["pow", 1, 2], ["cdiv", 1], 1.5, None, True])
def test_evaluate_rejects_malformed(bad):
    with pytest.raises((ValueError, TypeError)):
        evaluate(bad, {})


def test_evaluate_unknown_name():
    with pytest.raises(KeyError, match="nope"):
        evaluate("nope", {})


def test_pack_bytes_layout():
    b = pack_bytes(PARAMS, VALUES)
    assert [len(x) for x in b] == [8, 4, 8, 4, 4, 1]
    assert struct.unpack("<Q", b[0])[0] == VALUES["p"]
    assert struct.unpack("<i", b[1])[0] == -5
    assert struct.unpack("<q", b[2])[0] == 3 << 40
    assert struct.unpack("<f", b[3])[0] == 0.125
    assert b[5] == b"\xff"


def test_launch_args_match_bytes():
    """The typed launch arguments hold exactly the bytes that capture checks."""
    args = launch_args(PARAMS, VALUES)
    b = pack_bytes(PARAMS, VALUES)
    assert isinstance(args[0], int) and struct.pack("<Q", args[0]) == b[0]
    for a, raw in zip(args[1:], b[1:]):
        assert isinstance(a, np.generic) and a.tobytes() == raw


@pytest.mark.parametrize("kind,value", [("i32", 2**31), ("i32", -(2**31) - 1), ("u8", 256), ("u32", -1),
                                        ("ptr", -1)])
def test_overflow_is_an_error(kind, value):
    with pytest.raises(OverflowError, match="q"):
        pack_bytes([{"name": "q", "kind": kind}], {"q": value})


def test_check_requires():
    req = [{"what": "x address", "value": "x", "divisible_by": 16},
           {"what": "d", "value": "d", "equals": 128},
           {"what": "rows", "value": ["mul", "t", "h"], "range": [0, 2**31 - 1]}]
    assert check_requires(req, {"x": 64, "d": 128, "t": 10, "h": 4}) == []
    bad = check_requires(req, {"x": 66, "d": 64, "t": 2**30, "h": 4})
    assert len(bad) == 3
    assert "x address must be a multiple of 16" in bad[0]
    assert "d must equal 128" in bad[1]
    assert "rows must lie in" in bad[2]


def test_grid_of():
    assert grid_of([["cdiv", "n", 4], 1, "m"], {"n": 9, "m": 2}) == (3, 1, 2)
    with pytest.raises(ValueError):
        grid_of([1, 1], {})
