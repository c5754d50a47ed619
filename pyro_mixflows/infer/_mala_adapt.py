"""Warm-up adaptation of :class:`~pyro_mixflows.infer.LatentMALA`: the step size by dual
averaging, and (diagonal preconditioner) the latent variance of the batched chains."""

from __future__ import annotations

import math

import torch
from pyro.ops.dual_averaging import DualAveraging


class WarmupAdaptation:
    r"""The warm-up schedule of latent MALA, fed one step at a time.

    Step size: dual averaging (Hoffman & Gelman, 2014, arXiv:1111.4246; Pyro's
    ``DualAveraging``) of the mean acceptance probability :math:`a_t` of the batched chains toward
    the target :math:`\delta`,

    .. math:: \log \gamma_t = \mu - \frac{\sqrt t}{0.05}\, \bar h_t, \qquad
        \bar h_t = \Big(1 - \frac{1}{t + 10}\Big) \bar h_{t-1} + \frac{\delta - a_t}{t + 10},
        \qquad \mu = \log(10 \gamma_0),

    and the weighted average of :math:`\log \gamma_t` (weights :math:`t^{-0.75}`) is the step
    size from the last warm-up step on.

    Diagonal mass (``diagonal=True``): the variance of the chains' states, pooled over the
    warm-up steps in [W/4, 3W/4) with Chan et al.'s update of (count, mean, sum of squares) and
    shrunk toward 1e-3 as Stan does, becomes the mass at step 3W/4 - 1; the step-size adaptation
    then restarts from the current step size.

    Args:
        step_size: the initial step size :math:`\gamma_0` > 0.
        warmup_steps: W.
        target_accept_prob: :math:`\delta` in (0, 1).
        adapt_step_size: adapt :math:`\gamma`; otherwise it stays at ``step_size``.
        diagonal: estimate the diagonal mass.

    Example::

        >>> adapt = WarmupAdaptation(0.1, 100, 0.574, adapt_step_size=True, diagonal=True)
        >>> for t in range(100):
        ...     mass = adapt.update(t, 0.9, torch.randn(8, 2))  # (C, D) states
        ...     if mass is not None:
        ...         print(t, mass.shape)
        74 torch.Size([2])
    """

    def __init__(
        self,
        step_size: float,
        warmup_steps: int,
        target_accept_prob: float,
        *,
        adapt_step_size: bool,
        diagonal: bool,
    ) -> None:
        self.step_size = float(step_size)
        self.warmup_steps = warmup_steps
        self.target_accept_prob = float(target_accept_prob)
        self.adapt_step_size = adapt_step_size
        self.diagonal = diagonal
        self._restart()
        self._pooled: tuple[int, torch.Tensor, torch.Tensor] | None = None

    def _restart(self) -> None:
        self._dual = DualAveraging(prox_center=math.log(10 * self.step_size))
        self._dual_steps = 0

    def update(self, t: int, accept_prob: float | None, z: torch.Tensor) -> torch.Tensor | None:
        """Adapt after warm-up step ``t`` (0-based).

        Args:
            t: the warm-up step just made, 0 <= t < W.
            accept_prob: the mean acceptance probability of its MALA moves, or None when there
                were none (every chain made an independence move).
            z: the chains' states after the step, (C, D).

        Returns:
            The new diagonal mass (D,) at the step where it is set, else None. ``step_size``
            holds the step size to use next.
        """
        W = self.warmup_steps
        if self.adapt_step_size and accept_prob is not None:
            self._dual.step(self.target_accept_prob - accept_prob)
            self._dual_steps += 1
            self.step_size = math.exp(self._dual.get_state()[0])
        mass = None
        if self.diagonal:
            start, stop = int(0.25 * W), int(0.75 * W)
            if start <= t < stop:
                self._pool(z)
            if t == stop - 1 and self._pooled is not None and self._pooled[0] > 1:
                n, _, m2 = self._pooled
                var = m2 / (n - 1)
                # Stan's regularization toward 1e-3, shrinking a noisy variance estimate
                mass = (n / (n + 5.0)) * var + 1e-3 * (5.0 / (n + 5.0))
                self._restart()
        if t == W - 1 and self.adapt_step_size:
            log_step = self._dual.get_state()[1] if self._dual_steps else 0.0
            self.step_size = math.exp(log_step)
        return mass

    def _pool(self, z: torch.Tensor) -> None:
        """Add the states z (C, D) to the pooled (count, mean (D,), sum of squares (D,))."""
        n_b, mean_b = z.shape[0], z.mean(0)
        m2_b = (z - mean_b).square().sum(0)
        if self._pooled is None:
            self._pooled = (n_b, mean_b, m2_b)
            return
        n_a, mean_a, m2_a = self._pooled
        n = n_a + n_b
        delta = mean_b - mean_a
        self._pooled = (n, mean_a + delta * n_b / n, m2_a + m2_b + delta.square() * n_a * n_b / n)
