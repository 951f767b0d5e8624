from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from tests.references import np_ce_rce, np_entropy, np_softmax, random_seg, t
from wsss_lightning.host_reads import accelerator_paths
from wsss_lightning.losses import ohem_ce
from wsss_lightning.methods.u2pl.contrastive import (
    ContrastiveOutput,
    U2PLContrastiveLoss,
    select_negative_keys,
    u2pl_contrastive_loss,
    u2pl_negative_mask,
)
from wsss_lightning.methods.u2pl.losses import (
    entropy_band_masks,
    entropy_percentile_mask,
    masked_percentile,
    oracle_pseudo_labels,
    pixel_entropy,
    teacher_entropy,
    unsupervised_loss,
)
from wsss_lightning.methods.u2pl.memory_bank import CategoryMemoryBank
from wsss_lightning.methods.u2pl.options import ContrastiveConfig, UnsupervisedConfig
from wsss_lightning.methods.u2pl.prototypes import PrototypeBank
from wsss_lightning.methods.u2pl.scratch import ScratchBuffers

# --- entropy filtering -----------------------------------------------------------------------------


@pytest.mark.parametrize("q", [0.0, 20.0, 37.5, 80.0, 100.0])
def test_masked_percentile_matches_numpy(q: float) -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(size=(3, 11)).astype(np.float32)
    valid = rng.random((3, 11)) < 0.7
    out = masked_percentile(t(values), t(valid), q)
    assert float(out) == pytest.approx(np.percentile(values[valid], q), rel=1e-6)
    assert float(masked_percentile(t(values), t(valid), torch.tensor(q))) == pytest.approx(float(out))
    assert math.isnan(float(masked_percentile(t(values), t(np.zeros_like(valid)), q)))


@pytest.mark.parametrize("percent", [20.0, 7.5, torch.tensor(12.0)])
def test_entropy_percentile_mask_matches_numpy(percent: float | torch.Tensor) -> None:
    _, target, teacher = random_seg(1)
    mask = entropy_percentile_mask(t(teacher), t(target), percent)
    ent = np_entropy(teacher)
    valid = target != 255
    thresh = np.percentile(ent[valid], 100 - float(percent))
    np.testing.assert_array_equal(mask.numpy(), valid & ~(ent >= thresh))


def test_entropy_band_masks_match_numpy() -> None:
    _, target, teacher = random_seg(2)
    low, high = entropy_band_masks(t(teacher), t(target), 20.0, 80.0)
    ent = np_entropy(teacher)
    valid = target != 255
    np.testing.assert_array_equal(low.numpy(), valid & (ent <= np.percentile(ent[valid], 20)))
    np.testing.assert_array_equal(high.numpy(), valid & (ent >= np.percentile(ent[valid], 80)))


# --- pixel losses --------------------------------------------------------------------------------


def np_unsupervised(logits, target, teacher, percent, weight_mode="adaptive", eta=1.0, sce=None) -> float:
    """U2PL's ``compute_unsupervised_loss`` (plus the U2PL+ symmetric CE option)."""
    b, _, h, w = logits.shape
    ent = np_entropy(teacher)
    valid = target != 255
    thresh = np.percentile(ent[valid], 100 - percent)
    target = target.copy()
    target[(ent >= thresh) & valid] = 255
    reliable = target != 255
    ce, rce = np_ce_rce(logits, target)
    per_pixel = ce if sce is None else sce[0] * ce + sce[1] * rce
    weight = b * h * w / reliable.sum() if weight_mode == "adaptive" else 1.0
    return eta * weight * per_pixel[reliable].mean()


@pytest.mark.parametrize(
    ("kwargs", "ref_kwargs"),
    [
        ({}, {}),
        ({"adaptive_weight": False, "weight": 0.5}, {"weight_mode": "mean", "eta": 0.5}),
        ({"loss": "sce", "sce_xi1": 1.0, "sce_xi2": 0.1}, {"sce": (1.0, 0.1)}),
    ],
)
def test_unsupervised_loss_matches_numpy(kwargs: dict[str, Any], ref_kwargs: dict[str, Any]) -> None:
    logits, target, teacher = random_seg(4)
    options = UnsupervisedConfig(**kwargs)
    # the loss weight is applied by the caller (the module), as lambda_u's base weight eta
    out = options.weight * unsupervised_loss(t(logits), t(target), t(teacher), 20.0, options)
    assert float(out) == pytest.approx(np_unsupervised(logits, target, teacher, 20.0, **ref_kwargs), rel=1e-5)


def test_unsupervised_loss_without_reliable_pixels_is_zero_with_a_graph() -> None:
    logits, target, teacher = random_seg(5)
    logits_t = t(logits).requires_grad_()
    out = unsupervised_loss(logits_t, torch.full_like(t(target), 255), t(teacher), 20.0)
    out.backward()
    assert logits_t.grad is not None
    assert float(out.detach()) == 0.0 and torch.all(logits_t.grad == 0)


# --- contrastive ----------------------------------------------------------------------------------

C, D, H, W, BL, BU = 5, 6, 5, 6, 2, 2


def contrastive_inputs(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    b = BL + BU
    labels = rng.integers(0, C, size=(b, H, W))
    labels[:, :, 0] = rng.choice([0, 1, 3], size=(b, H))  # a few classes frequent, class 4 rarer
    labels_l = labels[:BL].copy()
    labels_l[rng.random((BL, H, W)) < 0.1] = 255
    boost = 4 * np.eye(C)[labels].transpose(0, 3, 1, 2)
    prob = np_softmax(rng.normal(size=(b, C, H, W)) * 1.5 + boost * rng.random((b, 1, H, W))).astype(
        np.float32
    )
    ent = np_entropy(prob[BL:])
    return {
        "rep": rng.normal(size=(b, D, H, W)).astype(np.float32),
        "rep_teacher": rng.normal(size=(b, D, H, W)).astype(np.float32),
        "labels_l": labels_l,
        "labels_u": labels[BL:],
        "prob_l": prob[:BL],
        "prob_u": prob[BL:],
        "low_mask_u": ent <= np.percentile(ent, 40),
        "high_mask_u": ent >= np.percentile(ent, 60),
    }


INPUT_ORDER = ("rep", "rep_teacher", "labels_l", "labels_u", "prob_l", "prob_u", "low_mask_u", "high_mask_u")


def run_loss(x: dict[str, Any], bank: CategoryMemoryBank, **kwargs: Any) -> ContrastiveOutput:
    """Call the loss with the inputs in their positional order (NumPy arrays converted)."""
    a = [t(x[k]) if isinstance(x[k], np.ndarray) else x[k] for k in INPUT_ORDER]
    generator = kwargs.pop("generator", None)
    extra = {k: kwargs.pop(k) for k in ("prototype_bank", "update_bank", "ignore_index") if k in kwargs}
    options = ContrastiveConfig(**{"max_keys_per_step": 8192, **kwargs})
    return u2pl_contrastive_loss(
        a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], bank, options, generator=generator, **extra
    )


def np_ranks(prob: np.ndarray) -> np.ndarray:
    """Rank of every class per pixel (0 = most likely), ``(B, C, h, w)``."""
    order = np.argsort(-prob, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(prob.shape[1])[None, :, None, None], axis=1)
    return ranks


def np_contrastive(
    x: dict[str, np.ndarray],
    queues: list[np.ndarray],
    capacities: list[int],
    seed: int,
    *,
    rule: str,
    pairing: str,
    normalization: str,
    max_keys: int | None,
    num_anchors: int,
    num_negatives: int,
    delta_p: float = 0.3,
    low_rank: int = 2,
    high_rank: int = 4,
    temperature: float = 0.5,
    positives: np.ndarray | None = None,
) -> tuple[float, list[np.ndarray]]:
    """Straightforward per-class loop (the released algorithm, with the selectable rule and pairing)."""
    gen = torch.Generator().manual_seed(seed)
    labels = np.concatenate([x["labels_l"], x["labels_u"]])
    prob = np.concatenate([x["prob_l"], x["prob_u"]])
    is_lab = np.arange(len(labels))[:, None, None] < BL
    low = np.where(
        is_lab, labels != 255, np.concatenate([np.zeros_like(x["low_mask_u"][:BL]), x["low_mask_u"]])
    )
    high_u = np.concatenate([np.zeros_like(x["high_mask_u"][:BL]), x["high_mask_u"]])
    ranks = np_ranks(prob)
    # Pixels in (b, y, x) raster order, as rows of (P, D).
    rep = x["rep"].transpose(0, 2, 3, 1).reshape(-1, D).astype(np.float64)
    rep_t = x["rep_teacher"].transpose(0, 2, 3, 1).reshape(-1, D).astype(np.float64)
    scores = torch.rand((C, rep.shape[0]), generator=gen).numpy() if max_keys is not None else None
    queues = [q.copy() for q in queues]
    valid_low, anchors_mask, candidates = [], [], []
    for c in range(C):
        vl = (labels == c) & low
        valid_low.append(vl.reshape(-1))
        anchors_mask.append((vl & (prob[:, c] > delta_p)).reshape(-1))
        if rule == "paper":
            neg = np.where(is_lab, (labels != c) & (labels != 255) & (ranks[:, c] < low_rank), False)
            neg |= ~is_lab & high_u & (ranks[:, c] >= low_rank) & (ranks[:, c] < high_rank)
        else:
            neg = ~is_lab & high_u & (labels == c) & (ranks[:, c] >= low_rank) & (ranks[:, c] < high_rank)
        candidates.append(np.flatnonzero(neg.reshape(-1)))
    if scores is not None:
        # Fair share of the step's budget: random order within each class, lowest ranks first.
        ranked = [
            (r, c, p)
            for c in range(C)
            for r, p in enumerate(candidates[c][np.argsort(-scores[c, candidates[c]])])
        ]
        chosen = sorted(ranked)[:max_keys]
        candidates = [np.sort([p for _, k, p in chosen if k == c]).astype(int) for c in range(C)]
    for c in range(C):
        queues[c] = np.concatenate([queues[c], rep_t[candidates[c]]])[-capacities[c] :]
    valid_classes = [c for c in range(C) if valid_low[c].any()]
    protos = (
        positives
        if positives is not None
        else np.stack([rep_t[v].mean(0) if v.any() else np.zeros(D) for v in valid_low])
    )
    u_anchor = torch.rand((C, num_anchors), generator=gen, dtype=torch.float64).numpy()
    u_neg = torch.rand((C * num_anchors, num_negatives), generator=gen, dtype=torch.float64).numpy()
    u_neg = u_neg.reshape(C, num_anchors, num_negatives)

    def cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))

    total = 0.0
    if len(valid_classes) < 2:
        return 0.0, queues
    terms = range(C) if pairing == "matched" else range(len(valid_classes))
    for i in terms:
        if pairing == "matched" and i not in valid_classes:
            continue
        queue = queues[i if pairing == "matched" else valid_classes[i]]
        cand = np.flatnonzero(anchors_mask[i])
        if len(cand) == 0 or len(queue) == 0:
            continue
        anchor = rep[cand[np.minimum((u_anchor[i] * len(cand)).astype(int), len(cand) - 1)]]
        negs = queue[np.minimum((u_neg[i] * len(queue)).astype(int), len(queue) - 1)]
        logits = (
            np.concatenate([cos(anchor, protos[i][None])[:, None], cos(anchor[:, None], negs)], 1)
            / temperature
        )
        m = logits.max(1, keepdims=True)
        lse = np.log(np.exp(logits - m).sum(1)) + m[:, 0]
        total += (lse - logits[:, 0]).mean()
    denom = len(valid_classes) if normalization == "present" else C
    return total / denom, queues


def prefilled_bank(seed: int, capacities: list[int]) -> tuple[CategoryMemoryBank, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    bank = CategoryMemoryBank(C, D, capacities=capacities)
    queues = []
    for c in range(C):
        n = [0, 3, 11, 7, 9][c]  # class 0 empty, class 2 wrapped around
        keys = rng.normal(size=(n, D)).astype(np.float32)
        bank.push(t(keys), torch.full((n,), c))
        queues.append(keys[-capacities[c] :].astype(np.float64))
    return bank, queues


CASES = [
    {"rule": "paper", "pairing": "matched", "normalization": "present", "max_keys": 13},
    {"rule": "paper", "pairing": "matched", "normalization": "all", "max_keys": None},
    {"rule": "code", "pairing": "matched", "normalization": "present", "max_keys": None},
    {"rule": "code", "pairing": "shifted", "normalization": "present", "max_keys": 7},
    {"rule": "paper", "pairing": "shifted", "normalization": "present", "max_keys": 1000},
]


@pytest.mark.parametrize("case", CASES)
def test_contrastive_loss_matches_numpy_loop(case: dict[str, Any]) -> None:
    x = contrastive_inputs(7)
    capacities = [12, 8, 8, 8, 8]
    bank, queues = prefilled_bank(8, capacities)
    rep = t(x["rep"]).requires_grad_()
    tensors = {k: t(v) for k, v in x.items() if k != "rep"}
    out = run_loss(
        dict(tensors, rep=rep),
        bank,
        num_anchors=9,
        num_negatives=4,
        low_rank=2,
        high_rank=4,
        negative_rule=case["rule"],
        class_pairing=case["pairing"],
        normalization=case["normalization"],
        max_keys_per_step=case["max_keys"],
        generator=torch.Generator().manual_seed(11),
    )
    ref_loss, ref_queues = np_contrastive(x, queues, capacities, 11, num_anchors=9, num_negatives=4, **case)
    assert out.loss.item() == pytest.approx(ref_loss, rel=1e-5)
    assert out.loss.item() > 0
    for c in range(C):
        np.testing.assert_allclose(bank.queue(c).numpy(), ref_queues[c], rtol=1e-6, err_msg=f"queue {c}")
    if case["max_keys"] is not None:
        assert out.keys.shape == (case["max_keys"], D)  # fixed size whatever the candidates
    out.loss.backward()
    assert rep.grad is not None
    grad = rep.grad.abs().sum(1)
    assert torch.isfinite(grad).all() and grad.sum() > 0
    # Gradient reaches only anchor candidates: reliable pixels with p_T(c) > delta_p for their class.
    prob = torch.cat([tensors["prob_l"], tensors["prob_u"]])
    labels = torch.cat([tensors["labels_l"], tensors["labels_u"]])
    p_label = prob.gather(1, labels.clamp_max(C - 1)[:, None])[:, 0]
    low = torch.cat([tensors["labels_l"] != 255, tensors["low_mask_u"]])
    assert torch.all(grad[~(low & (p_label > 0.3))] == 0)


def test_select_negative_keys_shares_the_budget_fairly() -> None:
    mask = torch.zeros(1, 4, 4, 5, dtype=torch.bool)  # B=1, C=4, 20 pixels
    mask[0, 0].view(-1)[3] = True  # class 0: 1 negative
    mask[0, 1].view(-1)[:10] = True  # class 1: 10
    mask[0, 3].view(-1)[5:10] = True  # class 3: 5
    rep = torch.arange(20.0).view(1, 1, 4, 5).expand(1, 2, 4, 5)
    keys, labels = select_negative_keys(rep, mask, 9, torch.Generator().manual_seed(0))
    assert labels.tolist().count(0) == 1 and labels.tolist().count(1) == 4 and labels.tolist().count(3) == 4
    assert keys.shape == (9, 2)
    for c in (0, 1, 3):  # each class in raster order, from its own negatives
        pos = keys[labels == c, 0]
        assert torch.all(pos[1:] > pos[:-1]) and mask[0, c].view(-1)[pos.long()].all()
    keys, labels = select_negative_keys(rep, mask, 40)
    assert labels.tolist() == [0] + [1] * 10 + [3] * 5 + [-1] * 24  # everything fits: all kept, padded
    keys, labels = select_negative_keys(rep, mask, None)
    assert labels.tolist() == [0] + [1] * 10 + [3] * 5
    assert keys[:, 0].tolist() == [3, *range(10), *range(5, 10)]


@pytest.mark.parametrize("max_keys", [None, 3])  # more keys than pixels / fewer
def test_select_negative_keys_normalizes_like_the_bank(max_keys: int | None) -> None:
    g = torch.Generator().manual_seed(4)
    rep = torch.randn(2, 6, 3, 3, generator=g) * 4
    before = rep.clone()
    mask = torch.rand(2, 5, 3, 3, generator=g) > 0.3
    raw, labels = select_negative_keys(rep, mask, max_keys, torch.Generator().manual_seed(1))
    unit, unit_labels = select_negative_keys(
        rep, mask, max_keys, torch.Generator().manual_seed(1), normalize=True
    )
    assert torch.equal(labels, unit_labels)
    torch.testing.assert_close(unit, torch.nn.functional.normalize(raw, dim=1, eps=1e-8))
    assert torch.equal(rep, before)  # normalised in a copy


def test_code_rule_never_enqueues_labeled_pixels() -> None:
    x = contrastive_inputs(9)
    bank = CategoryMemoryBank(C, D, capacity=50, background_capacity=50)
    out = run_loss(
        x,
        bank,
        negative_rule="code",
        low_rank=2,
        high_rank=4,
        max_keys_per_step=None,
    )
    labeled_keys = t(x["rep_teacher"][:BL]).permute(0, 2, 3, 1).reshape(-1, D)
    keys = out.keys[out.key_labels >= 0]  # -1 rows are padding
    matches = (keys[:, None] == labeled_keys[None]).all(-1).any(1)
    assert keys.shape[0] > 0 and not matches.any()


def test_contrastive_with_momentum_prototypes_matches_numpy() -> None:
    x = contrastive_inputs(10)
    capacities = [12, 8, 8, 8, 8]
    bank, queues = prefilled_bank(12, capacities)
    protos = PrototypeBank(C, D, momentum=0.9)
    old = np.random.default_rng(13).normal(size=(C, D)).astype(np.float32)
    protos.update(t(old), torch.tensor([1, 1, 1, 0, 1]))  # class 3 starts without a prototype
    loss = U2PLContrastiveLoss(
        C,
        ContrastiveConfig(
            num_anchors=7,
            num_negatives=3,
            low_rank=2,
            high_rank=4,
            momentum_prototype=True,
            prototype_momentum=0.9,
            max_keys_per_step=4,
        ),
        dim=D,
    )
    loss.memory_bank = bank
    assert loss.prototype_bank is not None
    loss.prototype_bank.load_state_dict(protos.state_dict())
    out = loss(
        *(
            t(x[k])
            for k in (
                "rep",
                "rep_teacher",
                "labels_l",
                "labels_u",
                "prob_l",
                "prob_u",
                "low_mask_u",
                "high_mask_u",
            )
        ),
        generator=torch.Generator().manual_seed(3),
    )
    # Reference prototypes: momentum update of the batch centroids (first observation initialises).
    labels = np.concatenate([x["labels_l"], x["labels_u"]])
    low = np.concatenate([x["labels_l"] != 255, x["low_mask_u"]])
    rep_t = x["rep_teacher"].transpose(0, 2, 3, 1)
    ref_protos = old.astype(np.float64).copy()
    for c in range(C):
        sel = (labels == c) & low
        if sel.any():
            cent = rep_t[sel].mean(0)
            ref_protos[c] = cent if c == 3 else 0.9 * old[c] + 0.1 * cent
    np.testing.assert_allclose(loss.prototype_bank.prototypes.numpy(), ref_protos, rtol=1e-5, atol=1e-6)
    ref_loss, _ = np_contrastive(
        x,
        queues,
        capacities,
        3,
        rule="paper",
        pairing="matched",
        normalization="present",
        max_keys=4,
        num_anchors=7,
        num_negatives=3,
        positives=ref_protos,
    )
    assert out.loss.item() == pytest.approx(ref_loss, rel=1e-5)


def test_contrastive_with_one_valid_class_is_zero_and_keeps_the_graph() -> None:
    x = contrastive_inputs(14)
    x["labels_l"][:] = 2
    x["labels_u"][:] = 2
    bank, _ = prefilled_bank(15, [12, 8, 8, 8, 8])
    rep = t(x["rep"]).requires_grad_()
    out = run_loss(
        dict(x, rep=rep),
        bank,
        num_negatives=4,
        low_rank=2,
        high_rank=4,
    )
    out.loss.backward()
    assert float(out.loss.detach()) == 0.0 and out.valid_classes.tolist() == [
        False,
        False,
        True,
        False,
        False,
    ]
    assert rep.grad is not None and torch.all(rep.grad == 0)


def test_contrastive_bad_arguments_name_the_fields() -> None:
    x = {k: t(v) for k, v in contrastive_inputs(16).items()}
    small = CategoryMemoryBank(C, D, capacity=10, background_capacity=10)
    with pytest.raises(ValueError, match=r"capacity \(10\) must be >= num_negatives \(50\)"):
        run_loss(x, small)
    with pytest.raises(ValueError, match=r"capacity \(30\) must be >= num_negatives \(50\)"):
        ContrastiveConfig(capacity=30)
    bank = CategoryMemoryBank(C, D)
    bad = dict(x, prob_u=x["prob_u"][:, :3])
    with pytest.raises(ValueError, match="prob_u must have shape"):
        run_loss(bad, bank)
    with pytest.raises(ValueError, match="memory_bank holds 3 classes"):
        run_loss(x, CategoryMemoryBank(3, D))
    with pytest.raises(ValueError, match="low_rank < high_rank"):
        run_loss(x, bank, low_rank=4, high_rank=4)
    with pytest.raises(ValueError, match="negative_rule"):
        ContrastiveConfig(negative_rule="other")  # type: ignore[arg-type]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA to observe host syncs")
def test_losses_do_not_sync_on_cuda() -> None:
    x = {k: t(v).cuda() for k, v in contrastive_inputs(17).items()}
    x["rep"].requires_grad_()
    logits, target, teacher = (t(a).cuda() for a in random_seg(18))
    config = ContrastiveConfig(capacity=64, background_capacity=64, num_negatives=4, low_rank=2, high_rank=4)
    loss = U2PLContrastiveLoss(C, config, dim=D)
    loss = loss.cuda()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            out = loss(*x.values())
            out.loss.backward()
        unsupervised_loss(logits, target, teacher, 20.0)
        ohem_ce(logits, target, 0.7, 10)
        entropy_band_masks(teacher, target, 20.0, 80.0)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("padded", [True, False], ids=["padded", "compact"])
@pytest.mark.parametrize("capacities", [[12, 8, 8, 8, 8], [3, 2, 5, 1, 4], [400, 400, 400, 400, 400]])
def test_uncapped_push_leaves_the_bank_as_pushing_every_negative(capacities: list[int], padded: bool) -> None:
    """Without a key budget the loss pushes only the negatives the bank keeps (padded: fixed shapes, no
    sync, the accelerators' path; compact: sized by the counts read on the host, the CPU's): the bank
    (queues, their layout, ptr, count) ends bitwise as after pushing all of them, and the loss, which
    samples from it, is identical."""
    x = {k: t(v) for k, v in contrastive_inputs(21).items()}
    options = {"num_anchors": 9, "num_negatives": 1, "low_rank": 2, "high_rank": 4, "max_keys_per_step": None}
    fast, _ = prefilled_bank(22, capacities)
    slow, _ = prefilled_bank(22, capacities)
    scratch = ScratchBuffers()
    for step in range(2):  # the second call reuses the scratch tensors
        with accelerator_paths(padded):
            out = u2pl_contrastive_loss(
                *(x[k] for k in INPUT_ORDER), fast, ContrastiveConfig(**options),
                generator=torch.Generator().manual_seed(step), scratch=scratch,
            )  # fmt: skip
        negatives = u2pl_negative_mask(
            x["labels_l"], x["labels_u"], x["prob_l"], x["prob_u"], x["high_mask_u"], low_rank=2, high_rank=4
        )
        keys, labels = select_negative_keys(x["rep_teacher"], negatives, None)
        slow.push(keys, labels)
        ref = run_loss(x, slow, update_bank=False, generator=torch.Generator().manual_seed(step), **options)
        for name in ("ptr", "count"):
            assert torch.equal(getattr(fast, name), getattr(slow, name)), name
        assert torch.equal(
            fast.keys[: fast.total_capacity], slow.keys[: slow.total_capacity]
        )  # no scratch row
        assert torch.equal(out.loss, ref.loss)
        kept = out.key_labels >= 0
        assert padded or kept.all()  # compact: no padding slot
        per_class = torch.stack([(labels == c).sum() for c in range(C)])
        assert torch.equal(
            out.key_labels[kept].bincount(minlength=C), per_class.clamp_max(torch.tensor(capacities))
        )
    assert scratch.nbytes > 0


def test_percentiles_of_one_sort_match_separate_calls() -> None:
    _, target, prob = (t(a) for a in random_seg(23))
    entropy = teacher_entropy(prob, target)
    for q in (0.0, 20.0, 63.5, 100.0):
        assert torch.equal(
            entropy.percentile(q), masked_percentile(pixel_entropy(prob.float()), target != 255, q)
        )
    assert torch.equal(
        entropy_percentile_mask(prob, target, 20.0),
        entropy_percentile_mask(prob, target, 20.0, entropy=entropy),
    )
    for a, b in zip(
        entropy_band_masks(prob, target, 20.0, 80.0),
        entropy_band_masks(prob, target, 20.0, 80.0, entropy=entropy),
        strict=True,
    ):
        assert torch.equal(a, b)


def test_oracle_pseudo_labels_against_numpy() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, (2, 5, 6))
    truth = rng.integers(0, 4, (2, 5, 6))
    truth[0, :2] = 255  # no ground truth there
    lab, tru = torch.from_numpy(labels), torch.from_numpy(truth).to(torch.uint8)
    off = UnsupervisedConfig()
    np.testing.assert_array_equal(oracle_pseudo_labels(lab, tru, off).numpy(), labels)
    np.testing.assert_array_equal(
        oracle_pseudo_labels(lab, tru, UnsupervisedConfig(oracle_labels=True)).numpy(), truth
    )
    filtered = oracle_pseudo_labels(lab, tru, UnsupervisedConfig(oracle_filter=True))
    assert filtered.dtype == lab.dtype
    np.testing.assert_array_equal(filtered.numpy(), np.where((truth != 255) & (labels != truth), 255, labels))
    with pytest.raises(ValueError, match="truth must match"):
        oracle_pseudo_labels(lab, tru[:, :4], off)
    with pytest.raises(ValueError, match="oracle_filter"):
        UnsupervisedConfig(oracle_labels=True, oracle_filter=True)
