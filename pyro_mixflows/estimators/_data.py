"""The estimator's settings and data, as the fit's stages read them: plain values."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class Settings:
    """The estimator's parameters as the stages read them."""

    n_components: int
    architecture: dict  # flow, num_layers, hidden_dims, count_bins
    capacities: list[dict]
    weights: str = "learned"
    weight_concentration: float = 1.0
    assignment: str = "enumerate"
    init: str = "auto"
    n_init: int = 5
    reg_covar: float = 1e-6
    max_steps: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    validation_fraction: float = 0.1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    verbose: bool = False

    def architecture_of(self, capacity: dict) -> dict:
        """The constructor's architecture with a capacity's overrides."""
        arch = dict(self.architecture)
        arch.update({k: v for k, v in capacity.items() if k in arch})
        arch["hidden_dims"] = tuple(arch["hidden_dims"])
        return arch


@dataclass
class Data:
    """Standardized rows and which of them are held out.

    Attributes:
        mean, scale: (D,) the training rows' per-feature mean and standard deviation.
        xs: all rows standardized, (N, D).
        train_mask: (N,) bool, True for the training rows.
        val_idx: (n_val,) indices of the held-out rows (unlabelled rows only).
        y: (N,) long labels (-1 = unlabelled) or None.
    """

    mean: torch.Tensor
    scale: torch.Tensor
    xs: torch.Tensor
    train_mask: torch.Tensor
    val_idx: torch.Tensor
    y: torch.Tensor | None

    @property
    def x_train(self) -> torch.Tensor:
        return self.xs[self.train_mask]

    @property
    def x_val(self) -> torch.Tensor:
        return self.xs[self.val_idx]

    @property
    def y_train(self) -> torch.Tensor | None:
        return None if self.y is None else self.y[self.train_mask]

    @property
    def semi_supervised(self) -> bool:
        return self.y is not None and bool((self.y >= 0).any())


def prepare(X: np.ndarray, y, settings: Settings, generator: torch.Generator) -> Data:
    """Standardize X (N, D) per feature and hold out ``validation_fraction`` of the unlabelled
    rows (at least one row stays in training)."""
    device = settings.device
    x = torch.as_tensor(X, dtype=torch.get_default_dtype(), device=device)
    N, D = x.shape
    mean = x.mean(0)
    scale = x.std(0) if N > 1 else torch.ones(D, dtype=x.dtype, device=device)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    xs = (x - mean) / scale
    perm = torch.randperm(N, generator=generator).to(device)
    labelled = torch.zeros(N, dtype=torch.bool, device=device)
    y_t = None
    if y is not None:
        y_t = torch.as_tensor(y, device=device)
        labelled = y_t >= 0
    unlabelled = perm[~labelled[perm]]
    n_val = min(int(settings.validation_fraction * N), max(0, len(unlabelled) - 1))
    val_idx = unlabelled[:n_val]
    train_mask = torch.ones(N, dtype=torch.bool, device=device)
    train_mask[val_idx] = False
    return Data(mean, scale, xs, train_mask, val_idx, y_t)
