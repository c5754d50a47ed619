"""Ready-made model/guide pairs built from flow mixtures."""

from .boosting import BoostedFlowMixture
from .vmonf import VMoNF

__all__ = ["BoostedFlowMixture", "VMoNF"]
