"""Mixtures of normalizing flows as first-class Pyro distributions, guides and estimators."""

from .distributions import FlowMixture, Kumaraswamy
from .flows import DistributionComponents, FlowComponents
from .models import MixtureVAE

__version__ = "0.1.0.dev0"

__all__ = [
    "DistributionComponents",
    "FlowComponents",
    "FlowMixture",
    "Kumaraswamy",
    "MixtureVAE",
    "__version__",
]
