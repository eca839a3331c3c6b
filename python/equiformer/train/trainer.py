"""The training loop behind ``equiformer-train``.

:func:`train` takes a resolved config (see :mod:`equiformer.train.config`) and writes into
``run.output_dir``: ``last.pt`` (after every epoch, and on Ctrl-C / errors at a consistent
step), ``best.pt`` (lowest validation loss), ``metrics.csv`` (one row per epoch) and
``config.yaml`` (the resolved config). Resuming (``run.resume``) restores weights, optimizer,
schedule, EMA, RNG states and the position inside the epoch, and the data order depends only
on (seed, epoch), so a resumed run follows the uninterrupted one step by step.
"""

import csv
import math
import os
import random
import signal
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import yaml

from equiformer.data import keys
from equiformer.data.atoms import graph_to
from equiformer.data.dataset import GraphDataset, GraphLoader, file_fingerprint, infer_species, read_structures, split_indices
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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"run.device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"run.device is {name!r} but CUDA is not available; use run.device: cpu")
    return dev


def _as_list(v) -> List[str]:
    if v is None:
        return []
    return [v] if isinstance(v, str) else list(v)


def _read_frames(paths: List[str], data_cfg) -> Tuple[list, List[str], List[Dict[str, Any]]]:
    frames, sources, prov = [], [], []
    for path in paths:
        fr = read_structures(path, data_cfg["index"], data_cfg["format"])
        frames.extend(fr)
        sources.extend(f"{path}, frame {i}" for i in range(len(fr)))
        rec = file_fingerprint(path)
        rec.update({"index": data_cfg["index"], "num_structures": len(fr)})
        prov.append(rec)
    return frames, sources, prov


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
    from equiformer.model import build_model, saved_hparams

    run, data_cfg, optim_cfg, loss_cfg = cfg["run"], cfg["data"], cfg["optim"], cfg["loss"]
    out_dir = run["output_dir"]
    last_path, best_path = os.path.join(out_dir, LAST), os.path.join(out_dir, BEST)
    csv_path = os.path.join(out_dir, METRICS)
    resume_ckpt = None
    if os.path.isfile(last_path):
        if run["resume"]:
            resume_ckpt = load_checkpoint(last_path)
            if resume_ckpt.get("training") is None:
                raise ValueError(f"{last_path} has no training state to resume from")
        elif not run["overwrite"]:
            raise FileExistsError(
                f"{out_dir} already holds a run ({LAST}); resume it with --resume (run.resume: true), "
                "start afresh with --overwrite (run.overwrite: true), or choose another run.output_dir"
            )
    if run["num_threads"]:
        torch.set_num_threads(run["num_threads"])
    device = resolve_device(run["device"])
    dtype = getattr(torch, run["dtype"])
    seed = run["seed"]
    torch.manual_seed(seed)
    np.random.seed(seed % (2 ** 32))
    random.seed(seed)

    # ------------------------------------------------------------------ data
    t0 = time.time()
    train_paths, val_paths = _as_list(data_cfg["train"]), _as_list(data_cfg["validation"])
    train_frames, train_sources, train_prov = _read_frames(train_paths, data_cfg)
    val_frames, val_sources, val_prov = _read_frames(val_paths, data_cfg) if val_paths else ([], [], [])
    model_cfg = dict(cfg["model"])
    if resume_ckpt is not None:
        hparams = saved_hparams(resume_ckpt["model_hparams"])
    else:
        if not model_cfg.get("species"):
            model_cfg["species"] = infer_species(train_frames + val_frames)
        hparams = model_cfg
    model = build_model(hparams)
    model.to(dtype)
    species, cutoff = list(model.species_symbols), float(model.cutoff)

    loss_fn = Loss(loss_cfg["energy_weight"], loss_cfg["forces_weight"], loss_cfg["stress_weight"],
                   loss_cfg["kind"], loss_cfg["huber_delta"])
    # a target is required (missing -> error naming file, frame and key) when its loss weight is > 0
    targets = dict(
        energy_key=data_cfg["energy_key"] if loss_cfg["energy_weight"] > 0 else None,
        forces_key=data_cfg["forces_key"] if loss_fn.needs_forces else None,
        stress_key=data_cfg["stress_key"] if loss_fn.needs_stress else None,
    )
    full = GraphDataset.from_atoms(train_frames, species, cutoff, dtype, sources=train_sources, **targets)
    split_seed = data_cfg["split_seed"] if data_cfg["split_seed"] is not None else seed
    if val_frames:
        val_set = GraphDataset.from_atoms(val_frames, species, cutoff, dtype, sources=val_sources, **targets)
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
        for ds in (train_set, val_set):
            for g, src in zip(ds.graphs if ds else [], ds.sources if ds else []):
                if not bool(g[keys.PBC].all()):
                    raise ValueError(
                        f"{src} is not periodic in all directions but loss.stress_weight > 0; stress needs "
                        "fully periodic structures: remove it or set loss.stress_weight: 0"
                    )
    log(f"data: {len(train_set)} training / {len(val_set) if val_set else 0} validation structures, "
        f"species {species}, cutoff {cutoff}, avg edges/atom "
        f"{train_set.num_edges().sum() / max(train_set.num_atoms().sum(), 1):.1f} ({time.time() - t0:.1f} s)")

    # ------------------------------------------------------------------ normalisation
    norm_cfg = cfg["normalization"]
    if resume_ckpt is not None:
        norm = resume_ckpt["normalization"]
    else:
        norm = fit_normalization(train_set, species, norm_cfg["atom_ref"], norm_cfg["scale"], use_forces=loss_fn.needs_forces)
        log(f"normalization: scale {norm['scale']:.6g} ({norm['scale_method']}), atom_ref "
            + ", ".join(f"{s} {e:.6g}" for s, e in zip(species, norm["atom_ref"])))
    apply_normalization(model, norm)
    loss_fn.scale = float(norm["scale"])
    model.to(device)

    # ------------------------------------------------------------------ optimisation state
    optimizer = make_optimizer(model, optim_cfg)
    schedule = LRSchedule(optim_cfg["lr"], optim_cfg["epochs"], optim_cfg["warmup_epochs"], optim_cfg["warmup_lr"],
                          optim_cfg["scheduler"], optim_cfg["min_lr"], optim_cfg["plateau_factor"],
                          optim_cfg["plateau_patience"])
    ema = EMA(model, optim_cfg["ema_decay"]) if optim_cfg["ema_decay"] is not None else None
    train_loader = GraphLoader(train_set, optim_cfg["batch_size"], shuffle=True, seed=seed)
    val_loader = GraphLoader(val_set, optim_cfg["val_batch_size"] or optim_cfg["batch_size"]) if val_set else None
    start_epoch, start_step, global_step = 0, 0, 0
    best_metric, best_epoch = math.inf, -1
    partial = None
    if resume_ckpt is not None:
        st = resume_ckpt["training"]
        try:
            model.load_state_dict(st["state_dict"])
        except RuntimeError as exc:
            raise ValueError(f"cannot resume from {last_path}: its weights do not fit the model rebuilt from its "
                             f"hyperparameters (the model code changed?): {exc}") from None
        optimizer.load_state_dict(st["optimizer"])
        schedule.load_state_dict(st["scheduler"])
        if ema is not None:
            if st.get("ema") is None:
                raise ValueError("the config turns EMA on but the checkpoint was trained without it; set optim.ema_decay: null")
            ema.load_state_dict(st["ema"])
        start_epoch, start_step, global_step = int(st["epoch"]), int(st["step_in_epoch"]), int(st["global_step"])
        best_metric, best_epoch = float(st["best_metric"]), int(st["best_epoch"])
        partial = st.get("partial_metrics")
        set_rng_state(st["rng"])
        _truncate_csv(csv_path, start_epoch)
        log(f"resuming from {last_path}: {start_epoch} epochs done" + (f", {start_step} steps into epoch {start_epoch + 1}" if start_step else ""))
    # the run folder appears only once data, model and optimiser are known to be usable
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, CONFIG), "w") as fh:
        yaml.safe_dump(cfg, fh, sort_keys=False)

    provenance = {"train": train_prov, "validation": val_prov,
                  "num_train": len(train_set), "num_val": len(val_set) if val_set else 0}
    train_fields, val_fields = _fields(train_set, loss_fn), _fields(val_set, loss_fn)
    columns = _csv_columns(train_fields, val_fields)
    if not os.path.isfile(csv_path) or resume_ckpt is None:
        with open(csv_path, "w", newline="") as fh:
            csv.writer(fh).writerow(columns)

    def weights_for_use() -> Dict[str, torch.Tensor]:
        return ema.averaged_state_dict(model) if ema is not None else {k: v.detach().clone() for k, v in model.state_dict().items()}

    def checkpoint(epoch_done: int, step_in_epoch: int, metrics_partial, kind: str, last_metrics) -> Dict[str, Any]:
        training = {
            "state_dict": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": schedule.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "epoch": epoch_done,
            "step_in_epoch": step_in_epoch,
            "global_step": global_step,
            "partial_metrics": metrics_partial,
            "best_metric": best_metric,
            "best_epoch": best_epoch,
            "rng": get_rng_state(),
        }
        meta = {"kind": kind, "epoch": epoch_done, "config": cfg, "datasets": provenance,
                "metrics": last_metrics, "best": {"metric": "val_loss" if val_set else "train_loss",
                                                  "value": best_metric, "epoch": best_epoch}}
        return build_checkpoint(model, weights_for_use(), norm, training, meta)

    compute_forces = loss_fn.needs_forces or train_set.has(keys.FORCES)
    compute_stress = loss_fn.needs_stress
    create_graph = loss_fn.needs_forces or loss_fn.needs_stress
    epochs = optim_cfg["epochs"]
    clip = optim_cfg["clip_grad_norm"]
    progress = run["progress"]
    steps_this_call = 0
    last_metrics: Dict[str, float] = {}
    if start_epoch >= epochs:
        log(f"nothing to do: {start_epoch} epochs done, optim.epochs is {epochs} (raise it to train longer)")
    model.train()
    with _StopFlag() as stop:
        for epoch in range(start_epoch, epochs):
            t_epoch = time.time()
            train_loader.set_epoch(epoch)
            n_batches = len(train_loader)
            metrics = Metrics()
            first = start_step if epoch == start_epoch else 0
            if first and partial is not None:
                metrics.load_state_dict(partial)
            it = train_loader.batches(first)
            bar = None
            if progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=n_batches, initial=first, desc=f"epoch {epoch + 1}/{epochs}", leave=False, dynamic_ncols=True)
            lr = schedule.lr_at(epoch + first / n_batches)
            for step, batch in enumerate(it, start=first):
                lr = schedule.lr_at(epoch + step / n_batches)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                batch = graph_to(batch, device, dtype)
                pred = model(batch, compute_forces=compute_forces, compute_stress=compute_stress, create_graph=create_graph)
                total, _ = loss_fn(pred, batch)
                if not torch.isfinite(total):
                    ck = checkpoint(epoch, step, metrics.state_dict(), "last", last_metrics)
                    save_checkpoint(ck, last_path)
                    raise FloatingPointError(
                        f"non-finite loss at epoch {epoch + 1}, step {step}; "
                        f"state before this step saved to {last_path}. Lower optim.lr, enable optim.clip_grad_norm, "
                        "or check the data for outliers"
                    )
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                if clip is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
                optimizer.step()
                if ema is not None:
                    ema.update(model)
                global_step += 1
                steps_this_call += 1
                metrics.update(pred, batch, float(total.detach()))
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{float(total):.4g}", lr=f"{lr:.2e}")
                interrupted = stop.requested or (stop_after_steps is not None and steps_this_call >= stop_after_steps)
                if interrupted and step + 1 < n_batches:
                    if bar is not None:
                        bar.close()
                    save_checkpoint(checkpoint(epoch, step + 1, metrics.state_dict(), "last", last_metrics), last_path)
                    raise TrainingInterrupted(last_path, epoch, step + 1)
            if bar is not None:
                bar.close()
            row: Dict[str, Any] = {"epoch": epoch + 1, "lr": lr}
            row.update({f"train_{k}": v for k, v in metrics.summary().items()})
            do_val = val_loader is not None and ((epoch + 1) % run["val_every"] == 0 or epoch + 1 == epochs)
            if do_val:
                if ema is not None:
                    with ema.swapped(model):
                        vm = evaluate_dataset(model, val_loader, loss_fn, device, dtype, compute_forces, compute_stress)
                else:
                    vm = evaluate_dataset(model, val_loader, loss_fn, device, dtype, compute_forces, compute_stress)
                row.update({f"val_{k}": v for k, v in vm.summary().items()})
            row["time_s"] = time.time() - t_epoch
            monitored = row.get("val_loss") if val_loader is not None else row.get("train_loss")
            schedule.epoch_end(epoch, row.get("val_loss"))
            with open(csv_path, "a", newline="") as fh:
                csv.writer(fh).writerow([_fmt(row.get(c)) for c in columns])
            last_metrics = {k: float(v) for k, v in row.items()}
            improved = monitored is not None and monitored < best_metric
            if improved:
                best_metric, best_epoch = float(monitored), epoch + 1
            ck = checkpoint(epoch + 1, 0, None, "last", last_metrics)
            save_checkpoint(ck, last_path)
            if improved:
                ck["metadata"]["kind"] = "best"
                save_checkpoint(ck, best_path)
            log(_epoch_line(row, improved))
            if stop.requested or (stop_after_steps is not None and steps_this_call >= stop_after_steps):
                if epoch + 1 < epochs:
                    raise TrainingInterrupted(last_path, epoch + 1, 0)
    return {"output_dir": out_dir, "last": last_path, "best": best_path if os.path.isfile(best_path) else None,
            "epochs": epochs, "best_metric": best_metric, "best_epoch": best_epoch, "metrics": last_metrics,
            "normalization": norm}


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
