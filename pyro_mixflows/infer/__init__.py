"""Inference: the latent-space MALA kernel (the fit loop and boosting trainer live here too)."""

from .mala import LatentMALA

__all__ = ["LatentMALA"]
