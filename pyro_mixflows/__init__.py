"""Mixtures of normalizing flows as first-class Pyro distributions, guides and estimators."""

from .distributions import FlowMixture, Kumaraswamy, StickBreaking, StickWeights
from .estimators import VariationalFlowMixture, select_n_components
from .flows import ConcatComponents, DistributionComponents, FlowComponents
from .guides import AutoFlowMixture
from .infer import FitResult, LatentMALA, fit
from .models import BoostedFlowMixture, MixtureVAE, VMoNF

__version__ = "0.1.0.dev0"

__all__ = [
    "AutoFlowMixture",
    "BoostedFlowMixture",
    "ConcatComponents",
    "DistributionComponents",
    "FitResult",
    "FlowComponents",
    "FlowMixture",
    "Kumaraswamy",
    "LatentMALA",
    "MixtureVAE",
    "StickBreaking",
    "StickWeights",
    "VMoNF",
    "VariationalFlowMixture",
    "__version__",
    "fit",
    "select_n_components",
]
