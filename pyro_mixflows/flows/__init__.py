"""Component-batched normalizing flows."""

from .components import FLOWS, Components, DistributionComponents, FlowComponents
from .concat import ConcatComponents
from .rescaled import RescaledComponents

__all__ = [
    "FLOWS",
    "Components",
    "ConcatComponents",
    "DistributionComponents",
    "FlowComponents",
    "RescaledComponents",
]
