"""Independent ground truth for operator-norm tests: the explicit matrix of a
linear layer, built by applying it to every basis input, and its dense SVD."""
from __future__ import annotations

import torch


@torch.no_grad()
def explicit_operator(layer, in_shape, *, dtype=torch.float64) -> torch.Tensor:
    """Matrix M with M @ x.flatten() == layer(x).flatten() for x of shape
    ``in_shape`` = (C, H, W). The layer must be linear (no bias)."""
    n = 1
    for s in in_shape:
        n *= s
    basis = torch.eye(n, dtype=dtype).reshape(n, *in_shape)
    columns = []
    for chunk in basis.split(256):
        columns.append(layer(chunk).reshape(chunk.shape[0], -1))
    return torch.cat(columns).T.contiguous()


def singular_values(matrix: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(matrix.to(torch.float64))
