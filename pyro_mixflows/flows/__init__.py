"""Component-batched normalizing flows."""

from .components import FLOWS, Components, DistributionComponents, FlowComponents

__all__ = ["FLOWS", "Components", "DistributionComponents", "FlowComponents"]
