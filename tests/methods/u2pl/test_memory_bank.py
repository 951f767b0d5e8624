from __future__ import annotations

from collections import deque

import numpy as np
import pytest
import torch

from tests.helpers import run_gloo
from wsss_lightning.methods.u2pl.memory_bank import CategoryMemoryBank
from wsss_lightning.methods.u2pl.prototypes import PrototypeBank, class_centroids, prototype_denoise

C, D = 4, 3
CAPS = [7, 5, 5, 5]


def make_bank(**kwargs: object) -> CategoryMemoryBank:
    return CategoryMemoryBank(C, D, capacity=5, background_capacity=7, **kwargs)  # type: ignore[arg-type]


def random_push(rng: np.random.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    keys = torch.from_numpy(rng.normal(size=(n, D)).astype(np.float32))
    labels = torch.from_numpy(rng.integers(-1, C, size=n))  # -1 = padding
    return keys, labels


def deque_reference(pushes: list[tuple[torch.Tensor, torch.Tensor]]) -> list[np.ndarray]:
    queues: list[deque[np.ndarray]] = [deque(maxlen=cap) for cap in CAPS]
    for keys, labels in pushes:
        for key, label in zip(keys.numpy(), labels.numpy(), strict=True):
            if label >= 0:
                queues[label].append(key)
    return [np.array(list(q)).reshape(-1, D) for q in queues]


def assert_queues(bank: CategoryMemoryBank, expected: list[np.ndarray]) -> None:
    for c in range(C):
        np.testing.assert_array_equal(bank.queue(c).numpy(), expected[c], err_msg=f"class {c}")
    assert bank.filled().tolist() == [len(q) for q in expected]


def test_capacities_layout_and_memory() -> None:
    bank = CategoryMemoryBank(21, dim=2)
    assert bank.capacity_list == (50000,) + (30000,) * 20
    assert bank.keys.shape == (650002, 2)  # all queues, the scratch row and the zero row
    assert bank.offsets[:3].tolist() == [0, 50000, 80000]
    assert "class0_capacity=50000" in repr(bank)
    # U2PL's VOC bank at D = 256 in float32: ~666 MB.
    assert 650002 * 256 * 4 == pytest.approx(666e6, rel=1e-3)


def test_ring_buffer_wraps_like_a_deque() -> None:
    rng = np.random.default_rng(0)
    bank = make_bank()
    pushes = [random_push(rng, int(n)) for n in rng.integers(0, 9, size=12)]
    for i, (keys, labels) in enumerate(pushes):
        bank.push(keys, labels)
        assert_queues(bank, deque_reference(pushes[: i + 1]))


def test_overflow_in_one_push_keeps_the_newest() -> None:
    bank = make_bank()
    bank.push(torch.arange(3 * D, dtype=torch.float32).view(3, D), torch.tensor([1, 1, 1]))
    keys = torch.arange(100, 100 + 12 * D, dtype=torch.float32).view(12, D)
    bank.push(keys, torch.ones(12, dtype=torch.long))
    np.testing.assert_array_equal(bank.queue(1).numpy(), keys[-5:].numpy())
    assert bank.filled().tolist() == [0, 5, 0, 0]
    # The scratch row took the discarded writes; the other queues are untouched.
    assert bank.queue(0).shape == (0, D)


def test_state_dict_round_trip_restores_everything() -> None:
    rng = np.random.default_rng(1)
    bank = make_bank()
    pushes = [random_push(rng, 6) for _ in range(5)]
    for keys, labels in pushes:
        bank.push(keys, labels)
    state = bank.state_dict()
    assert set(state) == {"keys", "ptr", "count"}
    restored = make_bank()
    restored.load_state_dict(state)
    assert_queues(restored, deque_reference(pushes))
    more = random_push(rng, 9)
    bank.push(*more)
    restored.push(*more)
    assert_queues(restored, deque_reference([*pushes, more]))
    torch.testing.assert_close(restored.keys, bank.keys)


def test_sample_maps_uniforms_to_arrival_order() -> None:
    rng = np.random.default_rng(2)
    bank = make_bank()
    pushes = [random_push(rng, 7) for _ in range(4)]
    for keys, labels in pushes:
        bank.push(keys, labels)
    ref = deque_reference(pushes)
    classes = torch.tensor([0, 2, 3, 1, 0])
    out = bank.sample(classes, 6, generator=torch.Generator().manual_seed(5))
    u = torch.rand(5, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64).numpy()
    for a, c in enumerate(classes.tolist()):
        idx = np.minimum(np.floor(u[a] * len(ref[c])).astype(int), len(ref[c]) - 1)
        np.testing.assert_array_equal(out[a].numpy(), ref[c][idx])
    rows = bank.sample_rows(classes, 6, generator=torch.Generator().manual_seed(5))  # the same draws
    torch.testing.assert_close(bank.keys[rows], out)


def test_sample_from_empty_queue_returns_zeros() -> None:
    bank = make_bank()
    bank.push(torch.ones(2, D), torch.tensor([1, 1]))
    # Discarded writes (padding) land in the scratch row, never in what empty queues read.
    bank.push(torch.full((3, D), 7.0), torch.tensor([-1, -1, -1]))
    out = bank.sample(torch.tensor([0, 1]), 4)
    assert torch.all(out[0] == 0) and torch.all(out[1] == 1)
    union = bank.sample_negatives(torch.tensor([[True, False, True, False]]), 3)
    assert torch.all(union == 0)


def test_normalized_bank_stores_unit_keys() -> None:
    bank = make_bank(normalize=True)
    keys = torch.randn(6, D) * 5
    bank.push(keys, torch.tensor([0, 0, 1, 2, 3, 3]))
    torch.testing.assert_close(bank.queue(0), keys[:2] / keys[:2].norm(dim=1, keepdim=True))
    torch.testing.assert_close(bank.queue(3).norm(dim=1), torch.ones(2))
    # Keys declared already normalised are stored as given.
    bank.push(keys[:1], torch.tensor([1]), normalized=True)
    torch.testing.assert_close(bank.queue(1)[-1], keys[0])


def test_sample_negatives_draws_from_the_union() -> None:
    rng = np.random.default_rng(3)
    bank = make_bank()
    pushes = [random_push(rng, 8) for _ in range(3)]
    for keys, labels in pushes:
        bank.push(keys, labels)
    ref = deque_reference(pushes)
    allowed = torch.tensor([[1, 0, 1, 1], [0, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    out = bank.sample_negatives(allowed, 10, generator=torch.Generator().manual_seed(7))
    u = torch.rand(4, 10, generator=torch.Generator().manual_seed(7), dtype=torch.float64).numpy()
    for a in range(4):
        pool = np.concatenate([ref[c] for c in range(C) if allowed[a, c]] + [np.zeros((0, D), np.float32)])
        if len(pool) == 0:
            assert torch.all(out[a] == 0)
            continue
        idx = np.minimum(np.floor(u[a] * len(pool)).astype(int), len(pool) - 1)
        np.testing.assert_array_equal(out[a].numpy(), pool[idx])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_push_and_sample_stay_on_the_bank_device_and_dtype(dtype: torch.dtype) -> None:
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        bank = make_bank(dtype=dtype).to(device)
        # Keys arrive in another dtype (and, on GPU runs, from the host): stored in the bank's.
        bank.push(torch.randn(6, D, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 0, 1]))
        assert bank.keys.device.type == device and bank.keys.dtype == dtype
        gen = torch.Generator(device=device).manual_seed(0)
        out = bank.sample(torch.tensor([0, 1], device=device), 3, generator=gen)
        union = bank.sample_negatives(torch.ones(2, C, dtype=torch.bool, device=device), 3, generator=gen)
        for t in (out, union, bank.filled()):
            assert t.device.type == device
        assert out.dtype == dtype and union.dtype == dtype


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA to observe host syncs")
def test_push_and_sample_do_not_sync_on_cuda() -> None:
    bank = make_bank().cuda()
    keys, labels = torch.randn(50, D, device="cuda"), torch.randint(-1, C, (50,), device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        bank.push(keys, labels)
        bank.sample(labels.clamp_min(0), 4)
        bank.sample_negatives(torch.ones(3, C, dtype=torch.bool, device="cuda"), 4)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_bad_arguments_name_the_field() -> None:
    with pytest.raises(ValueError, match="capacity"):
        CategoryMemoryBank(3, 4, capacity=0)
    with pytest.raises(ValueError, match="capacities has 2 entries"):
        CategoryMemoryBank(3, 4, capacities=[5, 5])
    with pytest.raises(ValueError, match="dim"):
        CategoryMemoryBank(3, 0)
    bank = make_bank()
    with pytest.raises(ValueError, match=r"keys must have shape \(N, 3\)"):
        bank.push(torch.zeros(2, 5), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="labels must have shape"):
        bank.push(torch.zeros(2, D), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="labels must be an integer"):
        bank.push(torch.zeros(2, D), torch.zeros(2))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 4\)"):
        bank.push(torch.zeros(2, D), torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="neg_classes_mask"):
        bank.sample_negatives(torch.ones(2, C + 1, dtype=torch.bool), 3)


# --- DDP -------------------------------------------------------------------------------------------


def _rank_keys(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 * rank + step)
    n = 3 + 4 * rank + step  # different sizes per rank
    return torch.randn(n, D, generator=g), torch.randint(-1, C, (n,), generator=g)


def _rank_class_keys(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + 100 * rank + step)
    n = 9 + rank  # more than class 1's capacity (5)
    return torch.randn(n, D, generator=g), torch.full((n,), 1)


def _rank_extra_key(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank 1 adds one class-2 key per step, so the ranks push different numbers of keys."""
    g = torch.Generator().manual_seed(2000 + step)
    n = rank
    return torch.randn(n, D, generator=g), torch.full((n,), 2)


def _ddp_worker(rank: int, world_size: int, result_path: str) -> None:
    bank, half = make_bank(), make_bank(dtype=torch.float16)
    for step in range(3):
        bank.gather_and_push(*_rank_keys(rank, step))
        half.gather_and_push(*_rank_keys(rank, step))
    # Fixed-size path: every rank passes the same number of rows.
    keys, labels = _rank_keys(rank, 0)
    bank.gather_and_push(keys[:3], labels[:3], equal_sizes=True)
    # Host-known bound (no size exchange), keys a full push would overwrite at once left out (skipped).
    newest, compact = make_bank(), make_bank()
    for step in range(2):
        keys, labels = _rank_class_keys(rank, step)
        skipped = torch.zeros(C, dtype=torch.long)
        skipped[1] = labels.shape[0] - 5  # class 1 holds 5 keys: only the newest 5 survive
        newest.gather_and_push(keys[-5:], labels[-5:], max_size=6, skipped=skipped)
        # the CPU's compact path: no bound, the ranks' sizes are exchanged (rank 1 adds a class-2 key)
        extra_keys, extra_labels = _rank_extra_key(rank, step)
        compact.gather_and_push(
            torch.cat([keys[-5:], extra_keys]), torch.cat([labels[-5:], extra_labels]), skipped=skipped
        )
    protos = PrototypeBank(C, D)
    counts = torch.tensor([rank + 1, 0, 2, rank])
    protos.update(torch.full((C, D), float(rank)), counts)
    torch.save(
        {
            "state": bank.state_dict(),
            "half": half.state_dict(),
            "protos": protos.state_dict(),
            "newest": newest.state_dict(),
            "compact": compact.state_dict(),
        },
        f"{result_path}.{rank}",
    )


def test_gather_and_push_leaves_identical_banks_on_every_rank(tmp_path) -> None:
    result = str(tmp_path / "bank")
    run_gloo(_ddp_worker, result)
    states = [torch.load(f"{result}.{rank}") for rank in range(2)]
    for key in ("keys", "ptr", "count"):
        torch.testing.assert_close(states[0]["state"][key], states[1]["state"][key], rtol=0, atol=0)
    # Same content as pushing rank 0's keys then rank 1's, step by step.
    pushes = [_rank_keys(rank, step) for step in range(3) for rank in range(2)]
    pushes += [tuple(t[:3] for t in _rank_keys(rank, 0)) for rank in range(2)]  # type: ignore[misc]
    bank = make_bank()
    bank.load_state_dict(states[0]["state"])
    assert_queues(bank, deque_reference(pushes))
    # float16 storage: labels travel in the keys' bytes (int16), still exact.
    half = make_bank(dtype=torch.float16)
    half.load_state_dict(states[1]["half"])
    for c, queue in enumerate(deque_reference(pushes[:6])):
        np.testing.assert_array_equal(half.queue(c).numpy(), queue.astype(np.float16))
    # Pushing only the surviving keys (padded to max_size, skipped counts gathered) leaves the bank bitwise
    # as pushing every key: same slots, ptr and count.
    full = make_bank()
    for step in range(2):
        for rank in range(2):
            full.push(*_rank_class_keys(rank, step))
    for rank in range(2):
        for key in ("ptr", "count"):
            assert torch.equal(states[rank]["newest"][key], full.state_dict()[key]), key
        assert torch.equal(states[rank]["newest"]["keys"][:-2], full.keys[:-2])
    # The same with sizes exchanged instead of a bound, the ranks pushing different numbers of keys.
    full = make_bank()
    for step in range(2):
        for rank in range(2):
            keys, labels = _rank_class_keys(rank, step)
            extra_keys, extra_labels = _rank_extra_key(rank, step)
            full.push(torch.cat([keys, extra_keys]), torch.cat([labels, extra_labels]))
    for rank in range(2):
        for key in ("ptr", "count"):
            assert torch.equal(states[rank]["compact"][key], full.state_dict()[key]), key
        assert torch.equal(states[rank]["compact"]["keys"][:-2], full.keys[:-2])
    # Prototypes were merged across ranks (count-weighted): identical everywhere.
    for rank in range(2):
        torch.testing.assert_close(states[rank]["protos"]["prototypes"], states[0]["protos"]["prototypes"])
    merged = torch.tensor([2 / 3, 0.0, 0.5, 1.0])[:, None].expand(C, D)
    torch.testing.assert_close(states[0]["protos"]["prototypes"], merged)


# --- prototypes -----------------------------------------------------------------------------------


def test_class_centroids_match_numpy() -> None:
    rng = np.random.default_rng(4)
    rep = rng.normal(size=(2, D, 3, 4)).astype(np.float32)
    mask = rng.random((2, C, 3, 4)) < 0.4
    mask[:, 1] = False
    centroids, counts = class_centroids(torch.from_numpy(rep), torch.from_numpy(mask))
    for c in range(C):
        pix = rep.transpose(0, 2, 3, 1)[mask[:, c]]
        assert counts[c] == len(pix)
        ref = pix.mean(0) if len(pix) else np.zeros(D)
        np.testing.assert_allclose(centroids[c].numpy(), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ramp", [False, True])
def test_prototype_bank_momentum_matches_numpy(ramp: bool) -> None:
    rng = np.random.default_rng(5)
    bank = PrototypeBank(C, D, momentum=0.9, ramp=ramp)
    ref = np.zeros((C, D))
    updates = np.zeros(C, int)
    for _ in range(5):
        cent = rng.normal(size=(C, D)).astype(np.float32)
        counts = rng.integers(0, 2, size=C) * rng.integers(1, 5, size=C)
        bank.update(torch.from_numpy(cent), torch.from_numpy(counts))
        for c in range(C):
            if counts[c] == 0:
                continue
            k = updates[c]
            m = min(1 - 1 / (k + 1), 0.9) if ramp else (0.9 if k > 0 else 0.0)
            ref[c] = m * ref[c] + (1 - m) * cent[c]
            updates[c] += 1
        np.testing.assert_allclose(bank.prototypes.numpy(), ref, rtol=1e-5, atol=1e-6)
    assert bank.initialized.tolist() == (updates > 0).tolist()


def test_prototype_denoise_matches_numpy() -> None:
    rng = np.random.default_rng(6)
    prob = rng.dirichlet(np.ones(C), size=(2, 4, 4)).transpose(0, 3, 1, 2).astype(np.float32)
    rep = rng.normal(size=(2, D, 4, 4)).astype(np.float32)
    protos = rng.normal(size=(C, D)).astype(np.float32)
    valid = np.array([True, True, False, True])
    out = prototype_denoise(
        torch.from_numpy(prob), torch.from_numpy(rep), torch.from_numpy(protos), 2.0, torch.from_numpy(valid)
    ).numpy()
    ref = np.empty_like(prob)
    for b in range(2):
        for y in range(4):
            for x in range(4):
                d = np.linalg.norm(rep[b, :, y, x][None] - protos, axis=1)
                d[~valid] = d[valid].min()
                w = np.exp(-2.0 * d) / np.exp(-2.0 * d).sum()
                p = w * prob[b, :, y, x]
                ref[b, :, y, x] = p / p.sum()
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-6)
    # On a coarser representation grid the weights are upsampled to the probability grid.
    small = prototype_denoise(
        torch.from_numpy(prob), torch.from_numpy(rep[:, :, ::2, ::2]), torch.from_numpy(protos)
    )
    assert small.shape == prob.shape
    torch.testing.assert_close(small.sum(1), torch.ones(2, 4, 4))
