from __future__ import annotations

import pytest

from wsss_lightning.methods.asdt.pw_wave import pw_duty, pw_phase


def sequence(steps: int, **kwargs: object) -> list[str]:
    return [pw_phase(t, **kwargs) for t in range(steps)]  # type: ignore[arg-type]


def test_default_wave_is_30_class_then_120_seg_periodic() -> None:
    assert pw_duty() == 30
    wave = sequence(450)
    one_period = ["class"] * 30 + ["seg"] * 120
    assert wave == one_period * 3
    assert pw_phase(150 * 1000 + 29) == "class"
    assert pw_phase(150 * 1000 + 30) == "seg"


def test_tau_6_gives_25_class_steps() -> None:
    assert pw_duty(150, 6.0) == 25
    assert sequence(300, period=150, tau=6.0) == (["class"] * 25 + ["seg"] * 125) * 2


def test_seg_first_starts_with_the_low_level() -> None:
    assert sequence(300, period=150, tau=5.0, first="seg") == (["seg"] * 120 + ["class"] * 30) * 2
    assert sequence(10, period=5, tau=2.5, first="seg") == ["seg", "seg", "seg", "class", "class"] * 2


@pytest.mark.parametrize(
    ("period", "tau", "high"),
    [
        (150, 4.0, 38),  # 37.5: halves round up
        (25, 2.0, 13),  # 12.5: up, where Python's round() gives 12
        (100, 3.0, 33),  # 33.3
        (100, 1.5, 67),  # 66.7
        (2, 1.5, 1),  # 1.33
        (3, 1.1, 2),  # 2.73 rounds to 3 = T: kept at T - 1 so the seg-teacher gets a step
        (10, 1000.0, 1),  # 0.01 rounds to 0: kept at 1 so the class-teacher gets a step
        (7, 7, 1),  # integer tau from a YAML file
    ],
)
def test_rounding_for_tau_not_dividing_the_period(period: int, tau: float, high: int) -> None:
    assert pw_duty(period, tau) == high
    wave = sequence(2 * period, period=period, tau=tau)
    assert wave == (["class"] * high + ["seg"] * (period - high)) * 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"period": 1}, "pw.period must be an integer >= 2.*got 1"),
        ({"period": 0}, "pw.period"),
        ({"period": 150.0}, "pw.period"),
        ({"tau": 1.0}, "pw.tau must be a finite number > 1.*got 1.0"),
        ({"tau": 0.5}, "pw.tau"),
        ({"tau": float("inf")}, "pw.tau"),
        ({"tau": float("nan")}, "pw.tau"),
        ({"first": "student"}, "pw.first must be 'class' or 'seg', got 'student'"),
        ({"step": -1}, "step must be >= 0"),
    ],
)
def test_invalid_arguments_name_the_option(kwargs: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {"step": 0, **kwargs}
    with pytest.raises(ValueError, match=message):
        pw_phase(**arguments)  # type: ignore[arg-type]
