"""Distributions over flow components."""

from .flow_mixture import FlowMixture, IndexedComponent

__all__ = ["FlowMixture", "IndexedComponent"]
