"""What a call of :func:`~pyro_mixflows.infer.fit` did."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(repr=False)
class FitResult:
    """What :func:`fit` did.

    Attributes:
        losses: the training loss (negative ELBO estimate, scaled to the full data) of every step.
            Under ``distributed=True`` it is the mean over ranks, i.e. the loss of the global batch.
        val_losses: the monitored loss at each evaluation: the held-out loss on ``val_args``, or,
            without ``val_args`` but with ``patience``, the mean training loss since the last one.
        val_steps: the step count (number of updates done) at each evaluation.
        best_step: step count of the best evaluation, whose parameters were restored (None when
            nothing was monitored).
        best_loss: the monitored loss there.
        converged: True when training stopped because the monitored loss stopped improving for
            ``patience`` evaluations.
        num_steps: the number of updates done (counting those before a resume).
        time: wall-clock seconds spent training (counting those before a resume).
        stop_reason: ``"num_steps"``, ``"patience"`` or ``"callback"``.
    """

    losses: list[float] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)
    val_steps: list[int] = field(default_factory=list)
    best_step: int | None = None
    best_loss: float | None = None
    converged: bool = False
    num_steps: int = 0
    time: float = 0.0
    stop_reason: str = "num_steps"

    def __repr__(self) -> str:
        last = f"{self.losses[-1]:.6g}" if self.losses else None
        best = None if self.best_loss is None else f"{self.best_loss:.6g}"
        return (
            f"FitResult(num_steps={self.num_steps}, last_loss={last}, best_loss={best}, "
            f"best_step={self.best_step}, stop_reason={self.stop_reason!r}, "
            f"time={self.time:.2f}s)"
        )
