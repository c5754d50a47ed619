"""AutoFlowMixture: a mixture of normalizing flows as an automatic guide for any Pyro model."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import ExitStack

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.util import sum_rightmost
from pyro.infer import Trace_ELBO, TraceEnum_ELBO
from pyro.infer.autoguide import AutoContinuous
from pyro.infer.autoguide.guides import prototype_hide_fn
from pyro.infer.autoguide.initialization import init_to_sample
from pyro.infer.autoguide.utils import helpful_support_errors
from pyro.poutine.runtime import get_plates
from torch.distributions import biject_to
from torch.nn import Parameter

from ..distributions import FlowMixture
from ..flows import FlowComponents
from ..flows.components import FLOWS
from ._component_latent import ComponentLatent

# Initial candidates scoring this many nats below the best one are not used as starting points.
_INIT_LOG_TOLERANCE = 10.0


class AutoFlowMixture(AutoContinuous):
    """A mixture of K normalizing flows over all continuous latents of a model.

    Like :class:`~pyro.infer.autoguide.AutoContinuous`, every continuous latent site is mapped to
    unconstrained space and the pieces are concatenated into one vector z of size D; the guide is

    .. math:: q(z) = \\sum_{k=1}^K \\pi_k q_k(z), \\qquad q_k = \\text{flow}_k{}_\\# \\mathcal{N}(0, I),

    with the K flows of one :class:`~pyro_mixflows.FlowComponents` and learnable mixture logits.
    Each site's constrained value is ``biject_to(support)(z_site)`` and the log-determinant of that
    map enters the guide's density, as in ``AutoContinuous``.

    **Which ELBO.** Train with :class:`~pyro.infer.TraceEnum_ELBO`. The guide's component site is
    marked ``infer={"enumerate": "parallel"}``, so ``TraceEnum_ELBO`` draws one reparameterized z
    from every component and weights its term by :math:`\\pi_k` (with gradient through the weights):
    the stratified objective

    .. math:: \\mathcal{L} = \\sum_k \\pi_k \\, \\mathbb{E}_{q_k(z)}[\\log p(x, z) - \\log q(z)],

    no score-function estimator anywhere. The latent site is scored by
    :math:`\\log q(z) - \\log \\pi_k`, so the guide's total log-density per trace is the mixture
    density log q(z) (equivalently: the auxiliary-variable bound with the exact responsibilities
    q(k | z), which is tight). Discrete model sites configured for enumeration are skipped by the
    guide and summed out by ``TraceEnum_ELBO``; other discrete sites must be hidden with
    ``poutine.block``. Under plain :class:`~pyro.infer.Trace_ELBO` the component is sampled: the
    estimate is still unbiased but the gradient for the weights is a score-function one.
    Without enumeration (``Predictive``, :meth:`sample_posterior`) the guide draws k ~ π, z ~ q_k.

    **Models that are not batch-safe.** Parallel enumeration (and the vectorized start below)
    give each latent a batch dimension left of the model's plates; a model that indexes a
    latent vector by position (``t = pyro.sample("t", ...to_event(1)); t[0] * t[1]``) reads the
    wrong axis there. At set-up the guide runs the model once on a batch of two points; if that
    fails, it enumerates the component *sequentially* (``TraceEnum_ELBO`` runs the model once per
    component, the same objective, K times the cost) and starts from unbatched evaluations;
    ``batch_safe`` tells which path was taken.

    **Initialization.** ``num_init_candidates`` starting points are drawn with ``init_loc_fn``
    (prior draws by default) and moved uphill on the unconstrained log joint for ``init_steps``
    Adam steps (all candidates at once, vectorized over a plate left of the model's plates, in
    units of the candidates' spread). Among those within 10 nats of the best, K are chosen by
    farthest-point selection; component k starts at the k-th with per-axis scale ``init_scale``.
    Candidates that reach different modes thus seed different components.

    References: "Variational Inference with Normalizing Flows" (Rezende & Mohamed, 2015,
    arXiv:1505.05770); "Variational Mixture of Normalizing Flows" (Pires & Figueiredo, 2020,
    arXiv:2009.00585); "Hierarchical Variational Models" (Ranganath et al., 2016,
    arXiv:1511.02386) for the auxiliary-variable view.

    Args:
        model: a Pyro model whose latent sites are continuous (or enumerated / blocked discrete).
        num_components: K >= 1.
        flow: "affine_coupling", "spline_coupling" or "maf" (coupling flows need D >= 2).
        num_layers: flow layers per component (0 gives a mixture of diagonal Gaussians).
        hidden_dims: conditioner hidden sizes.
        count_bins: spline bins ("spline_coupling").
        bound: spline interval half-width ("spline_coupling").
        activation: conditioner activation.
        init_loc_fn: per-site initialization used to draw the candidate starting points.
        init_scale: initial per-axis scale of every component in unconstrained space, > 0.
        num_init_candidates: candidate starting points; default ``max(16, 4 * K)``.
        init_steps: Adam steps of log-joint ascent on the candidates (0 to skip).
        init_lr: Adam step of that ascent in units of the candidates' spread (constant for
            half the steps, then decayed 100-fold).

    Example::

        >>> def model(y=torch.tensor([2.1, 2.3])):
        ...     theta = pyro.sample("theta", dist.Normal(0.0, 3.0))
        ...     with pyro.plate("data", len(y)):
        ...         pyro.sample("y", dist.Normal(theta**2, 1.0), obs=y)
        >>> guide = AutoFlowMixture(model, num_components=2, flow="maf", num_layers=1)
        >>> svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.01}),
        ...                      pyro.infer.TraceEnum_ELBO(max_plate_nesting=1))
        >>> loss = svi.step()
        >>> guide.sample_posterior(100)["theta"].shape
        torch.Size([100])
    """

    def __init__(
        self,
        model: Callable,
        *,
        num_components: int,
        flow: str = "affine_coupling",
        num_layers: int = 2,
        hidden_dims: Sequence[int] = (32, 32),
        count_bins: int = 8,
        bound: float = 5.0,
        activation: str = "relu",
        init_loc_fn: Callable = init_to_sample,
        init_scale: float = 0.1,
        num_init_candidates: int | None = None,
        init_steps: int = 100,
        init_lr: float = 0.1,
    ) -> None:
        if (
            not isinstance(num_components, int)
            or isinstance(num_components, bool)
            or num_components < 1
        ):
            raise ValueError(f"expected num_components to be an int >= 1, got {num_components!r}")
        if flow not in FLOWS:
            raise ValueError(f"expected flow in {FLOWS}, got {flow!r}")
        if not isinstance(num_layers, int) or num_layers < 0:
            raise ValueError(f"expected num_layers to be an int >= 0, got {num_layers!r}")
        if not (isinstance(init_scale, (int, float)) and init_scale > 0):
            raise ValueError(f"expected init_scale > 0, got {init_scale!r}")
        if num_init_candidates is None:
            num_init_candidates = max(16, 4 * num_components)
        if not isinstance(num_init_candidates, int) or num_init_candidates < num_components:
            raise ValueError(
                f"expected num_init_candidates to be an int >= num_components={num_components}, "
                f"got {num_init_candidates!r}"
            )
        if not isinstance(init_steps, int) or init_steps < 0:
            raise ValueError(f"expected init_steps to be an int >= 0, got {init_steps!r}")
        if not init_lr > 0:
            raise ValueError(f"expected init_lr > 0, got {init_lr!r}")
        super().__init__(model, init_loc_fn=init_loc_fn)
        self.num_components = num_components
        self._flow_config = dict(
            flow=flow,
            num_layers=num_layers,
            hidden_dims=tuple(hidden_dims),
            count_bins=count_bins,
            bound=bound,
            activation=activation,
        )
        self._init_scale = float(init_scale)
        self._num_init_candidates = num_init_candidates
        self._init_steps = init_steps
        self._init_lr = float(init_lr)
        self.batch_safe: bool | None = None  # set at the first call (see the class docstring)

    # --- structure --------------------------------------------------------------------------
    @staticmethod
    def _prototype_hide_fn(msg) -> bool:
        # Discrete sites marked for enumeration belong to the ELBO, not to the guide.
        return prototype_hide_fn(msg) or msg["infer"].get("enumerate") is not None

    def _setup_prototype(self, *args, **kwargs) -> None:
        # Plates active around this first call (e.g. an ELBO's vectorized particles), read before
        # any poutine.block below hides them: the initial fits batch candidates to their left.
        self._outer_plate_depth = max(
            (-f.dim for f in get_plates() if f.vectorized and f.dim is not None), default=0
        )
        super()._setup_prototype(*args, **kwargs)
        # Plate depth of the whole model (observed sites too), so candidates batch to its left.
        full = poutine.block(poutine.trace(self.model).get_trace)(*args, **kwargs)
        self._max_plate_nesting = max(
            (
                -f.dim
                for site in full.nodes.values()
                if site["type"] == "sample"
                for f in site["cond_indep_stack"]
                if f.vectorized
            ),
            default=0,
        )
        self._model_enumerates = any(
            site["type"] == "sample" and site["infer"].get("enumerate") is not None
            for site in full.nodes.values()
        )
        proto = self._init_loc()
        D = self.latent_dim
        self.batch_safe = self._is_batch_safe(proto, *args, **kwargs)
        if self._flow_config["flow"] != "maf" and D < 2 and self._flow_config["num_layers"] > 0:
            raise ValueError(
                f"expected a latent of size D >= 2 for flow={self._flow_config['flow']!r}, got "
                f"D={D}; use flow='maf' (or num_layers=0)"
            )
        comps = FlowComponents(self.num_components, D, **self._flow_config)
        self.components = comps.to(dtype=proto.dtype, device=proto.device)
        self.logits = Parameter(proto.new_zeros(self.num_components))
        with poutine.block():  # the initial fits are invisible to any enclosing inference
            self._init_components(proto, *args, **kwargs)

    # --- the guide --------------------------------------------------------------------------
    def sample_latent(self, *args, **kwargs) -> torch.Tensor:
        """Draw the component k (enumerated under TraceEnum_ELBO) and z ~ q_k; returns z."""
        logits = self.logits
        enumerate = "parallel" if self.batch_safe else "sequential"
        k = pyro.sample(
            f"_{self._pyro_name}_component",
            dist.Categorical(logits=logits),
            infer={"enumerate": enumerate, "is_auxiliary": True},
        )
        return pyro.sample(
            f"_{self._pyro_name}_latent",
            ComponentLatent(self.components, logits, k),
            infer={"is_auxiliary": True},
        )

    def get_posterior(self, *args, **kwargs) -> FlowMixture:
        """The mixture q(z) over the unconstrained latent vector, event shape (D,)."""
        return FlowMixture(self.components, logits=self.logits)

    @property
    def weights(self) -> torch.Tensor:
        """Mixture weights pi, (K,)."""
        return torch.softmax(self.logits.detach(), -1)

    def _unpack_constrained(self, latent: torch.Tensor) -> dict[str, torch.Tensor]:
        """Latents (*S, D) -> ``{site: (*S, *site_shape)}``, constrained.

        Each site's slice is reshaped to its own (unconstrained) shape after the batch dims, so
        sites inside plates work too (``AutoContinuous._unpack_latent`` broadcasts the batch
        against the plate dims instead).
        """
        batch, pos, out = latent.shape[:-1], 0, {}
        for name, site in self.prototype_trace.iter_stochastic_nodes():
            shape = self._unconstrained_shapes[name]
            size = math.prod(shape)
            value = latent[..., pos : pos + size].reshape(batch + shape)
            out[name] = biject_to(site["fn"].support)(value)
            pos += size
        return out

    @torch.no_grad()
    def sample_posterior(self, num_samples: int, *args, **kwargs) -> dict[str, torch.Tensor]:
        """Draws from q, constrained: ``{site: (num_samples, *site_shape)}``.

        ``*args, **kwargs`` (the model's) are needed only if the guide has never run.
        """
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        z = self.get_posterior().sample((num_samples,))  # (S, D)
        return self._unpack_constrained(z)

    @torch.no_grad()
    def quantiles(self, quantiles, *args, num_samples: int = 4000, seed: int = 0, **kwargs):
        """Per-coordinate quantiles of q, estimated from ``num_samples`` draws with a fixed seed.

        Quantiles are taken coordinatewise in unconstrained space and mapped through each site's
        constraint (exact for elementwise monotone constraints, as in ``AutoContinuous``).

        Returns:
            ``{site: (len(quantiles), *site_shape)}``.
        """
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            z = self.get_posterior().sample((num_samples,))  # (S, D)
        q = torch.as_tensor(quantiles, dtype=z.dtype, device=z.device)
        latents = torch.quantile(z, q, dim=0)  # (Q, D)
        result: dict[str, list] = {}
        for latent in latents:
            for name, value in self._unpack_constrained(latent).items():
                result.setdefault(name, []).append(value)
        return {k: torch.stack(v) for k, v in result.items()}

    @torch.no_grad()
    def median(self, *args, num_samples: int = 4000, seed: int = 0, **kwargs):
        """Per-coordinate posterior median under q (see :meth:`quantiles`): ``{site: value}``."""
        return {
            k: v[0]
            for k, v in self.quantiles(
                [0.5], *args, num_samples=num_samples, seed=seed, **kwargs
            ).items()
        }

    # --- initialization ---------------------------------------------------------------------
    def _delta_guide(self, latent: torch.Tensor, *args, **kwargs) -> None:
        """Place every latent site at ``latent`` (with the constraint's log-det), for scoring."""
        plates = self._create_plates(*args, **kwargs)
        for site, unconstrained in self._unpack_latent(latent):
            name = site["name"]
            transform = biject_to(site["fn"].support)
            value = transform(unconstrained)
            log_density = transform.inv.log_abs_det_jacobian(value, unconstrained)
            log_density = sum_rightmost(
                log_density, log_density.dim() - value.dim() + site["fn"].event_dim
            )
            with ExitStack() as stack:
                for frame in self._cond_indep_stacks[name]:
                    stack.enter_context(plates[frame.name])
                pyro.sample(
                    name, dist.Delta(value, log_density=log_density, event_dim=site["fn"].event_dim)
                )

    def _candidates(self, proto: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """``num_init_candidates`` starting points from ``init_loc_fn``: (M, D)."""
        model = poutine.block(self.model, self._prototype_hide_fn)
        rows = [proto]
        for _ in range(self._num_init_candidates - 1):
            trace = poutine.block(poutine.trace(model).get_trace)(*args, **kwargs)
            parts = []
            for _, site in trace.iter_stochastic_nodes():
                with helpful_support_errors(site):
                    value = biject_to(site["fn"].support).inv(site["value"].detach())
                parts.append(value.reshape(-1))
            rows.append(torch.cat(parts))
        return torch.stack(rows)

    def _is_batch_safe(self, proto: torch.Tensor, *args, **kwargs) -> bool:
        """Whether the model runs on latents with a batch dim left of its plates (two points)."""
        try:
            with torch.no_grad(), poutine.block():
                self._log_joint(proto.expand(2, -1), *args, differentiable=False, **kwargs)
        except (ValueError, RuntimeError, IndexError):
            return False
        return True

    def _log_joint(self, latent: torch.Tensor, *args, differentiable: bool = True, **kwargs):
        """Sum over rows of ``latent`` (M, D) of the model's unconstrained log joint.

        Enumerated discrete sites of the model are summed out. Rows run as one batch, or one at
        a time without any batch dim when the model is not batch-safe. Returns a tensor
        (differentiable) or a float.
        """
        M, D = latent.shape
        if self.batch_safe is False:
            total = 0.0
            for row in latent:
                total = total + self._log_joint_one(
                    row, *args, differentiable=differentiable, **kwargs
                )
            return total
        # Left of the model's plates and of any plate active around this call (e.g. vectorized
        # particles when the guide is first called inside an ELBO).
        depth = max(self._max_plate_nesting, self._outer_plate_depth)
        batched = latent.reshape((M,) + (1,) * depth + (D,))
        plate = dict(name=f"_{self._pyro_name}_init", size=M, dim=-depth - 1)

        def model():
            with pyro.plate(**plate):
                return self.model(*args, **kwargs)

        def guide():
            with pyro.plate(**plate):
                self._delta_guide(batched, *args, **kwargs)

        if self._model_enumerates:
            elbo = TraceEnum_ELBO(max_plate_nesting=depth + 1)
        else:
            elbo = Trace_ELBO(max_plate_nesting=depth + 1)
        # The plate sums over candidates; each candidate's own term is what moves it, and the
        # per-candidate scores come from unbatched passes.
        if differentiable:
            return -elbo.differentiable_loss(model, guide)
        return -elbo.loss(model, guide)

    def _log_joint_one(self, latent: torch.Tensor, *args, differentiable: bool, **kwargs):
        """The model's unconstrained log joint at one latent (D,), with no batch dim."""

        def model():
            return self.model(*args, **kwargs)

        def guide():
            self._delta_guide(latent, *args, **kwargs)

        depth = max(self._max_plate_nesting, self._outer_plate_depth)
        if self._model_enumerates:
            elbo = TraceEnum_ELBO(max_plate_nesting=depth)
        else:
            elbo = Trace_ELBO(max_plate_nesting=depth)
        if differentiable:
            return -elbo.differentiable_loss(model, guide)
        return -elbo.loss(model, guide)

    def _init_components(self, proto: torch.Tensor, *args, **kwargs) -> None:
        K = self.num_components
        with torch.random.fork_rng(devices=[]):
            latent = self._candidates(proto, *args, **kwargs)  # (M, D)
        if self._init_steps > 0:
            # Ascend in units of the candidates' spread (Adam's steps are about lr per
            # coordinate), at a constant rate for the first half, then decaying 100-fold so
            # the candidates settle on their modes.
            center = latent.mean(0)
            spread = latent.std(0).clamp(min=1e-3) if latent.shape[0] > 1 else 1.0
            w = ((latent - center) / spread).clone().requires_grad_(True)
            optim = torch.optim.Adam([w], lr=self._init_lr)
            half = self._init_steps // 2
            gamma = 0.01 ** (1.0 / max(1, self._init_steps - half))
            decay = torch.optim.lr_scheduler.LambdaLR(
                optim, lambda step: gamma ** max(0, step - half)
            )
            for _ in range(self._init_steps):
                optim.zero_grad()
                loss = -self._log_joint(center + spread * w, *args, **kwargs)
                if not torch.isfinite(loss):
                    break
                loss.backward()
                optim.step()
                decay.step()
            latent = center + spread * w
            latent = latent.detach()
            scores = latent.new_tensor(
                [
                    self._log_joint(row.unsqueeze(0), *args, differentiable=False, **kwargs)
                    for row in latent
                ]
            )  # (M,)
        else:
            scores = latent.new_zeros(latent.shape[0])
        scores = torch.where(torch.isfinite(scores), scores, scores.new_tensor(-math.inf))
        order = torch.argsort(scores, descending=True)
        # Candidates within _INIT_LOG_TOLERANCE nats of the best one are eligible: a mode that
        # much lower carries negligible mass. Farthest-point selection spreads the K picks.
        eligible = scores[order] >= scores[order[0]] - _INIT_LOG_TOLERANCE
        eligible[:K] = True
        pool = latent[order[eligible]]  # best first
        chosen = [0]
        dist2 = (pool - pool[0]).square().sum(-1)
        for _ in range(K - 1):
            nxt = int(torch.argmax(dist2))
            chosen.append(nxt)
            dist2 = torch.minimum(dist2, (pool - pool[nxt]).square().sum(-1))
        loc = pool[chosen]  # (K, D)
        self.components.set_affine(loc, torch.full_like(loc, self._init_scale))
