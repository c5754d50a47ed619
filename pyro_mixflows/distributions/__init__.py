"""Distributions over flow components and mixture weights."""

from ..flows.base import IndexedComponent
from .flow_mixture import FlowMixture
from .kumaraswamy import Kumaraswamy, kl_kumaraswamy_beta
from .stick_breaking import StickBreaking, StickWeights, sticks_to_weights, weights_to_sticks

__all__ = [
    "FlowMixture",
    "IndexedComponent",
    "Kumaraswamy",
    "StickBreaking",
    "StickWeights",
    "kl_kumaraswamy_beta",
    "sticks_to_weights",
    "weights_to_sticks",
]
