"""Ready-made model/guide pairs."""

from .dp import (
    DPFlowMixtureModel,
    DPStickGuide,
    active_components,
    effective_components,
    responsibilities,
)

__all__ = [
    "DPFlowMixtureModel",
    "DPStickGuide",
    "active_components",
    "effective_components",
    "responsibilities",
]
