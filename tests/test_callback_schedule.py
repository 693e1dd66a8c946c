"""CoefficientSchedule: a pure function of the step; bad arguments rejected."""

from __future__ import annotations

import pytest

from entropy_reg.callbacks import CoefficientSchedule


def test_default_is_constant_one():
    s = CoefficientSchedule()
    assert [s(i) for i in (0, 1, 1000)] == [1.0, 1.0, 1.0]


def test_linear_with_hold():
    s = CoefficientSchedule(warmup_steps=4, start=0.0, end=2.0, hold_steps=2)
    assert [s(i) for i in range(8)] == [0.0, 0.0, 0.0, 0.5, 1.0, 1.5, 2.0, 2.0]


def test_cosine_endpoints_and_midpoint():
    s = CoefficientSchedule(warmup_steps=10, start=1.0, end=0.0, kind="cosine")
    assert s(0) == 1.0 and s(10) == 0.0
    assert s(5) == pytest.approx(0.5)
    assert s(2) > 0.9  # cosine starts flat


def test_constant_switches_after_hold():
    s = CoefficientSchedule(kind="constant", start=0.0, end=0.7, hold_steps=3)
    assert [s(i) for i in range(5)] == [0.0, 0.0, 0.0, 0.7, 0.7]


def test_state_roundtrip():
    s = CoefficientSchedule(warmup_steps=3, start=0.1, end=0.9, kind="cosine", hold_steps=1)
    t = CoefficientSchedule()
    t.load_state_dict(s.state_dict())
    assert t == s and [t(i) for i in range(6)] == [s(i) for i in range(6)]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"warmup_steps": -1},
        {"warmup_steps": 1.5},
        {"hold_steps": True},
        {"start": -0.1},
        {"end": float("nan")},
        {"kind": "exp"},
        {"kind": "constant", "warmup_steps": 5},
    ],
)
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        CoefficientSchedule(**kwargs)
