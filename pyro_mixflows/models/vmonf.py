"""VMoNF: a mixture of flows with an exactly enumerated or amortized assignment.

Variational Mixture of Normalizing Flows (Pires & Figueiredo, 2020, arXiv:2009.00585).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.infer.util import is_validation_enabled
from pyro.nn import PyroModule, PyroParam, pyro_method
from torch import nn

from .._validation import check_event, check_index
from ..distributions import FlowMixture, StickBreaking, StickWeights
from ..flows.components import Components

WEIGHTS = ("uniform", "learned", "dirichlet", "dirichlet_process")
ASSIGNMENTS = ("amortized", "enumerate")


def paper_temperature(step: int) -> float:
    """The paper's schedule, ``T_t = exp(-1e-3 t)``."""
    return math.exp(-1e-3 * step)


class VMoNF(PyroModule):
    """A mixture of K flows, ``p(x) = sum_k w_k p_k(x)``, with its model and guide.

    The model reads ``z ~ Categorical(w)``, ``x ~ components.component(z)`` in a data plate. Two
    ways to treat z, both exact sums over k (no score-function gradients), both under
    ``TraceEnum_ELBO``:

    - ``assignment="amortized"`` (the paper's): the guide holds q(k | x) = softmax(NN(x) / T) and
      its "z" site is enumerated in the guide, so the ELBO is
      :math:`\\sum_k q(k|x)[\\log w_k + \\log p_k(x) - \\log q(k|x)] = \\log p(x) - KL(q \\| p(k|x))`.
      T follows ``temperature_schedule`` (default ``exp(-1e-3 t)``, t = training steps seen).
    - ``assignment="enumerate"``: z is enumerated in the model and the guide is global only, so
      the loss is exactly ``-log p(x)`` (EM-like, no amortization gap).

    Semi-supervised: ``x_labelled``/``y_labelled`` go to a second plate where z is observed, and
    (amortized) the classifier gets the supervised term ``supervised_scale * log q(y | x)``,
    added to the ELBO (so minimizing the loss raises the probability of the true label).

    Args:
        components: the K flows (``FlowComponents`` or any ``Components``).
        weights: "learned" (point estimate), "uniform" (fixed), "dirichlet" (a
            Dirichlet(concentration) prior with a variational Dirichlet posterior) or
            "dirichlet_process" (truncated stick-breaking ``StickBreaking(concentration, K)``
            prior, K the truncation, with variational Beta sticks).
        concentration: Dirichlet / Dirichlet-process concentration.
        assignment: "amortized" or "enumerate".
        hidden_dims: hidden sizes of the q(k | x) network.
        temperature_schedule: ``step -> T``; ``None`` keeps T = 1.
        supervised_scale: weight of the classifier's supervised term.

    Example::

        >>> vm = VMoNF(FlowComponents(3, 2))
        >>> x = torch.randn(10, 2)
        >>> loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(vm.model, vm.guide, x)
        >>> vm.assignment_probs(x).shape, vm(x).shape  # q(k | x), log p(x)
        (torch.Size([10, 3]), torch.Size([10]))
    """

    def __init__(
        self,
        components: Components,
        *,
        weights: str = "learned",
        concentration: float = 1.0,
        assignment: str = "amortized",
        hidden_dims: Sequence[int] = (64, 64),
        temperature_schedule: Callable[[int], float] | None = paper_temperature,
        supervised_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if not isinstance(components, Components):
            raise TypeError(f"expected a Components instance, got {type(components).__name__}")
        if weights not in WEIGHTS:
            raise ValueError(f"expected weights in {WEIGHTS}, got {weights!r}")
        if assignment not in ASSIGNMENTS:
            raise ValueError(f"expected assignment in {ASSIGNMENTS}, got {assignment!r}")
        if concentration <= 0:
            raise ValueError(f"expected concentration > 0, got {concentration}")
        if supervised_scale < 0:
            raise ValueError(f"expected supervised_scale >= 0, got {supervised_scale}")
        K, D = components.num_components, components.dim
        self.components = components
        self.weights = weights
        self.assignment = assignment
        self.temperature_schedule = temperature_schedule
        self.supervised_scale = float(supervised_scale)
        self.concentration = float(concentration)
        if weights == "learned":
            self.weight_logits = nn.Parameter(torch.zeros(K))
        if weights == "dirichlet":
            self.weight_concentration_q = PyroParam(torch.ones(K), constraint=constraints.positive)
        if weights == "dirichlet_process":
            if K < 2:
                raise ValueError(f"expected a truncation K >= 2 for a Dirichlet process, got {K}")
            self.stick_a = PyroParam(torch.ones(K - 1), constraint=constraints.positive)
            self.stick_b = PyroParam(
                torch.full((K - 1,), float(concentration)), constraint=constraints.positive
            )
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        if assignment == "amortized":
            sizes = [D, *hidden_dims]
            layers: list[nn.Module] = []
            for a, b in zip(sizes[:-1], sizes[1:], strict=True):
                layers += [nn.Linear(a, b), nn.ReLU()]
            layers.append(nn.Linear(sizes[-1], K))
            self.classifier = nn.Sequential(*layers)

    # --- weights --------------------------------------------------------------------------
    def _dtype_device(self):
        p = next(self.components.parameters(), None)
        return (p.dtype, p.device) if p is not None else (torch.get_default_dtype(), None)

    def _model_logits(self) -> torch.Tensor:
        """log w for the model; samples the "weights" site under a Dirichlet prior."""
        if self.weights == "learned":
            return self.weight_logits.log_softmax(-1)
        # (read self.components only where needed: each read of a PyroModule's plain nn.Module
        # attribute re-registers all its parameters, a per-step cost)
        K = self.components.num_components
        dtype, device = self._dtype_device()
        if self.weights == "uniform":
            return torch.full((K,), -math.log(K), dtype=dtype, device=device)
        alpha = torch.full((K,), self.concentration, dtype=dtype, device=device)
        if self.weights == "dirichlet_process":
            prior = StickBreaking(alpha[0], K)
        else:
            prior = dist.Dirichlet(alpha)
        return pyro.sample("weights", prior).clamp_min(torch.finfo(dtype).tiny).log()

    def _stick_posterior(self) -> StickWeights:
        return StickWeights(dist.Independent(dist.Beta(self.stick_a, self.stick_b), 1))

    def _guide_globals(self) -> None:
        if self.weights == "dirichlet":
            pyro.sample("weights", dist.Dirichlet(self.weight_concentration_q))
        elif self.weights == "dirichlet_process":
            pyro.sample("weights", self._stick_posterior())

    def weight_logits_estimate(self) -> torch.Tensor:
        """Point estimate of log w, (K,): the learned logits, uniform, or the posterior mean."""
        return self._point_log_weights().detach()

    def _point_log_weights(self) -> torch.Tensor:
        """``weight_logits_estimate`` with its gradient: (K,)."""
        if self.weights == "dirichlet":
            c = self.weight_concentration_q
            return (c / c.sum()).log()
        if self.weights == "dirichlet_process":
            return self._stick_posterior().mean.clamp_min(1e-30).log()
        return self._model_logits()

    # --- amortized assignment -------------------------------------------------------------
    @property
    def temperature(self) -> float:
        if self.temperature_schedule is None:
            return 1.0
        return float(self.temperature_schedule(int(self.step)))

    def classifier_logits(self, x: torch.Tensor) -> torch.Tensor:
        """NN(x) (at T = 1): (..., D) -> (..., K)."""
        if self.assignment != "amortized":
            raise ValueError("expected assignment='amortized' for a classifier")
        return self.classifier(x)

    # --- model and guide ------------------------------------------------------------------
    def _check(self, x, x_labelled, y_labelled, components=None):
        if components is None:  # one read: each read re-registers its parameters
            components = self.components
        D, K = components.dim, components.num_components
        check_event(x, D, "x")
        if x.dim() != 2:
            raise ValueError(f"expected x of shape (N, {D}), got {tuple(x.shape)}")
        if (x_labelled is None) != (y_labelled is None):
            raise ValueError("expected both x_labelled and y_labelled, or neither")
        if x_labelled is not None:
            check_event(x_labelled, D, "x_labelled")
            if y_labelled.shape != x_labelled.shape[:1]:
                raise ValueError(
                    f"expected y_labelled of shape ({x_labelled.shape[0]},), "
                    f"got {tuple(y_labelled.shape)}"
                )
            if is_validation_enabled():  # a device sync: skipped in validation-free runs
                check_index(y_labelled, K, "y_labelled")

    @pyro_method
    def model(self, x, x_labelled=None, y_labelled=None, *, subsample=None):
        """p(w) p(z | w) p(x | z) over a "data" plate (and a "labelled" plate with z observed)."""
        components = self.components  # read once per call: each read re-registers its parameters
        self._check(x, x_labelled, y_labelled, components)
        logits = self._model_logits()
        infer = {"enumerate": "parallel"} if self.assignment == "enumerate" else {}
        with pyro.plate("data", x.shape[0], subsample=subsample) as idx:
            z = pyro.sample("z", dist.Categorical(logits=logits), infer=infer)
            pyro.sample("x", components.component(z), obs=x if subsample is None else x[idx])
        if x_labelled is not None:
            with pyro.plate("labelled", x_labelled.shape[0]):
                z_l = pyro.sample("z_labelled", dist.Categorical(logits=logits), obs=y_labelled)
                pyro.sample("x_labelled", components.component(z_l), obs=x_labelled)
                if self.assignment == "amortized" and self.supervised_scale > 0:
                    log_q = self.classifier_logits(x_labelled).log_softmax(-1)
                    log_q_y = log_q.gather(-1, y_labelled.unsqueeze(-1)).squeeze(-1)
                    pyro.factor("supervised", self.supervised_scale * log_q_y)

    @pyro_method
    def model_labelled(self, x, y, *, subsample=None):
        """The model with every z observed: hard-assignment training (used to pre-train)."""
        components = self.components
        self._check(x, x, y, components)
        logits = self._model_logits()
        with pyro.plate("data", x.shape[0], subsample=subsample) as idx:
            xb, yb = (x, y) if subsample is None else (x[idx], y[idx])
            pyro.sample("z", dist.Categorical(logits=logits), obs=yb)
            pyro.sample("x", components.component(yb), obs=xb)
            if self.assignment == "amortized":
                log_q = self.classifier_logits(xb).log_softmax(-1)
                pyro.factor("supervised", log_q.gather(-1, yb.unsqueeze(-1)).squeeze(-1))

    @pyro_method
    def guide_labelled(self, x, y, *, subsample=None):
        """Guide for ``model_labelled``: the global sites only."""
        self._guide_globals()

    @pyro_method
    def guide(self, x, x_labelled=None, y_labelled=None, *, subsample=None):
        """Global sites, then (amortized) q(z | x) enumerated in the guide."""
        self._guide_globals()
        if self.assignment != "amortized":
            return
        if self.training and torch.is_grad_enabled():
            self.step += 1
        T = self.temperature
        with pyro.plate("data", x.shape[0], subsample=subsample) as idx:
            xb = x if subsample is None else x[idx]
            logits = self.classifier_logits(xb) / T
            pyro.sample("z", dist.Categorical(logits=logits), infer={"enumerate": "parallel"})

    # --- the same losses in closed form -------------------------------------------------
    def exact_loss_applies(self) -> bool:
        """Whether ``exact_loss`` gives the ELBO of ``model`` and ``model_labelled``: weights
        "learned" or "uniform" (no global latent to sample), either assignment."""
        return self.weights in ("learned", "uniform")

    def exact_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        r"""The negative ELBO of ``model``/``guide`` in closed form, as plain PyTorch.

        A loss for :func:`~pyro_mixflows.infer.fit` (``fit(vm.model, vm.guide, x,
        loss=vm.exact_loss)``, or ``vm.model_labelled``/``vm.guide_labelled``): the value and
        gradients of ``TraceEnum_ELBO`` (``Trace_ELBO`` for ``model_labelled``) on the same
        parameters and batch, without tracing the model, enumerating z or contracting factors.
        With B of the N rows in the batch (``subsample``) and log w the log weights:

        - enumerate: :math:`-\frac{N}{B}\sum_b \log\sum_k w_k p_k(x_b)`;
        - amortized: :math:`-\frac{N}{B}\sum_b \sum_k q_{bk}(\log w_k + \log p_k(x_b)
          - \log q_{bk})`, q = softmax(NN(x_b) / T) (each training call advances the
          temperature's step, as the guide does);
        - labelled rows: :math:`-\sum_l [\log w_{y_l} + \log p_{y_l}(x_l)]`, and (amortized)
          :math:`-s \sum_l \log q(y_l | x_l)` at T = 1, s = ``supervised_scale``;
        - ``model_labelled``: :math:`-\frac{N}{B}\sum_b [\log w_{y_b} + \log p_{y_b}(x_b)]`
          (amortized: :math:`+ \log q(y_b | x_b)` inside the sum).

        The arithmetic after the weights is one function of (components, log w, tensors),
        ``_loss_kernel``, a plain function of tensors and modules.

        Args:
            model: ``self.model`` or ``self.model_labelled`` (bound to this module).
            guide: its guide (not called: the amortized q(k | x) is computed here).
            *args: the model's positional arguments.
            **kwargs: its keyword arguments (``subsample``).

        Raises:
            ValueError: Dirichlet or Dirichlet-process weights (their ELBO is a Monte Carlo
                estimate: use ``TraceEnum_ELBO``), or a model other than these two.
        """
        if not self.exact_loss_applies():
            raise ValueError(
                f"expected weights 'learned' or 'uniform' for exact_loss, got {self.weights!r} "
                "(use TraceEnum_ELBO)"
            )
        owner, func = getattr(model, "__self__", None), getattr(model, "__func__", None)
        if owner is not self or func not in (VMoNF.model, VMoNF.model_labelled):
            raise ValueError(
                f"expected this module's model or model_labelled for exact_loss, got {model!r}"
            )
        if func is VMoNF.model_labelled:
            return self._labelled_loss(*args, **kwargs)
        return self._marginal_loss(*args, **kwargs)

    @pyro_method
    def _marginal_loss(self, x, x_labelled=None, y_labelled=None, *, subsample=None):
        components = self.components
        self._check(x, x_labelled, y_labelled, components)
        log_w = self._model_logits()  # inside a pyro_method: the parameters are registered
        xb = x if subsample is None else x[subsample]
        scale = x.new_tensor(x.shape[0] / xb.shape[0])
        T = None
        if self.assignment == "amortized":
            if self.training and torch.is_grad_enabled():
                self.step += 1
            T = x.new_tensor(self.temperature)
            classifier = self.classifier
        else:
            classifier = None
        return self._loss_kernel(
            components, classifier, log_w, scale, xb, x_labelled, y_labelled,
            T, self.supervised_scale,
        )  # fmt: skip

    @pyro_method
    def _labelled_loss(self, x, y, *, subsample=None):
        components = self.components
        self._check(x, x, y, components)
        log_w = self._model_logits()
        xb, yb = (x, y) if subsample is None else (x[subsample], y[subsample])
        scale = x.new_tensor(x.shape[0] / xb.shape[0])
        classifier = self.classifier if self.assignment == "amortized" else None
        return self._loss_kernel(
            components, classifier, log_w, scale, None, xb, yb, None, 1.0, scale
        )

    @staticmethod
    def _loss_kernel(
        components, classifier, log_w, scale, x, x_labelled, y_labelled, T, supervised_scale,
        labelled_scale=None,
    ):  # fmt: skip
        """The arithmetic of ``exact_loss``: one component pass over every row, then the terms.

        x (B, D) unlabelled rows or None, weighted by ``scale``; ``x_labelled`` (L, D) with
        ``y_labelled`` (L,) or None, weighted by ``labelled_scale`` (1 when None); ``classifier``
        the amortized q network or None; T its temperature on x (a 0-d tensor). Returns a
        scalar.
        """
        rows = [t for t in (x, x_labelled) if t is not None]
        lp = components(rows[0] if len(rows) == 1 else torch.cat(rows))
        lp = lp + log_w  # (B + L, K): log w_k + log p_k(x)
        loss = lp.new_zeros(())
        if x is not None:
            B = x.shape[0]
            joint = lp[:B]
            if classifier is None:
                loss = loss - scale * torch.logsumexp(joint, -1).sum()
            else:
                log_q = (classifier(x) / T).log_softmax(-1)
                loss = loss - scale * (log_q.exp() * (joint - log_q)).sum()
            lp = lp[B:]
        if x_labelled is not None:
            y = y_labelled.unsqueeze(-1)
            term = lp.gather(-1, y).sum()
            if classifier is not None and supervised_scale > 0:
                log_q = classifier(x_labelled).log_softmax(-1)
                term = term + supervised_scale * log_q.gather(-1, y).sum()
            loss = loss - (term if labelled_scale is None else labelled_scale * term)
        return loss

    # --- reading the fit ------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) of the fitted mixture per row: (N, D) -> (N,).

        .. math:: \\log p(x_n) = \\log \\sum_k \\hat w_k\\, p_k(x_n),

        with :math:`\\hat w` the weights' point estimate (:meth:`weight_logits_estimate`);
        differentiable in the components' parameters and in the weights' parameters. The
        training objectives are :meth:`model` / :meth:`guide` (or :meth:`exact_loss`).

        Raises:
            ValueError: x not of shape (N, D).
        """
        components = self.components
        check_event(x, components.dim, "x")
        if x.dim() != 2:
            raise ValueError(f"expected x of shape (N, {components.dim}), got {tuple(x.shape)}")
        return torch.logsumexp(self._point_log_weights() + components(x), -1)

    def mixture(self) -> FlowMixture:
        """The fitted density as a ``FlowMixture`` (weights at their point estimate)."""
        return FlowMixture(self.components, logits=self.weight_logits_estimate())

    def assignment_probs(self, x: torch.Tensor) -> torch.Tensor:
        """q(k | x) (amortized, at the current T) or the exact p(k | x): (..., D) -> (..., K)."""
        if self.assignment == "amortized":
            return torch.softmax(self.classifier_logits(x) / self.temperature, dim=-1)
        return self.mixture().responsibilities(x)
