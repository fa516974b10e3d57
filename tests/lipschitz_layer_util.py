"""Shared checks for the 1-Lipschitz layer tests (test_norm_{aol,soc,sll,cpl,lot,bcop}.py)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.functional import jacobian

from operators import explicit_operator, singular_values
from robustbench_convnorm.models import build_model
from robustbench_convnorm.normalizers import get_normalizer


def conv_singular_values(name, c_in, c_out, k, stride=1, size=6, **options):
    """Dense-SVD singular values of the layer ``name`` builds (float64, eval)."""
    torch.manual_seed(0)
    layer = get_normalizer(name, **options).conv(c_in, c_out, k, stride=stride, padding=k // 2)
    layer = layer.double().eval()
    m = explicit_operator(layer, (c_in, size, size))
    return singular_values(m), m, layer


def jacobian_norms(block, channels=4, size=5, points=4):
    """Largest singular value of the block's Jacobian at a few random inputs."""
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(points):
        x = torch.randn(channels * size * size, generator=gen, dtype=torch.float64)
        jac = jacobian(lambda z: block(z.view(1, channels, size, size)).flatten(), x)
        out.append(float(torch.linalg.svdvals(jac).max()))
    return out


def trains_in(name, arch, **model_options):
    """Two SGD steps of a tiny model of ``arch`` built with normalizer ``name``:
    finite loss, every parameter gets a gradient and the loss goes down on the batch."""
    torch.manual_seed(0)
    model = build_model(arch, get_normalizer(name), num_classes=4, in_channels=1, mean=[0.5], std=[0.25],
                        batchnorm=False, **model_options)
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 4, (8,))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    for _ in range(3):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        for pname, p in model.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()
    return model


TINY_LIPCONVNET = dict(stages=3, width=0.125, layers_per_stage=1)
