"""Mixtures of normalizing flows as first-class Pyro distributions, guides and estimators."""

from .distributions import FlowMixture, StickBreaking, StickWeights
from .estimators import VariationalFlowMixture
from .flows import ConcatComponents, DistributionComponents, FlowComponents
from .guides import AutoFlowMixture
from .infer import FitResult, LatentMALA, fit
from .models import BoostedFlowMixture, VMoNF

__version__ = "0.1.0.dev0"

__all__ = [
    "AutoFlowMixture",
    "BoostedFlowMixture",
    "ConcatComponents",
    "DistributionComponents",
    "FitResult",
    "FlowComponents",
    "FlowMixture",
    "LatentMALA",
    "StickBreaking",
    "StickWeights",
    "VMoNF",
    "VariationalFlowMixture",
    "__version__",
    "fit",
]
