"""Deep latent Gaussian mixtures: a VAE with a mixture prior and a mixture posterior.

Approximate Inference for Deep Latent Gaussian Mixtures (Nalisnick, Hertel & Smyth, 2016),
with two additions: the posterior components may be normalizing flows, and the objective keeps
the full mixture density in its entropy term.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, pyro_method
from torch import nn

from ..distributions.kumaraswamy import Kumaraswamy
from ..flows import FlowComponents
from . import _vae_clusters as _clusters
from ._vae_guide import _ComponentDraw, _mlp, stick_breaking_log_weights

__all__ = ["MixtureVAE", "stick_breaking_log_weights"]

WEIGHTS = ("softmax", "kumaraswamy", "beta")
STICKS = ("global", "local")
LIKELIHOODS = ("bernoulli", "normal")
NOISE_SPEED = 3.0  # the Normal decoder's log scale is this times its parameter
# checkpoints from before NOISE_SPEED saved log σ itself under the old name


class MixtureVAE(PyroModule):
    """Variational autoencoder with a mixture prior and a mixture (or flow-mixture) posterior.

    Generative model, c_n the cluster (the prior's component) of point n:

    .. math::
        v_t \\sim \\mathrm{Beta}(1, α)\\ (t < T, \\text{DP only}), \\qquad
        c_n \\sim \\mathrm{Cat}(w), \\qquad z_n \\mid c_n \\sim \\mathcal{N}(μ^0_{c_n}, σ^0_{c_n}),
        \\qquad x_n \\mid z_n \\sim p_θ(x_n \\mid z_n),

    with w = softmax of a global parameter (finite, ``weights="softmax"``) or the
    stick-breaking weights w = π(v) of a Dirichlet process truncated at T: one set of sticks
    shared by all points (``sticks="global"``, the default: a DP mixture prior over the codes)
    or one set per point (``sticks="local"``, the form of Nalisnick et al.). The decoder is
    Bernoulli (binary data) or a diagonal Normal with a learned per-feature scale.

    Guide:

    .. math:: q(z \\mid x) = \\sum_k r_k(x)\\, q_k(z \\mid x), \\qquad
        z = g_k(μ_k(x) + σ_k(x) ⊙ ε),\\ ε \\sim \\mathcal{N}(0, I),

    with g_k the identity (Gaussian components) or the k-th flow of a :class:`FlowComponents`
    (``flow=...``), whose density follows by change of variables through ``inverse``. The
    responsibilities r(x) are a softmax head of the encoder (finite weights and global
    sticks; the global sticks then have their own non-amortized posterior q(v), Kumaraswamy
    or Beta, started at the prior), or, for local sticks, the prior weights themselves,
    r = π(v) with v ~ q(v | x). The component index k is an enumerated guide site and z | k is
    reparameterized.

    **Tied components** (``tie_components=True``, the default). The guide's index k is the
    model's cluster c: q(c, z | x) = r_c(x) q_c(z | x), each posterior component matched to its
    prior component (as in Nalisnick, Hertel & Smyth, 2016). ``TraceEnum_ELBO`` enumerates c
    in the guide and computes exactly

    .. math:: \\mathcal{L} = \\sum_n \\sum_c r_c(x_n) \\Big(\\mathbb{E}_{q_c(z|x_n)}\\big[
        \\log p(x_n \\mid z) + \\log \\mathcal{N}(z; μ^0_c, σ^0_c) - \\log q_c(z \\mid x_n)\\big]
        + \\log w_c - \\log r_c(x_n)\\Big)

    (inside E_{q(v)}, plus the stick term, with sticks), a bound looser than the untied one by
    E_q[KL(q(c | z, x) ‖ p(c | z))]: it pays for every point whose posterior component does not
    match the prior component that explains its code, which is what makes r(x) the cluster
    posterior's approximation and the index mean the cluster. On the synthetic clusters of
    ``benchmarks/vae_clusters.py`` (median of 3 seeds, ``infer.fit`` for 3000 steps, the
    defaults) its :meth:`predict` reaches ARI 0.894 on binarized data (k-means 0.882) and 0.992
    on continuous data (k-means 0.987); the untied objective reached 0.654 / 0.665. With 6
    clusters in 50 features (seeds 3-5) it reaches 0.904 binarized (k-means 0.900) but 0.957
    continuous (k-means 0.971): see docs/benchmarks.md.

    Local sticks tie the posterior responsibilities to the prior weights: r(x) can only move
    away from the mean weights E[π(v)] by paying KL(q(v | x) ‖ p(v)), which a Kumaraswamy
    posterior pays dearly for sharp weights. Trained on digits (``benchmarks/mixture_vae.py``,
    T = 10) they stay near the GEM means: only 2-3 components are ever the most probable one
    for a test image, and the 5-NN error of the posterior means is worse than a Gaussian
    VAE's; global sticks with free responsibilities use 9-10 components.

    **Untied objective** (``tie_components=False``). Train with
    ``TraceEnum_ELBO(max_plate_nesting=1)``. It enumerates k in the guide (c is summed out
    exactly in the model) and, because the z site's density is log q(z|x) - log r_k(x) (the full mixture), it
    computes exactly the stratified mixture ELBO

    .. math:: \\mathcal{L} = \\mathbb{E}_{q(v)} \\Big[\\sum_n \\sum_k r_k(x_n)
        \\, \\mathbb{E}_{q_k(z|x_n)} \\big[\\log p(x_n \\mid z) + \\log p(z \\mid v)
        - \\log q(z \\mid x_n)\\big]\\Big] + \\mathbb{E}_{q(v)}\\big[\\log p(v) - \\log q(v)\\big]

    (for local sticks, v, q(v | x_n) and the stick term move inside the sum over n), one
    reparameterized draw per component, no score-function term, and the entropy of the
    whole mixture (not the per-component shortcut Σ_k r_k H[q_k]). The stick term is the
    pathwise one-draw estimate with exact densities (TraceEnum_ELBO computes no analytic KLs);
    the KL(Kumaraswamy ‖ Beta) registered by :mod:`pyro_mixflows.distributions` serves
    :meth:`stick_kl`. The untied bound is the tighter one, but the guide's index k is then
    free: :meth:`encode`'s probabilities describe how q(z | x) is split among its own
    components (on the synthetic clusters, only 2 of 4 are ever the top one), not clusters.
    With K = 1 and a fixed N(0, I) prior both objectives are exactly a Gaussian VAE trained
    with ``Trace_ELBO``.

    **Clustering.** :meth:`cluster_probs` is the cluster posterior p(c | x): exact p(c | z)
    (:meth:`cluster_log_probs`) averaged over draws of q(z | x) with importance weights, and
    :meth:`predict` its argmax. Use these to cluster, with either objective.

    **Training the prior.** Gradient steps leave the tied model in a local optimum on some
    draws: early in training one prior component loses its points and another covers two
    clusters, and training never undoes it. By default the guide therefore calls
    :meth:`refit_prior` at training steps 500, 1000 and 2000 (``refit_steps``): an EM fit of
    the prior to draws of q(z | x), started from the current prior and from k-means++ seeds,
    which never lowers the codes' likelihood under the prior. A refitted component that no
    guide component follows (it took its codes from another one) gets a copy of that guide
    component's encoder outputs, so that the guide splits with it; without the copy, training
    pulls the prior back to the merged optimum within a few hundred steps. The steps are
    counted by the guide itself (calls with gradients on), so this happens under
    ``infer.fit`` as under ``SVI.step``; call :meth:`refit_prior` yourself for other schedules.
    The Normal decoder's log scale is learned in units of 1/``NOISE_SPEED`` (3): Adam moves a
    parameter by about the learning rate per step, and σ must fall from 1 to the data's noise
    level before the codes carry the clusters.

    Sites: "v" (sticks, DP only; outside the data plate when global), "c" (tied: the cluster,
    in the model and enumerated in the guide) or "k" (untied: guide-only, enumerated,
    auxiliary), "latent" (the code z, event D) and the observed "x" (event P), in the plate
    "data" that honours ``subsample`` (a LongTensor of row indices) for minibatching.

    Args:
        data_dim: P, the number of observed features.
        latent_dim: D.
        num_components: K for ``weights="softmax"``, the truncation T otherwise (>= 2).
        weights: "softmax" (finite), "kumaraswamy" or "beta" (DP sticks, posterior family).
        hidden_dims: widths of the encoder's and the decoder's hidden layers.
        likelihood: "bernoulli" or "normal".
        alpha: DP concentration α of the stick prior Beta(1, α).
        sticks: "global" (one posterior q(v) for the data set, free responsibilities) or
            "local" (amortized q(v | x) per point whose π(v) are the responsibilities).
        learn_prior: learn μ⁰, σ⁰ (and w in the finite case); otherwise they stay at their
            initial values.
        prior_spread: initial μ⁰_c are drawn from N(0, prior_spread²) (fixed generator);
            with K = 1 μ⁰ starts at 0 and σ⁰ at 1.
        flow: None for Gaussian components, or a :class:`FlowComponents` flow name.
        flow_kwargs: extra options for :class:`FlowComponents` (e.g. ``num_layers``).
        tie_components: match posterior component k to prior component c = k (default) or
            train the untied stratified mixture ELBO; see above.
        refit_steps: training steps at which the guide calls :meth:`refit_prior` on the data
            it was given (see "Training the prior" above); a training step is a guide call
            with gradients on. None (default): (500, 1000, 2000) for tied Gaussian components
            with a learnable prior and K >= 2, () (never) otherwise.

    Example::

        >>> vae = MixtureVAE(64, 8, num_components=5)
        >>> x = torch.rand(3, 64).round()
        >>> probs, means = vae.encode(x)
        >>> probs.shape, means.shape, vae.predict(x, num_samples=10).shape
        (torch.Size([3, 5]), torch.Size([3, 5, 8]), torch.Size([3]))
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

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # State dicts from before NOISE_SPEED hold log σ itself as "decoder_log_scale".
        old, new = prefix + "decoder_log_scale", prefix + "decoder_log_scale_unit"
        if self.likelihood == "normal" and old in state_dict and new not in state_dict:
            state_dict[new] = state_dict.pop(old) / NOISE_SPEED
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def decoder_log_scale(self) -> torch.Tensor:
        """log σ, (P,), the Normal decoder's per-feature log scale (``likelihood="normal"``)."""
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

    @torch.no_grad()
    def log_weights(
        self, x: torch.Tensor, num_samples: int, integrate_sticks: bool = True
    ) -> torch.Tensor:
        """Importance log-weights of draws from the guide (their mean is an ELBO).

        p(x | v) is linear in the weights π(v) and the sticks are independent, so the sticks
        integrate out exactly: the marginal prior over z is the mixture with the mean weights
        π̄ = E[π(v)] (:meth:`prior_weights`; under q(v) for global sticks, which makes
        E_{q(v)}[p(x | v)] the posterior predictive, under Beta(1, α) for local ones), and the
        marginal guide is the mixture with responsibilities r̄(x) (:meth:`encode`). By default
        (``integrate_sticks=True``) the log-weights are those of these marginals,

        .. math:: \\log p(x \\mid z) + \\log \\sum_c π̄_c\\, p_c(z)
            - \\log \\sum_k \\bar r_k(x)\\, q_k(z \\mid x), \\qquad z \\sim \\bar q(z \\mid x),

        an estimator of the same log p(x) as the joint one with less variance. With
        ``integrate_sticks=False`` the sticks are drawn too: for local sticks the weights are
        log p(x, v, z) - log q(v, z | x), the training objective's terms; for global sticks,
        v ~ q(v) once per draw and the weights are log p(x, z | v) - log q(z | x), without the
        shared stick term log p(v) - log q(v). Finite weights ignore the flag.

        Args:
            x: (N, P).
            num_samples: S >= 1.
            integrate_sticks: see above.

        Returns:
            (S, N).
        """
        self._check_x(x)
        return self._draw_and_weigh(x, num_samples, integrate_sticks)[1]

    def _draw_and_weigh(
        self, x: torch.Tensor, num_samples: int, integrate_sticks: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draws z (S, N, D) from the (marginal) guide and their importance log-weights (S, N)."""
        S, N = num_samples, x.shape[0]
        loc, scale, w = self._encode(x)
        log_pv = log_qv = 0.0
        if self.sticks is None or integrate_sticks:
            log_w_q = self._posterior_log_weights(w, sample=False).expand(S, N, -1)  # (S, N, K)
            log_w_p = self._mean_prior_log_weights()  # (K,)
        elif self.sticks == "global":
            v = self._stick_posterior(self.stick_raw).rsample((S, 1))  # (S, 1, T-1)
            log_w_q = self._posterior_log_weights(w, sample=False).expand(S, N, -1)
            log_w_p = stick_breaking_log_weights(v)  # (S, 1, T)
        else:
            q = self._stick_posterior(w)
            v = q.rsample((S,))  # (S, N, T-1)
            log_qv = q.log_prob(v).sum(-1)
            log_pv = self._stick_prior(x).log_prob(v).sum(-1)
            log_w_q = log_w_p = stick_breaking_log_weights(v)  # (S, N, T)
        if self.num_components == 1:
            k = torch.zeros(S, N, dtype=torch.long, device=x.device)
        else:
            k = dist.Categorical(logits=log_w_q).sample()  # (S, N)
        draw = _ComponentDraw(loc, scale, log_w_q, k, self.flows)
        z = draw.rsample()  # (S, N, D)
        log_qz = torch.logsumexp(log_w_q + draw.component_log_probs(z), -1)
        log_pz = self._prior_log_probs(z, log_w_p)
        log_px = self._likelihood(z).log_prob(x)
        return z, log_px + log_pz + log_pv - log_qz - log_qv

    # --- clustering (the functions live in _vae_clusters) ------------------------------
    cluster_log_probs = _clusters.cluster_log_probs
    cluster_probs = _clusters.cluster_probs
    predict = _clusters.predict
    refit_prior = _clusters.refit_prior

    @torch.no_grad()
    def importance_log_likelihood(
        self,
        x: torch.Tensor,
        num_samples: int = 500,
        batch_size: int = 100,
        integrate_sticks: bool = True,
    ) -> torch.Tensor:
        """Importance-sampled estimate of log p(x) per point, with the guide as proposal.

        .. math:: \\log \\hat p(x) = \\log \\frac1S \\sum_{s=1}^S
            \\frac{p(x, z_s)}{\\bar q(z_s \\mid x)}, \\qquad z_s \\sim \\bar q(z \\mid x),

        with the sticks integrated out exactly (or drawn as well, see :meth:`log_weights`); for
        global sticks p(x) is the posterior predictive E_{q(v)}[p(x | v)].

        Its expectation is at least the ELBO and increases to log p(x) as S grows
        (Importance Weighted Autoencoders, Burda et al., 2016, arXiv:1509.00519).

        Args:
            x: (N, P).
            num_samples: S >= 1.
            batch_size: draws evaluated at once (memory S_b·N·K·D).
            integrate_sticks: passed to :meth:`log_weights`.

        Returns:
            (N,) estimates.

        Raises:
            ValueError: bad sizes, or a non-finite log-weight (the draw would otherwise be
                dropped and bias the estimate).
        """
        for name, value in (("num_samples", num_samples), ("batch_size", batch_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"expected {name} to be an int >= 1, got {value!r}")
        self._check_x(x)
        chunks = []
        done = 0
        while done < num_samples:
            s = min(batch_size, num_samples - done)
            lw = self.log_weights(x, s, integrate_sticks)
            if not bool(torch.isfinite(lw).all()):
                bad = (~torch.isfinite(lw)).sum().item()
                raise ValueError(
                    f"expected finite importance log-weights, got {bad} non-finite of {lw.numel()}; "
                    "check the data and the trained parameters"
                )
            chunks.append(torch.logsumexp(lw, 0))
            done += s
        return torch.logsumexp(torch.stack(chunks), 0) - math.log(num_samples)

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
