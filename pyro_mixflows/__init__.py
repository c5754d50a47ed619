"""Mixtures of normalizing flows as first-class Pyro distributions, guides and estimators."""

from .distributions import FlowMixture
from .flows import ConcatComponents, DistributionComponents, FlowComponents
from .models import BoostedFlowMixture

__version__ = "0.1.0.dev0"

__all__ = [
    "BoostedFlowMixture",
    "ConcatComponents",
    "DistributionComponents",
    "FlowComponents",
    "FlowMixture",
    "__version__",
]
