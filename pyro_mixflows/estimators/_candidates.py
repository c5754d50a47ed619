"""Candidates trained together: C mixtures of K flows each in one component-batched pass.

Candidate c of a :class:`CandidateMixtures` is the mixture of components ``c K, ..., c K + K - 1``
of one ``FlowComponents`` of C K components, with its own weights. The training loss is the sum of
the candidates' losses; their parameters are disjoint and Adam's update is elementwise, so training
them together is training each on its own, at the cost of about one run.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ..flows import FlowComponents


def component_subset(components: FlowComponents, index: torch.Tensor) -> FlowComponents:
    """A new ``FlowComponents`` holding copies of the components ``index`` (M,) of ``components``.

    Every parameter of ``FlowComponents`` carries the leading component axis; buffers
    (permutations, masks) are shared by all components and copied as they are.
    """
    config = dict(components.config)
    new = FlowComponents(len(index), components.dim, **config)
    p0 = next(components.parameters())
    new = new.to(device=p0.device, dtype=p0.dtype)
    index = torch.as_tensor(index, device=p0.device)
    with torch.no_grad():
        for name, p in components.named_parameters():
            new.get_parameter(name).copy_(p[index])
        for name, b in components.named_buffers():
            new.get_buffer(name).copy_(b)
    return new


class CandidateMixtures(nn.Module):
    """C mixtures of K flows each, side by side in one ``FlowComponents`` of C K components.

    .. math:: \\log p_c(x) = \\log \\sum_{k<K} w_{ck}\\, p_{cK + k}(x), \\quad c < C.

    Args:
        components: ``FlowComponents`` with C K components (candidate c owns ``c K .. c K + K - 1``).
        num_candidates: C.
        logits: (C, K) initial log weights; trained when ``learn_weights``, else fixed.
        labels: (C, N) long: the component of training row n observed for candidate c (-1: summed
            out). Semi-supervised rows, and the partition a start pre-trains on.
        learn_weights: learn the weights (point estimates) or keep them fixed.
    """

    def __init__(
        self,
        components: FlowComponents,
        num_candidates: int,
        logits: torch.Tensor,
        labels: torch.Tensor,
        *,
        learn_weights: bool = True,
    ) -> None:
        super().__init__()
        C = num_candidates
        if components.num_components % C:
            raise ValueError(
                f"expected C K components for C = {C} candidates, got {components.num_components}"
            )
        K = components.num_components // C
        if logits.shape != (C, K):
            raise ValueError(f"expected logits of shape ({C}, {K}), got {tuple(logits.shape)}")
        self.components = components
        self.num_candidates, self.num_components = C, K
        if learn_weights:
            self.logits = nn.Parameter(logits.clone())
        else:
            self.register_buffer("logits", logits.clone())
        self.register_buffer("labels", labels.clone())
        self.observed = bool((labels >= 0).any())  # any label observed (read once, not per step)
        self.register_buffer("offsets", torch.arange(C, device=labels.device).unsqueeze(-1) * K)
        self.candidate_losses = torch.zeros(C)  # each candidate's term of the last ``loss``

    def log_weights(self) -> torch.Tensor:
        """log w, (C, K)."""
        return self.logits.log_softmax(-1)

    def joint(self, x: torch.Tensor) -> torch.Tensor:
        """log w_ck + log p_ck(x): (N, D) -> (N, C, K)."""
        C, K = self.num_candidates, self.num_components
        return self.components(x).unflatten(-1, (C, K)) + self.log_weights()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """log p_c(x) of every candidate: (N, D) -> (N, C)."""
        return self.joint(x).logsumexp(-1)

    def model(self, x: torch.Tensor, *, subsample: torch.Tensor | None = None) -> None:
        """The C mixtures as one Pyro model: z (C, N) enumerated, x observed once per candidate.

        ``TraceEnum_ELBO(max_plate_nesting=2)`` with an empty guide gives ``loss`` (no labels).
        """
        pyro.module("candidates", self)
        log_w = self.log_weights().unsqueeze(-2)  # (C, 1, K)
        with pyro.plate("candidates", self.num_candidates, dim=-2):
            with pyro.plate("data", x.shape[0], subsample=subsample, dim=-1) as idx:
                z = pyro.sample(
                    "z", dist.Categorical(logits=log_w), infer={"enumerate": "parallel"}
                )
                pyro.sample("x", self.components.component(z + self.offsets), obs=x[idx])

    def guide(self, x: torch.Tensor, *, subsample: torch.Tensor | None = None) -> None:
        """No latent variable outside the enumerated z."""

    def loss(self, model, guide, x: torch.Tensor, *, subsample: torch.Tensor | None = None):
        """The negative log-likelihood of ``model`` in closed form, summed over the candidates.

        .. math:: -\\frac{N}{B} \\sum_{c} \\sum_{b} \\ell_{cb}, \\quad \\ell_{cb} =
                  \\log \\sum_k w_{ck} p_{ck}(x_b) \\text{ or, where } y_{cb} \\ge 0
                  \\text{ is observed, } \\log w_{c y} + \\log p_{c y}(x_b),

        over the B rows of the batch (``subsample``). A loss for :func:`~pyro_mixflows.infer.fit`
        (``model`` and ``guide`` are this module's, not called).
        """
        pyro.module("candidates", self)
        xb = x if subsample is None else x[subsample]
        joint = self.joint(xb)  # (B, C, K)
        terms = joint.logsumexp(-1)  # (B, C)
        if self.observed:
            labels = (self.labels if subsample is None else self.labels[:, subsample]).T  # (B, C)
            hard = joint.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
            terms = torch.where(labels >= 0, hard, terms)
        per_candidate = -(x.shape[0] / xb.shape[0]) * terms.sum(0)  # (C,)
        self.candidate_losses = per_candidate.detach()
        return per_candidate.sum()

    # --- candidates one by one ------------------------------------------------------------------
    @torch.no_grad()
    def set_labels(self, position: int, labels: torch.Tensor) -> None:
        """Candidate ``position``'s observed components of the training rows (N,), -1 = summed out."""
        self.labels[position] = labels
        self.observed = bool((self.labels >= 0).any())

    def component_index(self, candidates: torch.Tensor | list[int]) -> torch.Tensor:
        """The component indices (len(candidates) K,) of ``candidates``."""
        c = torch.as_tensor(candidates, dtype=torch.long, device=self.offsets.device)
        return (c.unsqueeze(-1) * self.num_components + torch.arange(
            self.num_components, device=c.device
        )).reshape(-1)  # fmt: skip

    def candidate_state(self, c: int) -> dict[str, torch.Tensor]:
        """Copies of candidate c's parameters (its rows of every tensor)."""
        index = self.component_index([c])
        state = {name: p.detach()[index].clone() for name, p in self.components.named_parameters()}
        state["logits"] = self.logits.detach()[c].clone()
        return state

    @torch.no_grad()
    def load_candidate_state(self, c: int, state: dict[str, torch.Tensor]) -> None:
        index = self.component_index([c])
        for name, p in self.components.named_parameters():
            p[index] = state[name]
        self.logits[c] = state["logits"]

    def subset(self, candidates: list[int]) -> CandidateMixtures:
        """A new module with copies of ``candidates`` only (in that order)."""
        index = torch.as_tensor(candidates, dtype=torch.long, device=self.offsets.device)
        return CandidateMixtures(
            component_subset(self.components, self.component_index(index)),
            len(candidates),
            self.logits.detach()[index],
            self.labels[index],
            learn_weights=isinstance(self.logits, nn.Parameter),
        )

    def row_index(self, name: str, candidates: list[int]) -> torch.Tensor:
        """The rows of the parameter ``name`` (as ``named_parameters`` names it) that belong to
        ``candidates``: the candidates themselves for the logits, their components otherwise."""
        if name == "logits":
            return torch.as_tensor(candidates, dtype=torch.long)
        return self.component_index(candidates).cpu()
