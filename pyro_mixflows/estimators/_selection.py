"""Choosing the number of components K by cross-validated held-out log-likelihood."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def _as_2d(X, name: str = "X") -> np.ndarray:
    try:
        X = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"expected {name} to be a numeric array of shape (N, D): {err}") from None
    if X.ndim != 2:
        raise ValueError(f"expected {name} of shape (N, D), got shape {X.shape}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"expected a non-empty {name}, got shape {X.shape}")
    if not np.isfinite(X).all():
        bad = int((~np.isfinite(X)).sum())
        raise ValueError(f"expected finite values in {name}, got {bad} NaN/inf entries")
    return X


def select_n_components(
    X,
    n_components: Iterable[int] = range(1, 7),
    *,
    cv: int = 3,
    random_state: int | None = 0,
    **params,
) -> tuple[int, dict[int, float]]:
    """The K whose ``VariationalFlowMixture`` predicts held-out rows best, by cross-validation.

    For every K in ``n_components`` and every fold, a ``VariationalFlowMixture(K, **params)`` is
    fitted on the other folds and scored on the fold (mean log-density per row, in the data's
    units); the score of K is the mean over folds,

    .. math:: \\mathrm{CV}(K) = \\frac{1}{F} \\sum_{f=1}^{F} \\frac{1}{|R_f|} \\sum_{i \\in R_f}
              \\log \\hat p_K^{(-f)}(x_i),

    and the K with the highest score wins (the smaller K on an exact tie). Unlike ``bic``/``aic``,
    which charge every flow weight as a parameter and so favour K = 1 for flows, this compares
    what each K predicts.

    Cost: ``len(n_components) * cv`` fits (each one a full ``fit``, with its own held-out
    early stopping inside the training folds); on real tables most of them are quick, since the
    Gaussian start is often kept.

    Args:
        X: data, (N, D).
        n_components: the K to try (each >= 1).
        cv: folds F >= 2 (rows shuffled with ``random_state``).
        random_state: seed of the folds and of every fit.
        **params: any other ``VariationalFlowMixture`` parameters.

    Returns:
        ``(best_k, scores)`` with ``scores[K]`` = CV(K).

    Example::

        >>> k, scores = select_n_components(X, range(1, 5), cv=3, num_layers=0)
    """
    from sklearn.model_selection import KFold

    from ._estimator import VariationalFlowMixture

    X = _as_2d(X)
    ks = list(n_components)
    if not ks or any(
        not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1 for k in ks
    ):
        raise ValueError(f"expected n_components to be non-empty ints >= 1, got {ks!r}")
    if not isinstance(cv, (int, np.integer)) or cv < 2:
        raise ValueError(f"expected cv to be an int >= 2, got {cv!r}")
    if X.shape[0] < cv * 2:
        raise ValueError(f"expected at least 2 * cv = {2 * cv} rows, got {X.shape[0]}")
    folds = list(KFold(cv, shuffle=True, random_state=random_state).split(X))
    scores: dict[int, float] = {}
    for k in ks:
        per_fold = []
        for train, test in folds:
            model = VariationalFlowMixture(int(k), random_state=random_state, **params)
            per_fold.append(model.fit(X[train]).score(X[test]))
        scores[int(k)] = float(np.mean(per_fold))
    best = max(sorted(scores), key=lambda k: (scores[k], -k))
    return best, scores
