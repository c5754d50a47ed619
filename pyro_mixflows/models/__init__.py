"""Ready-made model/guide pairs."""

from .mixture_vae import MixtureVAE

__all__ = ["MixtureVAE"]
