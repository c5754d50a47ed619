"""Deep latent Gaussian mixtures: a VAE with a mixture prior and a mixture posterior.

Approximate Inference for Deep Latent Gaussian Mixtures (Nalisnick, Hertel & Smyth, 2016),
with two additions: the posterior components may be normalizing flows, and the objective keeps
the full mixture density in its entropy term.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, pyro_method
from torch import nn

from ..distributions.kumaraswamy import Kumaraswamy
from ..flows import FlowComponents
from . import _vae_clusters as _clusters
from . import _vae_importance as _importance
from ._vae_guide import _ComponentDraw, _mlp, stick_breaking_log_weights

__all__ = ["MixtureVAE", "stick_breaking_log_weights"]

WEIGHTS = ("softmax", "kumaraswamy", "beta")
STICKS = ("global", "local")
LIKELIHOODS = ("bernoulli", "normal")
NOISE_SPEED = 3.0  # the Normal decoder's log scale is this times its parameter


class MixtureVAE(PyroModule):
    """Variational autoencoder with a mixture prior and a mixture (or flow-mixture) posterior.

    Generative model, with c_n the cluster (the prior's component) of point n:

    .. math::
        v_t \\sim \\mathrm{Beta}(1, α)\\ (t < T, \\text{DP only}), \\qquad
        c_n \\sim \\mathrm{Cat}(w), \\qquad z_n \\mid c_n \\sim \\mathcal{N}(μ^0_{c_n}, σ^0_{c_n}),
        \\qquad x_n \\mid z_n \\sim p_θ(x_n \\mid z_n),

    w the softmax of a global parameter (``weights="softmax"``) or the stick-breaking weights
    π(v) of a Dirichlet process truncated at T, one set of sticks for the data set
    (``sticks="global"``) or one per point (``sticks="local"``); a Bernoulli decoder or a
    diagonal Normal one with a learned per-feature scale. Guide:

    .. math:: q(z \\mid x) = \\sum_k r_k(x)\\, q_k(z \\mid x), \\qquad
        z = g_k(μ_k(x) + σ_k(x) ⊙ ε),\\ ε \\sim \\mathcal{N}(0, I),

    g_k the identity or the k-th flow of a :class:`FlowComponents` (``flow=...``); r(x) a softmax
    head of the encoder (global sticks then have their own posterior q(v), Kumaraswamy or Beta),
    or r = π(v), v ~ q(v | x), for local sticks. The index k is enumerated, z | k
    reparameterized; train with ``TraceEnum_ELBO(max_plate_nesting=1)``, which computes:

    - tied components (``tie_components=True``, the default): k is the model's cluster c,

      .. math:: \\mathcal{L} = \\sum_n \\sum_c r_c(x_n) \\Big(\\mathbb{E}_{q_c(z|x_n)}\\big[
          \\log p(x_n \\mid z) + \\log \\mathcal{N}(z; μ^0_c, σ^0_c) - \\log q_c(z \\mid x_n)\\big]
          + \\log w_c - \\log r_c(x_n)\\Big),

      so r(x) approximates the cluster posterior: use it to cluster;
    - untied (``tie_components=False``): the stratified mixture ELBO, with the entropy of the
      whole mixture q(z | x) (a tighter bound, whose k is not a cluster),

      .. math:: \\mathcal{L} = \\sum_n \\sum_k r_k(x_n) \\, \\mathbb{E}_{q_k(z|x_n)}
          \\big[\\log p(x_n \\mid z) + \\log p(z \\mid v) - \\log q(z \\mid x_n)\\big],

    each inside E_{q(v)} plus the stick term E_{q(v)}[log p(v) - log q(v)] when there are sticks.
    :meth:`cluster_probs` is p(c | x) (exact p(c | z) importance-weighted over q(z | x)),
    :meth:`predict` its argmax. The guide refits the prior by EM (:meth:`refit_prior`) at the
    training steps ``refit_steps``, counted in guide calls with gradients on. Calling the module
    gives a per-row ELBO estimate (:meth:`forward`), :meth:`importance_log_likelihood` a tighter
    estimate of log p(x).

    Sites: "v" (sticks, DP only; outside the data plate when global), "c" (tied) or the auxiliary
    "k" (untied), "latent" (z, event D) and the observed "x" (event P), in the plate "data" that
    honours ``subsample`` (a LongTensor of row indices).

    Reference: Approximate Inference for Deep Latent Gaussian Mixtures (Nalisnick, Hertel &
    Smyth, 2016).

    Args:
        data_dim: P, the number of observed features.
        latent_dim: D.
        num_components: K for ``weights="softmax"``, the truncation T otherwise (>= 2).
        weights: "softmax" (finite), "kumaraswamy" or "beta" (DP sticks, posterior family).
        hidden_dims: widths of the encoder's and the decoder's hidden layers.
        likelihood: "bernoulli" or "normal".
        alpha: DP concentration α of the stick prior Beta(1, α).
        sticks: "global" or "local" (see above).
        learn_prior: learn μ⁰, σ⁰ (and w in the finite case); otherwise they stay fixed.
        prior_spread: initial μ⁰_c are drawn from N(0, prior_spread²) (fixed generator);
            with K = 1 μ⁰ starts at 0 and σ⁰ at 1.
        flow: None for Gaussian components, or a :class:`FlowComponents` flow name.
        flow_kwargs: extra options for :class:`FlowComponents` (e.g. ``num_layers``).
        tie_components: the tied (default) or the untied objective, see above.
        refit_steps: training steps at which the guide calls :meth:`refit_prior`. None
            (default): (500, 1000, 2000) for tied Gaussian components with a learnable prior
            and K >= 2, () (never) otherwise.

    Raises:
        ValueError: a bad size or option (``TypeError`` for a non-bool ``tie_components``).

    Example::

        >>> vae = MixtureVAE(64, 8, num_components=5)
        >>> x = torch.rand(3, 64).round()
        >>> probs, means = vae.encode(x)
        >>> probs.shape, means.shape, vae.predict(x, num_samples=10).shape, vae(x).shape
        (torch.Size([3, 5]), torch.Size([3, 5, 8]), torch.Size([3]), torch.Size([3]))
    """

    def __init__(
        self,
        data_dim: int,
        latent_dim: int,
        *,
        num_components: int = 5,
        weights: str = "softmax",
        hidden_dims: Sequence[int] = (128,),
        likelihood: str = "bernoulli",
        alpha: float = 1.0,
        sticks: str = "global",
        learn_prior: bool = True,
        prior_spread: float = 1.0,
        flow: str | None = None,
        flow_kwargs: dict | None = None,
        tie_components: bool = True,
        refit_steps: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("data_dim", data_dim), ("latent_dim", latent_dim)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"expected {name} to be an int >= 1, got {value!r}")
        if not isinstance(num_components, int) or num_components < 1:
            raise ValueError(f"expected num_components to be an int >= 1, got {num_components!r}")
        if weights not in WEIGHTS:
            raise ValueError(f"expected weights in {WEIGHTS}, got {weights!r}")
        if weights != "softmax" and num_components < 2:
            raise ValueError(
                f"expected a truncation num_components >= 2 for weights={weights!r}, "
                f"got {num_components}"
            )
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"expected likelihood in {LIKELIHOODS}, got {likelihood!r}")
        if not alpha > 0:
            raise ValueError(f"expected alpha > 0, got {alpha!r}")
        if sticks not in STICKS:
            raise ValueError(f"expected sticks in {STICKS}, got {sticks!r}")
        if not isinstance(tie_components, bool):
            raise TypeError(f"expected tie_components to be a bool, got {tie_components!r}")
        refit_steps = _clusters.check_refit_steps(
            refit_steps, learn_prior, num_components, flow, tie_components
        )
        hidden_dims = tuple(int(h) for h in hidden_dims)
        if any(h < 1 for h in hidden_dims):
            raise ValueError(f"expected positive hidden_dims, got {hidden_dims}")
        self.data_dim, self.latent_dim = data_dim, latent_dim
        self.num_components = K = num_components
        self.weights, self.likelihood, self.alpha = weights, likelihood, float(alpha)
        self.sticks = None if weights == "softmax" else sticks
        self.learn_prior = learn_prior
        self.tie_components = tie_components
        self.refit_steps = refit_steps
        # gradient-enabled guide calls so far: the clock of the automatic refits
        self.register_buffer("num_training_steps", torch.zeros((), dtype=torch.long))
        D = latent_dim
        num_weight_outputs = 2 * (K - 1) if self.sticks == "local" else K
        if weights == "softmax" and K == 1:
            num_weight_outputs = 0
        self._sizes = (K * D, K * D, num_weight_outputs)
        self.encoder = _mlp((data_dim, *hidden_dims, sum(self._sizes)))
        self.decoder = _mlp((latent_dim, *hidden_dims, data_dim))
        if likelihood == "normal":
            # log σ = NOISE_SPEED · u, u the parameter: Adam moves u by about lr per step, so σ
            # reaches the data's noise level (often 0.1 or less) NOISE_SPEED times sooner.
            self.decoder_log_scale_unit = nn.Parameter(torch.zeros(data_dim))
        if self.sticks == "global":
            # q(v) starts at the prior: Kumaraswamy(1, α) = Beta(1, α); softplus(raw) + 1e-3 = a, b.
            start = torch.tensor([1.0, self.alpha]).repeat_interleave(K - 1) - 1e-3  # (2(T-1),)
            self.stick_raw = nn.Parameter(torch.log(torch.expm1(start)))
        self.flows = None
        if flow is not None:
            self.flows = FlowComponents(K, D, flow=flow, **(flow_kwargs or {}))
        generator = torch.Generator().manual_seed(0)
        loc0 = prior_spread * torch.randn(K, D, generator=generator) if K > 1 else torch.zeros(K, D)
        prior = {"prior_loc": loc0, "prior_log_scale": torch.zeros(K, D)}
        if weights == "softmax":
            prior["prior_logits"] = torch.zeros(K)
        for name, value in prior.items():
            if learn_prior:
                setattr(self, name, nn.Parameter(value))
            else:
                self.register_buffer(name, value)

    # --- pieces -------------------------------------------------------------------------
    def _check_x(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected x to be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 2 or x.shape[-1] != self.data_dim:
            raise ValueError(f"expected x of shape (N, P={self.data_dim}), got {tuple(x.shape)}")
        bad = int((~torch.isfinite(x)).sum())
        if bad:
            raise ValueError(
                f"expected finite values in x, got {bad} NaN/inf entries of {x.numel()}; "
                "drop or impute those rows first"
            )

    def _encode(self, x: torch.Tensor):
        """x (N, P) -> loc (N, K, D), scale (N, K, D), weight parameters (N, ·)."""
        K, D = self.num_components, self.latent_dim
        h = self.encoder(x)
        loc, raw_scale, w = h.split(self._sizes, -1)
        loc = loc.reshape(*x.shape[:-1], K, D)
        scale = nn.functional.softplus(raw_scale.reshape(*x.shape[:-1], K, D)) + 1e-4
        return loc, scale, w

    def _stick_posterior(self, w: torch.Tensor):
        a, b = (nn.functional.softplus(w) + 1e-3).chunk(2, -1)  # (N, T-1) each
        if self.weights == "kumaraswamy":
            return Kumaraswamy(a, b)
        return dist.Beta(a, b)

    def _stick_prior(self, like: torch.Tensor):
        one = like.new_ones(())
        return dist.Beta(one, one * self.alpha)

    def _prior_log_probs(self, z: torch.Tensor, log_w: torch.Tensor) -> torch.Tensor:
        """log p(z | v) = logsumexp_c(log w_c + log N(z; μ⁰_c, σ⁰_c)): z (..., D) -> (...)."""
        lp = dist.Normal(self.prior_loc, self.prior_log_scale.exp()).log_prob(z.unsqueeze(-2))
        return torch.logsumexp(log_w + lp.sum(-1), -1)

    def _prior_log_weights(self, like: torch.Tensor) -> torch.Tensor:
        if self.num_components == 1:
            return like.new_zeros(1)
        return torch.log_softmax(self.prior_logits, -1)

    def _likelihood(self, z: torch.Tensor):
        out = self.decoder(z)
        if self.likelihood == "bernoulli":
            return dist.Bernoulli(logits=out).to_event(1)
        return dist.Normal(out, self.decoder_log_scale.exp()).to_event(1)

    @property
    def decoder_log_scale(self) -> torch.Tensor:
        """log σ, (P,), the Normal decoder's per-feature log scale (``likelihood="normal"``).

        It is ``NOISE_SPEED`` times the parameter ``decoder_log_scale_unit``, so that Adam, which
        moves a parameter by about its learning rate per step, brings σ down to the data's
        noise level that many times sooner.
        """
        return NOISE_SPEED * self.decoder_log_scale_unit

    # --- model and guide ----------------------------------------------------------------
    @pyro_method
    def model(self, x: torch.Tensor, subsample: torch.Tensor | None = None) -> None:
        """Mixture prior over the code, decoder likelihood for x (N, P); see the class docs."""
        self._check_x(x)
        N, T = x.shape[0], self.num_components
        if self.sticks == "global":
            prior = self._stick_prior(x).expand([T - 1]).to_event(1)
            log_w = stick_breaking_log_weights(pyro.sample("v", prior))  # (..., T)
        with pyro.plate("data", N, subsample=subsample) as idx:
            xb = x[idx]
            if self.weights == "softmax":
                log_w = self._prior_log_weights(xb)  # (K,)
            elif self.sticks == "local":
                prior = self._stick_prior(xb).expand([len(idx), T - 1]).to_event(1)
                log_w = stick_breaking_log_weights(pyro.sample("v", prior))  # (..., N, T)
            scale0 = self.prior_log_scale.exp()
            if self.tie_components:
                c = pyro.sample("c", dist.Categorical(logits=log_w))  # (..., N)
                prior_z = dist.Normal(self.prior_loc[c], scale0[c]).to_event(1)
                z = pyro.sample("latent", prior_z)
                pyro.sample("x", self._likelihood(z), obs=xb)
                return
            # torch's MixtureSameFamily takes its batch shape from the components: give them
            # the weights' batch dims (sticks may carry particle dims) before mixing.
            K, D = self.prior_loc.shape
            components = dist.Normal(self.prior_loc, scale0).expand(log_w.shape[:-1] + (K, D))
            components = components.to_event(1)
            prior_z = dist.MixtureSameFamily(dist.Categorical(logits=log_w), components)
            z = pyro.sample("latent", prior_z)
            pyro.sample("x", self._likelihood(z), obs=xb)

    @pyro_method
    def guide(self, x: torch.Tensor, subsample: torch.Tensor | None = None) -> None:
        """Mixture posterior q(z | x) with the component k enumerated; see the class docs."""
        self._check_x(x)
        if self.refit_steps and torch.is_grad_enabled():
            _clusters.count_step_and_refit(self, x)
        N = x.shape[0]
        if self.sticks == "global":
            pyro.sample("v", self._stick_posterior(self.stick_raw).to_event(1))  # (..., T-1)
        with pyro.plate("data", N, subsample=subsample) as idx:
            loc, scale, w = self._encode(x[idx])
            log_w = self._posterior_log_weights(w, sample=True)  # (..., N, K)
            if self.tie_components:
                site, infer = "c", {"enumerate": "parallel"}
            else:
                site, infer = "k", {"enumerate": "parallel", "is_auxiliary": True}
            k = pyro.sample(site, dist.Categorical(logits=log_w), infer=infer)
            draw = _ComponentDraw(loc, scale, log_w, k, self.flows, not self.tie_components)
            pyro.sample("latent", draw)

    def _posterior_log_weights(self, w: torch.Tensor, sample: bool) -> torch.Tensor:
        """log q(k | x) (finite, global sticks) or log π(v), v ~ q(v | x) (local sticks)."""
        if self.sticks != "local":
            if self.num_components == 1:
                return w.new_zeros(*w.shape[:-1], 1)
            return torch.log_softmax(w, -1)
        q = self._stick_posterior(w).to_event(1)
        v = pyro.sample("v", q) if sample else q.base_dist.mean
        return stick_breaking_log_weights(v)

    # --- evaluation ---------------------------------------------------------------------
    def forward(self, x: torch.Tensor, num_samples: int = 1) -> torch.Tensor:
        """The per-row ELBO of the marginal guide, estimated from S draws: (N, P) -> (N,).

        .. math:: \\frac1S \\sum_{s=1}^S \\log \\frac{p(x, z_s)}{\\bar q(z_s \\mid x)},
            \\qquad z_s \\sim \\bar q(z \\mid x),

        the mean of :meth:`log_weights` (sticks integrated out): a lower bound of log p(x) in
        expectation, differentiable through the reparameterized draws z_s. Train with
        :meth:`model` and :meth:`guide`; :meth:`importance_log_likelihood` estimates log p(x)
        more tightly.

        Args:
            x: (N, P).
            num_samples: S >= 1.

        Returns:
            (N,).

        Raises:
            ValueError: x not of shape (N, P) or not finite, or a bad ``num_samples``.
        """
        if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
            raise ValueError(f"expected num_samples to be an int >= 1, got {num_samples!r}")
        self._check_x(x)
        return self._draw_and_weigh(x, num_samples)[1].mean(0)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-point posterior component probabilities and component means.

        The probabilities are q(k | x), the softmax head (finite weights and global sticks), or
        E_q[π(v)] = π(E_q[v]) for local sticks (independent sticks). They are the guide's
        weights: with tied components (the default) an amortized approximation of the cluster
        posterior, with untied ones not clusters at all. To cluster, use :meth:`predict` or
        :meth:`cluster_probs`.
        For Gaussian components the means are μ_k(x); for flow components they are g_k(μ_k(x)),
        the image of the base mean (the flow's mean has no closed form).

        Args:
            x: (N, P).

        Returns:
            probs (N, K) and means (N, K, D); Σ_k probs·means is :meth:`latent_mean` for
            Gaussian components.
        """
        self._check_x(x)
        loc, _, w = self._encode(x)
        probs = self._posterior_log_weights(w, sample=False).exp()
        if self.flows is not None:
            loc = self.flows.transform(loc)[0]
        return probs, loc

    @torch.no_grad()
    def latent_mean(self, x: torch.Tensor) -> torch.Tensor:
        """Σ_k π_k(x) · mean_k(x): (N, P) -> (N, D), a point summary of q(z | x)."""
        probs, means = self.encode(x)
        return (probs.unsqueeze(-1) * means).sum(-2)

    @torch.no_grad()
    def stick_kl(self, x: torch.Tensor | None = None) -> torch.Tensor:
        """KL(q(v) ‖ p(v)) of the sticks, by the registered divergence.

        Args:
            x: (N, P), needed for local sticks only.

        Returns:
            A scalar for global sticks; (N,), one KL(q(v | x_n) ‖ p(v)) per point, for local ones.

        Raises:
            ValueError: the model has no sticks (``weights="softmax"``), or local sticks and no x.
        """
        if self.weights == "softmax":
            raise ValueError("expected a DP model (weights='kumaraswamy' or 'beta'), got 'softmax'")
        if self.sticks == "global":
            w = self.stick_raw
        else:
            if x is None:
                raise ValueError("expected x (N, P) for local sticks, got None")
            self._check_x(x)
            w = self._encode(x)[2]
        q = self._stick_posterior(w)
        kl = torch.distributions.kl_divergence(q, self._stick_prior(w).expand(q.batch_shape))
        return kl.sum(-1)

    @torch.no_grad()
    def prior_weights(self) -> torch.Tensor:
        """Marginal prior weights of the K latent components, (K,).

        softmax(logits) for finite weights; for sticks the exact mean weights, π(E[v]) (the
        sticks are independent): under the posterior q(v) for global sticks (the weights of
        the posterior predictive), under the prior Beta(1, α) for local sticks, whose marginal
        model is the finite mixture with these fixed weights.
        """
        return self._mean_prior_log_weights().exp()

    def _mean_prior_log_weights(self) -> torch.Tensor:
        like = self.prior_loc
        if self.weights == "softmax":
            return self._prior_log_weights(like)
        if self.sticks == "global":
            mean_v = self._stick_posterior(self.stick_raw).mean  # (T-1,)
        else:
            mean_v = self._stick_prior(like).mean.expand(self.num_components - 1)
        return stick_breaking_log_weights(mean_v)  # (K,)

    # --- importance sampling (the functions live in _vae_importance) ------------------
    log_weights = _importance.log_weights
    _draw_and_weigh = _importance.draw_and_weigh
    importance_log_likelihood = _importance.importance_log_likelihood

    # --- clustering (the functions live in _vae_clusters) ------------------------------
    cluster_log_probs = _clusters.cluster_log_probs
    cluster_probs = _clusters.cluster_probs
    predict = _clusters.predict
    refit_prior = _clusters.refit_prior

    @torch.no_grad()
    def sample(self, num_samples: int, component: int | None = None) -> torch.Tensor:
        """Decoder means for codes drawn from the prior (or from prior component ``component``).

        For local sticks the weights are drawn per sample from the stick prior; for global
        sticks they are the posterior mean weights :meth:`prior_weights`.

        Returns:
            (num_samples, P): Bernoulli probabilities or Normal means.
        """
        K = self.num_components
        if component is not None and not 0 <= component < K:
            raise ValueError(f"expected component in [0, {K}), got {component!r}")
        like = self.prior_loc
        if component is None:
            if self.sticks != "local":
                log_w = self._mean_prior_log_weights().expand(num_samples, K)
            else:
                v = self._stick_prior(like).sample((num_samples, K - 1))
                log_w = stick_breaking_log_weights(v)
            c = dist.Categorical(logits=log_w).sample()
        else:
            c = torch.full((num_samples,), component, dtype=torch.long)
        z = dist.Normal(self.prior_loc[c], self.prior_log_scale.exp()[c]).sample()
        out = self.decoder(z)
        return torch.sigmoid(out) if self.likelihood == "bernoulli" else out
