"""Mixtures of normalizing flows as first-class Pyro distributions, guides and estimators."""

from .distributions import FlowMixture
from .flows import DistributionComponents, FlowComponents
from .guides import AutoFlowMixture

__version__ = "0.1.0.dev0"

__all__ = [
    "AutoFlowMixture",
    "DistributionComponents",
    "FlowComponents",
    "FlowMixture",
    "__version__",
]
