"""HOPM, the power method of the tensor spectral norm

    ||T||_sigma = max |T(u1, u2, u3, u4)| over complex unit vectors,

for the real 4-way kernels K' of conv layers, and the search that the TN
bound's diagnostic runs (``hopm_search``: spread starts, then rounds of
fresh random starts until the best value is confirmed). HOPM climbs to a
local maximum, so every value here is a lower estimate of ||T||_sigma.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

from .spectra import fourier_witnesses

__all__ = [
    "HOPMResult", "SPREAD_ANGLES", "hopm", "hopm_batch", "hopm_search", "hopm_start_count", "hopm_starts",
    "spread_starts", "tensor_spectral_norm", "witness_grid",
]

Starts = List[torch.Tensor]  # four (R, d_i) complex tensors, one row per start


def _complex_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype in (torch.float64, torch.complex128) else torch.complex64


def _row_unit(v: torch.Tensor) -> torch.Tensor:
    n = torch.linalg.vector_norm(v, dim=-1, keepdim=True)
    return v / torch.where(n > 0, n, torch.ones_like(n))


def _random_rows(count: int, d: int, cdtype, device, generator) -> torch.Tensor:
    real = torch.float64 if cdtype == torch.complex128 else torch.float32
    z = torch.randn(count, d, 2, dtype=real, device=device, generator=generator)
    return _row_unit(torch.view_as_complex(z.contiguous()))


def _fourier_row(d: int, theta: float, cdtype, device) -> torch.Tensor:
    p = torch.arange(d, dtype=torch.float64, device=device)
    return torch.polar(torch.full_like(p, 1.0 / math.sqrt(d)), theta * p).to(cdtype)


def hopm_batch(tensor: torch.Tensor, vectors: Sequence[torch.Tensor], *, n_iter: int = 100, tol: float = 1e-8
               ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    r"""Alternating power iteration (HOPM) for the tensor spectral norm

    .. math::
        \|T\|_\sigma = \max_{\|u_i\| = 1} |T(u_1, u_2, u_3, u_4)|

    over complex unit vectors, for a real 4-way tensor T, from R starts side
    by side. Each sweep sets u1 = conj(T(., u2, u3, u4)) / norm, then u2, u3,
    u4 likewise (each the exact maximiser given the others), so no start's
    value ever decreases; it stops at a local maximum, after ``n_iter``
    sweeps or when no value moves by more than ``tol`` (relative). Complex
    vectors because the bound's proof evaluates K' at Fourier vectors; for a
    real tensor the complex norm can exceed the real one.

    Note [cost]: a sweep reads T twice as a (d1, d2*d3*d4) matrix, once
    against u2 x u3 x u4 for all starts (giving u1) and once against u1
    (giving T(u1, ., ., .), from which u2, u3, u4 follow); nothing of size
    R*d1*d2 is formed, so more starts cost little more memory traffic.

    Args:
        tensor: real (d1, d2, d3, d4); float64 computes in complex128, else complex64.
        vectors: four (R, d_i) complex tensors (normalised here).
        n_iter: most sweeps.
        tol: relative change below which every start counts as converged (0: never stop early).

    Returns:
        The values (R,) (float64) and the four (R, d_i) vectors, detached.

    Example::

        >>> t = torch.randn(6, 5, 3, 3)
        >>> values, vecs = hopm_batch(t, hopm_starts(t.shape))
    """
    t = tensor.detach()
    real = torch.float64 if t.dtype == torch.float64 else torch.float32
    cdtype = _complex_dtype(real)
    d1, d2, d3, d4 = (int(s) for s in t.shape)
    m = t.to(real).reshape(d1, d2 * d3 * d4)
    u1, u2, u3, u4 = [_row_unit(v.detach().to(device=t.device, dtype=cdtype)) for v in vectors]
    r = u1.shape[0]
    sigma = torch.zeros(r, dtype=real, device=t.device)
    for _ in range(max(1, n_iter)):
        k34 = (u3[:, :, None] * u4[:, None, :]).reshape(r, d3 * d4)
        w = (u2[:, :, None] * k34[:, None, :]).reshape(r, d2 * d3 * d4)
        a = m @ torch.cat([w.real, w.imag]).T                              # T(., u2, u3, u4): (d1, 2R)
        u1 = _row_unit(torch.conj(torch.complex(a[:, :r], a[:, r:]).T))
        y = torch.cat([u1.real, u1.imag]) @ m                              # T(u1, ., ., .): (2R, d2*d3*d4)
        y = torch.complex(y[:r], y[r:]).reshape(r, d2, d3 * d4)
        u2 = _row_unit(torch.conj(torch.einsum("rjk,rk->rj", y, k34)))
        z = torch.einsum("rj,rjk->rk", u2, y).reshape(r, d3, d4)          # T(u1, u2, ., .)
        u3 = _row_unit(torch.conj(torch.einsum("rkl,rl->rk", z, u4)))
        v = torch.einsum("rk,rkl->rl", u3, z)
        new_sigma = torch.linalg.vector_norm(v, dim=1)
        u4 = _row_unit(torch.conj(v))
        done = bool(((new_sigma - sigma).abs() <= tol * new_sigma.clamp_min(1e-30)).all())
        sigma = new_sigma
        if done:
            break
    return sigma.to(torch.float64), [u1, u2, u3, u4]


def hopm(tensor: torch.Tensor, vectors: Optional[Sequence[torch.Tensor]] = None, *, n_iter: int = 100,
         tol: float = 1e-8, generator: Optional[torch.Generator] = None) -> Tuple[float, List[torch.Tensor]]:
    """HOPM from one start (``vectors``: four 1-D complex tensors, random if
    None); see ``hopm_batch``. Returns the value and the four vectors."""
    if vectors is None:
        vectors = hopm_starts(tensor.shape, restarts=1, fourier=False, dtype=tensor.dtype, device=tensor.device,
                              generator=generator)
    else:
        vectors = [v.reshape(1, -1) for v in vectors]
    sigma, vecs = hopm_batch(tensor, vectors, n_iter=n_iter, tol=tol)
    return float(sigma[0]), [v[0] for v in vecs]


def hopm_start_count(shape: Sequence[int], *, restarts: int = 3, fourier: bool = True) -> int:
    """How many starts ``hopm_starts`` makes for a tensor of this shape."""
    n = ((2 if int(shape[2]) > 1 else 1) * (2 if int(shape[3]) > 1 else 1)) if fourier else 0
    return n + int(restarts)


def hopm_starts(shape: Sequence[int], *, restarts: int = 3, fourier: bool = True, dtype=torch.float32,
                device=None, generator: Optional[torch.Generator] = None) -> Starts:
    """The training penalty's starts (``normalizers/tn.py`` sizes its buffers
    with ``hopm_start_count``): (u3, u4) at the Fourier vectors of angles
    {0, pi} x {0, pi} (u1, u2 random), then ``restarts`` random starts.
    Cheap, and enough for a penalty that warm-starts every step; the
    diagnostic uses ``spread_starts`` (kernels exist whose maximum all of
    these starts miss).

    Returns:
        four (R, d_i) complex tensors.
    """
    cdtype = _complex_dtype(dtype)
    d1, d2, d3, d4 = (int(s) for s in shape)
    rows: List[List[torch.Tensor]] = []
    if fourier:
        for a in ((0.0, math.pi) if d3 > 1 else (0.0,)):
            for b in ((0.0, math.pi) if d4 > 1 else (0.0,)):
                rows.append([_random_rows(1, d1, cdtype, device, generator)[0],
                             _random_rows(1, d2, cdtype, device, generator)[0],
                             _fourier_row(d3, a, cdtype, device), _fourier_row(d4, b, cdtype, device)])
    for _ in range(restarts):
        rows.append([_random_rows(1, d, cdtype, device, generator)[0] for d in (d1, d2, d3, d4)])
    if not rows:
        raise ValueError("HOPM needs at least one start (restarts >= 1 or fourier starts)")
    return [torch.stack([row[i] for row in rows]) for i in range(4)]


#: Angles of the Fourier starts of ``spread_starts``: the constant and
#: alternating patterns, and the two quarter-turn modulations.
SPREAD_ANGLES = (0.0, math.pi / 2, math.pi, 3 * math.pi / 2)


def _spatial_pairs(d3: int, d4: int) -> List[Tuple[float, float]]:
    """Angle pairs for (u3, u4), one of each conjugate pair: for a real
    tensor, (-a, -b) reaches what (a, b) reaches, with conjugated vectors."""
    out: List[Tuple[float, float]] = []
    for a in (SPREAD_ANGLES if d3 > 1 else (0.0,)):
        for b in (SPREAD_ANGLES if d4 > 1 else (0.0,)):
            twin = ((-a) % (2 * math.pi) if d3 > 1 else 0.0, (-b) % (2 * math.pi) if d4 > 1 else 0.0)
            if twin not in out:
                out.append((a, b))
    return out


def _top_mode_vectors(t: torch.Tensor, mode: int, count: int) -> List[torch.Tensor]:
    """Leading left singular vectors of the tensor's mode unfolding (HOSVD)."""
    unfold = t.movedim(mode, 0).reshape(t.shape[mode], -1).to(torch.float64)
    _, vecs = torch.linalg.eigh(unfold @ unfold.T)
    return [vecs[:, -1 - i] for i in range(min(count, t.shape[mode]))]


def spread_starts(tensor: torch.Tensor, *, restarts: int = 8, fourier: bool = True,
                  generator: Optional[torch.Generator] = None) -> Starts:
    """The diagnostic's first round of HOPM starts, spread over the spatial
    modes, where a conv kernel's structure lives:

    - (u3, u4) Fourier vectors at the angles ``SPREAD_ANGLES`` per spatial
      mode (one of each conjugate pair; a 3x3 kernel gets 10);
    - (u3, u4) from every pair of HOSVD vectors of the two spatial modes
      (a 3x3 kernel gets 9, a 7x7 one 49): a dominant spatial factor need
      not lead its mode's HOSVD, since many weaker terms on one spatial
      pattern outweigh one strong term there (``tests/test_lipschitz_tn.py``,
      a 7x7 family whose dominant factor comes third);
    - ``restarts`` fully random starts.

    u1 and u2 are random except in the last group. A kernel whose dominant
    term is orthogonal to some Fourier starts still meets the others and the
    HOSVD starts. Kernels exist that defeat every start of this list; the
    search (``hopm_search``) adds certified Fourier witnesses and says so.
    """
    t = tensor.detach()
    cdtype = _complex_dtype(t.dtype)
    dev = t.device
    d1, d2, d3, d4 = (int(s) for s in t.shape)
    spatial: List[Tuple[torch.Tensor, torch.Tensor]] = []
    if fourier:
        spatial += [(_fourier_row(d3, a, cdtype, dev), _fourier_row(d4, b, cdtype, dev))
                    for a, b in _spatial_pairs(d3, d4)]
    if d3 * d4 > 1:
        h3, h4 = _top_mode_vectors(t, 2, d3), _top_mode_vectors(t, 3, d4)
        spatial += [(a.to(dev, cdtype), b.to(dev, cdtype)) for a in h3 for b in h4]
    n = len(spatial)
    u3 = torch.stack([s[0] for s in spatial]) if n else torch.zeros(0, d3, dtype=cdtype, device=dev)
    u4 = torch.stack([s[1] for s in spatial]) if n else torch.zeros(0, d4, dtype=cdtype, device=dev)
    starts = [_random_rows(n, d1, cdtype, dev, generator), _random_rows(n, d2, cdtype, dev, generator), u3, u4]
    if restarts:
        starts = [torch.cat([a, _random_rows(restarts, d, cdtype, dev, generator)])
                  for a, d in zip(starts, (d1, d2, d3, d4))]
    if starts[0].shape[0] == 0:
        raise ValueError("HOPM needs at least one start (restarts >= 1 or fourier starts)")
    return starts


@dataclass
class HOPMResult:
    """What ``hopm_search`` found. ``value = |T(*vectors)|``, a lower estimate
    of ``||T||_sigma``, never below ``floor``.

    ``floor``: a certified lower bound of ``||T||_sigma`` (the best Fourier
    witness, ``spectra.fourier_witnesses``: the circular norm's per-frequency
    value at unit vectors, divided by sqrt(d3 d4)); None when not computed.
    ``blind``: the best value of the search's own starts (spread and random),
    without the witnesses and the caller's ``starts``.
    ``confirmed``: the blind starts reached the best value (within
    ``confirm_rtol``) and a later round of fresh random starts did not beat
    it; or the tensor is a matrix, whose norm is exact. A search whose blind
    starts stay below a value the witnesses reach has been defeated by this
    kernel, and says so, whatever the witnesses then found."""
    value: float
    vectors: List[torch.Tensor]
    rounds: int
    confirmed: bool
    starts: int
    floor: Optional[float] = None
    blind: Optional[float] = None


def _run(t: torch.Tensor, starts: Starts, n_iter: int, tol: float, probe_iters: int, keep: int):
    """HOPM from every start; after ``probe_iters`` sweeps only the ``keep``
    best go on to ``n_iter`` sweeps in all."""
    if 0 < probe_iters < n_iter and keep < starts[0].shape[0]:
        sigma, vecs = hopm_batch(t, starts, n_iter=probe_iters, tol=tol)
        top = torch.argsort(sigma, descending=True)[: max(1, keep)].to(vecs[0].device)
        return hopm_batch(t, [v[top] for v in vecs], n_iter=n_iter - probe_iters, tol=tol)
    return hopm_batch(t, starts, n_iter=n_iter, tol=tol)


def _matrix_case(t: torch.Tensor) -> HOPMResult:
    """h' = w' = 1: T is a matrix and ||T||_sigma its largest singular value,
    computed exactly (float64)."""
    m = t[:, :, 0, 0].to(torch.float64)
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    cdtype = _complex_dtype(t.dtype)
    one = torch.ones(1, dtype=cdtype, device=t.device)
    vectors = [u[:, 0].to(cdtype), vh[0].to(cdtype), one, one]
    return HOPMResult(float(s[0]), vectors, rounds=0, confirmed=True, starts=0, floor=float(s[0]), blind=float(s[0]))


def witness_grid(shape: Sequence[int]) -> Tuple[int, int]:
    """The frequency grid of the search's Fourier witnesses: four times each
    spatial size (at least 8). A d-tap response is a trigonometric
    polynomial of degree d - 1; on the 7x7 family of the tests the maximum
    sampled on this grid matched the continuous one to 0.1%, where a grid of
    twice the size fell 21% short."""
    return max(8, 4 * int(shape[2])), max(8, 4 * int(shape[3]))


def hopm_search(tensor: torch.Tensor, *, n_iter: int = 100, restarts: int = 8, fourier_starts: bool = True,
                tol: float = 1e-8, probe_iters: int = 20, keep: int = 4, rounds: int = 4,
                confirm_rtol: float = 1e-3, starts: Optional[Starts] = None, witnesses: int = 2,
                witness_grid_size: Optional[Tuple[int, int]] = None,
                generator: Optional[torch.Generator] = None) -> HOPMResult:
    """``||T||_sigma`` of a real 4-way tensor by HOPM, searched until confirmed.

    Round 1 runs ``spread_starts`` (the blind starts); beside them, HOPM
    also climbs from ``witnesses`` Fourier witnesses (``spectra.
    fourier_witnesses`` on ``witness_grid``: unit vectors at which T's value
    is a certified lower bound, the ``floor``) and from the caller's
    ``starts`` (e.g. a ``spectra.circular_norm_witness``). HOPM never lowers
    a start's value, so the result is never below the floor, nor below any
    circular norm the witnesses come from. Each later round runs ``restarts``
    fresh random starts; the search stops at the first round that does not
    beat the best value by more than ``confirm_rtol`` (relative), and the
    value is "confirmed" only if the blind starts also reached it: where
    only the witnesses found the best value, the blind search was defeated
    and nothing confirms that the witnesses found the maximum either. After
    ``rounds`` rounds it stops unconfirmed. The best value over all rounds
    is kept. A tensor with h' = w' = 1 is a matrix: its norm is exact.

    Args:
        tensor: real (d1, d2, d3, d4).
        n_iter, tol, probe_iters, keep: per round, see ``hopm_batch``; after
            ``probe_iters`` sweeps only the ``keep`` best blind starts go on.
        restarts: random starts in round 1 and in each later round.
        fourier_starts: include the Fourier starts of ``spread_starts``.
        rounds: most rounds (1: no confirmation).
        confirm_rtol: what counts as beating the best. Note [1e-3]: large
            random kernels have many local maxima within about 0.5% of each
            other, which no number of rounds would separate; the misses this
            search exists for are 10% and more.
        starts: extra starts for round 1 (four (R, d_i) complex tensors).
        witnesses: how many Fourier witnesses (0: none, no floor).
        witness_grid_size: their frequency grid (default ``witness_grid``).

    Returns:
        ``HOPMResult``; its value is a lower estimate of ``||T||_sigma``.

    Example::

        >>> res = hopm_search(torch.randn(8, 6, 3, 3))
        >>> res.confirmed and res.value >= res.floor
        True
    """
    t = tensor.detach()
    if int(t.shape[2]) == 1 and int(t.shape[3]) == 1:
        return _matrix_case(t)
    cdtype = _complex_dtype(t.dtype)
    scale = math.sqrt(int(t.shape[2]) * int(t.shape[3]))
    floor, seeded = None, []
    if witnesses > 0:
        values, wit = fourier_witnesses(t, witness_grid_size or witness_grid(t.shape), count=witnesses)
        floor = float(values[0]) / scale
        seeded.append([v.to(device=t.device, dtype=cdtype) for v in wit])
    if starts is not None:
        seeded.append([b.reshape(-1, int(d)).to(device=t.device, dtype=cdtype) for b, d in zip(starts, t.shape)])
    best, best_vecs, blind, used = -1.0, None, -1.0, 0
    if seeded:
        batch = [torch.cat([s[i] for s in seeded]) for i in range(4)]
        sigma, vecs = hopm_batch(t, batch, n_iter=n_iter, tol=tol)
        used += int(batch[0].shape[0])
        i = int(torch.argmax(sigma))
        best, best_vecs = float(sigma[i]), [v[i] for v in vecs]
    batch = spread_starts(t, restarts=restarts, fourier=fourier_starts, generator=generator)
    confirmed, done_rounds = False, 0
    for r in range(max(1, rounds)):
        if r > 0:
            if restarts < 1:
                break
            batch = [_random_rows(restarts, int(d), cdtype, t.device, generator) for d in t.shape]
        sigma, vecs = _run(t, batch, n_iter, tol, probe_iters, keep)
        used += int(batch[0].shape[0])
        done_rounds += 1
        i = int(torch.argmax(sigma))
        value = float(sigma[i])
        beaten = value > best * (1 + confirm_rtol)
        blind = max(blind, value)
        if value > best:
            best, best_vecs = value, [v[i] for v in vecs]
        if r > 0 and not beaten:
            confirmed = True
            break
    confirmed = confirmed and blind >= best * (1 - confirm_rtol)
    if floor is not None and best < floor:
        # HOPM climbs from the witnesses, so it ends below their floor only by rounding (complex64)
        # or when broken; the floor is attained, and nothing about this search is confirmed
        confirmed = confirmed and best >= floor * (1 - confirm_rtol)
        best, best_vecs = floor, [s[0] for s in seeded[0]]
    return HOPMResult(best, best_vecs, rounds=done_rounds, confirmed=confirmed, starts=used, floor=floor,
                      blind=blind)


def tensor_spectral_norm(tensor: torch.Tensor, **search) -> Tuple[float, List[torch.Tensor]]:
    """``(value, vectors)`` of ``hopm_search(tensor, **search)``: a lower
    estimate of ``||T||_sigma`` and the four unit vectors attaining it."""
    res = hopm_search(tensor, **search)
    return res.value, res.vectors
