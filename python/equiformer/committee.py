"""Committees: K Equiformer members in one exported file (docs/committees.md).

The file's forward returns the members' mean under the contract's usual keys, so an engine
that knows nothing about committees runs the mean potential, plus each member's energies,
forces and virial (docs/model-format.md, "Committee files"). `deviations` is the one
definition of the model deviation that every engine reproduces.

Members that agree on what the geometry features depend on (cutoff, harmonics, cutoff
weight, frame degrees, radial basis) share them: the features are computed once per call,
each member runs its blocks on them as leaves, and each member's feature gradients go back
to the edge vectors separately, so member forces are exact. Large graphs take each member's
chunked schedule one after the other (memory of one member at a time).
"""

import os
import re
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from .forces import forces_and_virial
from .model import Equiformer, clone_model
from .nn.features import EdgeFeatures, differentiable, with_differentiable
from .schedule import ChunkedGradient
from .export.contract import check_writable, engine_outputs, legacy_executor, metadata_files, save_engine_model

DEVIATION_KEYS = ("max_devi_v", "min_devi_v", "avg_devi_v", "max_devi_f", "min_devi_f", "avg_devi_f", "devi_e")


def deviations(member_forces, member_virials, member_energies, n_atoms: Optional[int] = None) -> Dict[str, object]:
    """The model deviation of one structure (population statistics over the K members,
    float64): `DEVIATION_KEYS` as floats plus ``sigma_F`` [N], the force deviation per atom.

    ``member_forces`` [K, N', 3] after any ghost forces were summed onto their owners;
    ``member_virials`` [K, 3, 3]; ``member_energies`` [K] (totals, or totals less one common
    constant). ``n_atoms``: the atoms the model covers are the first n_atoms rows (default
    all N'); it is also the N that the virial and energy deviations are divided by."""
    forces = np.asarray(member_forces, dtype=np.float64)
    virials = np.asarray(member_virials, dtype=np.float64)
    energies = np.asarray(member_energies, dtype=np.float64)
    if forces.ndim != 3 or forces.shape[2] != 3:
        raise ValueError(f"member_forces must have shape [K, N, 3], got {list(forces.shape)}")
    k = forces.shape[0]
    if virials.shape != (k, 3, 3) or energies.shape != (k,):
        raise ValueError(f"member_virials [K, 3, 3] and member_energies [K] must match K = {k} members, got "
                         f"{list(virials.shape)} and {list(energies.shape)}")
    n = forces.shape[1] if n_atoms is None else int(n_atoms)
    if not 0 < n <= forces.shape[1]:
        raise ValueError(f"n_atoms must be between 1 and {forces.shape[1]} (the force rows), got {n}")
    # spread about member 0 first: the same statistics, exactly zero for identical members,
    # and no cancellation against large common values
    f = forces[:, :n] - forces[:1, :n]
    sigma_f = np.sqrt(((f - f.mean(axis=0)) ** 2).sum(axis=2).mean(axis=0))
    w = virials.reshape(k, 9)
    devi_v = (w - w[:1]).std(axis=0) / n
    return {
        "max_devi_v": float(devi_v.max()), "min_devi_v": float(devi_v.min()), "avg_devi_v": float(devi_v.mean()),
        "max_devi_f": float(sigma_f.max()), "min_devi_f": float(sigma_f.min()), "avg_devi_f": float(sigma_f.mean()),
        "devi_e": float((energies - energies[0]).std() / n),
        "sigma_F": sigma_f,
    }


class CommitteeMember(torch.nn.Module):
    """One member: its blocks on given edge features, and its own chunked schedule."""

    def __init__(self, model: Equiformer, edge_chunk: int):
        super().__init__()
        self.model = model
        self.schedule = ChunkedGradient(model, edge_chunk)

    def atom_energies(self, species: torch.Tensor, src: torch.Tensor, dst: torch.Tensor,
                      features: EdgeFeatures) -> torch.Tensor:
        m = self.model
        x = m.embed(species, dst, features)
        for blk in m.blocks:
            x = blk(x, src, dst, features)
        return m.readout(species, x, src, dst, features)


class CommitteeEngineModel(torch.nn.Module):
    """The contract's forward over K members: the mean under the usual keys plus
    ``member_energies`` [K], ``member_atom_energies`` [K, N], ``member_forces`` [K, N, 3] and
    ``member_virials`` [K, 3, 3] (float64). Graphs with more than ``chunked_edges`` edges take
    each member's chunked schedule (-1: never). No per-layer methods (engines exchanging
    features between layers refuse a committee)."""

    chunked_edges: int
    shared_basis: bool

    def __init__(self, members: Sequence[Equiformer], chunked_edges: int = -1, edge_chunk: int = 2048):
        super().__init__()
        check_members(members)
        self.members = torch.nn.ModuleList([CommitteeMember(m, edge_chunk) for m in members])
        self.chunked_edges = int(chunked_edges)
        self.shared_basis = basis_is_shared(members)
        offsets = torch.stack([m.energy_offset.detach().to(torch.float64).cpu() for m in members])
        # member k's total is its local energy plus offset_k; the file says the mean offset
        self.register_buffer("offset_shift", (offsets - offsets.mean()).to(members[0].energy_offset.device))

    def forward(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor,
                n_local: int) -> Dict[str, torch.Tensor]:
        energies: List[torch.Tensor] = []
        grads: List[torch.Tensor] = []
        if self.chunked_edges < 0 or edge_vectors.shape[0] <= self.chunked_edges:
            energies, grads = self.shared_pass(species, edge_index, edge_vectors, n_local)
        else:
            for member in self.members:
                e, g = member.schedule(species, edge_index, edge_vectors, n_local)
                energies.append(e)
                grads.append(g)
        return self.outputs(edge_index, edge_vectors, torch.stack(energies), grads, n_local)

    def shared_pass(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor,
                    n_local: int):
        """Per-member atom energies and edge-vector gradients, the geometry computed once."""
        first = self.members[0].model
        vec = edge_vectors.detach().to(first.energy_dtype()).requires_grad_(True)
        src, dst = edge_index[0], edge_index[1]
        features = first.edge_features(vec)
        shared = differentiable(features)
        leaves = [_leaf(t) for t in shared]
        r = torch.linalg.vector_norm(vec, dim=1)
        energies: List[torch.Tensor] = []
        grads: List[torch.Tensor] = []
        k = 0
        for member in self.members:
            outs = list(shared)
            member_leaves = list(leaves)
            if not self.shared_basis:  # trained bases differ: each member its own, from the shared length
                outs[1] = member.model.rbf(r)
                member_leaves[1] = _leaf(outs[1])
            e = member.atom_energies(species, src, dst, with_differentiable(features, member_leaves))
            seeds = torch.autograd.grad([e[:n_local].sum()], member_leaves, allow_unused=True)
            # this member's feature gradients back to the edge vectors (the features' graph is
            # kept for the next member)
            used: List[torch.Tensor] = []
            used_seeds: List[Optional[torch.Tensor]] = []
            for f, s in zip(outs, seeds):
                if s is not None and f.requires_grad:
                    used.append(f)
                    used_seeds.append(s)
            grad = torch.zeros_like(vec)
            if len(used) > 0:
                last = k == len(self.members) - 1
                g = torch.autograd.grad(used, [vec], used_seeds, retain_graph=not last, allow_unused=True)[0]
                if g is not None:
                    grad = g
            energies.append(e.detach())
            grads.append(grad)
            k += 1
        return energies, grads

    def outputs(self, edge_index: torch.Tensor, edge_vectors: torch.Tensor, energies: torch.Tensor,
                grads: List[torch.Tensor], n_local: int) -> Dict[str, torch.Tensor]:
        k, n = energies.shape[0], energies.shape[1]
        g = torch.stack([t.to(torch.float64) for t in grads])  # [K, E, 3]
        out = engine_outputs(edge_index, edge_vectors, g.mean(0), energies.mean(0), n_local)
        # the K members as K structures of one batch: forces and virials by the one definition
        e = edge_index.shape[1]
        shift = (torch.arange(k, device=edge_index.device) * n).repeat_interleave(e)
        batched = edge_index.repeat(1, k) + shift.unsqueeze(0)
        structure = torch.arange(k, device=edge_index.device).repeat_interleave(e)
        forces, virials, _ = forces_and_virial(batched, edge_vectors.repeat(k, 1), g.reshape(k * e, 3), k * n,
                                               structure, k)
        out["member_energies"] = energies[:, :n_local].sum(1) + self.offset_shift
        out["member_atom_energies"] = energies
        out["member_forces"] = forces.reshape(k, n, 3)
        out["member_virials"] = virials
        return out


def _leaf(t: torch.Tensor) -> torch.Tensor:
    """A graph-free copy of ``t`` that requires grad: where a member's backward stops.
    (Not ``detach()``: torch.jit.freeze, which openmm-torch applies, deletes it.)"""
    with torch.no_grad():
        copy = t.clone()
    return copy.requires_grad_(True)


# -------------------------------------------------------------------- which members fit together
def _frame_degree(model: Equiformer) -> int:
    return int(model.frame.lmax)


# what the shared edge features and the file's metadata depend on: (name, value of a member)
_MUST_MATCH = (
    ("species", lambda m: " ".join(m.species_symbols)),
    ("cutoff", lambda m: m.cutoff),
    ("energy_unit", lambda m: m.hparams["energy_unit"]),
    ("length_unit", lambda m: m.hparams["length_unit"]),
    ("dtype", lambda m: str(m.energy_dtype()).replace("torch.", "")),
    ("device", lambda m: str(m.energy_scale.device)),
    ("num_layers", lambda m: m.num_layers),
    ("interaction_range", lambda m: m.cutoff * m.num_hops),
    ("irreps_sh", lambda m: m.hparams["irreps_sh"]),
    ("radial_basis", lambda m: m.hparams["radial_basis"]),
    ("num_basis", lambda m: int(m.hparams["num_basis"])),
    ("attention_cutoff (mask or smooth)", lambda m: "smooth" if m.smooth_cutoff else "mask"),
    ("highest degree of the edge frames", _frame_degree),
    ("edge frames (use_edge_frames)", lambda m: bool(m.edge_frames)),
)


def check_members(members: Sequence[Equiformer], names: Optional[Sequence[str]] = None) -> None:
    """Refuse members that cannot share edge features or one file's metadata, naming the
    member (``names``: their files) and the differing value."""
    if names is None:
        names = [f"member {k}" for k in range(len(members))]
    if len(members) < 2:
        raise ValueError(f"a committee needs at least 2 members, got {len(members)}; export a single model with "
                         "`equiformer-export CHECKPOINT.pt MODEL.pt`")
    for what, value in _MUST_MATCH:
        ref = value(members[0])
        for name, m in zip(names[1:], members[1:]):
            if value(m) != ref:
                raise ValueError(f"committee members differ in {what}: {names[0]} has {ref}, {name} has {value(m)}; "
                                 "all members need the same species, cutoff, units and edge features")


def basis_is_shared(members: Sequence[Equiformer]) -> bool:
    """True when every member's radial basis is the same function: no trained parameters,
    or equal ones."""
    first = members[0].rbf.state_dict()
    if len(list(members[0].rbf.parameters())) == 0:
        return True
    for m in members[1:]:
        other = m.rbf.state_dict()
        if any(not torch.equal(first[key], other[key]) for key in first):
            return False
    return True


# -------------------------------------------------------------------- export
def export_committee(members: Sequence[Equiformer], path: str, dtype: str = "float64", device: str = "cpu",
                     chunked_edges: Optional[int] = None, min_distance: Optional[float] = None,
                     edge_chunk: int = 2048, names: Optional[Sequence[str]] = None) -> Dict[str, str]:
    """Write K members as one committee file (TorchScript .pt): refuse members that do not
    fit together (`check_members`; ``names`` label them in messages, e.g. their files),
    check the scripted committee against each member's single-model engine on a probe
    (both routes), write atomically. Returns the metadata. Options as `export_model`."""
    from .device import resolve_device
    from .export.torchscript import (DTYPES, PROBE_TOLERANCE, SINGLE_PASS_MEMORY, EquiformerEngineModel,
                                     graph_bytes_per_edge, metadata_of, probe_inputs)

    if str(path).endswith(".pt2"):
        raise ValueError(f"cannot write {path}: a committee as a compiled .pt2 package is not available yet: "
                         "export a TorchScript .pt")
    if dtype not in DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; choose float32 or float64")
    device = str(resolve_device(device))
    if min_distance is not None and not min_distance >= 0.0:
        raise ValueError(f"min_distance must be a distance >= 0 (Angstrom), got {min_distance}")
    check_writable(path)
    if names is None:
        names = [f"member {k}" for k in range(len(members))]
    torch_dtype = DTYPES[dtype]
    models = []
    for m in members:
        m = clone_model(m).to(device=device, dtype=torch_dtype).eval()  # the caller's models are not changed
        for p in m.parameters():  # gradients with respect to edge vectors only (as export_model)
            p.requires_grad_(False)
        models.append(m)
    check_members(models, names)
    if chunked_edges is None:  # members run one after another: one member's memory decides
        chunked_edges = int(SINGLE_PASS_MEMORY / graph_bytes_per_edge(models[0], torch_dtype, device))
    scripted = torch.jit.script(CommitteeEngineModel(models, -1, edge_chunk))
    species, edge_index, vectors = probe_inputs(models[0], torch_dtype, device)
    n = int(species.shape[0])
    # what each member's own export gives on the probe: the eager engine model that
    # `export_model` scripts and checks its file against (scripting K more modules here would
    # only add minutes of TorchScript compilation)
    singles = [EquiformerEngineModel(m, -1)(species, edge_index, vectors, n) for m in models]
    offsets = torch.tensor([float(m.energy_offset) for m in models], dtype=torch.float64)
    ref = {
        "member_energies": torch.stack([s["energy"] for s in singles]).cpu() + offsets - offsets.mean(),
        "member_forces": torch.stack([s["forces"] for s in singles]).cpu(),
        "member_virials": torch.stack([s["virial"] for s in singles]).cpu(),
    }
    ref.update(energy=ref["member_energies"].mean(0), forces=ref["member_forces"].mean(0),
               virial=ref["member_virials"].mean(0))
    tol = PROBE_TOLERANCE[torch_dtype]
    for route, threshold in (("shared features", -1), ("chunked", 0)):
        scripted.chunked_edges = threshold
        for member in scripted.members:
            member.schedule.edge_chunk = max(1, int(edge_index.shape[1]) // 3)  # several chunks
        with legacy_executor():  # as the engines call it (half the compilation time)
            got = scripted(species, edge_index, vectors, n)
        for member in scripted.members:
            member.schedule.edge_chunk = edge_chunk
        for key, value in ref.items():
            scale = max(1.0, float(value.abs().max()))
            err = float((value - got[key].cpu()).abs().max())
            if not err <= tol * scale:
                raise RuntimeError(f"the committee's {key} ({route}) differs from its members' single-model exports "
                                   f"by {err:.3g} (tolerance {tol * scale:.3g}); nothing was written")
    scripted.chunked_edges = int(chunked_edges)
    metadata = metadata_of(models[0], torch_dtype, device, min_distance)
    metadata["energy_offset"] = repr(float(offsets.mean()))
    metadata["committee_size"] = len(models)
    save_engine_model(scripted, path, metadata)
    return metadata_files(metadata)


# -------------------------------------------------------------------- a trained committee's folder
def member_checkpoints(folder: str, checkpoint: str = "best.pt") -> List[str]:
    """The members' checkpoints of a committee run (the trainer's layout for ``committee:
    K``: ``member-0`` ... ``member-{K-1}``, each a run folder, and ``committee.yaml`` with
    ``size: K``), in member order. A missing member or checkpoint is an error naming it."""
    import yaml

    found = {int(m.group(1)): name for name in os.listdir(folder)
             for m in [re.fullmatch(r"member-(\d+)", name)] if m and os.path.isdir(os.path.join(folder, name))}
    spec = os.path.join(folder, "committee.yaml")
    if os.path.isfile(spec):
        with open(spec) as fh:
            size = (yaml.safe_load(fh) or {}).get("size")
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"{spec} must say the committee size as `size: K` (K >= 1), got {size!r}")
    elif found:
        size = max(found) + 1
    else:
        raise ValueError(f"{folder} is a folder but not a committee run (no committee.yaml, no member-* folders); "
                         "give checkpoint files, e.g. a.pt b.pt c.pt d.pt committee.pt")
    extra = sorted(k for k in found if k >= size)
    if extra:
        raise ValueError(f"{folder} has {found[extra[0]]} but committee.yaml says size {size}")
    paths = []
    for k in range(size):
        member = os.path.join(folder, f"member-{k}")
        if k not in found:
            raise ValueError(f"committee member {k} is missing: no folder {member} (committee of {size})")
        path = os.path.join(member, checkpoint)
        if not os.path.isfile(path):
            raise ValueError(f"committee member {k} has no {checkpoint}: {path} does not exist (has its training "
                             "written a checkpoint yet?)")
        paths.append(path)
    return paths
