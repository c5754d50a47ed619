"""scikit-learn-style estimators built on the Pyro model, the starts and the fit loop.

``VariationalFlowMixture`` mirrors ``GaussianMixture`` (fit, predict, score_samples, sample, bic,
...); ``select_n_components`` chooses K by cross-validated held-out likelihood.
"""

from ._estimator import VariationalFlowMixture
from ._selection import select_n_components

__all__ = ["VariationalFlowMixture", "select_n_components"]
