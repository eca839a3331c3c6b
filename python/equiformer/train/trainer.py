"""The training loop behind ``equiformer-train``.

:func:`train` takes a resolved config (see :mod:`equiformer.train.config`) and writes into
``run.output_dir``: ``last.pt`` (after every epoch, and on Ctrl-C / errors at a consistent
step), ``best.pt`` (lowest validation loss), ``metrics.csv`` (one row per epoch) and
``config.yaml`` (the resolved config). Resuming (``run.resume``) restores weights, optimizer,
schedule, EMA, RNG states and the position inside the epoch, and the data order depends only
on (seed, epoch), so a resumed run follows the uninterrupted one step by step.
"""

import contextlib
import csv
import math
import os
import random
import signal
import sys
import time
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import numpy as np
import torch
import yaml

from equiformer.data import keys
from equiformer.data.atoms import graph_to
from equiformer.data.dataset import GraphDataset, GraphLoader, file_fingerprint, infer_species, read_structures, split_indices
from equiformer.device import resolve_device as _resolve_device
from equiformer.train.checkpoint import build_checkpoint, get_rng_state, load_checkpoint, save_checkpoint, set_rng_state
from equiformer.train.ema import EMA
from equiformer.train.loss import Loss, Metrics
from equiformer.train.normalization import apply_normalization, fit_normalization
from equiformer.train.scheduler import LRSchedule

__all__ = ["train", "TrainingInterrupted", "resolve_device", "evaluate_dataset", "make_optimizer"]

LAST, BEST, METRICS, CONFIG = "last.pt", "best.pt", "metrics.csv", "config.yaml"


class TrainingInterrupted(Exception):
    """Raised after Ctrl-C once the last checkpoint has been written."""

    def __init__(self, path: str, epoch: int, step: int):
        super().__init__(f"training interrupted at epoch {epoch + 1}, step {step}; state saved to {path}")
        self.path, self.epoch, self.step = path, epoch, step


def resolve_device(name) -> torch.device:
    """``run.device`` as a torch.device (equiformer.device.resolve_device, the one resolution
    of every route)."""
    return _resolve_device(name, "run.device", "run.device: {}")


def _as_list(v) -> List[str]:
    if v is None:
        return []
    return [v] if isinstance(v, str) else list(v)


class _FrameSet(NamedTuple):
    frames: list
    sources: List[str]  # "path, frame i" of each structure, for error messages
    provenance: List[Dict[str, Any]]  # one fingerprint per file, stored in the checkpoints


def _read_frames(paths: List[str], data_cfg) -> _FrameSet:
    frames, sources, prov = [], [], []
    for path in paths:
        fr = read_structures(path, data_cfg["index"], data_cfg["format"])
        frames.extend(fr)
        sources.extend(f"{path}, frame {i}" for i in range(len(fr)))
        rec = file_fingerprint(path)
        rec.update({"index": data_cfg["index"], "num_structures": len(fr)})
        prov.append(rec)
    return _FrameSet(frames, sources, prov)


def make_optimizer(model: torch.nn.Module, optim_cfg) -> torch.optim.Optimizer:
    """AdamW; weight decay on weight matrices only (not biases, norm weights or scalars)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": optim_cfg["weight_decay"]}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return torch.optim.AdamW(groups, lr=optim_cfg["lr"], betas=tuple(optim_cfg["betas"]))


def evaluate_dataset(model, loader: GraphLoader, loss_fn: Optional[Loss], device, dtype,
                     compute_forces: bool, compute_stress: bool, keep_values: bool = False,
                     progress: bool = False, desc: str = "eval") -> Metrics:
    """Metrics of ``model`` over every batch of ``loader`` (no parameter gradients)."""
    metrics = Metrics()
    it = loader.batches(0)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, total=len(loader), desc=desc, leave=False, dynamic_ncols=True)
    was_training = model.training
    model.eval()
    try:
        for batch in it:
            batch = graph_to(batch, device, dtype)
            with torch.no_grad():  # the model enables what its forces need; nothing else keeps a graph
                pred = model(batch, compute_forces=compute_forces, compute_stress=compute_stress, create_graph=False)
            loss = None
            if loss_fn is not None:
                total, _ = loss_fn(pred, batch)
                loss = float(total.detach())
            metrics.update(pred, batch, loss, keep_values=keep_values)
    finally:
        model.train(was_training)
    return metrics


class _StopFlag:
    """First Ctrl-C: stop gracefully at the next step boundary. Second: interrupt at once."""

    def __init__(self):
        self.requested = False
        self._old = None

    def __enter__(self):
        try:
            self._old = signal.signal(signal.SIGINT, self._handler)
        except ValueError:  # not in the main thread
            self._old = None
        return self

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\ninterrupt: finishing the current step and saving the last checkpoint "
              "(press Ctrl-C again to abort without saving)", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False


def _csv_columns(train_fields: List[str], val_fields: List[str]) -> List[str]:
    return ["epoch", "lr", "time_s"] + [f"train_{f}" for f in train_fields] + [f"val_{f}" for f in val_fields]


def _fields(dataset: Optional[GraphDataset], loss: Loss) -> List[str]:
    fields = ["loss"]
    if dataset is None or len(dataset) == 0:
        return []
    for target, names in ((keys.ENERGY, ("energy", "energy_per_atom")), (keys.FORCES, ("forces",)), (keys.STRESS, ("stress",))):
        if dataset.has(target):
            for n in names:
                fields += [f"{n}_mae", f"{n}_rmse"]
    return fields


def _truncate_csv(path: str, completed_epochs: int) -> None:
    """Keep the header and the rows of epochs <= completed_epochs (after a resume)."""
    if not os.path.isfile(path):
        return
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return
    kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= completed_epochs]
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as fh:
        csv.writer(fh).writerows(kept)
    os.replace(tmp, path)


def train(cfg: Dict[str, Any], stop_after_steps: Optional[int] = None, log=print) -> Dict[str, Any]:
    """Run (or resume) a training run described by a resolved config.

    ``stop_after_steps`` behaves like a Ctrl-C after that many optimizer steps of this call
    (used by tests). Returns a summary dict (paths, epochs, best metric, final metrics).
    Raises TrainingInterrupted after saving when interrupted.
    """
    files = _RunFiles(cfg["run"]["output_dir"])
    resume_ckpt = _checkpoint_to_resume(cfg["run"], files)
    device, dtype = _set_up_torch(cfg["run"])
    t0 = time.time()
    train_frames, val_frames = _read_data(cfg["data"])
    model = _build_model(cfg["model"], resume_ckpt, train_frames.frames + val_frames.frames, dtype)
    loss_fn = _make_loss(cfg["loss"])
    data = _make_datasets(train_frames, val_frames, model, loss_fn, cfg, dtype)
    log(_data_line(data, model, time.time() - t0))
    norm = _normalization(model, data.train, loss_fn, cfg["normalization"], resume_ckpt, log)
    model.to(device)
    trainer = _Trainer(cfg, model, loss_fn, norm, data, files, device, dtype, log)
    if resume_ckpt is not None:
        trainer.restore(resume_ckpt["training"])
    _open_run_folder(files, cfg, trainer.columns, resumed=resume_ckpt is not None)
    return trainer.run(stop_after_steps)


class _RunFiles:
    """The files a run keeps in ``run.output_dir``."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir
        self.last, self.best = os.path.join(out_dir, LAST), os.path.join(out_dir, BEST)
        self.metrics, self.config = os.path.join(out_dir, METRICS), os.path.join(out_dir, CONFIG)


def _checkpoint_to_resume(run, files: _RunFiles) -> Optional[Dict[str, Any]]:
    """``last.pt`` when resuming an existing run, None for a fresh one; an existing run is
    never overwritten unless asked to."""
    if not os.path.isfile(files.last):
        return None
    if run["resume"]:
        ckpt = load_checkpoint(files.last)
        if ckpt.get("training") is None:
            raise ValueError(f"{files.last} has no training state to resume from")
        return ckpt
    if not run["overwrite"]:
        raise FileExistsError(
            f"{files.out_dir} already holds a run ({LAST}); resume it with --resume (run.resume: true), "
            "start afresh with --overwrite (run.overwrite: true), or choose another run.output_dir"
        )
    return None


def _set_up_torch(run) -> Tuple[torch.device, torch.dtype]:
    """Threads, device, dtype and seeds; seeded before the model exists so its initial weights
    depend only on run.seed."""
    if run["num_threads"]:
        torch.set_num_threads(run["num_threads"])
    device = resolve_device(run["device"])
    dtype = getattr(torch, run["dtype"])
    seed = run["seed"]
    torch.manual_seed(seed)
    np.random.seed(seed % (2 ** 32))
    random.seed(seed)
    return device, dtype


def _read_data(data_cfg) -> Tuple[_FrameSet, _FrameSet]:
    """The training and validation structures (no validation files: an empty set)."""
    return (_read_frames(_as_list(data_cfg["train"]), data_cfg),
            _read_frames(_as_list(data_cfg["validation"]), data_cfg))


def _build_model(model_cfg, resume_ckpt: Optional[Dict[str, Any]], frames: list, dtype: torch.dtype) -> torch.nn.Module:
    """The model to train: rebuilt from the checkpoint's hyperparameters on resume, else from
    the config, with its species inferred from the data when the config names none."""
    from equiformer.model import build_model, saved_hparams

    if resume_ckpt is not None:
        hparams = saved_hparams(resume_ckpt["model_hparams"])
    else:
        hparams = dict(model_cfg)
        if not hparams.get("species"):
            hparams["species"] = infer_species(frames)
    model = build_model(hparams)
    model.to(dtype)
    return model


def _make_loss(loss_cfg) -> Loss:
    return Loss(loss_cfg["energy_weight"], loss_cfg["forces_weight"], loss_cfg["stress_weight"],
                loss_cfg["kind"], loss_cfg["huber_delta"])


class _Data(NamedTuple):
    train: GraphDataset
    val: Optional[GraphDataset]  # None when there are no validation structures
    provenance: Dict[str, Any]  # stored in every checkpoint's metadata


def _make_datasets(train: _FrameSet, val: _FrameSet, model, loss_fn: Loss, cfg, dtype: torch.dtype) -> _Data:
    """Graphs with the model's species and cutoff, split into training and validation sets:
    the validation files when given, else a seeded split of the training files."""
    data_cfg = cfg["data"]
    species, cutoff = list(model.species_symbols), float(model.cutoff)
    targets = _required_targets(data_cfg, cfg["loss"], loss_fn)
    full = GraphDataset.from_atoms(train.frames, species, cutoff, dtype, sources=train.sources, **targets)
    split_seed = data_cfg["split_seed"] if data_cfg["split_seed"] is not None else cfg["run"]["seed"]
    if val.frames:
        val_set = GraphDataset.from_atoms(val.frames, species, cutoff, dtype, sources=val.sources, **targets)
        if data_cfg["n_train"] is not None:
            tr_idx, _ = split_indices(len(full), 0.0, split_seed, n_train=data_cfg["n_train"], n_val=0)
            train_set = full.subset(tr_idx)
        else:
            train_set = full
    else:
        tr_idx, va_idx = split_indices(len(full), data_cfg["val_fraction"], split_seed, data_cfg["n_train"], data_cfg["n_val"])
        train_set, val_set = full.subset(tr_idx), full.subset(va_idx)
    if len(val_set) == 0:
        val_set = None
    if loss_fn.needs_stress:
        _check_fully_periodic(train_set, val_set)
    provenance = {"train": train.provenance, "validation": val.provenance,
                  "num_train": len(train_set), "num_val": len(val_set) if val_set else 0}
    return _Data(train_set, val_set, provenance)


def _required_targets(data_cfg, loss_cfg, loss_fn: Loss) -> Dict[str, Optional[str]]:
    # a target is required (missing -> error naming file, frame and key) when its loss weight is > 0
    return dict(
        energy_key=data_cfg["energy_key"] if loss_cfg["energy_weight"] > 0 else None,
        forces_key=data_cfg["forces_key"] if loss_fn.needs_forces else None,
        stress_key=data_cfg["stress_key"] if loss_fn.needs_stress else None,
    )


def _check_fully_periodic(train_set: GraphDataset, val_set: Optional[GraphDataset]) -> None:
    for ds in (train_set, val_set):
        for g, src in zip(ds.graphs if ds else [], ds.sources if ds else []):
            if not bool(g[keys.PBC].all()):
                raise ValueError(
                    f"{src} is not periodic in all directions but loss.stress_weight > 0; stress needs "
                    "fully periodic structures: remove it or set loss.stress_weight: 0"
                )


def _data_line(data: _Data, model, seconds: float) -> str:
    train_set, val_set = data.train, data.val
    return (f"data: {len(train_set)} training / {len(val_set) if val_set else 0} validation structures, "
            f"species {list(model.species_symbols)}, cutoff {float(model.cutoff)}, avg edges/atom "
            f"{train_set.num_edges().sum() / max(train_set.num_atoms().sum(), 1):.1f} ({seconds:.1f} s)")


def _normalization(model, train_set: GraphDataset, loss_fn: Loss, norm_cfg, resume_ckpt: Optional[Dict[str, Any]],
                   log) -> Dict[str, Any]:
    """The target normalisation, put into the model and the loss: the checkpoint's on resume
    (never refitted), else fitted to the training set."""
    species = list(model.species_symbols)
    if resume_ckpt is not None:
        norm = resume_ckpt["normalization"]
    else:
        norm = fit_normalization(train_set, species, norm_cfg["atom_ref"], norm_cfg["scale"], use_forces=loss_fn.needs_forces)
        log(f"normalization: scale {norm['scale']:.6g} ({norm['scale_method']}), atom_ref "
            + ", ".join(f"{s} {e:.6g}" for s, e in zip(species, norm["atom_ref"])))
    apply_normalization(model, norm)
    loss_fn.scale = float(norm["scale"])
    return norm


def _make_schedule(optim_cfg) -> LRSchedule:
    return LRSchedule(optim_cfg["lr"], optim_cfg["epochs"], optim_cfg["warmup_epochs"], optim_cfg["warmup_lr"],
                      optim_cfg["scheduler"], optim_cfg["min_lr"], optim_cfg["plateau_factor"],
                      optim_cfg["plateau_patience"])


def _open_run_folder(files: _RunFiles, cfg: Dict[str, Any], columns: List[str], resumed: bool) -> None:
    """Create the run folder with its config and the CSV header (kept on resume)."""
    # the run folder appears only once data, model and optimiser are known to be usable
    os.makedirs(files.out_dir, exist_ok=True)
    with open(files.config, "w") as fh:
        yaml.safe_dump(cfg, fh, sort_keys=False)
    if not os.path.isfile(files.metrics) or not resumed:
        with open(files.metrics, "w", newline="") as fh:
            csv.writer(fh).writerow(columns)


class _Trainer:
    """The optimisation state of a run (optimizer, schedule, EMA, position, best metric) and
    the epoch loop that advances it and checkpoints it."""

    def __init__(self, cfg: Dict[str, Any], model, loss_fn: Loss, norm: Dict[str, Any], data: _Data,
                 files: _RunFiles, device: torch.device, dtype: torch.dtype, log):
        optim_cfg = cfg["optim"]
        self.cfg, self.model, self.loss_fn, self.norm, self.data = cfg, model, loss_fn, norm, data
        self.files, self.device, self.dtype, self.log = files, device, dtype, log
        self.optimizer = make_optimizer(model, optim_cfg)
        self.schedule = _make_schedule(optim_cfg)
        self.ema = EMA(model, optim_cfg["ema_decay"]) if optim_cfg["ema_decay"] is not None else None
        self.train_loader = GraphLoader(data.train, optim_cfg["batch_size"], shuffle=True, seed=cfg["run"]["seed"])
        self.val_loader = (GraphLoader(data.val, optim_cfg["val_batch_size"] or optim_cfg["batch_size"])
                           if data.val else None)
        self.epochs, self.clip = optim_cfg["epochs"], optim_cfg["clip_grad_norm"]
        self.compute_forces = loss_fn.needs_forces or data.train.has(keys.FORCES)
        self.compute_stress = loss_fn.needs_stress
        self.create_graph = loss_fn.needs_forces or loss_fn.needs_stress
        self.columns = _csv_columns(_fields(data.train, loss_fn), _fields(data.val, loss_fn))
        # where the run stands; restored on resume and saved in every checkpoint
        self.start_epoch, self.start_step, self.global_step = 0, 0, 0
        self.best_metric, self.best_epoch = math.inf, -1
        self.partial = None  # metrics of the steps already done in the epoch resumed mid-way
        self.last_metrics: Dict[str, float] = {}
        self.steps_this_call = 0

    def restore(self, st: Dict[str, Any]) -> None:
        """Continue from a checkpoint's training state (and drop CSV rows of epochs it lacks)."""
        try:
            self.model.load_state_dict(st["state_dict"])
        except RuntimeError as exc:
            raise ValueError(f"cannot resume from {self.files.last}: its weights do not fit the model rebuilt from its "
                             f"hyperparameters (the model code changed?): {exc}") from None
        self.optimizer.load_state_dict(st["optimizer"])
        self.schedule.load_state_dict(st["scheduler"])
        if self.ema is not None:
            if st.get("ema") is None:
                raise ValueError("the config turns EMA on but the checkpoint was trained without it; set optim.ema_decay: null")
            self.ema.load_state_dict(st["ema"])
        self.start_epoch, self.start_step, self.global_step = int(st["epoch"]), int(st["step_in_epoch"]), int(st["global_step"])
        self.best_metric, self.best_epoch = float(st["best_metric"]), int(st["best_epoch"])
        self.partial = st.get("partial_metrics")
        set_rng_state(st["rng"])
        _truncate_csv(self.files.metrics, self.start_epoch)
        self.log(f"resuming from {self.files.last}: {self.start_epoch} epochs done"
                 + (f", {self.start_step} steps into epoch {self.start_epoch + 1}" if self.start_step else ""))

    def run(self, stop_after_steps: Optional[int]) -> Dict[str, Any]:
        """Train the remaining epochs; a stop request (Ctrl-C or ``stop_after_steps``) saves
        ``last.pt`` and raises TrainingInterrupted."""
        if self.start_epoch >= self.epochs:
            self.log(f"nothing to do: {self.start_epoch} epochs done, optim.epochs is {self.epochs} (raise it to train longer)")
        self.model.train()
        with _StopFlag() as stop:
            def stop_requested() -> bool:
                return stop.requested or (stop_after_steps is not None and self.steps_this_call >= stop_after_steps)

            for epoch in range(self.start_epoch, self.epochs):
                t_epoch = time.time()
                metrics, lr = self._train_epoch(epoch, stop_requested)
                row: Dict[str, Any] = {"epoch": epoch + 1, "lr": lr}
                row.update({f"train_{k}": v for k, v in metrics.summary().items()})
                row.update({f"val_{k}": v for k, v in self._validation_summary(epoch).items()})
                row["time_s"] = time.time() - t_epoch
                self._end_epoch(epoch, row)
                if stop_requested() and epoch + 1 < self.epochs:
                    raise TrainingInterrupted(self.files.last, epoch + 1, 0)
        best = self.files.best if os.path.isfile(self.files.best) else None
        return {"output_dir": self.files.out_dir, "last": self.files.last, "best": best,
                "epochs": self.epochs, "best_metric": self.best_metric, "best_epoch": self.best_epoch,
                "metrics": self.last_metrics, "normalization": self.norm}

    def _train_epoch(self, epoch: int, stop_requested) -> Tuple[Metrics, float]:
        """One pass over the training batches (the rest of it when resumed mid-epoch); returns
        its metrics and the learning rate of its last step."""
        self.train_loader.set_epoch(epoch)
        n_batches = len(self.train_loader)
        metrics = Metrics()
        first = self.start_step if epoch == self.start_epoch else 0
        if first and self.partial is not None:
            metrics.load_state_dict(self.partial)
        it = self.train_loader.batches(first)
        bar = self._progress_bar(epoch, n_batches, first)
        lr = self.schedule.lr_at(epoch + first / n_batches)
        for step, batch in enumerate(it, start=first):
            lr = self.schedule.lr_at(epoch + step / n_batches)
            total = self._train_step(batch, lr, epoch, step, metrics)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{float(total):.4g}", lr=f"{lr:.2e}")
            if stop_requested() and step + 1 < n_batches:
                if bar is not None:
                    bar.close()
                save_checkpoint(self._checkpoint(epoch, step + 1, metrics.state_dict()), self.files.last)
                raise TrainingInterrupted(self.files.last, epoch, step + 1)
        if bar is not None:
            bar.close()
        return metrics, lr

    def _progress_bar(self, epoch: int, n_batches: int, first: int):
        if not self.cfg["run"]["progress"]:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=n_batches, initial=first, desc=f"epoch {epoch + 1}/{self.epochs}", leave=False, dynamic_ncols=True)

    def _train_step(self, batch, lr: float, epoch: int, step: int, metrics: Metrics) -> torch.Tensor:
        """One optimizer step at learning rate ``lr``; returns the batch's loss."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batch = graph_to(batch, self.device, self.dtype)
        pred = self.model(batch, compute_forces=self.compute_forces, compute_stress=self.compute_stress,
                          create_graph=self.create_graph)
        total, _ = self.loss_fn(pred, batch)
        if not torch.isfinite(total):
            # saved before the step, so the weights in last.pt are still finite
            save_checkpoint(self._checkpoint(epoch, step, metrics.state_dict()), self.files.last)
            raise FloatingPointError(
                f"non-finite loss at epoch {epoch + 1}, step {step}; "
                f"state before this step saved to {self.files.last}. Lower optim.lr, enable optim.clip_grad_norm, "
                "or check the data for outliers"
            )
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if self.clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model)
        self.global_step += 1
        self.steps_this_call += 1
        metrics.update(pred, batch, float(total.detach()))
        return total

    def _validation_summary(self, epoch: int) -> Dict[str, float]:
        """Validation metrics (with the EMA weights when EMA is on) every run.val_every epochs
        and after the last; empty on the other epochs and without validation data."""
        last_epoch = epoch + 1 == self.epochs
        if self.val_loader is None or not ((epoch + 1) % self.cfg["run"]["val_every"] == 0 or last_epoch):
            return {}
        with self.ema.swapped(self.model) if self.ema is not None else contextlib.nullcontext():
            vm = evaluate_dataset(self.model, self.val_loader, self.loss_fn, self.device, self.dtype,
                                  self.compute_forces, self.compute_stress)
        return vm.summary()

    def _end_epoch(self, epoch: int, row: Dict[str, Any]) -> None:
        """Step the schedule, append the CSV row, write last.pt (and best.pt when improved), log."""
        monitored = row.get("val_loss") if self.val_loader is not None else row.get("train_loss")
        self.schedule.epoch_end(epoch, row.get("val_loss"))
        with open(self.files.metrics, "a", newline="") as fh:
            csv.writer(fh).writerow([_fmt(row.get(c)) for c in self.columns])
        self.last_metrics = {k: float(v) for k, v in row.items()}
        improved = monitored is not None and monitored < self.best_metric
        if improved:
            self.best_metric, self.best_epoch = float(monitored), epoch + 1
        ck = self._checkpoint(epoch + 1, 0, None)
        save_checkpoint(ck, self.files.last)
        if improved:
            ck["metadata"]["kind"] = "best"
            save_checkpoint(ck, self.files.best)
        self.log(_epoch_line(row, improved))

    def _checkpoint(self, epoch_done: int, step_in_epoch: int, metrics_partial) -> Dict[str, Any]:
        """A ``last`` checkpoint: the weights for use (EMA when on) plus the full training state."""
        training = {
            "state_dict": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "epoch": epoch_done,
            "step_in_epoch": step_in_epoch,
            "global_step": self.global_step,
            "partial_metrics": metrics_partial,
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "rng": get_rng_state(),
        }
        meta = {"kind": "last", "epoch": epoch_done, "config": self.cfg, "datasets": self.data.provenance,
                "metrics": self.last_metrics, "best": {"metric": "val_loss" if self.data.val else "train_loss",
                                                       "value": self.best_metric, "epoch": self.best_epoch}}
        return build_checkpoint(self.model, self._weights_for_use(), self.norm, training, meta)

    def _weights_for_use(self) -> Dict[str, torch.Tensor]:
        if self.ema is not None:
            return self.ema.averaged_state_dict(self.model)
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.8g}"
    return str(v)


def _epoch_line(row: Dict[str, Any], improved: bool) -> str:
    parts = [f"epoch {row['epoch']}", f"lr {row['lr']:.3g}"]
    for prefix in ("train", "val"):
        for name, label in (("loss", "loss"), ("energy_per_atom_mae", "E/atom MAE"), ("forces_mae", "F MAE"), ("stress_mae", "S MAE")):
            v = row.get(f"{prefix}_{name}")
            if v is not None:
                parts.append(f"{prefix} {label} {v:.4g}")
    parts.append(f"{row['time_s']:.1f} s")
    return " | ".join(parts) + ("  *best*" if improved else "")
