"""ASE calculator on an exported model (or a checkpoint): the reference that the LAMMPS and
OpenMM integrations are compared against. Speaks ASE's units (eV, Angstrom) whatever the
model's own units are."""

from typing import Optional

import numpy as np
import torch
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

from .data.neighbors import neighbor_list
from .device import resolve_device
from .export.contract import legacy_executor, metadata_files, open_engine_model, warn_close_atoms
from .model_info import ModelInfo


class EquiformerCalculator(Calculator):
    """``EquiformerCalculator(model="MODEL.pt")`` (or a compiled ``MODEL.pt2``) or
    ``EquiformerCalculator(checkpoint="CKPT.pt")``.

    Properties: energy, free_energy, energies (per atom), forces, stress (periodic cells).
    A per-structure ``energy_offset`` (official MD17 imports) is added to the energy and
    spread evenly over the per-atom energies.

    A committee file (docs/committees.md) gives the members' mean under these keys and adds
    `COMMITTEE_PROPERTIES` (in this instance's ``implemented_properties``): ``energy_std``
    (eV, population std of the member totals), ``forces_std`` ([N] eV/Angstrom, the force
    deviation sigma_F of each atom), ``member_energies`` ([K] eV, totals with the offset),
    ``member_forces`` ([K, N, 3] eV/Angstrom), ``member_virials`` ([K, 3, 3] eV) and
    ``model_deviation`` (dict: the deviation columns of `equiformer.committee.deviations`, eV
    and Angstrom).

    ``device``: cpu (default), cuda, cuda:K or auto (docs/gpu.md); the neighbour list is
    built on the CPU, the network runs on the device. A compiled .pt2 runs only on the device
    kind it was compiled for.
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]
    COMMITTEE_PROPERTIES = ["energy_std", "forces_std", "member_energies", "member_forces", "member_virials",
                            "model_deviation"]

    def __init__(self, model: Optional[str] = None, checkpoint: Optional[str] = None, device: str = "cpu", **kwargs):
        super().__init__(**kwargs)
        if (model is None) == (checkpoint is None):
            raise ValueError("give exactly one of model='MODEL.pt' (exported) or checkpoint='CKPT.pt'")
        self.device = resolve_device(device)
        if model is not None:
            self.info = ModelInfo.read(model)
            self.engine = open_engine_model(model, self.device, self.info.metadata)
        else:
            from .export.torchscript import EquiformerEngineModel, metadata_of
            from .train.checkpoint import model_from_checkpoint

            eager = model_from_checkpoint(checkpoint, device=self.device)
            for p in eager.parameters():  # as the exported model: derivatives w.r.t. positions only
                p.requires_grad_(False)
            self.engine = EquiformerEngineModel(eager)
            # described as its export would be
            metadata = metadata_of(eager, eager.energy_dtype(), str(self.device))
            self.info = ModelInfo.from_metadata(checkpoint, metadata_files(metadata))
        if self.info.committee_size > 1:
            self.implemented_properties = type(self).implemented_properties + self.COMMITTEE_PROPERTIES
        self.to_ev = self.info.energy_to("eV")
        self.to_model_length = self.info.length_from("Angstrom")
        self.warned_close = False

    @property
    def cutoff(self) -> float:
        """The model's cutoff, in its length unit."""
        return self.info.cutoff

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        n = len(atoms)
        if n == 0:
            raise ValueError("cannot evaluate an empty structure (no atoms)")
        species = torch.from_numpy(self.info.species_indices(atoms.get_chemical_symbols(), "the calculator's atoms"))
        pos = atoms.get_positions() * self.to_model_length
        cell = atoms.get_cell().array * self.to_model_length
        pbc = atoms.get_pbc()
        edge_index, shifts, _ = neighbor_list(pos, self.cutoff, cell if pbc.any() else None, pbc)
        vectors = pos[edge_index[0]] - pos[edge_index[1]] + shifts
        if not self.warned_close and len(vectors) > 0:
            closest = float(np.sqrt((vectors * vectors).sum(1).min()))
            self.warned_close = warn_close_atoms(closest / self.to_model_length,
                                                 self.info.min_distance / self.to_model_length, "Angstrom")
        with legacy_executor():
            out = self.engine(species.to(self.device), torch.from_numpy(edge_index).to(self.device),
                              torch.tensor(vectors, dtype=self.info.torch_dtype, device=self.device), n)
        e_unit, l_unit = self.to_ev, self.to_ev * self.to_model_length  # energy, energy/length conversions
        energy = (float(out["energy"]) + self.info.energy_offset) * e_unit
        energies = (out["atom_energies"].cpu().numpy() + self.info.energy_offset / n) * e_unit
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "energies": energies,
            "forces": out["forces"].cpu().numpy() * l_unit,
        }
        if self.info.committee_size > 1:
            self.results.update(committee_results(out, self.info.energy_offset, e_unit, l_unit))
        if pbc.all():
            virial = out["virial"].cpu().numpy() * e_unit
            stress = -virial / atoms.get_volume()
            self.results["stress"] = stress.reshape(9)[[0, 4, 8, 5, 2, 1]]
        elif "stress" in properties:
            raise PropertyNotImplementedError("stress needs a cell periodic in all three directions")


def committee_results(out, energy_offset: float, e_unit: float, l_unit: float):
    """The committee's extra results (class docstring) from its forward's member outputs;
    ``e_unit``, ``l_unit``: energy and force conversions to eV and eV/Angstrom."""
    from .committee import DEVIATION_KEYS, deviations

    energies = (out["member_energies"].cpu().numpy() + energy_offset) * e_unit
    forces = out["member_forces"].cpu().numpy() * l_unit
    virials = out["member_virials"].cpu().numpy() * e_unit
    devi = deviations(forces, virials, energies)
    return {"energy_std": float(energies.std()), "forces_std": devi["sigma_F"], "member_energies": energies,
            "member_forces": forces, "member_virials": virials,
            "model_deviation": {key: devi[key] for key in DEVIATION_KEYS}}
