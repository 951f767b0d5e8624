from __future__ import annotations

from typing import Any

import pytest

from wsss_lightning.methods.asdt.options import (
    PWWaveConfig,
    ReliableLabelConfig,
    StructureLossConfig,
    TeachingConfig,
)


def test_defaults_are_the_papers_and_rrms() -> None:
    pw = PWWaveConfig()
    assert (pw.period, pw.tau, pw.first) == (150, 5.0, "class")
    teaching = TeachingConfig()
    assert (teaching.mode, teaching.seg_teacher_absent) == ("alternate", "zero")
    structure = StructureLossConfig()
    assert (structure.weight, structure.sigma_rgb, structure.sigma_xy, structure.scale, structure.kernel) == (
        1e-7, 15.0, 100.0, 0.5, "lattice",
    )  # fmt: skip
    labels = ReliableLabelConfig()
    assert labels.alphas == (4.0, 32.0)
    assert (labels.cam_floor, labels.cam_quantile, labels.background_sure, labels.crf_sure) == (
        0.1,
        0.6,
        0.8,
        0.8,
    )
    assert labels.cam_scales == (1.0, 0.5, 1.5, 2.0)


def test_sequences_from_yaml_become_tuples_of_floats() -> None:
    labels = ReliableLabelConfig(alphas=[4, 32], cam_scales=[1, 0.5])  # type: ignore[arg-type]
    assert labels.alphas == (4.0, 32.0)
    assert labels.cam_scales == (1.0, 0.5)
    assert ReliableLabelConfig(alphas=(8.0, 8.0)).alphas == (8.0, 8.0)  # one background strength: allowed


@pytest.mark.parametrize(
    ("config", "kwargs", "message"),
    [
        (PWWaveConfig, {"period": 1}, "ASDTModule: pw.period must be an integer >= 2.*got 1"),
        (PWWaveConfig, {"period": 2.5}, "pw.period"),
        (PWWaveConfig, {"tau": 1.0}, "ASDTModule: pw.tau must be a finite number > 1.*got 1.0"),
        (PWWaveConfig, {"first": "both"}, "ASDTModule: pw.first must be 'class' or 'seg', got 'both'"),
        (
            TeachingConfig,
            {"mode": "sum"},
            "teaching.mode must be one of 'alternate', 'class', 'seg', 'max', 'mean'",
        ),
        (
            TeachingConfig,
            {"seg_teacher_absent": "drop"},
            "teaching.seg_teacher_absent must be 'zero' or 'ignore'",
        ),
        (StructureLossConfig, {"weight": -1.0}, "structure.weight must be >= 0, got -1.0"),
        (StructureLossConfig, {"weight": float("nan")}, "structure.weight"),
        (StructureLossConfig, {"sigma_rgb": 0.0}, "structure.sigma_rgb must be > 0, got 0.0"),
        (StructureLossConfig, {"sigma_xy": -5.0}, "structure.sigma_xy must be > 0"),
        (StructureLossConfig, {"scale": 0.0}, r"structure.scale must be in \(0, 1\], got 0.0"),
        (StructureLossConfig, {"scale": 1.5}, r"structure.scale must be in \(0, 1\]"),
        (
            StructureLossConfig,
            {"kernel": "gauss"},
            "structure.kernel must be 'lattice' or 'exact', got 'gauss'",
        ),
        (
            ReliableLabelConfig,
            {"alphas": (32.0, 4.0)},
            r"labels.alphas must be two exponents \(strong, weak\)",
        ),
        (ReliableLabelConfig, {"alphas": (4.0,)}, "labels.alphas"),
        (ReliableLabelConfig, {"alphas": (0.0, 4.0)}, "labels.alphas"),
        (ReliableLabelConfig, {"alphas": 4.0}, "labels.alphas must be a sequence of numbers, got 4.0"),
        (ReliableLabelConfig, {"cam_floor": 1.0}, r"labels.cam_floor must be in \[0, 1\), got 1.0"),
        (ReliableLabelConfig, {"cam_floor": -0.1}, "labels.cam_floor"),
        (ReliableLabelConfig, {"cam_quantile": 1.0}, r"labels.cam_quantile must be in \(0, 1\), got 1.0"),
        (ReliableLabelConfig, {"cam_quantile": 0.0}, r"labels.cam_quantile must be in \(0, 1\)"),
        (ReliableLabelConfig, {"background_sure": 1.2}, r"labels.background_sure must be in \[0, 1\]"),
        (ReliableLabelConfig, {"crf_sure": -0.5}, r"labels.crf_sure must be in \[0, 1\]"),
        (
            ReliableLabelConfig,
            {"cam_scales": (0.5, 2.0)},
            "labels.cam_scales must be positive scales including 1.0",
        ),
        (ReliableLabelConfig, {"cam_scales": (1.0, -0.5)}, "labels.cam_scales"),
        (ReliableLabelConfig, {"cam_scales": ()}, "labels.cam_scales"),
        (ReliableLabelConfig, {"cam_scales": "1.0"}, "labels.cam_scales must be a sequence of numbers"),
    ],
)
def test_every_invalid_option_names_its_field(config: type, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        config(**kwargs)
