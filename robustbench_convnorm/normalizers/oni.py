"""ONI: orthogonalization by Newton's iteration (Huang et al., CVPR 2020).

Per group of output channels, the kernel is reshaped to Z (one filter per
row), each row is centred, and ``S = Zc Zc^T + eps*I`` is scaled by its
Frobenius norm; T steps of the Newton iteration ``B <- 1.5 B - 0.5 B^3 S``
(from B = I) approximate S^-1/2, and the conv uses
``W = g * B Zc / sqrt(||S||_F)``, whose rows tend to orthonormal vectors
times g as T grows. Every step keeps the singular values at or below g, so
the flattened weight's norm never exceeds g. When a group has more filters
than entries per filter (C_out/groups > C_in*k*k) the column form is used:
``S = Zc^T Zc + eps*I`` and ``W = g * Zc B / sqrt(||S||_F)``.

This uncoupled Newton iteration (the paper's) is numerically unstable once
it has converged: extra steps amplify rounding errors, and in fp64 it
drifts after roughly 10-25 steps (fewer for ill-conditioned kernels and in
the column form), so T between 1 and about 10 is the useful range.

It is implemented as a ``torch.nn.utils.parametrize`` parametrization of an
``nn.Conv2d`` weight, so ``layer.weight`` is the orthogonalized weight and
``layer.parametrizations.weight.original`` the free one.

The ConvNorm paper trains ONI with learning rate 0.01 (0.1 diverges); that
is a config override (``overrides: {train.lr: 0.01}``), not set here.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from .base import Normalizer
from .registry import register_normalizer


def oni_orthogonalize(weight: torch.Tensor, *, groups: int = 1, T: int = 5, eps: float = 1e-5,
                      form: str = "auto") -> torch.Tensor:
    """The ONI weight (without the scale g) for a kernel (C_out, ...): rows
    (or, in the column form, columns) of each group tend to orthonormal."""
    c_out = weight.shape[0]
    if c_out % groups:
        raise ValueError(f"oni: groups={groups} does not divide the {c_out} output channels")
    z = weight.reshape(groups, c_out // groups, -1)
    rows, cols = z.shape[1], z.shape[2]
    if form == "auto":
        form = "column" if rows > cols else "row"
    zc = z - z.mean(dim=-1, keepdim=True)
    if form == "row":
        s = zc @ zc.transpose(1, 2)
    elif form == "column":
        s = zc.transpose(1, 2) @ zc
    else:
        raise ValueError(f"oni: form must be 'auto', 'row' or 'column', got {form!r}")
    eye = torch.eye(s.shape[-1], dtype=s.dtype, device=s.device).expand_as(s)
    s = s + eps * eye
    norm_s = torch.linalg.matrix_norm(s, ord="fro", keepdim=True)
    s = s / norm_s
    b = eye
    for _ in range(T):
        b = 1.5 * b - 0.5 * (b @ b @ b @ s)
    w = (b @ zc) if form == "row" else (zc @ b)
    return (w / norm_s.sqrt()).reshape(weight.shape)


class ONIWeight(nn.Module):
    """Parametrization: free kernel -> ONI kernel times the scale g (one per
    output channel; a buffer, or a parameter with ``learnable_scale``)."""

    def __init__(self, out_channels: int, *, groups: int, T: int, scale: float, learnable_scale: bool,
                 eps: float, form: str):
        super().__init__()
        self.groups, self.T, self.eps, self.form = groups, T, eps, form
        g = torch.full((out_channels, 1, 1, 1), float(scale))
        if learnable_scale:
            self.scale = nn.Parameter(g)
        else:
            self.register_buffer("scale", g)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        # The Newton iteration is not safe in half precision: run it in fp32
        # (or fp64) even under autocast.
        dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
        with torch.autocast(weight.device.type, enabled=False):
            w = oni_orthogonalize(weight.to(dtype), groups=self.groups, T=self.T, eps=self.eps,
                                  form=self.form)
            return (w * self.scale.to(dtype)).to(weight.dtype)

    def extra_repr(self) -> str:
        return f"groups={self.groups}, T={self.T}, eps={self.eps}, form={self.form}"


@register_normalizer("oni")
class ONI(Normalizer):
    """Options:

    T: Newton steps (5; the paper also uses 3 and 2).
    groups: number of groups of output channels, each orthogonalized on its
        own (1); must divide every conv's output channels.
    scale: g, the factor on the orthogonalized weight (1.414).
    learnable_scale: make g a per-channel parameter (False).
    eps: added to the diagonal of S (1e-5).
    form: "auto" (row form, column form where C_out/groups > C_in*k*k),
        "row" or "column".
    """

    def __init__(self, *, T: int = 5, groups: int = 1, scale: float = 1.414,
                 learnable_scale: bool = False, eps: float = 1e-5, form: str = "auto"):
        if int(T) < 0:
            raise ValueError(f"oni: T must be >= 0, got {T}")
        if int(groups) < 1:
            raise ValueError(f"oni: groups must be >= 1, got {groups}")
        if form not in ("auto", "row", "column"):
            raise ValueError(f"oni: form must be 'auto', 'row' or 'column', got {form!r}")
        self.T, self.groups, self.scale = int(T), int(groups), float(scale)
        self.learnable_scale, self.eps, self.form = bool(learnable_scale), float(eps), form

    def conv(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=False):
        if out_channels % self.groups:
            raise ValueError(f"oni: groups={self.groups} does not divide out_channels={out_channels} "
                             f"of a conv {in_channels}->{out_channels}; choose groups dividing every width")
        conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)
        parametrize.register_parametrization(
            conv, "weight",
            ONIWeight(out_channels, groups=self.groups, T=self.T, scale=self.scale,
                      learnable_scale=self.learnable_scale, eps=self.eps, form=self.form))
        return conv

    def describe(self) -> str:
        return f"oni(T={self.T}, groups={self.groups}, scale={self.scale}, learnable_scale={self.learnable_scale})"
