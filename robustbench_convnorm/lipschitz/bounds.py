"""The weight-based columns of one conv layer (exact circular norm, TN, F4,
flat), with the TN estimate cross-checked against the norms measured.

HOPM returns a lower estimate of the TN bound. The search never ends below
its own Fourier witnesses (``power_method.hopm_search``), and where the exact
circular norm is computed, its maximiser (``spectra.circular_norm_witness``)
is one more start, from which HOPM can only climb: TN is then never below
the exact norm. A norm measured otherwise (the layer's power-iteration norm
when the layer is ``conv2d(x, weight)``) is checked: when the estimate is
below it, the search is rerun with four times the starts and twice the
rounds and sweeps; a value that still stays below is flagged.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch

from ._util import IntPair, pair
from .power_method import hopm_search
from .spectra import circular_norm_witness, circular_spectral_norm, divisible, reshape_strided_kernel
from .tensor_norms import f4_bound, flat_bound, tn_scale

__all__ = ["CHECK_RTOL", "all_bounds"]

#: A TN estimate counts as below a measured norm when it is smaller than
#: ``measured * (1 - CHECK_RTOL)`` (TN is computed in the kernel's precision,
#: float32 for a model; exact in float64).
CHECK_RTOL = 1e-5


def all_bounds(weight: torch.Tensor, stride: IntPair = 1, input_size: Optional[IntPair] = None, *, groups: int = 1,
               measured: Optional[float] = None, generator: Optional[torch.Generator] = None, tn_iters: int = 100,
               tn_restarts: int = 8, tn_rounds: int = 4, check: bool = True) -> Dict[str, object]:
    """The exact circular norm and the three bounds of one kernel.

    Args:
        weight: (C_out, C_in/groups, h, w), the kernel the layer convolves with.
        stride: int or pair.
        input_size: (H, W) for the exact circular norm (left out when None or
            not a multiple of the stride).
        groups: the conv's groups. The exact norm is the grouped operator's;
            TN, F4 and flat treat the weight as one dense kernel, whose
            operator stacks the groups' outputs, so they still bound the
            grouped layer (more loosely).
        measured: a norm of the same operator measured otherwise (the
            layer's power-iteration norm), for the cross-check.
        tn_iters, tn_restarts, tn_rounds: the TN search (``hopm_search``'s
            ``n_iter``, ``restarts``, ``rounds``).
        check: cross-check TN against the exact and measured norms.

    Returns:
        ``{"exact_circular", "tn_bound", "f4_bound", "flat_bound",
        "tn_confirmed", "tn_check"}``. ``tn_confirmed``: the search's last
        round of fresh starts did not beat its best value. ``tn_check``:
        None (nothing to compare with), "ok", "recomputed" (the first
        estimate was below a measured norm, the rerun is not) or
        "below_measured" (still below after the rerun: not an upper bound
        here).

    Example::

        >>> all_bounds(torch.randn(8, 6, 3, 3), 1, (16, 16))["tn_check"]
        'ok'
    """
    w = weight.detach()
    exact, witness = None, None
    if input_size is not None and divisible(input_size, stride):
        if groups == 1:
            # the exact norm's maximiser is a start of the first search, so TN never ends below it
            wit = circular_norm_witness(w, pair(input_size), stride)
            exact, witness = wit.value, [v.reshape(1, -1) for v in wit.vectors]
        else:
            exact = circular_spectral_norm(w, pair(input_size), stride, groups)
    k = reshape_strided_kernel(w, stride)
    scale = tn_scale(w.shape, stride)
    res = hopm_search(k, n_iter=tn_iters, restarts=tn_restarts, rounds=tn_rounds, starts=witness, generator=generator)
    tn, confirmed, status = res.value * scale, res.confirmed, None
    known = [v for v in (exact, measured) if v is not None]
    if check and known:
        floor = max(known)
        status = "ok"
        if tn < floor * (1 - CHECK_RTOL):
            again = hopm_search(k, n_iter=2 * tn_iters, restarts=max(8, 4 * tn_restarts), rounds=2 * tn_rounds,
                                starts=witness, generator=generator)
            if again.value * scale > tn:
                tn, confirmed = again.value * scale, again.confirmed
            status = "recomputed" if tn >= floor * (1 - CHECK_RTOL) else "below_measured"
    return {"exact_circular": exact, "tn_bound": float(tn), "f4_bound": float(f4_bound(w, stride)),
            "flat_bound": flat_bound(w, stride), "tn_confirmed": bool(confirmed), "tn_check": status}

