"""CoefficientSchedule: the global regularizer coefficient as a pure function of the optimizer step.

The schedule is deliberately stateless (value = f(step)), so a resumed run gets exactly the same
coefficients as an uninterrupted one; ``state_dict`` only records the configuration, so a checkpoint
says which schedule produced it.
"""

from __future__ import annotations

import math
from typing import Any

from entropy_reg.validation import check_int, check_nonnegative

_KINDS = ("linear", "cosine", "constant")


class CoefficientSchedule:
    """Coefficient ``c(step)`` that multiplies every regularizer term (``EntropyRegularizedLoss.scale``).

    Shape over optimizer steps (``trainer.global_step``)::

        step < hold_steps                          -> start        (e.g. let plain SFT settle first)
        hold_steps <= step < hold_steps + warmup   -> ramp start -> end ("linear" or half-cosine)
        afterwards                                 -> end

    ``kind="constant"`` has no ramp: ``start`` during ``hold_steps``, then ``end`` (``warmup_steps``
    must be 0). ``CoefficientSchedule()`` is the constant 1.0, i.e. the weights as configured.

    Sequence-level objectives (:mod:`entropy_reg.objectives`) share the coefficient: each adds
    ``c(step) * weight * loss``, and at ``c(step) == 0`` they do not run at all (no extra forward), so
    ``hold_steps`` also delays DITTO / sequence-level unlikelihood until plain SFT has settled.

    Args:
        warmup_steps: length of the ramp in optimizer steps.
        start: value before and at the beginning of the ramp (>= 0).
        end: value after the ramp (>= 0).
        kind: ``"linear"``, ``"cosine"`` or ``"constant"``.
        hold_steps: steps spent at ``start`` before the ramp begins.
    """

    def __init__(
        self,
        warmup_steps: int = 0,
        start: float = 0.0,
        end: float = 1.0,
        kind: str = "linear",
        hold_steps: int = 0,
    ) -> None:
        # The shared checks name the key whatever the value is ({start: abc} included).
        for name, value in (("warmup_steps", warmup_steps), ("hold_steps", hold_steps)):
            check_int("CoefficientSchedule", name, value, 0)
        for name, value in (("start", start), ("end", end)):
            check_nonnegative("CoefficientSchedule", name, value)
        if kind not in _KINDS:
            raise ValueError(f"CoefficientSchedule: kind must be one of {_KINDS}, got {kind!r}")
        if kind == "constant" and warmup_steps:
            raise ValueError(
                "CoefficientSchedule: kind='constant' has no ramp, so warmup_steps must be 0 "
                f"(got {warmup_steps}); use hold_steps to delay the switch from start to end"
            )
        self.warmup_steps = int(warmup_steps)
        self.start = float(start)
        self.end = float(end)
        self.kind = kind
        self.hold_steps = int(hold_steps)

    def __call__(self, step: int) -> float:
        if step < self.hold_steps:
            return self.start
        progress_steps = step - self.hold_steps
        if self.kind == "constant" or progress_steps >= self.warmup_steps:
            return self.end
        frac = progress_steps / self.warmup_steps
        if self.kind == "cosine":
            frac = 0.5 * (1.0 - math.cos(math.pi * frac))
        return self.start + (self.end - self.start) * frac

    def state_dict(self) -> dict[str, Any]:
        return {
            "warmup_steps": self.warmup_steps,
            "start": self.start,
            "end": self.end,
            "kind": self.kind,
            "hold_steps": self.hold_steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # Re-validate through __init__ so a corrupted checkpoint cannot smuggle in a bad schedule.
        self.__init__(**{k: state[k] for k in self.state_dict()})

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CoefficientSchedule) and self.state_dict() == other.state_dict()

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.state_dict().items())
        return f"CoefficientSchedule({args})"
