"""Pure schedules: ``f(step) -> value`` with no side effects.

Callbacks and learning-rate schedulers only evaluate these; anything stateful (the step counter) lives
in the trainer's checkpoint, so a resumed run evaluates the same values at the same steps.
"""

from __future__ import annotations

import math
from typing import Literal


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
    return float(max(0.0, 1.0 - min(step, total_steps) / total_steps) ** power)


def cosine_descent(step: int, total_steps: int, start: float, end: float) -> float:
    """Cosine interpolation from ``start`` (step 0) to ``end`` (step ``total_steps`` and later)."""
    progress = min(max(step, 0), total_steps) / max(total_steps, 1)
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * progress))


def linear_ramp(step: int, total_steps: int, start: float, end: float) -> float:
    """Linear interpolation from ``start`` (step 0) to ``end`` (step ``total_steps`` and later).

    U2PL's unreliable-pixel percentage ``alpha_t = alpha_0 (1 - t / T)`` (U2PL+ Eq. 13) is
    ``linear_ramp(t, T, alpha_0, 0)`` with ``t`` the epoch index (U2PL ``train_semi.py``; warm-up epochs
    included, ``T`` = total epochs, so ``t = T`` is never reached and the last value is ``alpha_0 / T``).
    """
    progress = min(max(step, 0), total_steps) / max(total_steps, 1)
    return start + (end - start) * progress


def ema_decay_ramp(step_since_start: int, max_decay: float = 0.99) -> float:
    """EMA decay that starts at 0 and ramps towards ``max_decay``: ``min(1 - 1 / (k + 1), max_decay)``.

    At ``k = 0`` the teacher becomes a copy of the student, then the decay grows as the running mean
    ``1 - 1/(k+1)`` until it reaches ``max_decay`` (k = 99 for 0.99). U2PL uses it with ``k`` counted
    from the end of its supervised-only warm-up and ``max_decay`` = ``ema_decay`` = 0.99
    (U2PL ``train_semi.py``; the ``with_AEL`` branch's ``train.py`` counts ``k`` from iteration 0).

    Args:
        step_since_start: optimizer steps since EMA updates began (0 for the first update).
        max_decay: upper bound of the decay (the configured EMA decay).

    Returns:
        The decay in ``[0, max_decay]``.
    """
    if step_since_start < 0:
        raise ValueError(f"step_since_start must be >= 0, got {step_since_start}")
    return min(1.0 - 1.0 / (step_since_start + 1), max_decay)


def pw_duty(period: int = 150, tau: float = 5.0) -> int:
    """High-level length ``T_h`` of ASDT's pulse-width wave: ``round(T / τ)``, kept in ``[1, T − 1]``.

    ASDT (Zhang et al., IEEE TIP, §3.3, Eq. 4) defines the period ``T = T_h + T_l`` and the duty ratio
    ``τ = T / T_h``; its implementation details give ``T = 150, τ = 5`` (``T_h = 30``), its τ ablation (Fig. 5)
    is best at ``τ = 6`` (25 with ``T = 150``). The paper does not say how ``T / τ`` is rounded when τ does not
    divide ``T``: halves round up (``T = 150, τ = 4`` → 38), and both levels keep at least one step.

    Args:
        period: ``T`` in optimizer steps (>= 2).
        tau: ``τ`` (> 1).

    Returns:
        ``T_h``.

    Raises:
        ValueError: naming ``pw.period`` or ``pw.tau``.
    """
    if isinstance(period, bool) or not isinstance(period, int) or period < 2:
        raise ValueError(f"pw.period must be an integer >= 2 (both teachers in every period), got {period!r}")
    if not math.isfinite(tau) or tau <= 1.0:
        raise ValueError(f"pw.tau must be a finite number > 1 (T_h = T / tau < T), got {tau!r}")
    return min(max(math.floor(period / tau + 0.5), 1), period - 1)


def pw_phase(
    step: int, period: int = 150, tau: float = 5.0, first: Literal["class", "seg"] = "class"
) -> Literal["class", "seg"]:
    """Which teacher ASDT's pulse-width controller ``Λ_t`` selects at optimizer step ``step`` (Eq. 4).

    With ``T_h = pw_duty(period, tau)`` and ``φ = step mod T``: ``first="class"`` gives the class-teacher
    (``L_d^{ct→s}``, Eq. 5, the wave's high level) while ``φ < T_h`` and the seg-teacher (``L_d^{st→s}``,
    Eq. 6) for the other ``T − T_h`` steps; ``first="seg"`` starts with the ``T − T_h`` seg-teacher steps.
    The paper draws the wave (Fig. 2) without stating its phase; class-teacher first means the student's
    first updates come from the class-teacher while the seg-teacher is still untrained.

    Args:
        step: optimizer steps taken so far (``trainer.global_step``, >= 0).
        period: ``T`` (>= 2).
        tau: ``τ`` (> 1).
        first: level the wave starts with, ``"class"`` or ``"seg"``.

    Returns:
        ``"class"`` or ``"seg"``.

    Raises:
        ValueError: naming ``pw.period``, ``pw.tau`` or ``pw.first``, or for a negative ``step``.
    """
    high = pw_duty(period, tau)
    if first not in ("class", "seg"):
        raise ValueError(f"pw.first must be 'class' or 'seg', got {first!r}")
    if step < 0:
        raise ValueError(f"pw_phase: step must be >= 0, got {step}")
    phi = step % period
    if first == "class":
        return "class" if phi < high else "seg"
    return "seg" if phi < period - high else "class"
