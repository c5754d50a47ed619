"""Latent-space MALA for trained flows: a Pyro MCMC kernel whose state lives in the base space.

A flow x = f(z), z ~ q_Z, places samples on low-density "bridges" between modes, where
|det J_f| is large. Running Metropolis-adjusted Langevin in the latent space on a target π(z)
and pushing the chain through f removes most of them (Coeurdoux, Dobigeon & Chainais,
"Normalizing flow sampling with Langevin dynamics in the latent space", 2023, arXiv:2305.12149).
"""

from __future__ import annotations

import contextvars
import math
import warnings
from collections import OrderedDict
from collections.abc import Callable

import pyro
import pyro.distributions as dist
import torch
from pyro.infer.mcmc.mcmc_kernel import MCMCKernel

from . import _langevin
from ._latent_flows import LatentFlows
from ._mala_adapt import WarmupAdaptation
from ._mala_target import TARGETS, UnnormalizedTarget, component_log_targets

PRECONDITIONERS = ("identity", "diagonal", "metric")
_PAPER = contextvars.ContextVar("latent_mala_paper", default=False)  # set by LatentMALA.paper
_MAX_ENERGY_ERROR = 1000.0  # as Pyro's HMC: a proposal this far below the current state diverged


class LatentMALA(MCMCKernel):
    r"""Metropolis-adjusted Langevin in the latent space of a trained flow (or flow mixture).

    The chain moves z in the flow's base space and reports x = f(z). Per step, with
    preconditioner M(z) and step size γ,

    .. math::
        z' = z + \gamma M(z) \nabla \log \pi(z) + \sqrt{2\gamma}\, M(z)^{1/2} \xi, \quad
        \xi \sim \mathcal{N}(0, I),

    accepted with probability
    :math:`\min\{1, \pi(z') q(z \mid z') / (\pi(z) q(z' \mid z))\}`, where
    :math:`q(z' \mid z) = \mathcal{N}(z'; z + \gamma M(z) \nabla \log \pi(z), 2\gamma M(z))`.
    With the position-dependent metric the two :math:`-\tfrac12 \log\det M` terms do not cancel
    and are kept.

    Defaults: ``target="sharpened"`` with ``beta=2`` and ``independence_prob=0.5``: the
    independence moves carry every chain across modes and the sharpened target empties the
    low-density bridges between them, at the price of sharpening: it samples q_X^2, not q_X. The
    paper's scheme (tempered target, MALA moves only) is :meth:`paper`; its chains stay in the
    mode they start in on multimodal flows, and its tempered target shifts mode weights. For exact draws of a density
    of yours use ``target="explicit"`` (with independence moves); for exact draws of the flow
    itself, naive sampling.

    Targets, in terms of the base density q_Z and log|det J_f(z)|:

    - ``"tempered"`` (the paper's): :math:`\pi(z) \propto q_Z(z) / |\det J_f(z)| = q_X(f(z))`.
      It favours latent points that the flow does not stretch, which cuts the low-density
      "bridge" samples; it is *not* q_X in data space (its x-marginal is
      :math:`q_X(x) |\det J_{f^{-1}}(x)| = q_X(x)^2 / q_Z(f^{-1}(x))`, normalized), so mode
      weights may shift, by how much depends on where the flow puts each mode in latent space.
    - ``"sharpened"``: :math:`\pi(z) \propto q_X(f(z))^\beta |\det J_f(z)|
      = q_Z(z)^\beta / |\det J_f(z)|^{\beta - 1}`, whose x-marginal is exactly
      :math:`q_X^\beta` (normalized): the flow's density raised to the power ``beta`` > 1, which
      empties the low-density bridges between modes whatever the parameterization. Separated
      modes of the same shape keep their relative weights only when these are equal: in general
      weight w_k becomes about :math:`w_k^\beta / \sum_j w_j^\beta`. ``beta=1`` is ``"base"``.
    - ``"base"``: :math:`\pi = q_Z`; reproduces naive sampling x = f(z), z ~ q_Z.
    - ``"explicit"``: :math:`\pi(z) \propto p_X(f(z)) |\det J_f(z)|` for a user log-density
      ``log_prob_fn`` (NeuTra-style): the x-marginal is exactly p_X, and the flow only
      reshapes the geometry.

    Preconditioners: ``"identity"``; ``"diagonal"`` (the latent variance, estimated over the
    batched chains between 25% and 75% of warm-up, then step-size adaptation restarts); and
    ``"metric"``, the pull-back metric :math:`M(z) = (J_f^\top J_f)^{-1}` (a simplified
    manifold MALA: drift :math:`\gamma M \nabla\log\pi`, noise :math:`J_f^{-1}\xi`), which
    costs D backward passes and a D x D solve per step: meant for small D.

    Step size: dual averaging (Hoffman & Gelman, 2014, arXiv:1111.4246) of the mean acceptance
    probability over the batched chains toward ``target_accept_prob``, during warm-up only; the
    averaged step size is frozen afterwards.

    Mixtures: for a ``FlowMixture`` the state is (z, c), with every component sharing the latent
    space. The joint target is :math:`\pi(z, c) \propto w_c\, t_c(z)` with t_c the chosen target
    of component c; each step first draws c from its exact conditional
    :math:`p(c \mid z) \propto w_c t_c(z)` (a Gibbs step, so chains move between components
    at every step), then makes a MALA move of z inside component c. For ``"base"`` this is
    naive mixture sampling; for ``"explicit"`` each component's t_c integrates to the same
    constant, so x is distributed exactly as p_X. The Pyro ``model`` holds the marginal
    :math:`\log \sum_c w_c t_c(z)`.

    Independence moves: with ``independence_prob`` = p > 0, each step of each chain is, with
    probability p (drawn independently of the state, so the mixture of the two kernels keeps
    π invariant), an independence Metropolis-Hastings move instead of a MALA move: z' ~ q_Z,
    the flow's own base, accepted with probability
    :math:`\min\{1, [\pi(z') / q_Z(z')] / [\pi(z) / q_Z(z)]\}` (for a mixture, π is the
    marginal over c, and c is then redrawn from p(c | z')). Local Langevin moves in latent space
    cannot cross the stretched boundaries between modes that a bridge-cutting target creates;
    these global moves do, so every chain visits every mode with its target weight (R-hat and
    ESS across chains are then meaningful). For the ``"base"`` target they are always accepted;
    for ``"tempered"`` the ratio is :math:`|\det J_f(z)| / |\det J_f(z')|`. Step-size
    adaptation and the "acceptance rate" use the MALA moves only.

    Divergences: a MALA move diverges when its log acceptance ratio is not finite (the proposal,
    its density or its gradient overflowed) or below -1000, Pyro HMC's threshold on the energy
    error. It is rejected like any other move (the chain stays where it is, so the draws keep
    their target), but it says that the step size is too large for the local geometry, typically
    where the flow stretches the latent space (large changes of log|det J_f| near the boundaries
    between modes). ``diagnostics()["divergences"]`` lists the post-warm-up draw indices at which
    at least one of the batched chains diverged (what ``arviz.from_pyro`` reads as
    ``sample_stats.diverging``); independence moves are never counted.

    Batched chains: ``num_chains_batched=C`` runs C chains as one (C, D) tensor (the fast
    path; :meth:`run_chains` returns (C, S, D)). Pyro's ``MCMC(..., num_chains=n)`` also works,
    each of its chains holding C batched chains (site shape (C, D)), or (D,) when
    ``num_chains_batched=None``.

    Args:
        flow: a ``FlowMixture``, a ``FlowComponents`` with K = 1, or a Pyro/torch
            ``TransformedDistribution`` with event shape (D,).
        target: "sharpened" (default), "tempered", "base" or "explicit".
        log_prob_fn: for ``target="explicit"``, an unnormalized log p_X: (..., D) -> (...).
        beta: the power of the ``"sharpened"`` target, > 0 (ignored by the other targets).
        preconditioner: "identity", "diagonal" or "metric".
        step_size: initial (or, without adaptation, fixed) step size γ > 0.
        adapt_step_size: adapt γ during warm-up.
        target_accept_prob: acceptance rate the adaptation aims at (0.574 is optimal for MALA).
        independence_prob: probability in [0, 1), per step and chain, of an independence move
            from the flow's base instead of a MALA move (default 0.5; 0 = MALA only, the paper's
            scheme, which warns for targets other than "base": local moves do not cross modes).
        num_chains_batched: C chains in one tensor, or None for a single unbatched chain.
        return_latent: also save "z" (and, for a mixture, "component") in MCMC samples.
            :meth:`run_chains` returns "component" as int64. Pyro's ``MCMC`` stores every site
            of a draw in one float tensor, and its ``diagnostics()`` (which ``arviz.from_pyro``
            calls) fails on integer sites, so there "component" holds whole numbers in floating
            point: use ``samples["component"].long()`` before ``np.bincount``.

    Raises:
        ValueError: an unknown target/preconditioner, a missing or superfluous
            ``log_prob_fn``, a non-positive step size or ``beta``, an ``independence_prob``
            outside [0, 1) or a bad ``num_chains_batched``.

    Example::

        >>> comps = FlowComponents(1, 2, flow="affine_coupling")
        >>> kernel = LatentMALA(comps, num_chains_batched=4)
        >>> out = kernel.run_chains(10, warmup_steps=10)
        >>> out["x"].shape
        torch.Size([4, 10, 2])
    """

    def __init__(
        self,
        flow,
        *,
        target: str = "sharpened",
        log_prob_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        beta: float = 2.0,
        preconditioner: str = "identity",
        step_size: float = 0.1,
        adapt_step_size: bool = True,
        target_accept_prob: float = 0.574,
        independence_prob: float = 0.5,
        num_chains_batched: int | None = None,
        return_latent: bool = False,
    ) -> None:
        if target not in TARGETS:
            raise ValueError(f"expected target in {TARGETS}, got {target!r}")
        if preconditioner not in PRECONDITIONERS:
            raise ValueError(
                f"expected preconditioner in {PRECONDITIONERS}, got {preconditioner!r}"
            )
        if (target == "explicit") != (log_prob_fn is not None):
            raise ValueError(
                "expected log_prob_fn exactly when target='explicit', got "
                f"target={target!r} and log_prob_fn={'set' if log_prob_fn else 'None'}"
            )
        if not isinstance(beta, (int, float)) or not beta > 0:
            raise ValueError(f"expected a positive beta, got {beta!r}")
        if not isinstance(independence_prob, (int, float)) or not 0.0 <= independence_prob < 1.0:
            raise ValueError(f"expected independence_prob in [0, 1), got {independence_prob!r}")
        if not isinstance(step_size, (int, float)) or not step_size > 0:
            raise ValueError(f"expected a positive step_size, got {step_size!r}")
        if not 0.0 < float(target_accept_prob) < 1.0:
            raise ValueError(f"expected target_accept_prob in (0, 1), got {target_accept_prob!r}")
        if num_chains_batched is not None and (
            not isinstance(num_chains_batched, int) or num_chains_batched < 1
        ):
            raise ValueError(
                f"expected num_chains_batched None or >= 1, got {num_chains_batched!r}"
            )
        self.flows = LatentFlows(flow)
        self.target = target
        self.log_prob_fn = log_prob_fn
        self.beta = float(beta)
        self.independence_prob = float(independence_prob)
        self.preconditioner = preconditioner
        self.init_step_size = float(step_size)
        self.adapt_step_size = adapt_step_size
        self.target_accept_prob = float(target_accept_prob)
        self.num_chains_batched = num_chains_batched
        self.return_latent = return_latent
        self.transforms: dict = {}  # the "z" site is unconstrained: MCMC needs no transform
        names = ["x"]
        if return_latent:
            names += ["z"] + (["component"] if self.flows.num_components > 1 else [])
        self.save_params = sorted(names)
        self._initial_params = None
        self._reset(0)
        super().__init__()
        if self.independence_prob == 0 and target != "base" and not _PAPER.get():
            warnings.warn(
                f"LatentMALA(target={target!r}, independence_prob=0): MALA moves alone do not "
                "cross the low-density regions between modes, so each chain keeps to the mode "
                "it starts in and R-hat across chains is not meaningful on a multimodal flow; "
                "set independence_prob > 0 (the default is 0.5) unless the flow is unimodal, or "
                "use LatentMALA.paper(...) for the paper's scheme on purpose",
                UserWarning,
                stacklevel=2,
            )

    @classmethod
    def paper(cls, flow, **options) -> LatentMALA:
        """The paper's scheme by name: ``target="tempered"``, MALA moves only
        (``independence_prob=0``), without the warning that this combination gives otherwise.

        Other keyword arguments are passed on (``preconditioner``, ``num_chains_batched``, ...).
        """
        for name in ("target", "independence_prob"):
            if name in options:
                raise ValueError(
                    f"expected no {name!r} for LatentMALA.paper, got {options[name]!r}"
                )
        token = _PAPER.set(True)
        try:
            return cls(flow, target="tempered", independence_prob=0.0, **options)
        finally:
            _PAPER.reset(token)

    # --- the target ---------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.flows.dim

    def _site_shape(self) -> torch.Size:
        C = self.num_chains_batched
        return torch.Size([self.dim] if C is None else [C, self.dim])

    def _component_log_targets(self, zK: torch.Tensor):
        """log t_k(z) for every component: zK (..., K, D) -> (log t (..., K), x (..., K, D), log|det J| (..., K))."""
        return component_log_targets(self.flows, zK, self.target, self.beta, self.log_prob_fn)

    def log_target(self, z: torch.Tensor) -> torch.Tensor:
        """Unnormalized log π(z), summed over components for a mixture: (..., D) -> (...)."""
        zK = z.unsqueeze(-2).expand(*z.shape[:-1], self.flows.num_components, self.dim)
        lt, _, _ = self._component_log_targets(zK)
        return (self.flows.log_weights + lt).logsumexp(-1)

    def model(self, *args, **kwargs) -> None:
        """A Pyro model over the latent site "z" whose density is π(z) (used by ArviZ and NUTS).

        π(z) is the distribution of the site itself, not a ``pyro.factor``: the model has no
        observed site, so ``az.from_pyro`` writes no ``log_likelihood`` or ``observed_data``
        group (there is no data whose LOO would mean anything).
        """
        shape = self._site_shape()
        zeros = torch.zeros(shape, dtype=self.flows.dtype, device=self.flows.device)
        pyro.sample("z", UnnormalizedTarget(self.log_target, zeros))

    # --- evaluation at a state and the Langevin proposal (see _langevin) ------------------
    def _evaluate(self, z: torch.Tensor) -> dict:
        """log t_k, its gradient, x and (metric) the Jacobian at z (C, D), for every k."""
        metric = self.preconditioner == "metric"
        return _langevin.evaluate(self._component_log_targets, z, self.flows.num_components, metric)

    _gather = staticmethod(_langevin.gather)
    _at = staticmethod(_langevin.at_component)

    def _metric_or_mass(self) -> torch.Tensor | None:
        """The diagonal mass (D,), or None for the pull-back metric."""
        return None if self.preconditioner == "metric" else self._mass

    def _propose(self, s: dict, step_size: float) -> torch.Tensor:
        return _langevin.propose(s, step_size, self._metric_or_mass())

    def _log_accept_ratio(self, s: dict, s_new: dict, step_size: float) -> torch.Tensor:
        """log [π(z') q(z | z')] - log [π(z) q(z' | z)] for states at the same component: (C,)."""
        return _langevin.log_accept_ratio(s, s_new, step_size, self._metric_or_mass())

    # --- Pyro's MCMCKernel interface ---------------------------------------------------------
    def _reset(self, warmup_steps: int) -> None:
        self._warmup_steps = warmup_steps
        self._t = 0
        self._step_size = self.init_step_size
        self._mass = None
        self._state = None
        self._component = None
        self._returned = None
        self._divergences: list[int] = []
        self._accept_sum = 0.0
        self._accept_count = 0
        self._indep_accept_sum = 0.0
        self._indep_count = 0
        self._accept_prob_mean = 0.0
        self._accept_prob_n = 0
        self._adaptation = WarmupAdaptation(
            self.init_step_size,
            warmup_steps,
            self.target_accept_prob,
            adapt_step_size=self.adapt_step_size,
            diagonal=self.preconditioner == "diagonal",
        )

    def setup(self, warmup_steps: int, *args, **kwargs) -> None:
        initial = self._initial_params
        self._reset(warmup_steps)
        dt, dev = self.flows.dtype, self.flows.device
        self._mass = torch.ones(self.dim, dtype=dt, device=dev)
        C = self.num_chains_batched or 1
        if initial is None:
            z = self.flows.sample_base(torch.Size([C]))
        else:
            z = torch.as_tensor(initial["z"], dtype=dt, device=dev).reshape(C, self.dim)
        self._set_state(z)
        self._initial_params = self._output()

    def _set_state(self, z: torch.Tensor) -> None:
        self._state = self._evaluate(z)
        K = self.flows.num_components
        logits = self.flows.log_weights + self._state["lt"]
        self._component = (
            dist.Categorical(logits=logits).sample() if K > 1 else z.new_zeros(z.shape[0]).long()
        )

    @property
    def initial_params(self) -> dict:
        return self._initial_params

    @initial_params.setter
    def initial_params(self, params: dict) -> None:
        self._initial_params = params

    def _output(self) -> dict:
        shape = self._site_shape()
        x = self._gather(self._state["x"], self._component)
        out = {"x": x.reshape(shape), "z": self._state["z"].reshape(shape)}
        if self.flows.num_components > 1:
            out["component"] = self._component.reshape(shape[:-1])
        self._returned = out["z"]
        return out

    def _log_importance(self, ev: dict) -> torch.Tensor:
        """log π(z) - log q_Z(z) of the marginal target, for independence moves: (C,)."""
        K = self.flows.num_components
        zK = ev["z"].unsqueeze(-2).expand(ev["z"].shape[0], K, self.dim)
        log_base = self.flows.base_log_prob(zK)[..., 0]  # every component shares q_Z
        return (self.flows.log_weights + ev["lt"]).logsumexp(-1) - log_base

    def sample(self, params: dict) -> dict:
        if params.get("z") is not self._returned:  # a state set from outside: re-evaluate
            C = self.num_chains_batched or 1
            self._set_state(torch.as_tensor(params["z"]).reshape(C, self.dim).detach())
        ev, K = self._state, self.flows.num_components
        if K > 1:  # Gibbs step for the component given z
            self._component = dist.Categorical(logits=self.flows.log_weights + ev["lt"]).sample()
        c = self._component
        s = self._at(ev, c)
        step_size = self._step_size
        z_new = self._propose(s, step_size)  # (C, D)
        C = z_new.shape[0]
        # Per chain, with probability independence_prob: an independence proposal z' ~ q_Z.
        indep = torch.zeros(C, dtype=torch.bool, device=z_new.device)
        if self.independence_prob > 0:
            indep = torch.rand(C, device=z_new.device) < self.independence_prob  # (C,)
            z_new = torch.where(indep.unsqueeze(-1), self.flows.sample_base(torch.Size([C])), z_new)
        ev_new = self._evaluate(z_new)
        s_new = self._at(ev_new, c)
        log_ratio = self._log_accept_ratio(s, s_new, step_size)
        if self.independence_prob > 0:
            log_ratio = torch.where(
                indep, self._log_importance(ev_new) - self._log_importance(ev), log_ratio
            )
        finite = torch.isfinite(log_ratio) & torch.isfinite(s_new["grad"]).all(-1)
        finite &= ~indep | torch.isfinite(ev_new["grad"]).flatten(1).all(-1)
        log_ratio = torch.where(finite, log_ratio, torch.full_like(log_ratio, -math.inf))
        accept_prob = log_ratio.clamp(max=0.0).exp()  # (C,)
        accept = torch.rand_like(accept_prob) < accept_prob
        self._state = {
            k: torch.where(accept.view(-1, *([1] * (v.dim() - 1))), ev_new[k], v)
            for k, v in ev.items()
        }
        if K > 1 and bool((indep & accept).any()):  # c | z' for chains that jumped
            c_new = dist.Categorical(logits=self.flows.log_weights + ev_new["lt"]).sample()
            self._component = torch.where(indep & accept, c_new, c)
        local = ~indep
        n_local, n_indep = int(local.sum()), C - int(local.sum())
        mean_accept = float(accept_prob[local].mean()) if n_local else None
        diverged = bool((local & ((~finite) | (log_ratio < -_MAX_ENERGY_ERROR))).any())

        warm = self._t < self._warmup_steps
        if warm:
            self._adapt(mean_accept)
        else:
            n = self._t - self._warmup_steps
            if diverged:
                self._divergences.append(n)
            if n_local:
                self._accept_sum += float(accept[local].double().sum())
                self._accept_count += n_local
            if n_indep:
                self._indep_accept_sum += float(accept[indep].double().sum())
                self._indep_count += n_indep
        self._t += 1
        if mean_accept is not None:
            self._accept_prob_n += 1
            n = self._accept_prob_n
            self._accept_prob_mean += (mean_accept - self._accept_prob_mean) / n
        if self._t == self._warmup_steps:  # the progress bar shows post-warm-up means
            self._accept_prob_mean, self._accept_prob_n = 0.0, 0
        return self._output()

    def _adapt(self, accept_prob: float | None) -> None:
        mass = self._adaptation.update(self._t, accept_prob, self._state["z"])
        if mass is not None:
            self._mass = mass
        self._step_size = self._adaptation.step_size

    def cleanup(self) -> None:
        self._initial_params = None

    @property
    def step_size(self) -> float:
        """The current step size γ (frozen after warm-up)."""
        return self._step_size

    def logging(self) -> OrderedDict:
        return OrderedDict(
            [
                ("step size", f"{self._step_size:.2e}"),
                ("acc. prob", f"{self._accept_prob_mean:.3f}"),
            ]
        )

    def diagnostics(self) -> dict:
        """ "divergences": post-warm-up draw indices where a batched chain diverged (MALA moves);
        "acceptance rate" of the MALA moves; "independence acceptance rate" when they are on."""
        out = {
            "divergences": list(self._divergences),
            "acceptance rate": self._accept_sum / max(self._accept_count, 1),
            "step size": self._step_size,
        }
        if self.independence_prob > 0:
            out["independence acceptance rate"] = self._indep_accept_sum / max(self._indep_count, 1)
        return out

    # --- the fast path -----------------------------------------------------------------------
    @torch.no_grad()
    def run_chains(self, num_samples: int, warmup_steps: int | None = None) -> dict:
        """Run the batched chains without Pyro's driver.

        Args:
            num_samples: draws kept per chain after warm-up.
            warmup_steps: adaptation steps (default ``num_samples``).

        Returns:
            dict with "x" and "z" of shape (C, S, D) and, for a mixture, "component" (C, S);
            C = 1 when ``num_chains_batched`` is None.
        """
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"expected num_samples >= 1, got {num_samples!r}")
        warmup_steps = num_samples if warmup_steps is None else warmup_steps
        self.setup(warmup_steps)
        params = self.initial_params
        keep = []
        for i in range(warmup_steps + num_samples):
            params = self.sample(params)
            if i >= warmup_steps:
                keep.append(params)
        C = self.num_chains_batched or 1
        out = {}
        for k in keep[0]:
            draws = torch.stack([p[k] for p in keep], 0)  # (S, C, ...) or (S, ...)
            tail = () if k == "component" else (self.dim,)
            out[k] = draws.reshape(num_samples, C, *tail).movedim(0, 1)  # (C, S, ...)
        self.cleanup()
        return out
