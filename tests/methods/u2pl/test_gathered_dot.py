import pytest
import torch

from wsss_lightning.methods.u2pl.gathered_dot import gathered_dot


def reference(
    queries: torch.Tensor, table: torch.Tensor, rows: torch.Tensor, normalize: bool
) -> torch.Tensor:
    keys = table[rows].float()
    if normalize:
        keys = keys / keys.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    return torch.bmm(keys, queries[..., None]).squeeze(-1)


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("chunk_rows", [1, 7, 50, 10_000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_matches_materialised_gather_in_value_and_gradient(
    normalize: bool, chunk_rows: int, dtype: torch.dtype
) -> None:
    g = torch.Generator().manual_seed(0)
    table = (3 * torch.randn(40, 8, generator=g)).to(dtype)
    rows = torch.randint(0, 40, (13, 5), generator=g)
    queries = torch.randn(13, 8, generator=g, requires_grad=True)
    weights = torch.randn(13, 5, generator=g)

    out = gathered_dot(queries, table, rows, normalize=normalize, chunk_rows=chunk_rows)
    (out * weights).sum().backward()
    assert queries.grad is not None
    grad = queries.grad.clone()

    queries.grad = None
    expected = reference(queries, table, rows, normalize)
    (expected * weights).sum().backward()
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(grad, queries.grad)


def test_table_modified_before_backward_is_an_error() -> None:
    table = torch.randn(10, 4)
    queries = torch.randn(3, 4, requires_grad=True)
    out = gathered_dot(queries, table, torch.zeros(3, 2, dtype=torch.long))
    table.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_bad_shapes_are_named() -> None:
    with pytest.raises(ValueError, match="share D"):
        gathered_dot(torch.randn(3, 4), torch.randn(10, 5), torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"rows must have shape \(3, N\)"):
        gathered_dot(torch.randn(3, 4), torch.randn(10, 4), torch.zeros(2, 2, dtype=torch.long))
