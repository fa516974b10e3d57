"""OCNN: orthogonal convolutional networks by a soft penalty (Wang et al.,
CVPR 2020). The conv itself is a plain ``nn.Conv2d``; the training loss gets

    lam * sum over covered layers of || conv2d(K, K, stride=s, padding=P) - I_c ||_F

where the kernel K (C_out, C_in, k, k) is convolved with itself (filters as
a batch of C_out images), ``P = floor((k-1)/s) * s`` (the paper's padding,
correct for stride 2, unlike the public code's fixed padding=1) and I_c is
the identity at the centre shift and zero elsewhere. With circular
boundaries on an n x n input, ||M M^T - I||_F of the strided conv operator M
is exactly (n/s) times this distance (M M^T holds the filters' correlations
at the shifts that are multiples of s). 1x1 kernels use
the plain Gram form ||W W^T - I||_F, with the smaller of the two Grams
(W^T W when C_out > C_in).

Which layers: the convs this normalizer built (``OCNNConv2d``), or, in a
model that has none, every ungrouped ``nn.Conv2d`` (an OCNN conv is a plain
conv). Convs a model builder tagged with a role follow ``layers``; untagged
ones have no role to select by, so all of them are covered (with a warning
saying so). A penalty that would cover no layer at all is an error, never a
silent zero.
"""
from __future__ import annotations

import warnings
from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import RegistryError, closest
from .base import Normalizer
from .registry import register_normalizer

#: Roles each ``layers`` choice covers. "reference" follows the reference
#: code: conv1 of every residual block and the 1x1 shortcuts (not the stem,
#: not the blocks' second conv); a plain (VGG) network has neither, so there
#: it covers every conv ("plain").
LAYER_ROLES = {
    "reference": frozenset({"block_conv1", "shortcut", "plain"}),
    "all": frozenset({"stem", "block_conv1", "block_conv2", "shortcut", "plain"}),
}


class OCNNConv2d(nn.Conv2d):
    """A plain conv that the OCNN penalty recognises as its own."""


def orthogonality_penalty(weight: torch.Tensor, stride=1) -> torch.Tensor:
    """OCNN kernel-orthogonality distance of one conv kernel (not yet weighted)."""
    c_out, c_in, kh, kw = weight.shape
    sh, sw = (stride, stride) if isinstance(stride, int) else tuple(stride)
    if kh == 1 and kw == 1:
        w = weight.reshape(c_out, c_in)
        gram = w @ w.T if c_out <= c_in else w.T @ w
        eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
        return torch.linalg.matrix_norm(gram - eye, ord="fro")
    ph, pw = ((kh - 1) // sh) * sh, ((kw - 1) // sw) * sw
    corr = F.conv2d(weight, weight, stride=(sh, sw), padding=(ph, pw))
    target = torch.zeros_like(corr)
    idx = torch.arange(c_out, device=weight.device)
    target[idx, idx, ph // sh, pw // sw] = 1.0
    return torch.linalg.vector_norm(corr - target)


@register_normalizer("ocnn")
class OCNN(Normalizer):
    """Options:

    lam: the penalty's weight in the loss (0.01, the value the ConvNorm
        authors picked from {0.001, 0.01, 0.05, 0.1, 1}; their robust-training
        config uses 0.001). The key ``lambda`` is accepted as a synonym.
    layers: "reference" (conv1 of each residual block and the 1x1 shortcuts;
        in plain networks such as VGG every conv) or "all". Convs without a
        ``conv_role`` (built outside the model builders) are always covered.
    """

    option_aliases = {"lambda": "lam"}

    @classmethod
    def resolved_options(cls, options):
        options = dict(options)
        if "lambda" in options and "lam" not in options:  # one spelling in the run id
            options["lam"] = options.pop("lambda")
        return super().resolved_options(options)

    def __init__(self, *, lam: float = 0.01, layers: str = "reference", **synonyms):
        for key, value in synonyms.items():
            if key == "lambda":
                lam = value
            else:
                raise RegistryError(f"normalizer 'ocnn' has no option '{key}'{closest(key, ['lam', 'layers', 'lambda'])}; "
                                    f"allowed: lam (or lambda), layers")
        if layers not in LAYER_ROLES:
            raise ValueError(f"ocnn: layers must be one of {sorted(LAYER_ROLES)}, got {layers!r}")
        if float(lam) < 0:
            raise ValueError(f"ocnn: lam must be >= 0, got {lam}")
        self.lam = float(lam)
        self.layers = layers
        self._warned = set()  # models already warned about (see _warn_about_fallbacks)

    def conv(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=False):
        return OCNNConv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)

    def covered(self, model: nn.Module) -> List[Tuple[str, nn.Conv2d]]:
        """(name, conv) of every conv of ``model`` that the penalty covers: among
        the OCNN convs (else every ungrouped nn.Conv2d), the tagged ones whose
        role ``layers`` selects and all untagged ones."""
        candidates = [(name, m) for name, m in model.named_modules() if isinstance(m, OCNNConv2d)]
        if not candidates:
            candidates = [(name, m) for name, m in model.named_modules()
                          if isinstance(m, nn.Conv2d) and m.groups == 1]
        roles = LAYER_ROLES[self.layers]
        return [(name, m) for name, m in candidates if getattr(m, "conv_role", None) in roles | {None}]

    def penalty(self, model: nn.Module) -> torch.Tensor:
        layers = self.covered(model)
        if not layers:
            raise ValueError(
                f"ocnn: no conv of the model to regularize (layers={self.layers!r} selects the roles "
                f"{sorted(LAYER_ROLES[self.layers])}, and the model has no other ungrouped nn.Conv2d); "
                f"build the model's convs with this normalizer, or use layers: all")
        self._warn_about_fallbacks(model, layers)
        total = sum(orthogonality_penalty(m.weight, m.stride) for _, m in layers)
        return self.lam * total

    def _warn_about_fallbacks(self, model: nn.Module, layers) -> None:
        """Say once per model when the coverage is not the builders' role-based one."""
        untagged = [name for name, m in layers if getattr(m, "conv_role", None) is None]
        foreign = not any(isinstance(m, OCNNConv2d) for _, m in layers)
        key = (id(model), len(layers), len(untagged), foreign)
        if key in self._warned or not (untagged or foreign):
            return
        self._warned.add(key)
        what = "plain nn.Conv2d layers (the model has no conv built by 'ocnn')" if foreign else "OCNN convs"
        if untagged:
            warnings.warn(f"ocnn: {len(untagged)} untagged {what} carry no conv_role, so layers="
                          f"{self.layers!r} cannot select among them: the penalty covers all of them "
                          f"({', '.join(untagged[:4])}{', ...' if len(untagged) > 4 else ''})", UserWarning,
                          stacklevel=3)
        else:
            warnings.warn(f"ocnn: the penalty covers {len(layers)} {what}", UserWarning, stacklevel=3)

    def describe(self) -> str:
        return f"ocnn(lam={self.lam}, layers={self.layers})"
