"""Exponential moving average of model parameters."""

import contextlib
from typing import Dict

import torch

__all__ = ["EMA"]


class EMA:
    """``shadow = d * shadow + (1 - d) * param`` after every optimizer step.

    The effective decay ramps up as ``min(decay, (1 + n) / (10 + n))`` over the first updates
    ``n`` so that the average is not dominated by the random initial weights. Buffers are not
    averaged (they are copied from the model when swapping).
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = float(decay)
        self.num_updates = 0
        self.shadow: Dict[str, torch.Tensor] = {
            n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad
        }

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.num_updates += 1
        d = min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))
        for n, p in model.named_parameters():
            if n in self.shadow:
                self.shadow[n].mul_(d).add_(p.detach(), alpha=1.0 - d)

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        for n, p in model.named_parameters():
            if n in self.shadow:
                p.copy_(self.shadow[n])

    @contextlib.contextmanager
    def swapped(self, model: torch.nn.Module):
        """Temporarily put the averaged weights into ``model``."""
        backup = {n: p.detach().clone() for n, p in model.named_parameters() if n in self.shadow}
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if n in backup:
                        p.copy_(backup[n])

    def averaged_state_dict(self, model: torch.nn.Module) -> Dict[str, torch.Tensor]:
        """The model's state_dict with the averaged parameters in place of the raw ones."""
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        for n, v in self.shadow.items():
            state[n] = v.detach().clone()
        return state

    def state_dict(self) -> Dict[str, object]:
        return {"decay": self.decay, "num_updates": self.num_updates,
                "shadow": {n: v.detach().clone() for n, v in self.shadow.items()}}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        self.decay = float(state["decay"])
        self.num_updates = int(state["num_updates"])
        for n, v in state["shadow"].items():
            if n not in self.shadow:
                raise KeyError(f"EMA state has parameter {n!r} that the model does not have")
            self.shadow[n].copy_(v)
