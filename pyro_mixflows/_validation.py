"""Input checks shared by the distributions, the fit loop and the estimators."""

from __future__ import annotations

import torch


def check_event(x: torch.Tensor, dim: int, name: str = "x") -> None:
    """Raise ``ValueError`` unless ``x`` is a tensor of shape (..., dim)."""
    if not torch.is_tensor(x):
        raise TypeError(f"expected {name} to be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 1 or x.shape[-1] != dim:
        raise ValueError(
            f"expected {name} with event size D={dim} in its last dimension, "
            f"got shape {tuple(x.shape)}"
        )


def check_finite(x: torch.Tensor, name: str = "x") -> None:
    """Raise ``ValueError`` if ``x`` holds NaN or infinite values (forces a device sync)."""
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        bad = (~torch.isfinite(x)).sum().item()
        raise ValueError(
            f"expected finite values in {name}, got {bad} NaN/inf entries; "
            "drop or impute them before fitting or scoring"
        )


def check_index(index: torch.Tensor, num_components: int, name: str = "index") -> None:
    """Raise unless ``index`` is an integer tensor with values in [0, K)."""
    if not torch.is_tensor(index):
        raise TypeError(f"expected {name} to be a torch.Tensor, got {type(index).__name__}")
    if index.is_floating_point() or index.dtype == torch.bool:
        raise TypeError(f"expected an integer {name} tensor, got dtype {index.dtype}")
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= num_components):
        raise ValueError(
            f"expected {name} values in [0, {num_components}), "
            f"got range [{int(index.min())}, {int(index.max())}]"
        )
