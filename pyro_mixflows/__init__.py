"""Mixtures of normalizing flows as first-class Pyro distributions, guides and estimators."""

from .distributions import FlowMixture
from .flows import DistributionComponents, FlowComponents
from .infer import LatentMALA

__version__ = "0.1.0.dev0"

__all__ = [
    "DistributionComponents",
    "FlowComponents",
    "FlowMixture",
    "LatentMALA",
    "__version__",
]
