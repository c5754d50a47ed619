"""Ready-made models built from flow mixtures."""

from .boosting import BoostedFlowMixture

__all__ = ["BoostedFlowMixture"]
