"""Pure schedules: ``f(step) -> value`` with no side effects.

Callbacks and learning-rate schedulers only evaluate these; anything stateful (the step counter) lives
in the trainer's checkpoint, so a resumed run evaluates the same values at the same steps.
"""

from __future__ import annotations

import math


def warmup_poly(
    step: int, total_steps: int, warmup_steps: int = 0, power: float = 0.9, warmup_ratio: float = 1e-6
) -> float:
    """Learning-rate multiplier: linear warm-up followed by polynomial decay.

    During warm-up the multiplier rises linearly from ``warmup_ratio`` to 1; afterwards it is
    ``(1 - step / total_steps) ** power`` over the whole run, not re-based on the warm-up (the DuPL / ToCo
    ``PolyWarmupAdamW`` convention, which leaves a small downward step at the end of warm-up).

    Args:
        step: optimizer steps taken so far (0-based).
        total_steps: length of the whole schedule; the multiplier is 0 at and after it.
        warmup_steps: number of warm-up steps (0 disables warm-up).
        power: exponent of the polynomial decay.
        warmup_ratio: multiplier at step 0 of the warm-up.

    Returns:
        The multiplier applied to each parameter group's base learning rate.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if step < warmup_steps:
        return 1.0 - (1.0 - step / warmup_steps) * (1.0 - warmup_ratio)
    return max(0.0, 1.0 - min(step, total_steps) / total_steps) ** power


def cosine_descent(step: int, total_steps: int, start: float, end: float) -> float:
    """Cosine interpolation from ``start`` (step 0) to ``end`` (step ``total_steps`` and later)."""
    progress = min(max(step, 0), total_steps) / max(total_steps, 1)
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * progress))


def linear_ramp(step: int, total_steps: int, start: float, end: float) -> float:
    """Linear interpolation from ``start`` (step 0) to ``end`` (step ``total_steps`` and later)."""
    progress = min(max(step, 0), total_steps) / max(total_steps, 1)
    return start + (end - start) * progress
