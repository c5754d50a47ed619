"""Distributions over flow components."""

from .flow_mixture import FlowMixture, IndexedComponent
from .stick_breaking import StickBreaking, StickWeights, sticks_to_weights, weights_to_sticks

__all__ = [
    "FlowMixture",
    "IndexedComponent",
    "StickBreaking",
    "StickWeights",
    "sticks_to_weights",
    "weights_to_sticks",
]
