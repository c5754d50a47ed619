"""Variational boosting: a boosted flow mixture fitted to an unnormalized target density.

.. math:: g_c = \\arg\\max_g\\; \\mathbb E_g[\\log \\tilde p(x) - \\log G_{c-1}(x)] + \\lambda\\, \\mathbb H(g)

The mode of :class:`~pyro_mixflows.models.BoostedFlowMixture` behind ``fit_variational``; each
component is trained through :func:`pyro_mixflows.infer.fit` on the objective
:func:`~pyro_mixflows.models._boost_stages.variational_model`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch

from ._boost_stages import variational_model
from ._boost_weights import golden_section_max


class VariationalBoosting:
    """The variational mode of ``BoostedFlowMixture`` (a mixin: it uses the model's stages,
    weights, ``_new_component``, ``_fit``, ``_append``, ``_freeze`` and ``_log_mix``)."""

    def fit_variational(
        self,
        log_density: Callable[[torch.Tensor], torch.Tensor],
        num_components: int = 4,
        *,
        entropy_weight: float = 1.0,
        num_samples: int = 256,
        rho_samples: int = 4096,
        init_loc: torch.Tensor | None = None,
        init_scale: torch.Tensor | None = None,
    ) -> VariationalBoosting:
        """Fit the boosted mixture to an unnormalized target density by variational boosting.

        .. math:: g_c = \\arg\\max_g\\; \\mathbb E_g[\\log \\tilde p(x) - \\log G_{c-1}(x)] + \\lambda\\, \\mathbb H(g)

        Args:
            log_density: log p~(x) up to a constant, (S, D) -> (S,), differentiable.
            num_components: flows to add, C >= 1.
            entropy_weight: lambda > 0 (g_1 always uses 1, the ELBO).
            num_samples: reparameterized draws per step.
            rho_samples: draws from G_{c-1} and from g_c for the rho search.
            init_loc, init_scale: where new components start, shape (D,) each (default 0, 1).

        Returns:
            self.

        Raises:
            ValueError: non-coupling flows (their sampling direction is not analytic in one
                pass), bad counts or bad initial placement.
        """
        if self.component_config["flow"] not in ("affine_coupling", "spline_coupling"):
            raise ValueError(
                "expected an analytically invertible flow ('affine_coupling' or "
                f"'spline_coupling') for the variational mode, got {self.component_config['flow']!r}"
            )
        if not callable(log_density):
            raise ValueError(f"expected a callable log_density, got {type(log_density).__name__}")
        if not isinstance(num_components, int) or num_components < 1:
            raise ValueError(f"expected num_components to be an int >= 1, got {num_components!r}")
        if not entropy_weight > 0:
            raise ValueError(f"expected entropy_weight > 0, got {entropy_weight!r}")
        for name, value in (("num_samples", num_samples), ("rho_samples", rho_samples)):
            if not isinstance(value, int) or value < 2:
                raise ValueError(f"expected {name} to be an int >= 2, got {value!r}")
        dtype = torch.get_default_dtype()
        loc = torch.zeros(self.dim, dtype=dtype) if init_loc is None else torch.as_tensor(init_loc)
        scale = (
            torch.ones(self.dim, dtype=dtype) if init_scale is None else torch.as_tensor(init_scale)
        )
        if loc.shape != (self.dim,) or scale.shape != (self.dim,) or not bool((scale > 0).all()):
            raise ValueError(
                f"expected init_loc and a positive init_scale of shape ({self.dim},), got "
                f"{tuple(loc.shape)} and {tuple(scale.shape)}"
            )
        for _ in range(num_components):
            self._add_variational(
                log_density,
                entropy_weight,
                num_samples,
                rho_samples,
                loc.to(dtype),
                scale.to(dtype),
            )
        return self

    def _add_variational(self, log_density, lam, S, rho_S, loc, scale) -> float:
        start = time.perf_counter()
        c = len(self.stages)
        comp = self._new_component({}, loc)
        comp.set_affine(loc.unsqueeze(0), scale.unsqueeze(0))
        self._freeze()
        log_prev = None if c == 0 else self._log_mix_grad
        model = variational_model(comp, log_density, log_prev, lam, self.dim, loc.dtype)
        result, _ = self._fit(model, (S,), None, self.num_steps, c + 1, batch=False)
        if result.stop_reason == "non-finite loss":
            raise FloatingPointError(
                f"non-finite variational loss for component {c}; lower lr or check log_density"
            )
        gen = self._generator(c + 1)
        if c == 0:
            rho = 1.0
        elif self.rho_mode == "fixed":
            rho = 1.0 / (c + 1)
        else:
            rho = self._variational_rho(comp, log_density, rho_S, gen, loc.dtype)
        self._append(comp, rho)
        self._freeze(True)
        self.history.append(
            {
                "component": c,
                "rho": rho,
                "steps": result.num_steps,
                "seconds": time.perf_counter() - start,
            }
        )
        return rho

    def _log_mix_grad(self, x: torch.Tensor) -> torch.Tensor:
        """log G_{c-1}(x) with gradients flowing to x (frozen parameters): (S, D) -> (S,)."""
        return (self.log_weights.to(x.dtype) + self._stage_log_probs(x)).logsumexp(-1)

    @torch.no_grad()
    def _variational_rho(self, comp, log_density, S, gen, dtype) -> float:
        """Maximize the ELBO of (1 - rho) G + rho g with fixed draws from G and from g."""
        draws_G = self.mixture.sample((S,)).to(dtype)  # (S, D)
        u = torch.randn(S, 1, self.dim, generator=gen, dtype=dtype)
        draws_g = comp.transform(u)[0][:, 0]  # (S, D)
        stats = []
        for x in (draws_G, draws_g):
            stats.append(
                (
                    log_density(x).double(),
                    self._log_mix(x).double(),
                    comp(x)[:, 0].double(),
                )
            )

        def elbo(rho: float) -> float:
            total = 0.0
            for share, (lp, lG, lg) in zip((1 - rho, rho), stats, strict=True):
                if share == 0:
                    continue
                log_mix = torch.logaddexp(
                    (math.log1p(-rho) if rho < 1 else -math.inf) + lG,
                    (math.log(rho) if rho > 0 else -math.inf) + lg,
                )
                total += share * float((lp - log_mix).mean())
            return total

        return golden_section_max(elbo)
