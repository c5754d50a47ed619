"""The stages of ``VariationalFlowMixture.fit``: split -> start -> pre-train -> train -> select.

Each stage is a small function on standardized tensors; ``_pipeline`` strings them together.

- ``split``: held-out rows for early stopping and for every choice below.
- ``em_start`` / ``label_start``: a start is a Gaussian mixture (means, Cholesky factors,
  weights) plus hard labels of the training rows. EM (scikit-learn's ``GaussianMixture`` with
  restarts; full or diagonal covariances by ``covariance_by_cv``; or the Dirichlet-process
  ``BayesianGaussianMixture``) gives the maximum-likelihood Gaussian mixture; the label starts
  (spectral, k-means, random, the DP merge groups) give the moments of a partition, and
  ``ncut_per_cluster`` tells whether a partition's clusters are apart.
- ``place``: a model's affine maps and weights set from a start. With the flow layers at the
  identity the model then *is* the start's Gaussian mixture.
- ``pretrain`` / ``train``: hard-label pre-training (label starts only), then the ELBO with
  held-out early stopping and the low-step-size plateau pass. With "learned" or "uniform"
  weights the ELBO is taken in closed form (``VMoNF.exact_loss``: the values and gradients of
  ``Trace_ELBO`` / ``TraceEnum_ELBO`` without Pyro's per-step tracing).
- ``select``: the candidate with the best held-out log-likelihood, never below the Gaussian
  start's; ties broken by a fixed preference (see ``select``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO
from scipy.optimize import linear_sum_assignment

from ._init import MAX_SPECTRAL_POINTS, _knn_affinity, initial_labels, normalized_cut
from .infer import FitResult
from .infer import fit as _fit
from .infer._adam import MultiTensorAdam

# Label starts: ridge added to each cluster's covariance (standardized units), so that small
# clusters still give a positive-definite Cholesky factor.
LABEL_COVARIANCE_RIDGE = 1e-2
# A partition is "clean" (its clusters are separated by gaps of low density) when its normalized
# cut per cluster on the 10-nearest-neighbour graph is below this; measured on standardized data:
# two moons 0.0005, two circles 0.0001, pinwheel (5 arms) 0.008, overlapping blobs (breast
# cancer PCA-2) 0.016, iris 0.05.
CLEAN_NCUT_PER_CLUSTER = 0.01
# Candidates whose held-out log-likelihood is within this many standard errors of the best
# (paired over the held-out rows) are tied; ``select`` then applies its preference order.
TIE_STANDARD_ERRORS = 2.0


@dataclass
class Split:
    """Standardized rows and which of them are held out.

    Attributes:
        xs: all rows, (N, D).
        train_mask: (N,) bool, True for the training rows.
        val_idx: (n_val,) indices of the held-out rows (unlabelled rows only).
        labelled: (N,) bool, rows with a label (y >= 0).
        y: (N,) long labels (-1 = unlabelled) or None.
    """

    xs: torch.Tensor
    train_mask: torch.Tensor
    val_idx: torch.Tensor
    labelled: torch.Tensor
    y: torch.Tensor | None

    @property
    def x_train(self) -> torch.Tensor:
        return self.xs[self.train_mask]

    @property
    def x_val(self) -> torch.Tensor:
        return self.xs[self.val_idx]

    @property
    def y_train(self) -> torch.Tensor | None:
        return None if self.y is None else self.y[self.train_mask]


def split(xs, y, validation_fraction: float, generator: torch.Generator) -> Split:
    """Hold out ``validation_fraction`` of the unlabelled rows (at least one row stays in)."""
    N = xs.shape[0]
    perm = torch.randperm(N, generator=generator).to(xs.device)
    labelled = torch.zeros(N, dtype=torch.bool, device=xs.device)
    y_t = None
    if y is not None:
        y_t = torch.as_tensor(y, device=xs.device)
        labelled = y_t >= 0
    candidates = perm[~labelled[perm]]
    n_val = min(int(validation_fraction * N), max(0, len(candidates) - 1))
    val_idx = candidates[:n_val]
    train_mask = torch.ones(N, dtype=torch.bool, device=xs.device)
    train_mask[val_idx] = False
    return Split(xs, train_mask, val_idx, labelled, y_t)


@dataclass
class Start:
    """A full-covariance Gaussian mixture and hard labels of the training rows.

    Attributes:
        name: "em", "spectral", "kmeans" or "random".
        loc: (K, D) means; scale_tril: (K, D, D) Cholesky factors; weights: (K,).
        labels: (n_train,) long, the component of each training row.
    """

    name: str
    loc: torch.Tensor
    scale_tril: torch.Tensor
    weights: torch.Tensor
    labels: torch.Tensor


# EM starts: name -> the covariance type of scikit-learn's Gaussian mixture ("em_dp": the
# variational Dirichlet-process Gaussian mixture, BayesianGaussianMixture).
EM_STARTS = {"em": "full", "em_diag": "diag", "em_dp": "full"}
# Folds of the cross-validation that picks full or diagonal covariances for the EM start.
CV_FOLDS = 5


def em_start(
    x: torch.Tensor,
    K: int,
    n_init: int,
    reg_covar: float,
    seed: int,
    name: str = "em",
    concentration: float = 1.0,
) -> Start:
    """EM for a Gaussian mixture (scikit-learn, ``n_init`` restarts) on x (n, D).

    ``name``: "em" (full covariances), "em_diag" (diagonal) or "em_dp" (variational
    Dirichlet-process Gaussian mixture truncated at K, with ``concentration``).
    """
    from sklearn.mixture import BayesianGaussianMixture, GaussianMixture

    kind = EM_STARTS[name]
    common = dict(covariance_type=kind, n_init=n_init, reg_covar=reg_covar, random_state=seed)
    if name == "em_dp":
        gm = BayesianGaussianMixture(
            n_components=K,
            weight_concentration_prior_type="dirichlet_process",
            weight_concentration_prior=concentration,
            max_iter=500,
            **common,
        )
    else:
        gm = GaussianMixture(K, **common)
    X = x.detach().cpu().to(torch.float64).numpy()
    labels = gm.fit_predict(X)
    as_t = lambda a: torch.as_tensor(np.asarray(a), dtype=x.dtype, device=x.device)  # noqa: E731
    # Cholesky in float64 before the cast, from scikit-learn's own covariances.
    cov = gm.covariances_
    chol = (
        np.sqrt(cov)[..., None] * np.eye(cov.shape[-1])
        if kind == "diag"
        else np.linalg.cholesky(cov)
    )
    return Start(name, as_t(gm.means_), as_t(chol), as_t(gm.weights_), as_t(labels).long())


def covariance_by_cv(x: torch.Tensor, K: int, n_init: int, reg_covar: float, seed: int) -> str:
    """ "em" (full covariances) or "em_diag" (diagonal) for the EM start, by ``CV_FOLDS``-fold
    cross-validation on x (n, D).

    Every row gets its held-out log-density under both mixtures (fitted without its fold);
    diagonal wins only when its mean is higher by more than ``TIE_STANDARD_ERRORS`` standard
    errors of the paired per-row differences: full covariance is the default, as in
    ``GaussianMixture``. EM is cheap, so all rows take part here, not only the held-out ones the
    flows are judged on. "em" when there are too few rows (fewer than ``CV_FOLDS`` * 2K).
    """
    from sklearn.mixture import GaussianMixture
    from sklearn.model_selection import KFold

    X = x.detach().cpu().to(torch.float64).numpy()
    if X.shape[1] < 2 or X.shape[0] < CV_FOLDS * 2 * K:
        return "em"
    rows = {name: np.empty(len(X)) for name in ("em", "em_diag")}
    for tr, te in KFold(CV_FOLDS, shuffle=True, random_state=seed).split(X):
        for name, lp in rows.items():
            gm = GaussianMixture(
                K, covariance_type=EM_STARTS[name], n_init=n_init, reg_covar=reg_covar,
                random_state=seed,
            )  # fmt: skip
            lp[te] = gm.fit(X[tr]).score_samples(X[te])
    diff = rows["em_diag"] - rows["em"]
    se = diff.std(ddof=1) / math.sqrt(len(diff))
    return "em_diag" if diff.mean() > TIE_STANDARD_ERRORS * se else "em"


def partition_labels(
    x: torch.Tensor, K: int, method: str, y: torch.Tensor | None, generator: torch.Generator
) -> torch.Tensor:
    """An initial partition of x (n, D) by ``method`` (see ``initial_labels``): (n,) long.

    With labels ``y`` (n,) (-1 = unlabelled), clusters are matched to classes on the labelled
    rows (Hungarian assignment) and the labels then override the partition there.
    """
    labels = initial_labels(x, K, method, generator=generator)
    if y is None or not bool((y >= 0).any()):
        return labels
    known = y >= 0
    table = torch.zeros(K, K)
    table.index_put_(
        (y[known].cpu(), labels[known].cpu()), torch.ones(int(known.sum())), accumulate=True
    )
    rows, cols = linear_sum_assignment(-table.numpy())
    mapping = torch.empty(K, dtype=torch.long)
    mapping[torch.as_tensor(cols)] = torch.as_tensor(rows)
    labels = mapping.to(labels.device)[labels]
    return torch.where(known, y, labels)


def ncut_per_cluster(
    x: torch.Tensor, labels: torch.Tensor, K: int, generator: torch.Generator
) -> float:
    """Normalized cut of a partition of x (n, D) on the 10-NN graph, divided by K (on at most
    ``MAX_SPECTRAL_POINTS`` rows)."""
    if x.shape[0] > MAX_SPECTRAL_POINTS:
        keep = torch.randperm(x.shape[0], generator=generator)[:MAX_SPECTRAL_POINTS]
        x, labels = x[keep.to(x.device)], labels[keep.to(labels.device)]
    affinity = _knn_affinity(x.detach().to(torch.float64), 10)
    return normalized_cut(affinity, labels.to(affinity.device), K) / K


def label_start(name: str, x: torch.Tensor, labels: torch.Tensor, K: int) -> Start:
    """Per-cluster means and covariances (+ a small ridge) of a partition of x (n, D).

    A cluster with fewer than two rows takes the moments of all rows.
    """
    D = x.shape[1]
    x64 = x.detach().to(torch.float64)
    eye = torch.eye(D, dtype=x64.dtype, device=x.device)
    locs, covs, counts = [], [], []
    for k in range(K):
        members = x64[labels == k]
        if len(members) < 2:
            members = x64
        locs.append(members.mean(0))
        covs.append(torch.cov(members.T).reshape(D, D) + LABEL_COVARIANCE_RIDGE * eye)
        counts.append(float((labels == k).sum()))
    chol = torch.linalg.cholesky(torch.stack(covs))
    weights = torch.tensor(counts, dtype=x64.dtype) + 1.0
    return Start(
        name,
        torch.stack(locs).to(x.dtype),
        chol.to(x.dtype),
        (weights / weights.sum()).to(x.dtype).to(x.device),
        labels,
    )


def place(vm, start: Start, concentration: float) -> None:
    """Set the components' affine maps and the mixture weights of ``vm`` (a VMoNF) from a start.

    Weights: "learned" logits = log weights; "dirichlet" q = Dirichlet(alpha + n_k); Dirichlet
    process: q(v) = the sticks' conjugate posterior given the start's labels,
    Beta(1 + n_k, alpha + n_{k+1} + ... + n_K) (a small alpha puts the prior's sticks so close
    to 1 that float32 draws and their gradients break).
    """
    vm.components.set_gaussian(start.loc, start.scale_tril)
    K = start.loc.shape[0]
    counts = torch.bincount(start.labels, minlength=K).to(start.loc.dtype)
    with torch.no_grad():
        if vm.weights == "learned":
            vm.weight_logits.copy_(start.weights.clamp_min(1e-12).log())
        elif vm.weights == "dirichlet":
            vm.weight_concentration_q = concentration + counts
        elif vm.weights == "dirichlet_process":
            after = counts.flip(0).cumsum(0).flip(0)[1:]  # n_{k+1} + ... + n_K for k < K
            vm.stick_a = 1.0 + counts[:-1]
            vm.stick_b = (concentration + after).clamp_min(1.0)


# Devices where the estimator's Adam runs fused (torch's fused Adam kernels)
FUSED_ADAM_DEVICES = ("cpu", "cuda")


@dataclass
class Schedule:
    """The optimizer settings every training stage uses (from the estimator's parameters)."""

    learning_rate: float
    weight_decay: float
    batch_size: int | None
    init_steps: int
    max_steps: int
    patience: int
    eval_every: int
    plateau_lr_factor: float | None
    progress_bar: bool = False
    compile: bool | str = False
    device_type: str = "cpu"

    def optim(self, factor: float = 1.0):
        options = {"lr": self.learning_rate * factor, "weight_decay": self.weight_decay}
        if self.device_type in FUSED_ADAM_DEVICES:
            # one kernel per parameter tensor instead of ~10 small ops: the same update up to
            # float rounding, 3-10 % of a training step at the demo's scale
            options["fused"] = True
        # one update call for all parameter tensors (Pyro steps one Adam per tensor): the same
        # update bit for bit, ~1.1 ms less of an ~8 ms compiled step at the demo's scale (profiled)
        return MultiTensorAdam(options)

    def batch(self, n: int) -> int | None:
        return self.batch_size if self.batch_size and self.batch_size < n else None


def pretrain(vm, x: torch.Tensor, labels: torch.Tensor, schedule: Schedule) -> FitResult | None:
    """Maximum likelihood of each component on its hard-labelled rows (``init_steps`` steps)."""
    if schedule.init_steps < 1:
        return None
    return _fit(
        vm.model_labelled,
        vm.guide_labelled,
        x,
        labels,
        loss=vm.exact_loss if vm.exact_loss_applies() else Trace_ELBO(),
        num_steps=schedule.init_steps,
        optim=schedule.optim(),
        batch_size=schedule.batch(len(x)),
        seed=None,
        progress_bar=schedule.progress_bar and "pre-train on initial clusters",
        compile=schedule.compile,
    )


def train(vm, data: Split, schedule: Schedule, floor: float | None = None) -> FitResult:
    """The ELBO with held-out early stopping, then once more at a lower step size if it plateaued.

    The plateau pass keeps its parameters only if one of its evaluations improved on the first.
    It is skipped when the first pass's best held-out loss is above ``floor`` (the best held-out
    loss among the candidates already built: the Gaussian starts and the flows trained before,
    which the selection would keep over this one unless the refinement overtook them).
    """
    x_train = data.x_train
    train_lab = data.labelled[data.train_mask]
    x_unl = x_train[~train_lab]
    if len(x_unl) == 0:
        raise ValueError("expected at least one unlabelled or held-out row; got only labels")
    extra: tuple = ()
    if bool(train_lab.any()):
        extra = (x_train[train_lab], data.y_train[train_lab])
    val_args = (data.x_val,) if len(data.val_idx) > 0 else None
    # the ELBO in closed form where it has one (same value and gradients, without Pyro's
    # per-step tracing and enumeration); Dirichlet / DP weights keep the Monte Carlo ELBO
    elbo = vm.exact_loss if vm.exact_loss_applies() else TraceEnum_ELBO(max_plate_nesting=1)

    def run(num_steps, factor, stage):
        return _fit(
            vm.model,
            vm.guide,
            x_unl,
            *extra,
            loss=elbo,
            num_steps=num_steps,
            val_args=val_args,
            patience=schedule.patience,
            eval_every=schedule.eval_every,
            optim=schedule.optim(factor),
            batch_size=schedule.batch(len(x_unl)),
            seed=None,
            progress_bar=schedule.progress_bar and stage,
            compile=schedule.compile,
        )

    result = run(schedule.max_steps, 1.0, "train")
    beaten = floor is not None and result.best_loss is not None and result.best_loss > floor
    if val_args is not None and schedule.plateau_lr_factor and result.converged and not beaten:
        before = {k: v.detach().clone() for k, v in vm.state_dict().items()}
        steps = max(schedule.max_steps - result.num_steps, schedule.patience * schedule.eval_every)
        refined = run(steps, schedule.plateau_lr_factor, "refine at a lower step size")
        if refined.best_loss > result.best_loss:  # no evaluation improved: keep the first
            with torch.no_grad():
                vm.load_state_dict(before)
        result = chain_results(result, refined)
    return result


def chain_results(first: FitResult, second: FitResult) -> FitResult:
    """One ``FitResult`` for two consecutive ``fit`` calls (steps of the second shifted)."""
    shift = first.num_steps
    best_second = second.best_loss is not None and (
        first.best_loss is None or second.best_loss <= first.best_loss
    )
    best = second if best_second else first
    return FitResult(
        losses=first.losses + second.losses,
        val_losses=first.val_losses + second.val_losses,
        val_steps=first.val_steps + [s + shift for s in second.val_steps],
        best_step=(second.best_step + shift) if best_second else first.best_step,
        best_loss=best.best_loss,
        converged=second.converged,
        num_steps=first.num_steps + second.num_steps,
        time=first.time + second.time,
        stop_reason=second.stop_reason,
        compile_time=first.compile_time if first.compile_time is not None else second.compile_time,
    )


@dataclass
class Candidate:
    """One fitted model with its held-out per-row log-densities.

    Attributes:
        start: the start's name; capacity: the architecture overrides ({} = the estimator's own,
            {"num_layers": 0} = the Gaussian start itself); module: the VMoNF; result: its
            training history (None when not trained); val_log_probs: (n_val,).
    """

    start: str
    capacity: dict
    module: object
    result: FitResult | None
    val_log_probs: torch.Tensor

    @property
    def gaussian(self) -> bool:
        return self.capacity.get("num_layers", 1) == 0

    @property
    def validation_log_likelihood(self) -> float:
        """Mean held-out log-density (standardized units); NaN without held-out rows."""
        if self.val_log_probs.numel() == 0:
            return math.nan
        return float(self.val_log_probs.mean())

    def summary(self) -> dict:
        return {
            "start": self.start,
            "capacity": dict(self.capacity),
            "validation_log_likelihood": self.validation_log_likelihood,
            "steps": 0 if self.result is None else int(self.result.num_steps),
        }


@torch.no_grad()
def held_out_log_probs(vm, x_val: torch.Tensor) -> torch.Tensor:
    """log p(x) of the held-out rows under ``vm``'s mixture: (n_val, D) -> (n_val,)."""
    if x_val.shape[0] == 0:
        return x_val.new_zeros(0)
    return vm.mixture().log_prob(x_val)


def select(candidates: list[Candidate], preference: list[str]) -> Candidate:
    """The candidate to keep, by held-out log-likelihood.

    1. Only candidates at least as good on the held-out rows as the best Gaussian start are
       eligible, so the fit is never worse there than the Gaussian mixture it contains.
    2. The best eligible one, and every eligible one within ``TIE_STANDARD_ERRORS`` standard
       errors of it (paired differences over the held-out rows), are tied.
    3. Among tied candidates: fewer flow parameters first (a Gaussian before flows), then the
       start that comes first in ``preference``.

    Without held-out rows there is nothing to compare: the first trained candidate is kept
    (the first Gaussian when nothing was trained).
    """
    if candidates[0].val_log_probs.numel() == 0:
        trained = [c for c in candidates if c.result is not None]
        return (trained or candidates)[0]
    gaussian = [c.validation_log_likelihood for c in candidates if c.gaussian]
    floor = max(gaussian) if gaussian else -math.inf
    eligible = [c for c in candidates if c.validation_log_likelihood >= floor]
    best = max(eligible, key=lambda c: c.validation_log_likelihood)
    n = best.val_log_probs.numel()

    def tied(c: Candidate) -> bool:
        diff = best.val_log_probs - c.val_log_probs
        se = float(diff.std()) / math.sqrt(n) if n > 1 else 0.0
        return float(diff.mean()) <= TIE_STANDARD_ERRORS * se

    ties = [c for c in eligible if tied(c)]

    def rank(c: Candidate):
        size = sum(p.numel() for p in c.module.components.layers.parameters())
        order = preference.index(c.start) if c.start in preference else len(preference)
        return (size, order)

    return min(ties, key=rank)


@torch.no_grad()
def overfit_gap(vm, data: Split) -> tuple[float, float]:
    """Training minus held-out mean log-density per row, and the standard error of the held-out
    mean (NaN, NaN without held-out rows)."""
    if len(data.val_idx) == 0:
        return math.nan, math.nan
    mixture = vm.mixture()
    val = mixture.log_prob(data.x_val)
    se = float(val.std()) / math.sqrt(len(val)) if len(val) > 1 else math.inf
    return float(mixture.log_prob(data.x_train).mean() - val.mean()), se
