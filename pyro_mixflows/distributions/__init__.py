"""Distributions over flow components."""

from .flow_mixture import FlowMixture, IndexedComponent
from .kumaraswamy import Kumaraswamy, kl_kumaraswamy_beta

__all__ = ["FlowMixture", "IndexedComponent", "Kumaraswamy", "kl_kumaraswamy_beta"]
