"""One boosting round: a new flow trained against the frozen mixture, then given its weight.

A mixin of :class:`~pyro_mixflows.models.BoostedFlowMixture` (it uses the model's settings,
stages, weights, ``_generator`` and, through ``_fit``, :func:`pyro_mixflows.infer.fit`). A round
(``_add``) starts the new flow (``init``), trains it on the round's objective (``objective``,
``_train``), searches its share rho (``rho``) and appends it:

.. math:: G_c = (1 - \\rho_c)\\, G_{c-1} + \\rho_c\\, g_c.
"""

from __future__ import annotations

import math
import time

import torch

from ..flows.components import FlowComponents
from ._boost_stages import (
    best_gaussian_to_add,
    fit_stage,
    gaussian_candidates,
    mixture_model,
    weighted_model,
)
from ._boost_weights import boosting_weights, search_rho


class BoostingRounds:
    """The rounds of ``BoostedFlowMixture``: ``_add`` and what it calls."""

    def _round_steps(self, num_components: int) -> list[int]:
        """Steps of each of the next ``num_components`` rounds of ``fit``: C * num_steps in all.

        From an empty model with C >= 2 and ``first_share`` set, the first flow gets
        ``first_share`` of the budget ``C * num_steps`` and the later rounds share the rest
        equally (the remainder of the division goes to the first); otherwise every round gets
        ``num_steps``.
        """
        C, S = num_components, self.num_steps
        if len(self.stages) or C == 1 or self.first_share is None:
            return [S] * C
        total = C * S
        later = max(1, round((1 - self.first_share) * total / (C - 1)))
        return [total - later * (C - 1), *[later] * (C - 1)]

    def _new_component(self, config: dict, like: torch.Tensor) -> FlowComponents:
        cfg = {**self.component_config, **config}
        c = len(self.stages)
        if self.seed is None:
            comp = FlowComponents(1, self.dim, **cfg)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed * 1000 + c)
                comp = FlowComponents(1, self.dim, **cfg)
        return comp.to(dtype=like.dtype, device=like.device)

    def _stage_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """log g_c(x) of every component: (N, D) -> (N, C)."""
        return torch.cat([s(x) for s in self.stages], -1)

    @torch.no_grad()
    def _log_mix(self, x: torch.Tensor, exclude: int | None = None) -> torch.Tensor:
        """log of the mixture (renormalized without component ``exclude``) at x (N, D) -> (N,)."""
        log_w = self.log_weights.to(x.dtype)
        lp = self._stage_log_probs(x)  # (N, C)
        if exclude is not None:
            keep = [j for j in range(len(self.stages)) if j != exclude]
            log_w, lp = log_w[keep], lp[:, keep]
            log_w = log_w - log_w.logsumexp(0)
        return (log_w + lp).logsumexp(-1)

    def _fit(self, model, args, val_args, num_steps: int, index: int, batch=True, carry=None):
        """``fit_stage`` with this model's optimizer settings; seeded by ``seed`` and ``index``."""
        return fit_stage(
            model, args, val_args, num_steps=num_steps, lr=self.lr, batch_size=self.batch_size,
            eval_every=self.eval_every, patience=self.patience, batch=batch, carry=carry,
            seed=None if self.seed is None else self.seed * 1000 + index,
            schedule=self.lr_schedule,
        )  # fmt: skip

    def _train(
        self, comp, x_tr, w_tr, x_va, w_va, index: int, mix=None, carry=None, num_steps=None
    ) -> dict:
        """Train comp's parameters only; keep the best held-out state.

        Without ``mix``: maximize sum_i w_i log g(x_i). With ``mix = (log G(x_tr), log G(x_va),
        rho0)``: maximize sum_i log((1 - rho) G(x_i) + rho g(x_i)), rho = sigmoid(a) learned from
        rho0 unless ``rho="fixed"`` or ``train_rho="fixed"``. ``num_steps``: the round's steps
        (None: ``self.num_steps``).
        """
        num_steps = self.num_steps if num_steps is None else num_steps
        if mix is None:
            resample = self.weighting == "resample"
            model = weighted_model(comp, resample, min(self.batch_size, x_tr.shape[0]))
            result, _ = self._fit(
                model, (x_tr, w_tr, resample), (x_va, w_va, False), num_steps, index + 1,
                batch=not resample, carry=carry,
            )  # fmt: skip
            return {"steps": result.num_steps, "val_objective": -result.best_loss}
        lG_tr, lG_va, rho0 = mix
        rho0 = min(max(rho0, 1e-4), 1 - 1e-4)
        learned = self.rho_mode == "search" and self.train_rho == "learned"
        model = mixture_model(comp, math.log(rho0 / (1 - rho0)), learned)
        floor = torch.finfo(x_tr.dtype).min / 4  # log G = -inf would fail fit's finite check
        result, params = self._fit(
            model, (x_tr, lG_tr.clamp(min=floor)), (x_va, lG_va.clamp(min=floor)),
            num_steps, index + 1, carry=carry,
        )  # fmt: skip
        a = float(params["rho_logit"]) if learned else math.log(rho0 / (1 - rho0))
        return {
            "steps": result.num_steps,
            "val_objective": -result.best_loss,
            "rho_trained": 1 / (1 + math.exp(-a)),
        }

    def _candidates(self, x_tr: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``gaussian_candidates`` of x_tr, cached for the last training set (independent of G)."""
        cache = getattr(self, "_candidate_cache", None)
        if cache is not None and cache[0].shape == x_tr.shape and torch.equal(cache[0], x_tr):
            return cache[1]
        out = gaussian_candidates(x_tr, self.num_candidates, self._generator(500))
        self._candidate_cache = (x_tr, out)
        return out

    def _greedy_start(self, x_tr: torch.Tensor, log_prev: torch.Tensor, c: int):
        """``best_gaussian_to_add`` among the candidates: ``(loc (D,), scale (D,), rho)``."""
        return best_gaussian_to_add(x_tr, log_prev, self._candidates(x_tr), 1.0 / (c + 1))

    def _freeze(self, requires_grad: bool = False) -> None:
        """Freeze (or, with True, release) every fitted component's parameters."""
        for p in self.stages.parameters():
            p.requires_grad_(requires_grad)

    def _sample_weights(self, log_prev: torch.Tensor) -> torch.Tensor:
        """The rows' weights in a round's loss: ∝ 1 / G (``"weighted"``), else all one."""
        if self.objective == "weighted":
            return boosting_weights(log_prev, self.weight_clip)
        return torch.ones_like(log_prev)

    def _add(self, x_tr, x_va, comp, config, num_steps: int | None = None) -> float:
        start = time.perf_counter()
        c = len(self.stages)
        self._freeze()
        mix, carry = None, {}
        if c == 0:
            w_tr = torch.ones(x_tr.shape[0], dtype=x_tr.dtype)
            w_va = torch.ones(x_va.shape[0], dtype=x_va.dtype)
        else:
            lG_tr, lG_va = self._log_mix(x_tr), self._log_mix(x_va)
            w_tr, w_va = self._sample_weights(lG_tr), self._sample_weights(lG_va)
        rho0 = 1.0 / (c + 1)
        if comp is None:
            comp = self._new_component(config, x_tr)
            previous = self.stages[-1] if c else None
            if c and self.init == "greedy":
                loc, scale, rho_g = self._greedy_start(x_tr, lG_tr, c)
                comp.set_affine(loc.unsqueeze(0), scale.unsqueeze(0))
                if self.rho_mode == "search" and self.train_rho == "learned":
                    rho0 = rho_g
            elif (
                self.init == "previous"
                and isinstance(previous, FlowComponents)
                and previous.config == comp.config
            ):
                comp.load_state_dict(previous.state_dict())  # a copy: the frozen one is untouched
                carry = dict(getattr(self, "_round_state", {}))  # and its Adam moments
            else:  # the weighted data's mean and standard deviation
                p = (w_tr / w_tr.sum()).unsqueeze(-1)  # (N, 1)
                mean = (p * x_tr).sum(0)
                std = (p * (x_tr - mean).square()).sum(0).sqrt().clamp(min=1e-6)
                comp.set_affine(mean.unsqueeze(0), std.unsqueeze(0))
        else:
            comp = comp.to(dtype=x_tr.dtype, device=x_tr.device)
        if c and self.objective == "mixture":
            mix = (lG_tr, lG_va, rho0)
        info = self._train(comp, x_tr, w_tr, x_va, w_va, c, mix, carry, num_steps)
        self._round_state = carry  # the Adam state a warm-started next round continues
        with torch.no_grad():
            if c == 0:
                rho = 1.0
            elif self.rho_mode == "fixed":
                rho = 1.0 / (c + 1)
            else:
                rho = search_rho(lG_va, comp(x_va)[:, 0])
        self._append(comp, rho)
        self._freeze(True)
        if self.refit_weights:
            self._refit_weights(x_va)
        info.update(
            component=c,
            rho=rho,
            val_log_likelihood=float(self._log_mix(x_va).mean()),
            seconds=time.perf_counter() - start,
        )
        self.history.append(info)
        return rho

    def _append(self, comp, rho: float) -> None:
        with torch.no_grad():
            lw = self.log_weights
            new = torch.tensor([math.log(rho) if rho > 0 else -math.inf], dtype=lw.dtype)
            old = lw + (math.log1p(-rho) if rho < 1 else -math.inf)
            self.log_weights = torch.cat([old, new])
        self.stages.append(comp)
        self.rhos.append(rho)
