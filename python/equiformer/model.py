"""The Equiformer potential: the energy function of a graph, and its training forward.

Data path (paper Fig. 1): atom embedding + edge-degree embedding -> ``num_layers``
transformer blocks (equivariant graph attention + feed-forward) -> norm and energy head ->
per-atom energies, scaled and shifted by per-species reference energies. Forces and virials
are derivatives of the energy with respect to the edge vectors (forces.py); how that
derivative is evaluated for large graphs is a memory schedule's business (schedule.py).
"""

import math
from typing import Dict, List, Optional

import torch
from ase.data import atomic_numbers, chemical_symbols
from e3nn import o3

from .data import keys
from .forces import forces_and_virial
from .hparams import ATTENTION_CUTOFFS, DEFAULTS, MODEL_PRESETS, PRESETS, resolve_hparams, saved_hparams  # noqa: F401
from .nn.block import TransformerBlock
from .nn.edge_frame import EdgeFrame
from .nn.embedding import AtomEmbedding, EdgeDegreeEmbedding
from .nn.features import EdgeFeatures
from .nn.irreps import blocks, check_sorted
from .nn.radial import BesselBasis, ExpNormalBasis, GaussianBasis, cosine_cutoff
from .nn.readout import EnergyHead


class Equiformer(torch.nn.Module):
    """The Equiformer energy function of a graph (the graph is an input, never built here):
    per-atom energies from species, edges and edge vectors, and the per-layer pieces it is
    made of (`edge_features`, `embed`, `blocks`, `readout`) for memory schedules and engines."""

    def __init__(self, hparams: Dict[str, object]):
        super().__init__()
        hp = resolve_hparams(hparams)
        self.hparams = hp
        self.species_symbols: List[str] = list(hp["species"])
        self.cutoff = float(hp["cutoff"])
        self.num_layers = int(hp["num_layers"])
        self.smooth_cutoff = hp["attention_cutoff"] != "mask"
        norm = str(hp["layer_norm"])
        envelope = hp["attention_cutoff"] == "envelope"
        irreps_node = blocks(hp["irreps_node"])
        irreps_sh = blocks(hp["irreps_sh"])
        irreps_feature = blocks(hp["irreps_feature"])
        irreps_head = blocks(hp["irreps_head"])
        irreps_mlp = blocks(hp["irreps_mlp"])
        for name, bs in (("irreps_node", irreps_node), ("irreps_sh", irreps_sh), ("irreps_feature", irreps_feature),
                         ("irreps_head", irreps_head), ("irreps_mlp", irreps_mlp)):
            check_sorted(bs, name)
        if [l for _, l, _ in irreps_sh] != list(range(len(irreps_sh))) or any(m != 1 for m, _, _ in irreps_sh):
            raise ValueError(f"irreps_sh must be 1x0e+1x1?+...+1xL?, got {hp['irreps_sh']}")
        num_basis = int(hp["num_basis"])
        radial = [num_basis] + list(hp["radial_hidden"])

        self.sh = o3.SphericalHarmonics(o3.Irreps(hp["irreps_sh"]), normalize=True, normalization="component")
        if hp["radial_basis"] == "exp":
            self.rbf = ExpNormalBasis(num_basis, self.cutoff)
        elif hp["radial_basis"] == "gaussian":
            self.rbf = GaussianBasis(num_basis, self.cutoff)
        else:
            self.rbf = BesselBasis(num_basis, self.cutoff)
        self.atom_embed = AtomEmbedding(len(self.species_symbols), irreps_node)
        self.edge_deg_embed = EdgeDegreeEmbedding(irreps_node, irreps_sh, radial, float(hp["avg_degree"]))
        self.blocks = torch.nn.ModuleList([
            TransformerBlock(irreps_node, irreps_sh, irreps_node if k < self.num_layers - 1 else irreps_feature,
                             irreps_head, int(hp["num_heads"]), irreps_mlp, radial, bool(hp["nonlinear_message"]),
                             bool(hp["rescale_degree"]), dot_product=hp["attention"] == "dot_product", norm=norm,
                             envelope=envelope)
            for k in range(self.num_layers)
        ])
        # message-passing hops from a neighbour to an atom's energy: the edge-degree embedding,
        # every block, and an attention head
        self.num_hops = self.num_layers + 1 + int(bool(hp["attention_head"]))
        self.head = EnergyHead(irreps_feature, bool(hp["attention_head"]), irreps_sh, irreps_head,
                               int(hp["num_heads"]), radial, norm=norm, envelope=envelope)
        # attention computes in edge-aligned frames (nn/edge_frame.py): the same function as the
        # SO(3) products, faster; `use_edge_frames(False)` selects the reference path
        self.frame = EdgeFrame(max(l for _, l, _ in irreps_node + irreps_feature + irreps_head))
        self.edge_frames = True
        self.inv_sqrt_num_atoms = 1.0 / math.sqrt(float(hp["avg_num_atoms"]))
        # physical scale: e_i = out_i * energy_scale / sqrt(avg_num_atoms) + atom_ref[species_i]
        self.register_buffer("energy_scale", torch.ones((), dtype=torch.float64))
        self.register_buffer("atom_ref", torch.zeros(len(self.species_symbols), dtype=torch.float64))
        # per-structure constant (official MD17 imports); engines add it once per system
        self.register_buffer("energy_offset", torch.zeros((), dtype=torch.float64))

    _FLOAT64_BUFFERS = ("energy_scale", "atom_ref", "energy_offset")

    def _apply(self, fn, recurse=True):
        # energies are summed in float64 whatever the network dtype: keep these buffers float64
        keep = {name: self._buffers[name] for name in self._FLOAT64_BUFFERS}
        super()._apply(fn, recurse)
        for name, old in keep.items():
            self._buffers[name] = old.to(device=self._buffers[name].device, dtype=torch.float64)
        return self

    # ---------------------------------------------------------------- normalisation
    @torch.jit.unused
    def set_energy_normalization(self, atom_ref: torch.Tensor, scale: float, offset: float = 0.0) -> None:
        atom_ref = torch.as_tensor(atom_ref, dtype=torch.float64)
        if atom_ref.shape != self.atom_ref.shape:
            raise ValueError(f"atom_ref needs one value per species ({len(self.species_symbols)}), got {tuple(atom_ref.shape)}")
        self.atom_ref.copy_(atom_ref)
        self.energy_scale.fill_(float(scale))
        self.energy_offset.fill_(float(offset))

    @property
    @torch.jit.unused
    def atomic_numbers(self) -> List[int]:
        return [atomic_numbers[s] for s in self.species_symbols]

    # ---------------------------------------------------------------- the energy function
    @torch.jit.unused
    def use_edge_frames(self, enabled: bool) -> None:
        """Edge-frame (fast, default) or reference SO(3) tensor products; same function."""
        self.edge_frames = bool(enabled)

    def edge_features(self, edge_vectors: torch.Tensor, harmonics: bool = True, frames: bool = True) -> EdgeFeatures:
        """Harmonics, radial basis, cutoff weight (envelope or 0/1 mask) and frame rotations
        (Wigner D per degree) of each edge. Harmonics are used by the embedding and the
        reference path, frames by the edge-frame path: a part not asked for (or not used by
        the path in force) comes back empty."""
        r = torch.linalg.vector_norm(edge_vectors, dim=1)
        sh = self.sh(edge_vectors) if harmonics or not self.edge_frames else edge_vectors[:, :0]
        basis = self.rbf(r)
        if self.smooth_cutoff:
            weight = cosine_cutoff(r, self.cutoff)
        else:
            weight = (r < self.cutoff).to(edge_vectors.dtype)
        rotations: List[torch.Tensor] = self.frame(edge_vectors) if frames and self.edge_frames else []
        return EdgeFeatures(sh, basis, weight, rotations)

    def embed(self, species: torch.Tensor, edge_dst: torch.Tensor, features: EdgeFeatures) -> torch.Tensor:
        """Node features before the first block: atom embedding + edge-degree embedding of the
        edges into each node (``edge_dst`` indexes ``species``)."""
        return self.atom_embed(species) + self.edge_deg_embed(species.shape[0], edge_dst, features.harmonics,
                                                              features.basis, features.weight)

    def readout(self, species: torch.Tensor, x: torch.Tensor, edge_src: torch.Tensor, edge_dst: torch.Tensor,
                features: EdgeFeatures) -> torch.Tensor:
        """Per-atom energies [N] in float64 (without the per-structure `energy_offset`) from the
        last block's output; an MLP head uses no edge."""
        out = self.head(x, edge_src, edge_dst, features).to(torch.float64)
        return out * (self.energy_scale * self.inv_sqrt_num_atoms) + self.atom_ref[species]

    @torch.jit.export
    def atom_energies(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor) -> torch.Tensor:
        """Per-atom energies [N] in float64 (without the per-structure `energy_offset`)."""
        edge_vectors = edge_vectors.to(self.energy_dtype())
        src, dst = edge_index[0], edge_index[1]
        features = self.edge_features(edge_vectors)
        x = self.embed(species, dst, features)
        for blk in self.blocks:
            x = blk(x, src, dst, features)
        return self.readout(species, x, src, dst, features)

    def energy_dtype(self) -> torch.dtype:
        return self.atom_embed.weight.dtype

    @torch.jit.unused
    def forward(self, graph: Dict[str, torch.Tensor], compute_forces: bool = True, compute_stress: bool = False,
                create_graph: bool = False) -> Dict[str, torch.Tensor]:
        """Energies (and forces, virial, stress) of a batch of structures; float64 outputs."""
        pos = graph[keys.POSITIONS]
        species = graph[keys.SPECIES]
        edge_index = graph[keys.EDGE_INDEX]
        batch = graph.get(keys.BATCH)
        if batch is None:
            batch = torch.zeros_like(species)
        num_structures = int(graph[keys.NUM_ATOMS].shape[0]) if keys.NUM_ATOMS in graph else 1
        dtype = self.energy_dtype()
        vec = pos.to(dtype)[edge_index[0]] - pos.to(dtype)[edge_index[1]]
        if keys.SHIFTS in graph:
            vec = vec + graph[keys.SHIFTS].to(dtype)
        need_grad = compute_forces or compute_stress
        # a caller with grad on (training) differentiates the energy itself: keep its graph
        keep = create_graph or torch.is_grad_enabled()
        with torch.set_grad_enabled(need_grad or keep):
            if need_grad:
                # derivatives with respect to edge vectors give forces and virial in one pass
                vec = vec.detach().requires_grad_(True)
            e_atoms = self.atom_energies(species, edge_index, vec)
            energy = torch.zeros(num_structures, dtype=torch.float64, device=e_atoms.device).index_add(0, batch, e_atoms)
            if keep:
                out = {keys.ENERGY: energy + self.energy_offset, keys.ATOM_ENERGIES: e_atoms}
            else:
                out = {keys.ENERGY: (energy + self.energy_offset).detach(), keys.ATOM_ENERGIES: e_atoms.detach()}
            if need_grad:
                g = None
                if vec.shape[0] > 0:
                    (g,) = torch.autograd.grad(energy.sum(), vec, create_graph=create_graph, retain_graph=keep,
                                               allow_unused=True)
                if g is None:
                    g = torch.zeros_like(vec)
                if not create_graph:
                    g = g.detach()
                forces, virial, _ = forces_and_virial(edge_index, vec, g, species.shape[0], batch[edge_index[1]],
                                                      num_structures)
                if compute_forces:
                    out[keys.FORCES] = forces
                if compute_stress:
                    out[keys.VIRIAL] = virial
                    cell = graph[keys.CELL].to(torch.float64).reshape(-1, 3, 3)
                    volume = torch.linalg.det(cell).abs()
                    # stress is undefined without a cell: NaN rather than a made-up number
                    volume = torch.where(volume > 0, volume, torch.full_like(volume, float("nan")))
                    out[keys.STRESS] = -virial / volume.view(-1, 1, 1)
        return out


@torch.jit.unused
def clone_model(model: Equiformer) -> Equiformer:
    """An independent copy (``copy.deepcopy`` cannot copy e3nn's harmonics module)."""
    copy_ = Equiformer(model.hparams).to(device=model.energy_scale.device, dtype=model.energy_dtype())
    copy_.load_state_dict(model.state_dict())
    copy_.edge_frames = model.edge_frames
    return copy_.train(model.training)


def build_model(hparams: Dict[str, object], dtype: Optional[torch.dtype] = None) -> Equiformer:
    """An Equiformer from hyperparameters (see `DEFAULTS`; ``{"preset": name, ...}`` allowed)."""
    model = Equiformer(hparams)
    if dtype is not None:
        model = model.to(dtype)
    return model


def symbols_of(numbers) -> List[str]:
    return [chemical_symbols[int(z)] for z in numbers]
