"""Ready-made model/guide pairs built from flow mixtures."""

from .boosting import BoostedFlowMixture
from .dp import (
    DPFlowMixtureModel,
    DPStickGuide,
    active_components,
    density_connected_groups,
    effective_components,
    responsibilities,
)
from .mixture_vae import MixtureVAE
from .vmonf import VMoNF

__all__ = [
    "BoostedFlowMixture",
    "DPFlowMixtureModel",
    "DPStickGuide",
    "MixtureVAE",
    "VMoNF",
    "active_components",
    "density_connected_groups",
    "effective_components",
    "responsibilities",
]
