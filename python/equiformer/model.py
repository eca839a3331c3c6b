"""The Equiformer potential: builder, presets, and the energy -> forces / virial wrapper.

Data path (paper Fig. 1): atom embedding + edge-degree embedding -> ``num_layers``
transformer blocks (equivariant graph attention + feed-forward) -> norm and energy head ->
per-atom energies, scaled and shifted by per-species reference energies. Forces and virials
are derivatives of the energy with respect to the edge vectors.
"""

import copy
import math
from typing import Dict, List, Optional, Tuple

import torch
from ase.data import atomic_numbers, chemical_symbols
from e3nn import o3

from .data import keys
from .nn.block import TransformerBlock
from .nn.edge_frame import EdgeFrame
from .nn.embedding import AtomEmbedding, EdgeDegreeEmbedding
from .nn.irreps import blocks, check_sorted
from .nn.radial import BesselBasis, ExpNormalBasis, GaussianBasis, cosine_cutoff
from .nn.readout import EnergyHead

# Every hyperparameter, with the paper's MD17 L_max = 2 model as the default.
DEFAULTS: Dict[str, object] = {
    "species": None,  # chemical symbols; species index i <-> species[i]
    "cutoff": 5.0,  # radial cutoff (length_unit)
    "num_layers": 6,  # transformer blocks
    "irreps_node": "128x0e+64x1e+32x2e",  # node features between blocks
    "irreps_sh": "1x0e+1x1e+1x2e",  # edge spherical harmonics ('1e' labels: SE(3); '1o': E(3))
    "irreps_feature": "512x0e",  # output of the last block
    "irreps_head": "32x0e+16x1e+8x2e",  # one attention head
    "num_heads": 4,
    "irreps_mlp": "384x0e+192x1e+96x2e",  # feed-forward hidden irreps
    "radial_basis": "exp",  # 'exp' (exp-normal), 'gaussian', 'bessel'
    "num_basis": 32,
    "radial_hidden": [64, 64],  # hidden widths of the radial networks
    "attention": "mlp",  # 'mlp' (paper's MLP attention) or 'dot_product'
    "nonlinear_message": True,  # MLP attention: gated message with a second depthwise TP (paper's best)
    "attention_head": False,  # output head: graph attention (True) instead of an MLP
    "rescale_degree": False,
    "avg_degree": 15.57930850982666,  # normalises the edge-degree embedding sum
    "avg_num_atoms": 18.03065905448718,  # normalises the per-atom energy output
    "smooth_cutoff": True,  # envelope on attention and degree sums (False: official, discontinuous)
    "energy_unit": "eV",
    "length_unit": "Angstrom",
}

PRESETS: Dict[str, Dict[str, object]] = {
    # the paper's MD17 models (official graph_attention_transformer_nonlinear_exp_l{2,3}_md17)
    "md17-l2": {},
    "md17-l3": {
        "irreps_node": "128x0e+64x1e+64x2e+32x3e",
        "irreps_sh": "1x0e+1x1e+1x2e+1x3e",
        "irreps_head": "32x0e+16x1e+16x2e+8x3e",
        "irreps_mlp": "384x0e+192x1e+192x2e+96x3e",
    },
    # a small model that trains in minutes to hours on a laptop CPU
    "small": {
        "num_layers": 2,
        "irreps_node": "32x0e+16x1e+8x2e",
        "irreps_feature": "64x0e",
        "irreps_head": "16x0e+8x1e+4x2e",
        "num_heads": 2,
        "irreps_mlp": "64x0e+32x1e+16x2e",
        "num_basis": 16,
        "radial_hidden": [32, 32],
    },
    # smallest useful model, for tests
    "tiny": {
        "num_layers": 2,
        "irreps_node": "8x0e+4x1e+2x2e",
        "irreps_feature": "8x0e",
        "irreps_head": "4x0e+2x1e+1x2e",
        "num_heads": 2,
        "irreps_mlp": "16x0e+8x1e+4x2e",
        "num_basis": 8,
        "radial_hidden": [8, 8],
    },
}
MODEL_PRESETS = PRESETS


def resolve_hparams(hparams: Dict[str, object]) -> Dict[str, object]:
    """Defaults <- preset <- explicit values, validated."""
    hparams = dict(hparams)
    preset = hparams.pop("preset", None)
    out = copy.deepcopy(DEFAULTS)
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown model preset {preset!r}; choose one of {', '.join(PRESETS)}")
        out.update(copy.deepcopy(PRESETS[preset]))
    unknown = sorted(set(hparams) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown model hyperparameter(s) {', '.join(unknown)}; known: {', '.join(DEFAULTS)}")
    out.update(hparams)
    species = out["species"]
    if not species:
        raise ValueError("model hyperparameter 'species' is required: a list of chemical symbols, e.g. ['H', 'C', 'O']")
    bad = [s for s in species if s not in atomic_numbers]
    if bad:
        raise ValueError(f"unknown chemical symbol(s) {bad} in 'species'")
    if len(set(species)) != len(species):
        raise ValueError(f"'species' lists a symbol twice: {species}")
    if not float(out["cutoff"]) > 0:
        raise ValueError(f"'cutoff' must be positive, got {out['cutoff']}")
    if out["radial_basis"] not in ("exp", "gaussian", "bessel"):
        raise ValueError(f"'radial_basis' must be 'exp', 'gaussian' or 'bessel', got {out['radial_basis']!r}")
    if out["attention"] not in ("mlp", "dot_product"):
        raise ValueError(f"'attention' must be 'mlp' or 'dot_product', got {out['attention']!r}")
    out["species"] = list(species)
    out["cutoff"] = float(out["cutoff"])
    out["radial_hidden"] = [int(c) for c in out["radial_hidden"]]
    return out


class Equiformer(torch.nn.Module):
    """Equiformer energy model on a given graph (the graph is an input, never built here)."""

    def __init__(self, hparams: Dict[str, object]):
        super().__init__()
        hp = resolve_hparams(hparams)
        self.hparams = hp
        self.species_symbols: List[str] = list(hp["species"])
        self.cutoff = float(hp["cutoff"])
        self.num_layers = int(hp["num_layers"])
        self.smooth_cutoff = bool(hp["smooth_cutoff"])
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
                             bool(hp["rescale_degree"]), dot_product=hp["attention"] == "dot_product")
            for k in range(self.num_layers)
        ])
        # message-passing hops from a neighbour to an atom's energy: the edge-degree embedding,
        # every block, and an attention head
        self.num_hops = self.num_layers + 1 + int(bool(hp["attention_head"]))
        self.head = EnergyHead(irreps_feature, bool(hp["attention_head"]), irreps_sh, irreps_head,
                               int(hp["num_heads"]), radial)
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

    # ---------------------------------------------------------------- layer by layer
    @torch.jit.unused
    def use_edge_frames(self, enabled: bool) -> None:
        """Edge-frame (fast, default) or reference SO(3) tensor products; same function."""
        self.edge_frames = bool(enabled)

    def edge_features(self, edge_vectors: torch.Tensor, harmonics: bool = True, frames: bool = True):
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
        return sh, basis, weight, rotations

    @torch.jit.export
    def embed(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor) -> torch.Tensor:
        sh, basis, weight, _ = self.edge_features(edge_vectors, frames=False)
        x = self.atom_embed(species)
        return x + self.edge_deg_embed(species.shape[0], edge_index[1], sh, basis, weight)

    @torch.jit.export
    def block(self, k: int, x: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor) -> torch.Tensor:
        sh, basis, weight, frames = self.edge_features(edge_vectors, harmonics=False)
        for i, blk in enumerate(self.blocks):
            if i == k:
                return blk(x, edge_index[0], edge_index[1], sh, basis, weight, frames)
        raise IndexError("block index out of range")

    @torch.jit.export
    def readout(self, species: torch.Tensor, x: torch.Tensor, edge_index: torch.Tensor,
                edge_vectors: torch.Tensor) -> torch.Tensor:
        # an MLP head uses no edge: skip their features
        attention = self.head.attention
        sh, basis, weight, frames = self.edge_features(edge_vectors[:edge_vectors.shape[0] if attention else 0],
                                                       harmonics=False, frames=attention)
        return self._energies(species, self.head(x, edge_index[0], edge_index[1], sh, basis, weight, frames))

    def _energies(self, species: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        out = out.to(torch.float64)
        return out * (self.energy_scale * self.inv_sqrt_num_atoms) + self.atom_ref[species]

    # ---------------------------------------------------------------- whole model
    @torch.jit.export
    def atom_energies(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor) -> torch.Tensor:
        """Per-atom energies [N] in float64 (without the per-structure `energy_offset`)."""
        edge_vectors = edge_vectors.to(self.energy_dtype())
        src, dst = edge_index[0], edge_index[1]
        sh, basis, weight, frames = self.edge_features(edge_vectors)
        x = self.atom_embed(species) + self.edge_deg_embed(species.shape[0], dst, sh, basis, weight)
        for blk in self.blocks:
            x = blk(x, src, dst, sh, basis, weight, frames)
        return self._energies(species, self.head(x, src, dst, sh, basis, weight, frames))

    @torch.jit.export
    def energies_and_gradient(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor,
                              n_local: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-atom energies [N] (float64) and the gradient of the first ``n_local`` atoms'
        energy with respect to the edge vectors, with the memory of one layer: the forward pass
        keeps only node features between layers, and the backward sweep recomputes each layer
        (about one extra forward pass of time, peak memory that no longer grows with depth)."""
        vec = edge_vectors.detach().to(self.energy_dtype())
        src, dst = edge_index[0], edge_index[1]
        xs: List[torch.Tensor] = []
        with torch.no_grad():
            sh, basis, weight, frames = self.edge_features(vec)
            x = self.atom_embed(species) + self.edge_deg_embed(species.shape[0], dst, sh, basis, weight)
            for blk in self.blocks:
                xs.append(x)
                x = blk(x, src, dst, sh, basis, weight, frames)
        v = vec.clone().requires_grad_(True)
        x = x.requires_grad_(True)
        e_atoms = self.readout(species, x, edge_index, v)
        grads = torch.autograd.grad([e_atoms[:n_local].sum()], [x, v], allow_unused=True)
        grad_x = grads[0]
        grad = torch.zeros_like(vec)
        g = grads[1]
        if g is not None:
            grad = grad + g
        for k in range(len(xs) - 1, -1, -1):
            if grad_x is None:
                break
            v = vec.clone().requires_grad_(True)
            x = xs[k].requires_grad_(True)
            seed: List[Optional[torch.Tensor]] = [grad_x]
            grads = torch.autograd.grad([self.block(k, x, edge_index, v)], [x, v], seed, allow_unused=True)
            grad_x = grads[0]
            g = grads[1]
            if g is not None:
                grad = grad + g
        if grad_x is not None:
            v = vec.clone().requires_grad_(True)
            seed: List[Optional[torch.Tensor]] = [grad_x]
            g = torch.autograd.grad([self.embed(species, edge_index, v)], [v], seed, allow_unused=True)[0]
            if g is not None:
                grad = grad + g
        return e_atoms.detach(), grad

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
        with torch.set_grad_enabled(need_grad or create_graph or torch.is_grad_enabled()):
            if need_grad:
                # derivatives with respect to edge vectors give forces and virial in one pass
                vec = vec.detach().requires_grad_(True)
            e_atoms = self.atom_energies(species, edge_index, vec)
            energy = torch.zeros(num_structures, dtype=torch.float64, device=e_atoms.device).index_add(0, batch, e_atoms)
            if create_graph:
                out = {keys.ENERGY: energy + self.energy_offset, keys.ATOM_ENERGIES: e_atoms}
            else:
                out = {keys.ENERGY: (energy + self.energy_offset).detach(), keys.ATOM_ENERGIES: e_atoms.detach()}
            if need_grad:
                if vec.shape[0] > 0:
                    (g,) = torch.autograd.grad(energy.sum(), vec, create_graph=create_graph, allow_unused=True)
                else:
                    g = None
                if g is None:
                    g = torch.zeros_like(vec)
                g = g.to(torch.float64)
                if not create_graph:
                    g = g.detach()
                if compute_forces:
                    forces = torch.zeros((species.shape[0], 3), dtype=torch.float64, device=g.device)
                    forces = forces.index_add(0, edge_index[0], -g).index_add(0, edge_index[1], g)
                    out[keys.FORCES] = forces
                if compute_stress:
                    edge_virial = -vec.to(torch.float64).unsqueeze(2) * g.unsqueeze(1)
                    edge_batch = batch[edge_index[1]]
                    virial = torch.zeros((num_structures, 3, 3), dtype=torch.float64, device=g.device)
                    virial = virial.index_add(0, edge_batch, edge_virial)
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
    return copy_.train(model.training)


def build_model(hparams: Dict[str, object], dtype: Optional[torch.dtype] = None) -> Equiformer:
    """An Equiformer from hyperparameters (see `DEFAULTS`; ``{"preset": name, ...}`` allowed)."""
    model = Equiformer(hparams)
    if dtype is not None:
        model = model.to(dtype)
    return model


def symbols_of(numbers) -> List[str]:
    return [chemical_symbols[int(z)] for z in numbers]
