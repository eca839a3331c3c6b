"""Weighted training loss and error metrics.

Loss terms are computed in units of the energy scale ``s`` (so the weights do not depend
on the data's units):

- energy: ``(E_pred - E_ref) / N / s`` per structure (per-atom energy error);
- forces: ``(F_pred - F_ref) / s`` per component;
- stress: ``(sigma_pred - sigma_ref) * V / N / s`` per component (the per-atom virial error,
  so that it is commensurate with the per-atom energy).

Each term is reduced by ``kind`` (mean squared, mean absolute or Huber) over its elements.
"""

import math
from typing import Dict, Optional

import torch

from equiformer.data import keys

__all__ = ["Loss", "Metrics"]


def _reduce(err: torch.Tensor, kind: str, delta: float) -> torch.Tensor:
    if kind == "mse":
        return (err ** 2).mean()
    if kind == "l1":
        return err.abs().mean()
    if kind == "huber":
        return torch.nn.functional.huber_loss(err, torch.zeros_like(err), delta=delta)
    raise ValueError(f"unknown loss kind {kind!r}")


def _volume(graph) -> torch.Tensor:
    return torch.linalg.det(graph[keys.CELL].to(torch.float64)).abs()


class Loss:
    def __init__(self, energy_weight: float = 1.0, forces_weight: float = 0.0, stress_weight: float = 0.0,
                 kind: str = "mse", huber_delta: float = 0.01, scale: float = 1.0):
        self.weights = {keys.ENERGY: float(energy_weight), keys.FORCES: float(forces_weight), keys.STRESS: float(stress_weight)}
        self.kind, self.delta, self.scale = kind, float(huber_delta), float(scale)

    @property
    def needs_forces(self) -> bool:
        return self.weights[keys.FORCES] > 0

    @property
    def needs_stress(self) -> bool:
        return self.weights[keys.STRESS] > 0

    def terms(self, pred: Dict[str, torch.Tensor], graph: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        out = {}
        n = graph[keys.NUM_ATOMS].to(torch.float64)
        if self.weights[keys.ENERGY] > 0:
            err = (pred[keys.ENERGY] - graph[keys.ENERGY]) / n / self.scale
            out[keys.ENERGY] = _reduce(err, self.kind, self.delta)
        if self.weights[keys.FORCES] > 0:
            err = (pred[keys.FORCES] - graph[keys.FORCES]) / self.scale
            out[keys.FORCES] = _reduce(err, self.kind, self.delta)
        if self.weights[keys.STRESS] > 0:
            factor = (_volume(graph) / n / self.scale)[:, None, None]
            err = (pred[keys.STRESS] - graph[keys.STRESS]) * factor
            out[keys.STRESS] = _reduce(err, self.kind, self.delta)
        return out

    def __call__(self, pred, graph):
        terms = self.terms(pred, graph)
        total = sum(self.weights[k] * v for k, v in terms.items())
        return total, terms


class Metrics:
    """Running MAE / RMSE of energy (total and per atom), force components and stress."""

    FIELDS = ("energy", "energy_per_atom", "forces", "stress")

    def __init__(self):
        self.sums: Dict[str, list] = {f: [0.0, 0.0, 0] for f in self.FIELDS}  # abs, sq, count
        self.loss_sum = 0.0
        self.loss_count = 0
        self.values: Dict[str, list] = {}  # optional parity data: field -> [(ref, pred), ...]

    def _add(self, field: str, err: torch.Tensor) -> None:
        err = err.detach().to(torch.float64).reshape(-1)
        s = self.sums[field]
        s[0] += float(err.abs().sum())
        s[1] += float((err ** 2).sum())
        s[2] += int(err.numel())

    def update(self, pred, graph, loss: Optional[float] = None, keep_values: bool = False) -> None:
        n = graph[keys.NUM_ATOMS].to(torch.float64)
        nstruct = int(n.shape[0])
        if loss is not None:
            self.loss_sum += float(loss) * nstruct
            self.loss_count += nstruct
        pairs = []
        if keys.ENERGY in graph and keys.ENERGY in pred:
            e = pred[keys.ENERGY].detach() - graph[keys.ENERGY]
            self._add("energy", e)
            self._add("energy_per_atom", e / n)
            pairs.append(("energy_per_atom", graph[keys.ENERGY] / n, pred[keys.ENERGY].detach() / n))
        if keys.FORCES in graph and keys.FORCES in pred:
            self._add("forces", pred[keys.FORCES].detach() - graph[keys.FORCES])
            pairs.append(("forces", graph[keys.FORCES], pred[keys.FORCES].detach()))
        if keys.STRESS in graph and keys.STRESS in pred:
            self._add("stress", pred[keys.STRESS].detach() - graph[keys.STRESS])
            pairs.append(("stress", graph[keys.STRESS], pred[keys.STRESS].detach()))
        if keep_values:
            for field, ref, prd in pairs:
                lst = self.values.setdefault(field, [[], []])
                lst[0].extend(ref.reshape(-1).tolist())
                lst[1].extend(prd.reshape(-1).to(torch.float64).reshape(-1).tolist())

    def summary(self) -> Dict[str, float]:
        out: Dict[str, float] = {}
        if self.loss_count:
            out["loss"] = self.loss_sum / self.loss_count
        for f, (a, q, c) in self.sums.items():
            if c:
                out[f"{f}_mae"] = a / c
                out[f"{f}_rmse"] = math.sqrt(q / c)
        return out

    def state_dict(self) -> Dict[str, object]:
        return {"sums": {k: list(v) for k, v in self.sums.items()}, "loss_sum": self.loss_sum, "loss_count": self.loss_count}

    def load_state_dict(self, state) -> None:
        self.sums = {k: [float(v[0]), float(v[1]), int(v[2])] for k, v in state["sums"].items()}
        self.loss_sum = float(state["loss_sum"])
        self.loss_count = int(state["loss_count"])
