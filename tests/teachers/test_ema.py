from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from wsss_lightning.teachers import EMATeacher


def make_student(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5), nn.Conv2d(4, 2, 1)
    )


def perturb(module: nn.Module, seed: int) -> None:
    """Give the student different parameters and BN statistics than the teacher."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g))
        module.train()
        module(torch.randn(4, 3, 8, 8, generator=g))  # moves running stats, bumps num_batches_tracked


def numpy_state(module: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


class Parent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.student = make_student()
        self.teacher = EMATeacher(self.student)


@pytest.mark.parametrize("decay", [0.9, torch.tensor(0.75)])
def test_params_only_update_matches_numpy(decay: float | torch.Tensor) -> None:
    student = make_student()
    teacher = EMATeacher(student)
    perturb(student, 1)
    before_t, s = numpy_state(teacher.module), numpy_state(student)
    param_names = {n for n, _ in student.named_parameters()}
    teacher.update(student, decay)
    after = numpy_state(teacher.module)
    d = float(decay)
    for name, value in after.items():
        if name in param_names:
            np.testing.assert_allclose(value, d * before_t[name] + (1 - d) * s[name], rtol=1e-6, atol=1e-6)
        else:  # buffers (BN running stats, num_batches_tracked) are the teacher's own
            np.testing.assert_array_equal(value, before_t[name])


def test_update_with_buffers_matches_numpy() -> None:
    student = make_student()
    teacher = EMATeacher(student, params_only=False)
    perturb(student, 2)
    before_t, s = numpy_state(teacher.module), numpy_state(student)
    teacher.update(student, 0.6)
    after = numpy_state(teacher.module)
    for name, value in after.items():
        if np.issubdtype(value.dtype, np.floating):
            np.testing.assert_allclose(value, 0.6 * before_t[name] + 0.4 * s[name], rtol=1e-6, atol=1e-6)
        else:  # integer buffers are copied
            assert name.endswith("num_batches_tracked")
            np.testing.assert_array_equal(value, s[name])
            assert value != before_t[name]


def test_copy_from_is_exact_and_respects_params_only() -> None:
    student = make_student()
    teacher = EMATeacher(student)
    perturb(student, 3)
    teacher.copy_from(student)
    t, s = numpy_state(teacher.module), numpy_state(student)
    for name, _ in student.named_parameters():
        np.testing.assert_array_equal(t[name], s[name])
    assert not np.array_equal(t["1.running_mean"], s["1.running_mean"])
    teacher.copy_from(student, include_buffers=True)
    t = numpy_state(teacher.module)
    np.testing.assert_array_equal(t["1.running_mean"], s["1.running_mean"])


def test_teacher_frozen_and_eval_after_parent_train() -> None:
    parent = Parent()
    parent.train()
    assert parent.student.training
    assert not parent.teacher.training
    assert all(not m.training for m in parent.teacher.modules())
    assert all(not p.requires_grad for p in parent.teacher.parameters())
    parent.eval()
    parent.train(True)
    assert not any(m.training for m in parent.teacher.modules())


def test_train_mode_context_updates_teacher_bn_then_restores_eval() -> None:
    parent = Parent()
    parent.train()
    bn = next(m for m in parent.teacher.modules() if isinstance(m, nn.BatchNorm2d))
    assert bn.running_mean is not None
    mean_before = bn.running_mean.clone()
    with torch.no_grad(), parent.teacher.train_mode():
        assert all(m.training for m in parent.teacher.modules())
        parent.teacher(torch.randn(2, 3, 8, 8) + 3.0)
    assert not any(m.training for m in parent.teacher.modules())
    assert not torch.equal(bn.running_mean, mean_before)
    # eval-mode forwards leave the statistics alone and are deterministic (dropout off)
    x = torch.randn(2, 3, 8, 8)
    mean_after = bn.running_mean.clone()
    assert torch.equal(parent.teacher(x), parent.teacher(x))
    assert torch.equal(bn.running_mean, mean_after)


def test_no_grads_reach_teacher_and_optimizer_excludes_it() -> None:
    parent = Parent()
    parent.train()
    trainable = [p for p in parent.parameters() if p.requires_grad]
    teacher_ids = {id(p) for p in parent.teacher.parameters()}
    assert teacher_ids and not teacher_ids & {id(p) for p in trainable}
    optimizer = torch.optim.SGD(trainable, lr=0.1)
    x = torch.randn(2, 3, 8, 8)
    loss = (parent.student(x) - parent.teacher(x)).pow(2).mean()
    loss.backward()
    optimizer.step()
    assert all(p.grad is None for p in parent.teacher.parameters())
    assert all(p.grad is not None for p in parent.student.parameters())


def test_teacher_is_checkpointed_with_parent() -> None:
    parent = Parent()
    perturb(parent.student, 4)
    parent.teacher.update(parent.student, 0.5)
    state = parent.state_dict()
    assert any(k.startswith("teacher.module.") for k in state)
    fresh = Parent()
    fresh.load_state_dict(state)
    for (name, a), (_, b) in zip(
        parent.teacher.state_dict().items(), fresh.teacher.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_copy_student_false_takes_the_given_network() -> None:
    network = make_student(seed=5)
    teacher = EMATeacher(network, copy_student=False)
    assert teacher.module is network
    assert not any(p.requires_grad for p in network.parameters())


def test_structure_mismatch_and_bad_decay_raise() -> None:
    teacher = EMATeacher(make_student())
    with pytest.raises(ValueError, match="mismatched names"):
        teacher.update(nn.Sequential(nn.Conv2d(3, 4, 3)), 0.5)
    other = nn.Sequential(
        nn.Conv2d(3, 5, 3, padding=1), nn.BatchNorm2d(5), nn.ReLU(), nn.Dropout(), nn.Conv2d(5, 2, 1)
    )
    with pytest.raises(ValueError, match=r"shape of '0\.weight'"):
        teacher.update(other, 0.5)
    with pytest.raises(ValueError, match="decay must be in"):
        teacher.update(make_student(), 1.5)


def test_ema_decay_ramp_matches_u2pl() -> None:
    from wsss_lightning.schedules import ema_decay_ramp

    assert [ema_decay_ramp(k) for k in range(3)] == pytest.approx([0.0, 0.5, 2 / 3])
    assert ema_decay_ramp(99) == pytest.approx(0.99) and ema_decay_ramp(10_000) == 0.99
    # Cityscapes-1488: len(loader) = 93, so the second semi-supervised epoch starts at k = 93 (U2PL `train_semi.py`)
    assert [ema_decay_ramp(k) for k in range(93, 100)] == pytest.approx(
        [1 - 1 / (k + 1) for k in range(93, 99)] + [0.99]
    )
    with pytest.raises(ValueError, match="step_since_start"):
        ema_decay_ramp(-1)
