"""After the boosting rounds: exact weights, the second pass and joint fine-tuning.

A mixin of :class:`~pyro_mixflows.models.BoostedFlowMixture` (it uses the model's stages,
weights, ``_split``, ``_train``, ``_fit``, ``_freeze``, ``_log_mix`` and ``_sample_weights``);
every training goes through :func:`pyro_mixflows.infer.fit`.
"""

from __future__ import annotations

import math
import time

import torch

from ._boost_stages import joint_model
from ._boost_weights import fit_mixture_weights, search_rho


class Refinement:
    """``fit_weights``, ``refit`` (the second pass) and ``finetune`` of a boosted mixture."""

    def fit_weights(self, x_val: torch.Tensor) -> Refinement:
        """Set all C weights to the exact maximizer of the log-likelihood of ``x_val``, flows fixed.

        Uses :func:`fit_mixture_weights` whatever ``rho`` is, so a mixture boosted with the fixed
        schedule (``rho="fixed"``: every flow trained against equal weights) can be given exact
        weights at the end.

        Args:
            x_val: held-out data (M, D), M >= 1.

        Returns:
            self.
        """
        self._check_fitted()
        self._set_exact_weights(self._as_data(x_val))
        return self

    def finetune(
        self, x: torch.Tensor, num_steps: int, *, x_val: torch.Tensor | None = None
    ) -> Refinement:
        """Train all components together on the mixture's log-likelihood; keep the best held-out state.

        .. math:: \\max_{\\theta_1..\\theta_C,\\, w}\\; \\sum_i \\log \\sum_c w_c\\, g_c(x_i; \\theta_c)

        Adam (``lr``) on ``batch_size`` minibatches; the weights w are learned too (as logits)
        unless ``rho="fixed"``, and with ``refit_weights`` they are re-fitted exactly on the
        held-out data at the end. The held-out log-likelihood is evaluated every ``eval_every``
        steps and the best state kept (``patience`` stops early).

        Args:
            x: training data (N, D).
            num_steps: optimizer steps, >= 1.
            x_val: held-out data (M, D); default: the ``val_fraction`` split of x.

        Returns:
            self.
        """
        self._check_fitted()
        if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
            raise ValueError(f"expected num_steps to be an int >= 1, got {num_steps!r}")
        x_tr, x_va = self._split(x, x_val)
        self._finetune(x_tr, x_va, num_steps)
        return self

    def refit(self, x: torch.Tensor, *, x_val: torch.Tensor | None = None) -> Refinement:
        """Second pass: re-train each component against the mixture of the others, re-weight it.

        For component c, ``G_{-c} = (G - w_c g_c) / (1 - w_c)``; g_c is trained further on the
        round's objective against G_{-c} (the mixture ``(1 - rho) G_{-c} + rho g_c`` from
        rho = w_c, the weights ∝ 1 / G_{-c}(x_i), or the plain likelihood), others frozen, and its
        share rho searched again, giving weights ``(1 - rho) w_j / (1 - w_c)`` for j != c and
        ``rho`` for c.
        """
        self._check_fitted()
        x_tr, x_va = self._split(x, x_val)
        self._refit(x_tr, x_va)
        return self

    @torch.no_grad()
    def _refit_weights(self, x_va: torch.Tensor) -> None:
        """Exact re-fit of all weights on held-out data (``rho="search"`` only)."""
        if self.rho_mode != "search" or len(self.stages) < 2:
            return
        self._set_exact_weights(x_va)

    @torch.no_grad()
    def _set_exact_weights(self, x_va: torch.Tensor) -> None:
        """All C weights = the exact maximizer of the log-likelihood of x_va, flows fixed."""
        self.log_weights = fit_mixture_weights(self._stage_log_probs(x_va)).to(
            self.log_weights.dtype
        )

    def _finetune(self, x_tr, x_va, num_steps: int) -> None:
        """Joint training of all components (and the weights, unless rho is fixed)."""
        start = time.perf_counter()
        self._freeze(True)
        learn_w = self.rho_mode == "search" and len(self.stages) > 1
        logits0 = self.log_weights.clamp(min=-30.0).to(x_tr.dtype)
        result, params = self._fit(
            joint_model(self.stages, logits0, learn_w), (x_tr,), (x_va,), num_steps, 900
        )
        if learn_w:
            with torch.no_grad():
                self.log_weights = params["logits"].log_softmax(0).to(self.log_weights.dtype)
        if self.refit_weights:
            self._refit_weights(x_va)
        self.history.append(
            {
                "finetune": True,
                "steps": result.num_steps,
                "val_log_likelihood": float(self._log_mix(x_va).mean()),
                "seconds": time.perf_counter() - start,
            }
        )

    def _refit(self, x_tr, x_va) -> None:
        for c in range(len(self.stages)):
            w_c = float(self.log_weights[c].exp())
            if len(self.stages) < 2 or w_c >= 1.0:
                continue
            start = time.perf_counter()
            self._freeze()
            comp = self.stages[c]
            for p in comp.parameters():
                p.requires_grad_(True)
            lG_tr, lG_va = self._log_mix(x_tr, exclude=c), self._log_mix(x_va, exclude=c)
            w_tr, w_va = self._sample_weights(lG_tr), self._sample_weights(lG_va)
            mix = (lG_tr, lG_va, w_c) if self.objective == "mixture" else None
            info = self._train(comp, x_tr, w_tr, x_va, w_va, 100 + c, mix)
            self._freeze(True)
            with torch.no_grad():
                if self.rho_mode == "fixed":
                    rho = w_c
                else:
                    rho = search_rho(self._log_mix(x_va, exclude=c), comp(x_va)[:, 0])
                keep = [j for j in range(len(self.stages)) if j != c]
                lw = self.log_weights.clone()
                lw[keep] = (
                    lw[keep] - math.log1p(-w_c) + (math.log1p(-rho) if rho < 1 else -math.inf)
                )
                lw[c] = math.log(rho) if rho > 0 else -math.inf
                self.log_weights = lw
            info.update(
                component=c,
                rho=rho,
                refit=True,
                val_log_likelihood=float(self._log_mix(x_va).mean()),
                seconds=time.perf_counter() - start,
            )
            self.history.append(info)
        if self.refit_weights:
            self._refit_weights(x_va)
