"""Which fitted candidate the estimator keeps: the best on the held-out rows, never below the
Gaussian start, and on a tie the one with fewer flow parameters."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

# Candidates whose held-out log-likelihood is within this many standard errors of the best
# (paired over the held-out rows) are tied; ``select`` then applies its preference order.
TIE_STANDARD_ERRORS = 2.0


@dataclass
class Candidate:
    """One fitted mixture with its held-out per-row log-densities.

    Attributes:
        start: the start's name.
        capacity: the architecture overrides ({} = the estimator's own, {"num_layers": 0} = the
            Gaussian start itself).
        module: the fitted ``VMoNF``.
        val_log_probs: (n_val,) log p(x) of the held-out rows (standardized units).
        result: its training history (a ``FitResult``; None when not trained).
        steps: training steps it took (pre-training included).
        stop: why its training stopped ("untrained", "patience", "cannot win", "max_steps").
        flow_parameters: the number of flow-layer parameters (0 for a Gaussian).
    """

    start: str
    capacity: dict
    module: object
    val_log_probs: torch.Tensor
    result: object = None
    steps: int = 0
    stop: str = "untrained"
    flow_parameters: int = field(default=0)

    @property
    def gaussian(self) -> bool:
        return self.flow_parameters == 0

    @property
    def validation_log_likelihood(self) -> float:
        """Mean held-out log-density (standardized units); NaN without held-out rows."""
        if self.val_log_probs.numel() == 0:
            return math.nan
        return float(self.val_log_probs.mean())

    def summary(self) -> dict:
        """Plain values: start, capacity, held-out log-likelihood per row, training steps, why it
        stopped, and its held-out curve (evaluation steps and mean log-likelihood per row)."""
        n_val = max(self.val_log_probs.numel(), 1)
        result = self.result
        steps = [] if result is None else [int(s) for s in result.val_steps]
        curve = [] if result is None else [-float(v) / n_val for v in result.val_losses]
        return {
            "start": self.start,
            "capacity": dict(self.capacity),
            "validation_log_likelihood": self.validation_log_likelihood,
            "steps": int(self.steps),
            "stop": self.stop,
            "curve": {"steps": steps, "validation_log_likelihood": curve},
        }


def paired_standard_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """Standard error of the mean of the per-row differences a - b, both (n,)."""
    n = a.numel()
    return float((a - b).std()) / math.sqrt(n) if n > 1 else 0.0


def beats(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether per-row log-densities ``a`` are better than ``b`` beyond a tie: a higher mean by more
    than ``TIE_STANDARD_ERRORS`` paired standard errors."""
    return float((a - b).mean()) > TIE_STANDARD_ERRORS * paired_standard_error(a, b)


def select(candidates: list[Candidate], preference: list[str]) -> Candidate:
    """The candidate to keep, by held-out log-likelihood.

    1. Only candidates at least as good on the held-out rows as the best Gaussian are eligible,
       so the fit is never worse there than the Gaussian mixture it contains.
    2. The best eligible one, and every eligible one that it does not ``beats``, are tied.
    3. Among tied candidates: fewer flow parameters first (a Gaussian before flows), then the
       start that comes first in ``preference``.

    Without held-out rows there is nothing to compare: the first trained candidate is kept
    (the first one when nothing was trained).
    """
    if candidates[0].val_log_probs.numel() == 0:
        trained = [c for c in candidates if c.result is not None]
        return (trained or candidates)[0]
    gaussian = [c.validation_log_likelihood for c in candidates if c.gaussian]
    floor = max(gaussian) if gaussian else -math.inf
    eligible = [c for c in candidates if c.validation_log_likelihood >= floor]
    best = max(eligible, key=lambda c: c.validation_log_likelihood)
    ties = [c for c in eligible if not beats(best.val_log_probs, c.val_log_probs)]

    def rank(c: Candidate):
        order = preference.index(c.start) if c.start in preference else len(preference)
        return (c.flow_parameters, order)

    return min(ties, key=rank)


@torch.no_grad()
def overfit_gap(mixture, x_train: torch.Tensor, x_val: torch.Tensor) -> tuple[float, float]:
    """Training minus held-out mean log-density per row under ``mixture``, and the standard error
    of the held-out mean (NaN, NaN without held-out rows)."""
    if x_val.shape[0] == 0:
        return math.nan, math.nan
    val = mixture.log_prob(x_val)
    se = float(val.std()) / math.sqrt(len(val)) if len(val) > 1 else math.inf
    return float(mixture.log_prob(x_train).mean() - val.mean()), se
