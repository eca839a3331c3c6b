"""Learning-rate schedule: linear warm-up, then cosine, plateau or constant."""

import math
from typing import Dict, Optional

__all__ = ["LRSchedule"]


class LRSchedule:
    """The learning rate as a function of fractional epoch ``t`` (updated every step).

    - warm-up (``t < warmup_epochs``): linear from ``warmup_lr`` to ``lr``;
    - ``cosine``: ``min_lr + (lr - min_lr) * (1 + cos(pi * (t - w) / (epochs - w))) / 2``;
    - ``plateau``: ``lr * factor**k`` (not below ``min_lr``), ``k`` increased when the
      validation loss has not improved for ``patience`` epochs (call :meth:`epoch_end`);
    - ``constant``: ``lr``.
    """

    def __init__(self, lr: float, epochs: int, warmup_epochs: float = 0.0, warmup_lr: float = 0.0,
                 kind: str = "cosine", min_lr: float = 0.0, plateau_factor: float = 0.5,
                 plateau_patience: int = 10):
        if kind not in ("cosine", "plateau", "constant"):
            raise ValueError(f"unknown scheduler {kind!r}; use cosine, plateau or constant")
        self.lr, self.epochs, self.warmup_epochs, self.warmup_lr = float(lr), int(epochs), float(warmup_epochs), float(warmup_lr)
        self.kind, self.min_lr = kind, float(min_lr)
        self.plateau_factor, self.plateau_patience = float(plateau_factor), int(plateau_patience)
        self.plateau_level = 0
        self.best: Optional[float] = None
        self.bad_epochs = 0

    def lr_at(self, t: float) -> float:
        w = self.warmup_epochs
        if w > 0 and t < w:
            return self.warmup_lr + (self.lr - self.warmup_lr) * t / w
        if self.kind == "cosine":
            span = max(self.epochs - w, 1e-12)
            x = min(max((t - w) / span, 0.0), 1.0)
            return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1.0 + math.cos(math.pi * x))
        if self.kind == "plateau":
            return max(self.lr * self.plateau_factor ** self.plateau_level, self.min_lr)
        return self.lr

    def epoch_end(self, epoch: int, metric: Optional[float]) -> None:
        """Feed the validation loss of the finished epoch (plateau schedule only)."""
        if self.kind != "plateau" or metric is None or epoch + 1 <= self.warmup_epochs:
            return
        if self.best is None or metric < self.best:
            self.best, self.bad_epochs = float(metric), 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs > self.plateau_patience:
                self.plateau_level += 1
                self.bad_epochs = 0

    def state_dict(self) -> Dict[str, object]:
        return {"kind": self.kind, "plateau_level": self.plateau_level, "best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        self.plateau_level = int(state["plateau_level"])
        self.best = None if state["best"] is None else float(state["best"])
        self.bad_epochs = int(state["bad_epochs"])
