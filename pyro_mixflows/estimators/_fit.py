"""``VariationalFlowMixture.fit`` as a pipeline: merge (DP), start, pre-train, train, select.

The stages themselves are in ``_stages`` (pure functions on standardized tensors); this module
strings them together for the estimator and writes its fitted attributes.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pyro
import torch
from pyro.infer import TraceEnum_ELBO

from . import _stages
from .diagnostics import adjusted_rand_index
from .infer import FitResult
from .models.dp import density_connected_groups, responsibilities

# A component is reported dead when its weight falls below this fraction of 1/K.
DEAD_WEIGHT_FRACTION = 0.01
# Dirichlet-process fits: components with at least this weight are "effective"; the others get
# no points in predict/predict_proba.
EFFECTIVE_WEIGHT_THRESHOLD = 0.01
# Warn when the training log-likelihood per row exceeds the held-out one by more than this many
# nats per feature (beyond two standard errors of the held-out mean).
OVERFIT_GAP_PER_FEATURE = 1.0
# The Gaussian start itself, as a capacity: no flow layers.
GAUSSIAN = {"num_layers": 0}
# The spectral start is not tried when its partition agrees this well (adjusted Rand index)
# with EM's: the two would train the same flows twice.
SAME_START_ARI = 0.99
# Starts that are candidates as Gaussian mixtures only: the Dirichlet-process Gaussian mixture.
GAUSSIAN_ONLY = ("em_dp",)


def run(est, X: np.ndarray, y, K: int, stage_labels, seed: int, capacities: list[dict]) -> None:
    """Fit ``est`` (a VariationalFlowMixture) with K components and set its fitted attributes.

    Starts (``starts``); for each, the Gaussian start as it is and the flows of every capacity
    trained from it (``candidate``); the candidate kept is ``_stages.select``'s. When EM's
    Gaussian mixture is kept untrained, EM is run once more on every row (held-out ones too),
    as ``GaussianMixture`` would be.
    """
    N, D = X.shape
    pyro.set_rng_seed(seed)
    generator = torch.Generator().manual_seed(int(torch.randint(2**31, ()).item()))
    x_all = est._tensor(X)
    est._mean = x_all.mean(0)
    scale = x_all.std(0) if N > 1 else torch.ones(D)
    est._scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    data = _stages.split((x_all - est._mean) / est._scale, y, est.validation_fraction, generator)
    starts_ = starts(est, data, K, stage_labels, generator, seed)
    schedule = _stages.Schedule(
        learning_rate=est.learning_rate,
        weight_decay=est.weight_decay,
        batch_size=est.batch_size,
        init_steps=est.init_steps,
        max_steps=est.max_steps,
        patience=est.patience,
        eval_every=est.eval_every,
        plateau_lr_factor=est.plateau_lr_factor,
        progress_bar=est.progress_bar,
        compile=est.compile,
        device_type=data.xs.device.type,
    )
    # The Gaussian start is a candidate as it is, unless something besides the components
    # needs training: sticks or Dirichlet weights, the amortized classifier, labelled rows.
    semi = data.y is not None and bool((data.y >= 0).any())
    train_gaussian = (
        est.weights in ("dirichlet", "dirichlet_process") or est.assignment == "amortized" or semi
    )
    runs = [c for c in capacities if est._architecture(c)["num_layers"] > 0]
    if train_gaussian or not runs:
        runs.append(GAUSSIAN)
    candidates = []
    for start in starts_:
        if start.name in GAUSSIAN_ONLY:  # a Gaussian candidate only, no flows trained from it
            candidates.append(candidate(est, start, GAUSSIAN, data, None))
            continue
        if not train_gaussian:
            candidates.append(candidate(est, start, GAUSSIAN, data, None))
        for capacity in runs:
            if capacity is not GAUSSIAN or train_gaussian:
                floor = None
                if not train_gaussian:  # the training loss is then the exact held-out loss
                    # the best held-out loss so far (Gaussian starts and flows trained before):
                    # a first training pass that ends above it skips the refinement
                    floor = min(-float(c.val_log_probs.sum()) for c in candidates)
                candidates.append(candidate(est, start, capacity, data, schedule, floor))
    chosen = _stages.select(candidates, [s.name for s in starts_])

    vm = chosen.module
    K_ = vm.components.num_components
    gap, se = _stages.overfit_gap(vm, data)  # before any refit on the held-out rows
    result = chosen.result
    if result is None:  # an untrained Gaussian start won: report the best training run
        trained = [c for c in candidates if c.result is not None]
        best = max(trained, key=lambda c: c.validation_log_likelihood, default=None)
        result = best.result if best is not None else FitResult(converged=True)
        if chosen.start in _stages.EM_STARTS and len(data.val_idx) > 0:
            full = _stages.em_start(
                data.xs, K_, est.n_init, est.reg_covar, seed, chosen.start, est.weight_concentration
            )
            _stages.place(vm, full, est.weight_concentration)
    est.module_ = vm
    est.n_components_ = int(K_)
    est.num_layers_ = int(est._architecture(chosen.capacity)["num_layers"])
    est.capacity_ = dict(chosen.capacity)
    est.start_ = chosen.start
    est.candidates_ = [c.summary() for c in candidates]
    est.fit_result_ = result
    est.n_features_in_ = D
    est.converged_ = bool(result.converged) if chosen.result is not None else True
    est.n_iter_ = int(result.num_steps)
    log_scale = float(est._scale.log().sum())
    with torch.no_grad():
        elbo = TraceEnum_ELBO(max_plate_nesting=1)
        x_train = data.x_train
        est.lower_bound_ = -float(elbo.loss(vm.model, vm.guide, x_train)) / len(x_train)
        est.lower_bound_ -= log_scale
    est.validation_log_likelihood_ = chosen.validation_log_likelihood - log_scale
    warn_overfit(gap, se, D)
    if est.weights != "dirichlet_process":
        warn_dead_components(est, data.x_train)


def starts(est, data: _stages.Split, K: int, stage_labels, generator, seed: int) -> list:
    """The starts of ``est.init``, in the order of preference when held-out rows tie.

    "auto": EM's Gaussian mixture (full or diagonal covariances by cross-validation), and before
    it the spectral partition when that one is clean (``_stages.CLEAN_NCUT_PER_CLUSTER``:
    clusters apart by low-density gaps, where EM cuts curved clusters wrongly) and differs from
    EM's (``SAME_START_ARI``). Labelled rows or a DP fit: a partition start only ("auto" and
    "em" mean "spectral" there). ``stage_labels``: the merge stage's groups (then the DP
    Gaussian mixture is a second, Gaussian-only start).
    """
    x = data.x_train
    if stage_labels is not None:
        # The groups of the merge stage, and the DP Gaussian mixture truncated at T (clusters
        # that overlap, which density connectivity joins).
        dp_gauss = _stages.em_start(
            x, est.n_components, est.n_init, est.reg_covar, seed, "em_dp", est.weight_concentration
        )
        return [_stages.label_start("merge", x, stage_labels(x), K), dp_gauss]
    y = data.y_train
    semi = y is not None and bool((y >= 0).any())
    dp = est.weights == "dirichlet_process"
    init = est.init
    if init in ("auto", "em") and (semi or dp):
        init = "spectral"
    em = []
    if init in ("auto", "em"):
        rows = data.xs[~data.labelled]  # EM is cheap: every unlabelled row in the CV
        name = _stages.covariance_by_cv(rows, K, est.n_init, est.reg_covar, seed)
        em = [_stages.em_start(x, K, est.n_init, est.reg_covar, seed, name)]
    if init == "em" or (init == "auto" and K == 1):
        return em
    labels = _stages.partition_labels(x, K, "spectral" if init == "auto" else init, y, generator)
    if init == "auto":
        found = em
        clean = _stages.ncut_per_cluster(x, labels, K, generator) < _stages.CLEAN_NCUT_PER_CLUSTER
        same = adjusted_rand_index(labels.cpu().numpy(), em[0].labels.cpu().numpy())
        if clean and same < SAME_START_ARI:
            found.insert(0, _stages.label_start("spectral", x, labels, K))
        return found
    if dp and not semi:
        # Largest initial cluster first: the stick prior expects weights to fall with k.
        counts = torch.bincount(labels, minlength=K)
        rank = torch.empty_like(counts)
        rank[counts.argsort(descending=True, stable=True)] = torch.arange(K, device=counts.device)
        labels = rank[labels]
    return [_stages.label_start(init, x, labels, K)]


def candidate(
    est, start, capacity: dict, data: _stages.Split, schedule, floor: float | None = None
) -> _stages.Candidate:
    """A model placed at ``start`` with ``capacity``; pre-trained (partition starts) and trained
    unless ``schedule`` is None (``floor``: see ``_stages.train``)."""
    pyro.clear_param_store()  # Pyro modules of equal layout share param-store names
    vm = est._build(data.xs.shape[1], start.loc.shape[0], capacity).to(data.xs.device)
    _stages.place(vm, start, est.weight_concentration)
    result = None
    if schedule is not None:
        if "weight_decay" in capacity:
            schedule = dataclasses.replace(schedule, weight_decay=capacity["weight_decay"])
        pre = None
        if start.name not in _stages.EM_STARTS:  # EM placed the Gaussians: nothing to pre-fit
            pre = _stages.pretrain(vm, data.x_train, start.labels, schedule)
        result = _stages.train(vm, data, schedule, floor)
        if result.compile_time is None and pre is not None:  # compiled while pre-training
            result.compile_time = pre.compile_time
    vm.eval()
    lp = _stages.held_out_log_probs(vm, data.x_val)
    return _stages.Candidate(start.name, capacity, vm, result, lp)


def merge_stage(est, X: np.ndarray, seed: int):
    """DP fit of Gaussian components, then their density-connected groups.

    Sets ``est.merge_groups_``. Returns a function from standardized rows to group labels, and
    the number of components for the final fit (the number of groups, at least 2 for the
    truncation).
    """
    params = {
        **est.get_params(),
        "num_layers": 0,
        "capacities": None,
        "merge": None,
        "random_state": seed,
    }
    stage = type(est)(**params).fit(X)
    generator = torch.Generator().manual_seed(seed)
    weights = torch.as_tensor(stage.weights_, dtype=torch.get_default_dtype())
    groups = density_connected_groups(
        stage.module_.components,
        weights,
        stage._standardize(X),
        threshold=EFFECTIVE_WEIGHT_THRESHOLD,
        ratio=est.merge_ratio,
        generator=generator,
    )
    est.merge_groups_ = groups.cpu().numpy()

    @torch.no_grad()
    def labels(x: torch.Tensor) -> torch.Tensor:
        comps = stage.module_.components
        r = responsibilities(comps, weights.to(x.device), x, EFFECTIVE_WEIGHT_THRESHOLD)
        return groups.to(x.device)[r.argmax(-1)]

    return labels, max(2, int(groups.max()) + 1)


def warn_overfit(gap: float, se: float, D: int) -> None:
    """Warn when the training rows score far above the held-out rows: ``gap`` nats per row
    above ``OVERFIT_GAP_PER_FEATURE`` * D by more than two standard errors ``se`` of the
    held-out mean."""
    if gap - 2 * se > OVERFIT_GAP_PER_FEATURE * D:
        warnings.warn(
            f"the held-out log-likelihood per row is {gap:.1f} nats below the training one "
            f"({gap / D:.2f} per feature): the model memorizes the training rows. Try fewer or "
            "smaller flow layers (num_layers, hidden_dims, or capacities to choose among), "
            "weight_decay, fewer components, or reducing the dimension (PCA) first",
            stacklevel=4,
        )


def warn_dead_components(est, x: torch.Tensor) -> None:
    """Warn about components that hold no training rows."""
    K = est.n_components_
    w = est.weights_
    hits = np.bincount(
        est.module_.mixture().responsibilities(x).argmax(-1).cpu().numpy(), minlength=K
    )
    dead = [k for k in range(K) if w[k] < DEAD_WEIGHT_FRACTION / K or hits[k] == 0]
    if dead:
        warnings.warn(
            f"components {dead} hold no training points (weights {np.round(w[dead], 4).tolist()}); "
            "consider fewer components or another init",
            stacklevel=4,
        )
