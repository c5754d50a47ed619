"""``VariationalFlowMixture.fit`` as stages on plain values: prepare, start, train, select.

``fit_mixture(X, y, settings, seed)`` returns an :class:`Outcome`; the estimator alone turns it
into its fitted attributes. The stages:

1. ``prepare``: standardize per feature, hold out ``validation_fraction`` of the unlabelled rows.
2. ``make_starts``: EM's Gaussian mixture (full or diagonal covariances) and, where its clusters
   are apart and differ from EM's, the spectral partition (see ``pyro_mixflows.starts``).
3. Every start's Gaussian mixture is a candidate as it is. The flows of every capacity are trained
   from every start, all starts of one capacity together in one batched pass (``_train.race``):
   candidates that stop improving, or cannot catch the best model so far, stop early.
4. ``select``: the best on the held-out rows, never below the best Gaussian; a kept EM start is
   refitted on every row (it is then ``GaussianMixture``'s own fit).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, replace

import numpy as np
import pyro
import pyro.util
import torch

from ..diagnostics import adjusted_rand_index
from ..infer import FitResult
from ..models.vmonf import VMoNF
from ..starts import (
    Start,
    choose_covariance,
    initial_labels,
    match_to_classes,
    ncut_per_cluster,
    partition_start,
)
from ..starts._em import COVARIANCES, EM_STARTS, gaussian_mixture, start_from_gaussian_mixture
from ._capacity import GAUSSIAN, build, place, scored, train_capacity
from ._data import Data, Settings, prepare
from ._dp import dp_starts
from ._select import Candidate, overfit_gap, select
from ._train import plan_budget

# Dirichlet-process fits: components with at least this weight are "effective".
EFFECTIVE_WEIGHT_THRESHOLD = 0.01
# A partition is "clean" (its clusters are separated by gaps of low density) when its normalized
# cut per cluster on the 10-nearest-neighbour graph is below this; measured on standardized data:
# two moons 0.0005, two circles 0.0001, pinwheel (5 arms) 0.008, overlapping blobs 0.016, iris 0.05.
CLEAN_NCUT_PER_CLUSTER = 0.01
# The spectral start is not tried when its partition agrees this well (adjusted Rand index) with
# EM's: the two would train the same flows twice.
SAME_START_ARI = 0.99


@dataclass
class Outcome:
    """What a fit found, in plain values (the estimator sets its attributes from it)."""

    module: VMoNF
    mean: torch.Tensor
    scale: torch.Tensor
    start: str
    capacity: dict
    num_layers: int
    candidates: list[dict]
    result: FitResult | None
    n_iter: int
    converged: bool
    lower_bound: float
    validation_log_likelihood: float
    overfit_gap: tuple[float, float]
    merge_groups: np.ndarray | None
    cluster_module: VMoNF | None  # the Gaussian start whose clusters ``predict`` reports, or None
    core_agreement: float
    seconds: dict[str, float]
    budget: dict
    flows_untried: int | None = None  # the held-out rows, where too few to judge flows by


class Stopwatch:
    """Seconds per named stage (``with watch("train"): ...``)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0


def fit_mixture(X: np.ndarray, y: np.ndarray | None, settings: Settings, seed: int) -> Outcome:
    """Fit a mixture of flows to X (N, D) with labels y (N,) or None (see the module docstring).

    The fit draws from its own random state (``seed``) and trains in its own Pyro parameter store:
    the caller's random state and parameter store are as they were before.
    """
    rng = pyro.util.get_rng_state()
    try:
        with pyro.get_param_store().scope():
            return _fit_mixture(X, y, settings, seed)
    finally:
        pyro.util.set_rng_state(rng)


def _fit_mixture(X: np.ndarray, y: np.ndarray | None, settings: Settings, seed: int) -> Outcome:
    watch = Stopwatch()
    t0 = time.perf_counter()
    with watch("prepare"):
        pyro.set_rng_seed(seed)
        generator = torch.Generator().manual_seed(int(torch.randint(2**31, ()).item()))
        data = prepare(X, y, settings, generator)
    K, groups = settings.n_components, None
    dp = settings.weights == "dirichlet_process"
    if dp and not data.semi_supervised:
        with watch("starts"):
            starts, groups = dp_starts(data.x_train, settings, seed)
            gaussian_only = {s.name for s in starts[1:]}  # EM's mixture as it is
    else:
        gaussian_only = set()
        with watch("starts"):
            starts = make_starts(data, K, settings, generator, seed)
    budget = plan_budget(
        int(data.train_mask.sum()),
        max_steps=settings.max_steps,
        batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
    )
    # The Gaussian starts are candidates as they are (their Dirichlet or stick weights are the
    # conjugate posterior of their partition), unless something besides the components needs
    # training: the amortized classifier, labelled rows.
    train_gaussian = settings.assignment == "amortized" or data.semi_supervised
    candidates: list[Candidate] = []
    with watch("gaussians"):
        for start in starts:
            if start.name in gaussian_only or not train_gaussian:
                vm = build(data, start.num_components, settings.architecture_of(GAUSSIAN), settings)
                place(vm, start, settings.weight_concentration)
                candidates.append(scored(vm, GAUSSIAN, start.name, data))
    flows = [c for c in settings.capacities if settings.architecture_of(c)["num_layers"] > 0]
    n_val = len(data.val_idx)
    untried = (
        n_val
        if flows and settings.validation_fraction > 0 and n_val < MIN_VALIDATION_ROWS
        else None
    )
    if untried is not None:
        flows = []
    trainable = [s for s in starts if s.name not in gaussian_only]
    with watch("train"):
        for capacity in [GAUSSIAN, *flows] if train_gaussian else flows:
            group_budget = replace(budget, weight_decay=float(capacity.get("weight_decay", 0.0)))
            candidates += train_capacity(
                data, trainable, capacity, settings, group_budget, candidates
            )
    with watch("select"):
        chosen = select(candidates, [s.name for s in starts])
        vm = chosen.module
        gap = overfit_gap(vm.mixture(), data.x_train, data.x_val)  # before any refit
        cluster_module, agreement = None, math.nan
        start_gaussian = next(
            (c for c in candidates if c.gaussian and c.start == chosen.start), None
        )
        # EM's mixture is a clustering of its own; a partition start's Gaussians are only the
        # moments of clusters that flows follow (a spectral start's curved clusters)
        if not chosen.gaussian and start_gaussian is not None and chosen.start in EM_STARTS:
            agreement = core_agreement(vm, start_gaussian.module, data.x_train)
            if agreement < CORE_AGREEMENT:  # a flow took the core of another's cluster
                cluster_module = start_gaussian.module.eval()
    if chosen.result is None and chosen.start in EM_STARTS and len(data.val_idx) > 0:
        with watch("refit"):  # the kept Gaussian is EM's: refit on every row, as GaussianMixture
            start = em_stage_start(data.xs, chosen.module.components.num_components, settings,
                                   seed, COVARIANCE_OF[chosen.start])  # fmt: skip
            place(vm, start, settings.weight_concentration)
    log_scale = float(data.scale.log().sum())
    with torch.no_grad(), watch("select"):
        x_train = data.x_train
        lower_bound = float(vm.mixture().log_prob(x_train).mean()) - log_scale
        if not vm.exact_loss_applies():
            from pyro.infer import TraceEnum_ELBO

            elbo = TraceEnum_ELBO(max_plate_nesting=1)
            pyro.clear_param_store()  # modules of equal layout share param-store names
            lower_bound = -float(elbo.loss(vm.model, vm.guide, x_train)) / len(x_train) - log_scale
    watch.seconds["total"] = time.perf_counter() - t0
    arch = settings.architecture_of(chosen.capacity)
    return Outcome(
        module=vm.eval(),
        mean=data.mean,
        scale=data.scale,
        start=chosen.start,
        capacity=dict(chosen.capacity),
        num_layers=int(arch["num_layers"]),
        candidates=[c.summary() for c in candidates],
        result=chosen.result,
        n_iter=int(chosen.steps),
        converged=chosen.result is None or chosen.stop in ("patience", "cannot win"),
        lower_bound=lower_bound,
        validation_log_likelihood=chosen.validation_log_likelihood - log_scale,
        overfit_gap=gap,
        merge_groups=groups,
        cluster_module=cluster_module,
        core_agreement=agreement,
        seconds=watch.seconds,
        flows_untried=untried,
        budget=budget.describe(),
    )


COVARIANCE_OF = {name: cov for cov, name in COVARIANCES.items()}
# Flows kept from an EM start report their own clusters when at least this share of the training
# rows that EM's mixture assigns confidently (responsibility >= CONFIDENT) keep EM's component.
CORE_AGREEMENT = 0.9
# Flows are trained only where at least this many rows are held out to judge them by (unless the
# user holds out none, validation_fraction=0): with fewer, the Gaussian mixture is kept.
MIN_VALIDATION_ROWS = 5
CONFIDENT = 0.9


@torch.no_grad()
def core_agreement(flows: VMoNF, gaussian: VMoNF, x: torch.Tensor) -> float:
    """The share of the rows x (N, D) that the Gaussian start assigns confidently (responsibility
    at least ``CONFIDENT``) which the flows assign to the same component. Flows start from that
    Gaussian mixture, component for component: they refine its clusters where this is high, and
    a component has taken the core of another's cluster where it is low."""
    r = gaussian.mixture().responsibilities(x)  # (N, K)
    confident = r.max(-1).values >= CONFIDENT
    if not bool(confident.any()):
        return 1.0
    same = flows.mixture().responsibilities(x).argmax(-1) == r.argmax(-1)
    return float(same[confident].float().mean())


def em_stage_start(x, K: int, settings: Settings, seed: int, covariance: str) -> Start:
    gm = gaussian_mixture(
        x, K, covariance=covariance, n_init=settings.n_init, reg_covar=settings.reg_covar,
        random_state=seed, concentration=settings.weight_concentration,
    )  # fmt: skip
    return start_from_gaussian_mixture(gm, x, COVARIANCES[covariance])


def make_starts(data: Data, K: int, settings: Settings, generator, seed: int) -> list[Start]:
    """The starts of ``settings.init``, in the order of preference when held-out rows tie.

    "auto": EM's Gaussian mixture (full or diagonal covariances, ``choose_covariance``), and before
    it the spectral partition when that one is clean (``CLEAN_NCUT_PER_CLUSTER``: clusters apart by
    low-density gaps, where EM cuts curved clusters wrongly) and differs from EM's
    (``SAME_START_ARI``). Labelled rows or a DP fit: a partition start only ("auto" and "em" mean
    "spectral" there).
    """
    x = data.x_train
    y = data.y_train
    semi = data.semi_supervised
    dp = settings.weights == "dirichlet_process"
    init = settings.init
    if init in ("auto", "em") and (semi or dp):
        init = "spectral"
    found: list[Start] = []
    if init in ("auto", "em"):
        options = dict(n_init=settings.n_init, reg_covar=settings.reg_covar, random_state=seed)
        full = gaussian_mixture(x, K, covariance="full", **options)
        covariance = choose_covariance(x, K, full=full, **options)
        gm = full if covariance == "full" else gaussian_mixture(x, K, covariance="diag", **options)
        found.append(start_from_gaussian_mixture(gm, x, COVARIANCES[covariance]))
    if init == "em" or (init == "auto" and K == 1):
        return found
    labels = initial_labels(x, K, "spectral" if init == "auto" else init, generator=generator)
    if y is not None:
        labels = match_to_classes(labels, y, K)
    if init == "auto":
        clean = ncut_per_cluster(x, labels, K, generator) < CLEAN_NCUT_PER_CLUSTER
        same = adjusted_rand_index(labels.cpu().numpy(), found[0].labels.cpu().numpy())
        if clean and same < SAME_START_ARI:
            found.insert(0, partition_start(x, labels, K, name="spectral"))
        return found
    if dp and not semi:
        # Largest initial cluster first: the stick prior expects weights to fall with k.
        counts = torch.bincount(labels, minlength=K)
        rank = torch.empty_like(counts)
        rank[counts.argsort(descending=True, stable=True)] = torch.arange(K, device=counts.device)
        labels = rank[labels]
    return [partition_start(x, labels, K, name=init)]
