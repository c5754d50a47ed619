"""Ready-made model/guide pairs built from flow mixtures."""

from .boosting import BoostedFlowMixture
from .dp import (
    DPFlowMixtureModel,
    DPStickGuide,
    active_components,
    effective_components,
    responsibilities,
)
from .vmonf import VMoNF

__all__ = [
    "BoostedFlowMixture",
    "DPFlowMixtureModel",
    "DPStickGuide",
    "VMoNF",
    "active_components",
    "effective_components",
    "responsibilities",
]
