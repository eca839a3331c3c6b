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
from .nn.norm import LAYER_NORMS
from .nn.radial import BesselBasis, ExpNormalBasis, GaussianBasis, cosine_cutoff
from .nn.readout import EnergyHead
from .nn.segment import Chunks, EdgeFeatures, centre_chunks, feature_list, slice_features

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
    "layer_norm": "joint",  # 'joint': one RMS per atom (smooth); 'per_block': official, per irrep block
    "attention_cutoff": "envelope",  # cutoff weight on attention: 'envelope', 'softmax' or 'mask' (official)
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


# How the cutoff weight w(r) of an edge enters attention (docs/architecture.md):
#   envelope  w inside the softmax and as a factor on each weight: smooth, also when an
#             atom's first neighbour enters (default)
#   softmax   w inside the softmax only: models made before 'envelope'; the energy jumps when
#             an atom with no neighbour gets one
#   mask      0/1 inside the cutoff: the official model (imports), discontinuous at the cutoff
ATTENTION_CUTOFFS = ("envelope", "softmax", "mask")


def saved_hparams(hparams: Dict[str, object]) -> Dict[str, object]:
    """Hyperparameters as stored in a checkpoint of any package version: files written before
    `layer_norm` and `attention_cutoff` existed (they store `smooth_cutoff`) rebuild the
    function they were trained as (per-block norm; envelope inside the softmax or a mask)."""
    hparams = dict(hparams)
    legacy = hparams.pop("smooth_cutoff", None)
    hparams.setdefault("layer_norm", "per_block")
    if "attention_cutoff" not in hparams:
        hparams["attention_cutoff"] = "mask" if legacy is False else "softmax"
    return hparams


def resolve_hparams(hparams: Dict[str, object]) -> Dict[str, object]:
    """Defaults <- preset <- explicit values, validated."""
    hparams = dict(hparams)
    preset = hparams.pop("preset", None)
    if "smooth_cutoff" in hparams:  # the older name: false -> 'mask', true -> 'envelope'
        legacy = hparams.pop("smooth_cutoff")
        if "attention_cutoff" in hparams:
            raise ValueError("give 'attention_cutoff' only; 'smooth_cutoff' is its older name")
        hparams["attention_cutoff"] = "envelope" if legacy else "mask"
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
    if out["layer_norm"] not in LAYER_NORMS:
        raise ValueError(f"'layer_norm' must be one of {', '.join(LAYER_NORMS)}, got {out['layer_norm']!r}")
    if out["attention_cutoff"] not in ATTENTION_CUTOFFS:
        raise ValueError(f"'attention_cutoff' must be one of {', '.join(ATTENTION_CUTOFFS)}, "
                         f"got {out['attention_cutoff']!r}")
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
        # edges per chunk of the memory-light gradient (energies_and_gradient)
        self.edge_chunk = 2048
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
        energy with respect to the edge vectors, with the memory of one chunk of edges.

        Edges are sorted by centre atom and evaluated ``edge_chunk`` at a time (whole centres,
        so each softmax stays inside a chunk). The forward pass keeps only node features
        between layers and the edge features; the backward sweep recomputes each layer one
        chunk at a time (the last block with an MLP head not: it runs with its gradient at
        once) and collects the gradient with respect to the edge features, taken back to the
        edge vectors once at the end. Costs about one extra forward pass of all but the last
        block; peak memory grows with the atoms, not with edges x layers.
        """
        vec = edge_vectors.detach().to(self.energy_dtype())
        num_atoms = species.shape[0]
        order = torch.argsort(edge_index[1], stable=True)
        src, dst = edge_index[0][order], edge_index[1][order]
        vec = vec[order]
        chunks = centre_chunks(dst, num_atoms, self.edge_chunk)
        nodes, edges = chunks
        # an MLP head is per atom, like everything after the last block's attention: the last
        # block and the head then run a chunk at a time with their gradient at once, no recompute
        fused = not self.head.attention and self.num_layers > 0
        xs: List[torch.Tensor] = []  # each block's input
        hs: List[torch.Tensor] = []  # and its feed-forward's input
        with torch.no_grad():
            features = self.edge_features(vec)
            x = self.atom_embed(species) + self._embed_chunked(dst, features, chunks)
            for i, blk in enumerate(self.blocks):
                xs.append(x)
                if not fused or i < self.num_layers - 1:
                    hs.append(blk.attention_chunked(x, src, dst, features, chunks))
                    x = blk.feed_forward(hs[-1])
        grad_features = [torch.zeros_like(f) for f in feature_list(features)]
        grad = torch.zeros_like(vec)
        if fused:
            e_atoms, g_x = self._last_block_and_head(species, n_local, xs[-1], src, dst, features, chunks,
                                                     grad_features)
            xs = xs[:-1]
        else:
            v = vec.clone().requires_grad_(True)
            x = x.requires_grad_(True)
            e_atoms = self.readout(species, x, torch.stack([src, dst]), v)
            grads = torch.autograd.grad([e_atoms[:n_local].sum()], [x, v], allow_unused=True)
            g = grads[1]
            if g is not None:
                grad = g
            g_x = grads[0]
            if g_x is None:
                g_x = torch.zeros_like(x)
        for k in range(len(xs) - 1, -1, -1):
            for i, layer in enumerate(self.blocks):
                if i == k:
                    g_x = layer.backward_chunked(xs[k], hs[k], g_x, src, dst, features, chunks, grad_features)
        for c in range(len(nodes) - 1):
            a, b, ea, eb = nodes[c], nodes[c + 1], edges[c], edges[c + 1]
            sh, basis, weight, _ = slice_features(features, ea, eb)
            leaves = [sh.detach().requires_grad_(True), basis.detach().requires_grad_(True),
                      weight.detach().requires_grad_(True)]
            out = self.edge_deg_embed(b - a, dst[ea:eb] - a, leaves[0], leaves[1], leaves[2])
            seed: List[Optional[torch.Tensor]] = [g_x[a:b]]
            gs = torch.autograd.grad([out], leaves, seed, allow_unused=True)
            for i in range(3):
                g = gs[i]
                if g is not None:
                    grad_features[i][ea:eb] += g
        # edge features -> edge vectors, a chunk at a time
        for c in range(len(nodes) - 1):
            ea, eb = edges[c], edges[c + 1]
            v = vec[ea:eb].clone().requires_grad_(True)
            outs = feature_list(self.edge_features(v))
            used: List[torch.Tensor] = []
            seeds: List[Optional[torch.Tensor]] = []
            for f, gf in zip(outs, grad_features):
                if f.requires_grad:
                    used.append(f)
                    seeds.append(gf[ea:eb])
            if len(used) > 0:
                g = torch.autograd.grad(used, [v], seeds, allow_unused=True)[0]
                if g is not None:
                    grad[ea:eb] += g
        return e_atoms.detach(), torch.zeros_like(grad).index_copy_(0, order, grad)

    def _last_block_and_head(self, species: torch.Tensor, n_local: int, x: torch.Tensor, edge_src: torch.Tensor,
                             edge_dst: torch.Tensor, features: EdgeFeatures, chunks: Chunks,
                             grad_features: List[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-atom energies from the last block's input ``x`` through the last block and an MLP
        head, a chunk of centres at a time, and the gradient of the local atoms' energy with
        respect to ``x`` (the edge features' go to ``grad_features``)."""
        nodes, _ = chunks
        parts: List[torch.Tensor] = []
        g_x = torch.zeros_like(x)
        no_edges = edge_src[:0]
        for i, layer in enumerate(self.blocks):
            if i == self.num_layers - 1:
                x, src_side, dst_side = layer.chunk_inputs(x)
                grad_x = torch.zeros_like(x)
                grad_src = torch.zeros_like(src_side)
                grad_dst = torch.zeros_like(dst_side)
                for c in range(len(nodes) - 1):
                    a, b = nodes[c], nodes[c + 1]
                    att, leaves = layer.chunk_attention(c, src_side, dst_side, edge_src, edge_dst, features, chunks)
                    rows = x[a:b].detach().requires_grad_(True)
                    out = layer.feed_forward(rows + att)
                    e = self._energies(species[a:b], self.head(out, no_edges, no_edges, out[:0], out[:0], out[:0], []))
                    local: List[Optional[torch.Tensor]] = [(torch.arange(a, b, device=e.device) < n_local).to(e.dtype)]
                    grads = torch.autograd.grad([e], [rows] + leaves, local, allow_unused=True)
                    g = grads[0]
                    if g is not None:
                        grad_x[a:b] += g
                    layer.chunk_accumulate(c, grads[1:], grad_src, grad_dst, grad_features, edge_src, chunks)
                    parts.append(e.detach())
                g_x = layer.chunk_finish(x, src_side, dst_side, grad_x, grad_src, grad_dst)
        return torch.cat(parts, dim=0), g_x

    def _embed_chunked(self, edge_dst: torch.Tensor, features: EdgeFeatures, chunks: Chunks) -> torch.Tensor:
        """The edge-degree embedding of ``energies_and_gradient``, a chunk of centres at a time."""
        nodes, edges = chunks
        parts: List[torch.Tensor] = []
        for c in range(len(nodes) - 1):
            a, b, ea, eb = nodes[c], nodes[c + 1], edges[c], edges[c + 1]
            sh, basis, weight, _ = slice_features(features, ea, eb)
            parts.append(self.edge_deg_embed(b - a, edge_dst[ea:eb] - a, sh, basis, weight))
        return torch.cat(parts, dim=0)

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
    copy_.edge_frames = model.edge_frames
    copy_.edge_chunk = model.edge_chunk
    return copy_.train(model.training)


def build_model(hparams: Dict[str, object], dtype: Optional[torch.dtype] = None) -> Equiformer:
    """An Equiformer from hyperparameters (see `DEFAULTS`; ``{"preset": name, ...}`` allowed)."""
    model = Equiformer(hparams)
    if dtype is not None:
        model = model.to(dtype)
    return model


def symbols_of(numbers) -> List[str]:
    return [chemical_symbols[int(z)] for z in numbers]
