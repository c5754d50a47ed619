"""EM's Gaussian mixture as a start (scikit-learn's ``GaussianMixture``), and its covariance type."""

from __future__ import annotations

import math

import numpy as np
import torch

from ._start import Start

# EM starts: name -> the covariance type of scikit-learn's Gaussian mixture ("em_dp": the
# variational Dirichlet-process Gaussian mixture, BayesianGaussianMixture).
EM_STARTS = {"em": "full", "em_diag": "diag", "em_dp": "full"}
COVARIANCES = {"full": "em", "diag": "em_diag", "dirichlet_process": "em_dp"}
# Folds of the cross-validation that picks full or diagonal covariances.
CV_FOLDS = 5
# EM restarts of each fold's fits (a comparison of the two covariance types, not the final fit).
CV_RESTARTS = 1
# Diagonal covariances win the cross-validation only when their mean held-out log-density is
# higher by more than this many standard errors of the paired per-row differences.
CV_STANDARD_ERRORS = 2.0
# The BIC screen of ``choose_covariance`` trusts a full mixture whose components each hold this
# many rows per dimension (plus one) at least.
SCREEN_ROWS_PER_DIMENSION = 2


def _numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().to(torch.float64).numpy()


def gaussian_mixture(
    x: torch.Tensor | np.ndarray,
    num_components: int,
    *,
    covariance: str = "full",
    n_init: int = 5,
    reg_covar: float = 1e-6,
    random_state: int | None = None,
    concentration: float = 1.0,
):
    """scikit-learn's Gaussian mixture fitted by EM on x (N, D) (a fitted ``GaussianMixture``, or
    ``BayesianGaussianMixture`` for ``covariance="dirichlet_process"``, full covariances)."""
    from sklearn.mixture import BayesianGaussianMixture, GaussianMixture

    if covariance not in COVARIANCES:
        raise ValueError(f"expected covariance in {tuple(COVARIANCES)}, got {covariance!r}")
    kind = "full" if covariance == "dirichlet_process" else covariance
    common = dict(
        covariance_type=kind, n_init=n_init, reg_covar=reg_covar, random_state=random_state
    )
    if covariance == "dirichlet_process":
        gm = BayesianGaussianMixture(
            n_components=num_components,
            weight_concentration_prior_type="dirichlet_process",
            weight_concentration_prior=concentration,
            max_iter=500,
            **common,
        )
    else:
        gm = GaussianMixture(num_components, **common)
    X = _numpy(x) if torch.is_tensor(x) else np.asarray(x, dtype=np.float64)
    return gm.fit(X)


def start_from_gaussian_mixture(gm, x: torch.Tensor, name: str) -> Start:
    """A :class:`Start` from a fitted scikit-learn Gaussian mixture and the rows x (N, D) it
    labels (x's dtype and device)."""
    as_t = lambda a: torch.as_tensor(np.asarray(a), dtype=x.dtype, device=x.device)  # noqa: E731
    cov = gm.covariances_
    # Cholesky factors in float64 before the cast, from scikit-learn's own covariances
    if gm.covariance_type == "diag":
        chol = np.sqrt(cov)[..., None] * np.eye(cov.shape[-1])
    else:
        chol = np.linalg.cholesky(cov)
    labels = as_t(gm.predict(_numpy(x))).long()
    return Start(name, as_t(gm.means_), as_t(chol), as_t(gm.weights_), labels)


def em_start(
    x: torch.Tensor,
    num_components: int,
    *,
    covariance: str = "full",
    n_init: int = 5,
    reg_covar: float = 1e-6,
    random_state: int | None = None,
    concentration: float = 1.0,
) -> Start:
    """EM's Gaussian mixture on x (N, D) as a start: the maximum-likelihood Gaussian mixture
    (scikit-learn's ``GaussianMixture`` with ``n_init`` restarts).

    Args:
        x: rows, (N, D).
        num_components: K.
        covariance: "full", "diag" or "dirichlet_process" (the variational Dirichlet-process
            Gaussian mixture truncated at K, ``BayesianGaussianMixture``, with
            ``concentration``).
        n_init, reg_covar, random_state: as in ``GaussianMixture``.

    Returns:
        A :class:`Start` named "em", "em_diag" or "em_dp", labels = EM's clusters of x.
    """
    gm = gaussian_mixture(
        x, num_components, covariance=covariance, n_init=n_init, reg_covar=reg_covar,
        random_state=random_state, concentration=concentration,
    )  # fmt: skip
    return start_from_gaussian_mixture(gm, x, COVARIANCES[covariance])


def choose_covariance(
    x: torch.Tensor,
    num_components: int,
    *,
    n_init: int = 5,
    reg_covar: float = 1e-6,
    random_state: int | None = None,
    full=None,
) -> str:
    """ "full" or "diag" covariances for EM on x (N, D).

    First a screen that needs only the full-covariance fit ``full`` (fitted here when None): when
    every full component holds at least ``SCREEN_ROWS_PER_DIMENSION`` * (D + 1) rows and its BIC is
    at most the diagonal one's, "full" (a full mixture that wins under BIC's log(N)/2 per parameter
    also wins a held-out comparison, whose charge per parameter is smaller, so the cross-validation
    cannot choose "diag"; a component with fewer rows than that can be close to singular, its
    training likelihood unbounded and BIC no guide). Otherwise ``CV_FOLDS``-fold cross-validation:
    every row gets its held-out log-density under both (fitted without its fold); "diag" wins only
    when its mean is higher by more than ``CV_STANDARD_ERRORS`` standard errors of the paired
    differences (each fold's mixtures with ``CV_RESTARTS`` EM restarts: they compare two model
    families). With one feature "full"; with fewer than ``CV_FOLDS`` * 2K rows, "full" where the
    screen's row count holds and "diag" where it does not.
    """
    from sklearn.model_selection import KFold

    X = _numpy(x)
    K = num_components
    if X.shape[1] < 2:
        return "full"
    options = dict(n_init=n_init, reg_covar=reg_covar, random_state=random_state)
    if full is None:
        full = gaussian_mixture(X, K, covariance="full", **options)
    rows_per_component = full.weights_ * len(X)
    enough = rows_per_component.min() >= SCREEN_ROWS_PER_DIMENSION * (X.shape[1] + 1)
    if X.shape[0] < CV_FOLDS * 2 * K:  # too few rows to cross-validate
        return "full" if enough else "diag"
    diag = gaussian_mixture(X, K, covariance="diag", **options)
    if enough and full.bic(X) <= diag.bic(X):
        return "full"
    rows = {name: np.empty(len(X)) for name in ("full", "diag")}
    folds = dict(options, n_init=min(n_init, CV_RESTARTS))
    for train, test in KFold(CV_FOLDS, shuffle=True, random_state=random_state).split(X):
        for name, lp in rows.items():
            gm = gaussian_mixture(X[train], K, covariance=name, **folds)
            lp[test] = gm.score_samples(X[test])
    diff = rows["diag"] - rows["full"]
    se = diff.std(ddof=1) / math.sqrt(len(diff))
    return "diag" if diff.mean() > CV_STANDARD_ERRORS * se else "full"


# The scan of ``choose_num_components`` stops for a covariance type once this many consecutive K
# have scored below its best so far.
SCAN_PATIENCE = 3


def choose_num_components(
    x: torch.Tensor,
    max_components: int,
    *,
    n_init: int = 5,
    reg_covar: float = 1e-6,
    random_state: int | None = None,
) -> tuple[int, str]:
    """The number of Gaussian components, and their covariance type, that predict held-out rows
    best: a held-out choice of K for the Dirichlet-process option.

    For K = 1, 2, ... up to ``max_components``, with full and diagonal covariances, every row of
    x (N, D) gets its held-out log-density under EM's mixture fitted without its fold
    (``CV_FOLDS`` folds, ``CV_RESTARTS`` restarts); the (K, covariance) of the best mean is kept, as
    ``select_n_components`` keeps the K of the best cross-validated score. A covariance type's scan
    stops once ``SCAN_PATIENCE`` consecutive K have scored below its best so far.

    Returns:
        ``(K, covariance)``.
    """
    from sklearn.model_selection import KFold

    X = _numpy(x)
    N, D = X.shape
    folds = list(KFold(min(CV_FOLDS, N), shuffle=True, random_state=random_state).split(X))
    options = dict(n_init=min(n_init, CV_RESTARTS), reg_covar=reg_covar, random_state=random_state)
    rows: dict[tuple[int, str], np.ndarray] = {}
    for covariance in ("full", "diag") if D > 1 else ("full",):
        best, behind = -np.inf, 0
        for K in range(1, max_components + 1):
            if min(len(train) for train, _ in folds) < 2 * K:
                break
            lp = np.empty(N)
            for train, test in folds:
                gm = gaussian_mixture(X[train], K, covariance=covariance, **options)
                lp[test] = gm.score_samples(X[test])
            rows[K, covariance] = lp
            if lp.mean() > best:
                best, behind = lp.mean(), 0
            else:
                behind += 1
                if behind >= SCAN_PATIENCE:
                    break
    return max(rows, key=lambda key: (rows[key].mean(), -key[0]))
