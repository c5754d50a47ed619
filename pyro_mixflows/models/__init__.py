"""Ready-made model/guide pairs."""

from .vmonf import VMoNF

__all__ = ["VMoNF"]
