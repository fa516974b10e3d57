"""Each axis checks the other: an example certified at L2 radius r that an
attack broke with a perturbation of L2 norm below r means the bound or the
attack is wrong (flag ``<certified name>:broken``, naming the examples).

Every perturbation evaluator records the L2 norm of each adversarial input
(``l2``, whatever its own norm), so L-infinity attacks check the certificate
too. Certified accuracy then never exceeds the empirical robust accuracy at
the same radius, example by example.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np

__all__ = ["RTOL", "certified_flags"]

#: an attack distance counts as inside the certified ball below radius * (1 - RTOL)
#: (float32 logits move the margin by about 1e-6 of their size)
RTOL = 1e-4
#: examples named in a flag's note at most
SHOWN = 10


def certified_flags(results: Sequence) -> List[Tuple[str, str]]:
    """(flag, note) per certified evaluator that some attack contradicts."""
    out: List[Tuple[str, str]] = []
    for cert in (r for r in results if r.kind == "certified" and "radius" in r.per_example):
        radius = np.asarray(cert.per_example["radius"], dtype=np.float64)
        hits, notes = set(), []
        for att in (r for r in results if r.kind in ("whitebox", "blackbox") and "l2" in r.per_example):
            _, ic, ia = np.intersect1d(cert.index, att.index, assume_unique=True, return_indices=True)
            if not len(ic):
                continue
            rad = radius[ic]
            broken = ~np.asarray(att.per_example["correct"], dtype=bool)[ia]
            size = np.asarray(att.per_example["l2"], dtype=np.float64)[ia]
            bad = (rad > 0) & broken & (size < rad * (1 - RTOL))
            if bad.any():
                idx = cert.index[ic][bad]
                hits.update(int(i) for i in idx)
                shown = ", ".join(f"{int(i)} (radius {r:.4g}, {att.name} at L2 {s:.4g})"
                                  for i, r, s in list(zip(idx, rad[bad], size[bad]))[:SHOWN])
                notes.append(f"{att.name} broke {int(bad.sum())}: {shown}")
        if hits:
            out.append((f"{cert.name}:broken",
                        f"{len(hits)} examples certified at an L2 radius were broken by an attack inside that "
                        f"radius, so the network bound or the attack is wrong: " + "; ".join(notes)))
    return out
