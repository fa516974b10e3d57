"""y = irfft2(Q(w) rfft2(x)(w)) for real images x and one complex matrix Q(w)
per frequency of the rfft2 grid (Cayley's and LOT's circular convolutions),
with a hand-written backward.

Autograd through ``rfft2 -> batched matmul -> irfft2`` costs more than the
mathematics needs: the backward of ``rfft2`` zero-fills the whole spectrum
and runs a full complex transform of it (twice the work of a real one), and
torch's complex batched matmul copies a conjugated operand one frequency at
a time. The adjoint is known in closed form. L is a real circular
convolution whose transfer matrix at w is Q(w), so L^T has Q(w)^H:

    grad_x = irfft2(Q(w)^H G(w)),  G = rfft2(grad_y),

and the gradient with respect to Q (torch's convention for complex
tensors, as autograd would give it) is

    grad_Q(w) = c(w) / (H W) * sum_b G_b(w) X_b(w)^H,

with c(w) = 2 on the columns of the half spectrum that stand for two
frequencies of the full one (1 .. W - (W//2+1)), 1 on the others (the
backward of ``irfft2``). Spectra are multiplied frequency-major, (h, w', B,
C), so every product is a batched GEMM on contiguous operands; the one
conjugated operand, Q in grad_x, is made physical once (it is small).

The input's spectrum, which grad_Q needs, is saved (``RECOMPUTE_SPECTRUM``
False) or rebuilt in backward from the input, which the layer before keeps
anyway (e.g. as its ReLU output), and only in a backward that wants grad_Q
(an attack's input gradient does not). Values equal autograd's up to rounding
(tests/test_speed_equal.py).
"""
from __future__ import annotations

import torch

from .convnorm_ops import transpose2d

#: Rebuild the input's spectrum in backward instead of saving it (see the
#: module docstring; measured in docs/benchmarks.md, issue 24).
RECOMPUTE_SPECTRUM = True


def spectrum(x: torch.Tensor) -> torch.Tensor:
    """rfft2 of real (B, C, H, W), frequency-major and contiguous: (h*w', B, C)."""
    b, c = x.shape[:2]
    xf = torch.fft.rfft2(x)
    nf = xf.shape[-2] * xf.shape[-1]
    return transpose2d(xf, b * c, nf).view(nf, b, c)


def image(zt: torch.Tensor, size) -> torch.Tensor:
    """Inverse of ``spectrum``: frequency-major (h*w', B, C) -> real (B, C, H, W)."""
    h, w = size
    nf, b, c = zt.shape
    z = transpose2d(zt, nf, b * c).view(b, c, h, w // 2 + 1)
    return torch.fft.irfft2(z, s=(h, w))


def column_weights(h: int, w: int, dtype: torch.dtype, device) -> torch.Tensor:
    """c(w) / (H W) on the rfft2 grid, (h, w//2+1, 1, 1): the backward of irfft2."""
    wh = w // 2 + 1
    c = torch.ones(wh, dtype=dtype, device=device)
    c[1:w - wh + 1] = 2.0
    return (c / (h * w)).view(1, wh, 1, 1).expand(h, wh, 1, 1)


class FourierProduct(torch.autograd.Function):
    """irfft2(Q rfft2(x)): x real (B, C_in, H, W), q complex (h, w//2+1, C_out, C_in)."""

    @staticmethod
    def forward(ctx, x, q):
        size = x.shape[-2:]
        h, wh = q.shape[:2]
        xt = spectrum(x)                                           # (h*w', B, C_in)
        yt = torch.bmm(xt, q.reshape(h * wh, *q.shape[2:]).transpose(1, 2))  # X^T Q^T = (Q X)^T
        ctx.save_for_backward(x if RECOMPUTE_SPECTRUM else xt, q)
        ctx.recomputed, ctx.size = RECOMPUTE_SPECTRUM, size
        return image(yt, size)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        saved, q = ctx.saved_tensors
        h, wh, c_out, c_in = q.shape
        need_x, need_q = ctx.needs_input_grad
        grad_x = grad_q = None
        gt = spectrum(grad.contiguous())                           # (h*w', B, C_out)
        if need_x:
            q_conj = q.reshape(h * wh, c_out, c_in).conj().resolve_conj()
            grad_x = image(torch.bmm(gt, q_conj), ctx.size)       # (Q^H G)^T = G^T conj(Q)
        if need_q:
            xt = spectrum(saved) if ctx.recomputed else saved
            # sum_b G_b X_b^H = (X^H G)^T per frequency; X^H is a conjugate
            # transpose, which the GEMM takes as it is.
            grad_q = torch.bmm(xt.mH, gt).transpose(1, 2).reshape(h, wh, c_out, c_in)
            grad_q = grad_q * column_weights(*ctx.size, grad_q.real.dtype, grad_q.device)
        return grad_x, grad_q
