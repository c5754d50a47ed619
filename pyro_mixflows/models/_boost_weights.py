"""The weight mathematics of gradient boosting: pure functions of log-densities, no training.

- :func:`boosting_weights`: the sample weights ``w_i ∝ 1 / G(x_i)`` of the next component;
- :func:`rho_objective` and :func:`search_rho`: the mean log-likelihood of ``(1 - rho) G + rho g``
  and its exact maximizer over [0, 1] (concave in rho: bisection on the derivative);
- :func:`fit_mixture_weights`: the exact maximizer over the simplex of the log-likelihood of a
  mixture with fixed components (EM fixed point to the KKT conditions);
- :func:`golden_section_max`: a grid then golden-section search on [0, 1], for objectives that
  need not be concave (the Monte Carlo ELBO of the variational mode).

Reference: Gradient Boosted Normalizing Flows (Giaquinto & Banerjee, 2020), arXiv:2002.11896.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = [
    "boosting_weights",
    "check_clip",
    "fit_mixture_weights",
    "golden_section_max",
    "rho_objective",
    "search_rho",
]

LOG_RATIO_BOUND = 600.0  # |log g - log G| is clamped here; exp(600) is still finite in float64


def boosting_weights(
    log_prev: torch.Tensor, clip: tuple[float, float] = (0.1, 10.0)
) -> torch.Tensor:
    """Sample weights of the next boosting component, ``w_i ∝ 1 / G_{c-1}(x_i)``, normalized and clipped.

    .. math:: \\tilde w_i = \\frac{N / G_{c-1}(x_i)}{\\sum_j 1 / G_{c-1}(x_j)}, \\qquad
              w_i = \\frac{\\min(\\max(\\tilde w_i, a), b)}{\\frac1N \\sum_j \\min(\\max(\\tilde w_j, a), b)}

    The raw weights are normalized to mean one (computed in log space, so tiny densities do not
    overflow), clipped to ``[a, b] = clip`` and renormalized to mean one. After the clip the
    largest weight is at most ``b / a`` times the smallest, so a few points that the current
    mixture misses cannot take over a minibatch; ``clip=(0, inf)`` keeps the raw formula.

    Args:
        log_prev: log G_{c-1}(x_i) of every training point, shape (N,).
        clip: bounds (a, b) on the mean-one weights, 0 <= a <= 1 <= b.

    Returns:
        Weights of shape (N,), positive where a > 0, with mean one.

    Raises:
        ValueError: ``log_prev`` is not 1-D and non-empty, holds NaN or +inf, or ``clip`` is invalid.

    Example::

        >>> boosting_weights(torch.tensor([0.0, -1.0, -2.0])).shape
        torch.Size([3])
    """
    if not torch.is_tensor(log_prev) or log_prev.dim() != 1 or log_prev.numel() == 0:
        raise ValueError(f"expected log_prev of shape (N,) with N >= 1, got {log_prev!r:.80}")
    if bool(torch.isnan(log_prev).any()) or bool((log_prev == math.inf).any()):
        raise ValueError("expected log_prev without NaN or +inf entries, got some")
    lo, hi = check_clip(clip)
    N = log_prev.shape[0]
    log_w = -log_prev.clamp(min=torch.finfo(log_prev.dtype).min / 4)  # zero density: largest
    log_w = log_w - log_w.logsumexp(0) + math.log(N)  # mean one
    w = log_w.exp().clamp(lo, hi)
    return w / w.mean()


def rho_objective(
    rho: float | torch.Tensor, log_prev: torch.Tensor, log_new: torch.Tensor
) -> torch.Tensor:
    """Mean held-out log-likelihood of ``(1 - rho) G + rho g``.

    .. math:: f(\\rho) = \\frac1N \\sum_i \\log\\big((1-\\rho) G(x_i) + \\rho\\, g(x_i)\\big)

    Args:
        rho: scalar in [0, 1], or a tensor of values (...,) for a grid.
        log_prev: log G(x_i), shape (N,).
        log_new: log g(x_i), shape (N,).

    Returns:
        f(rho), shape of ``rho``.
    """
    rho = torch.as_tensor(rho, dtype=log_prev.dtype, device=log_prev.device).unsqueeze(-1)
    with torch.no_grad():
        terms = torch.logaddexp(torch.log1p(-rho) + log_prev, rho.log() + log_new)  # (..., N)
    return terms.mean(-1)


def _rho_derivative(rho: float, d: torch.Tensor) -> float:
    """f'(rho) = mean_i (r_i - 1) / (1 - rho + rho r_i), r_i = exp(d_i), evaluated without overflow."""
    pos = d > 0
    e_neg = torch.exp(-d.abs())  # exp(-|d|) in (0, 1]
    # d > 0: multiply numerator and denominator by exp(-d); d <= 0: use exp(d) directly.
    num = torch.where(pos, 1 - e_neg, e_neg - 1)
    den = torch.where(pos, (1 - rho) * e_neg + rho, (1 - rho) + rho * e_neg)
    return float((num / den).mean())


def search_rho(log_prev: torch.Tensor, log_new: torch.Tensor, tol: float = 1e-10) -> float:
    """The exact maximizer over [0, 1] of the held-out log-likelihood of ``(1 - rho) G + rho g``.

    ``f(rho) = mean_i log((1 - rho) G(x_i) + rho g(x_i))`` is concave in rho
    (``f'' = -mean_i (g_i - G_i)^2 / ((1-rho) G_i + rho g_i)^2 <= 0``), so its maximizer on
    [0, 1] is an endpoint when ``f'`` does not change sign there, and otherwise the root of
    ``f'``, found by bisection (``f'`` is decreasing) to an interval of width ``tol``. The
    derivative is computed in float64 from ``d_i = log g_i - log G_i``, so densities far below
    float range do not overflow.

    Args:
        log_prev: log G(x_i) on held-out points, shape (N,).
        log_new: log g(x_i) on the same points, shape (N,).
        tol: width of the final bracket.

    Returns:
        rho in [0, 1].

    Raises:
        ValueError: shapes differ or are not (N,) with N >= 1, NaN entries, or tol <= 0.

    Example::

        >>> round(search_rho(torch.zeros(4), torch.zeros(4)), 3)  # g == G: every rho is optimal
        0.0
    """
    for name, t in (("log_prev", log_prev), ("log_new", log_new)):
        if not torch.is_tensor(t) or t.dim() != 1 or t.numel() == 0:
            raise ValueError(f"expected {name} of shape (N,) with N >= 1, got {t!r:.80}")
        if bool(torch.isnan(t).any()):
            raise ValueError(f"expected {name} without NaN entries, got some")
    if log_prev.shape != log_new.shape:
        raise ValueError(
            f"expected log_prev and log_new of the same shape, got {tuple(log_prev.shape)} "
            f"and {tuple(log_new.shape)}"
        )
    if not tol > 0:
        raise ValueError(f"expected tol > 0, got {tol}")
    d = (log_new.double() - log_prev.double()).nan_to_num(
        nan=0.0, posinf=LOG_RATIO_BOUND, neginf=-LOG_RATIO_BOUND
    )
    d = d.clamp(-LOG_RATIO_BOUND, LOG_RATIO_BOUND)
    if _rho_derivative(0.0, d) <= 0:
        return 0.0
    if _rho_derivative(1.0, d) >= 0:
        return 1.0
    lo, hi = 0.0, 1.0
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        if _rho_derivative(mid, d) > 0:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def fit_mixture_weights(
    log_probs: torch.Tensor, tol: float = 1e-8, max_iter: int = 100_000
) -> torch.Tensor:
    """The exact maximizer over the simplex of the mean log-likelihood of a mixture with fixed components.

    .. math:: \\max_{w \\in \\Delta_C}\\; f(w) = \\frac1N \\sum_i \\log \\sum_k w_k\\, g_k(x_i)

    f is concave in w, so a point is the global maximizer exactly when it meets the KKT
    conditions ``s_k(w) = (1/N) sum_i g_k(x_i) / G_w(x_i) <= 1`` for every k, with equality where
    ``w_k > 0``. The EM fixed-point update ``w_k <- w_k s_k(w)`` increases f monotonically from
    the uniform start; it runs (in float64, in log space) until ``max_k s_k - 1 <= tol`` (and
    ``|s_k - 1| <= tol`` where ``w_k > tol``) or ``max_iter`` updates. Used to re-fit all
    boosting weights at once on held-out data (the fully corrective step).

    Args:
        log_probs: log g_k(x_i), shape (N, C).
        tol: tolerance on the KKT conditions.
        max_iter: the most EM updates.

    Returns:
        log w, shape (C,), float64 (``-inf`` for a component whose weight underflows).

    Raises:
        ValueError: ``log_probs`` is not (N, C) with N, C >= 1, holds NaN or +inf, or a row is
            ``-inf`` under every component.

    Example::

        >>> fit_mixture_weights(torch.zeros(5, 2)).exp()  # identical components: any w; EM stays put
        tensor([0.5000, 0.5000], dtype=torch.float64)
    """
    if not torch.is_tensor(log_probs) or log_probs.dim() != 2 or 0 in log_probs.shape:
        raise ValueError(
            f"expected log_probs of shape (N, C) with N, C >= 1, got {log_probs!r:.80}"
        )
    if bool(torch.isnan(log_probs).any()) or bool((log_probs == math.inf).any()):
        raise ValueError("expected log_probs without NaN or +inf entries, got some")
    lp = log_probs.detach().double()
    if not bool(torch.isfinite(lp.max(-1).values).all()):
        raise ValueError("expected every row to have a finite log-density under some component")
    N, C = lp.shape
    log_w = torch.full((C,), -math.log(C), dtype=torch.float64, device=lp.device)
    for _ in range(max_iter):
        log_G = (log_w + lp).logsumexp(-1, keepdim=True)  # (N, 1)
        log_s = (lp - log_G).logsumexp(0) - math.log(N)  # (C,)  log s_k
        s = log_s.exp()
        active = log_w.exp() > tol
        if float(s.max()) - 1 <= tol and bool(((s - 1).abs()[active] <= tol).all()):
            break
        log_w = log_w + log_s
        log_w = log_w - log_w.logsumexp(0)  # exact in theory; removes rounding drift
    return log_w


def golden_section_max(fn: Callable[[float], float], grid: int = 101, tol: float = 1e-8) -> float:
    """Maximize ``fn`` on [0, 1]: the best point of a grid, then golden-section search around it.

    For objectives that need not be concave (a Monte Carlo ELBO in rho): the grid of ``grid``
    points finds the bracket [x_{j-1}, x_{j+1}] around the best grid point x_j, and golden-section
    search shrinks it to width ``tol``; the better of x_j and the final midpoint is returned. Exact
    for functions unimodal on the bracket.

    Args:
        fn: a function of one float in [0, 1].
        grid: grid points, >= 3.
        tol: width of the final bracket, > 0.

    Returns:
        The maximizer found, in [0, 1].

    Raises:
        ValueError: ``grid < 3`` or ``tol <= 0``.

    Example::

        >>> round(golden_section_max(lambda r: -(r - 0.3) ** 2), 6)
        0.3
    """
    if not isinstance(grid, int) or grid < 3:
        raise ValueError(f"expected grid to be an int >= 3, got {grid!r}")
    if not tol > 0:
        raise ValueError(f"expected tol > 0, got {tol!r}")
    xs = [i / (grid - 1) for i in range(grid)]
    values = [fn(x) for x in xs]
    best = max(range(grid), key=values.__getitem__)
    a, b = xs[max(best - 1, 0)], xs[min(best + 1, grid - 1)]
    inv_phi = (math.sqrt(5) - 1) / 2
    c, d = b - inv_phi * (b - a), a + inv_phi * (b - a)
    fc, fd = fn(c), fn(d)
    while b - a > tol:
        if fc > fd:
            b, d, fd = d, c, fc
            c = b - inv_phi * (b - a)
            fc = fn(c)
        else:
            a, c, fc = c, d, fd
            d = a + inv_phi * (b - a)
            fd = fn(d)
    candidates = [(values[best], xs[best]), (fn(0.5 * (a + b)), 0.5 * (a + b))]
    return max(candidates)[1]


def check_clip(clip) -> tuple[float, float]:
    """``clip = (a, b)`` as floats, checked: 0 <= a <= 1 <= b."""
    try:
        lo, hi = (float(c) for c in clip)
    except (TypeError, ValueError):
        raise ValueError(f"expected clip to be a pair (a, b), got {clip!r}") from None
    if not (0 <= lo <= 1 <= hi):
        raise ValueError(f"expected clip bounds 0 <= a <= 1 <= b, got {clip!r}")
    return lo, hi
