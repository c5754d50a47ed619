"""Guides built from flow mixtures."""

from .auto import AutoFlowMixture

__all__ = ["AutoFlowMixture"]
