"""ops.checks.softmax_scale_value: the one softmax-scale rule of the forward, backward, decode and pooling ops."""

from __future__ import annotations

import math

import numpy as np
import pytest

from varblock.ops.checks import softmax_scale_value


@pytest.mark.parametrize("d", [64, 96, 128])
def test_default_is_inverse_sqrt_head_dim(d):
    assert softmax_scale_value(None, d) == 1.0 / math.sqrt(d)
    assert softmax_scale_value(None, d, positive=True) == 1.0 / math.sqrt(d)


@pytest.mark.parametrize("value", [0.125, 2, np.float32(0.5), np.float64(0.25), -0.5, 0.0])
def test_finite_numbers_pass_as_float(value):
    got = softmax_scale_value(value, 64)
    assert type(got) is float and got == float(value)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), True, "0.1", [0.1], 1j])
def test_non_finite_or_non_numbers_are_refused(value):
    with pytest.raises(ValueError, match="softmax_scale: expected a finite number"):
        softmax_scale_value(value, 64)


@pytest.mark.parametrize("value", [0.0, -0.125, float("nan"), False])
def test_positive_refuses_zero_and_negative(value):
    with pytest.raises(ValueError, match="softmax_scale: expected a finite positive number"):
        softmax_scale_value(value, 64, positive=True)
    assert softmax_scale_value(0.5, 64, positive=True) == 0.5
