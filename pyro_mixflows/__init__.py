"""Mixtures of normalizing flows as first-class Pyro distributions, guides and estimators."""

from .distributions import FlowMixture, StickBreaking, StickWeights
from .flows import DistributionComponents, FlowComponents

__version__ = "0.1.0.dev0"

__all__ = [
    "DistributionComponents",
    "FlowComponents",
    "FlowMixture",
    "StickBreaking",
    "StickWeights",
    "__version__",
]
