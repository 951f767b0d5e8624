import math

import numpy as np
import pytest

from wsss_lightning.schedules import cosine_descent, linear_ramp, warmup_poly


def test_poly_matches_closed_form():
    total, power = 1000, 0.9
    for step in (0, 1, 250, 999, 1000, 1200):
        expected = max(0.0, 1 - min(step, total) / total) ** power
        assert warmup_poly(step, total, 0, power) == pytest.approx(expected)


def test_warmup_is_linear_then_poly_not_rebased():
    total, warm = 20000, 1500
    values = np.array([warmup_poly(s, total, warm, 0.9, warmup_ratio=1e-6) for s in range(warm + 1)])
    assert values[0] == pytest.approx(1e-6)
    assert np.allclose(np.diff(values[:warm]), np.diff(values[:warm])[0])  # constant slope
    # DuPL's PolyWarmupAdamW: 0.99933 at step 1499, then the poly value 0.93224 at 1500
    assert values[warm - 1] == pytest.approx(0.99933, abs=1e-5)
    assert values[warm] == pytest.approx(0.93224, abs=1e-5)


def test_warmup_poly_rejects_empty_schedule():
    with pytest.raises(ValueError, match="total_steps"):
        warmup_poly(0, 0)


def test_cosine_and_linear_endpoints():
    assert cosine_descent(0, 100, 0.9, 0.5) == pytest.approx(0.9)
    assert cosine_descent(100, 100, 0.9, 0.5) == pytest.approx(0.5)
    assert cosine_descent(50, 100, 0.9, 0.5) == pytest.approx(0.7)
    assert cosine_descent(25, 100, 1.0, 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert linear_ramp(30, 100, 0.0, 1.0) == pytest.approx(0.3)
    assert linear_ramp(500, 100, 0.0, 1.0) == 1.0
