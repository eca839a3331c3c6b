"""Import checkpoints written by the official Equiformer MD17 training script.

An official checkpoint is ``{"state_dict": ...}`` of the registered model; what it does not
hold (model name, input irreps, radius, number of radial bases, the training set's energy
mean and standard deviation, units) comes from a recipe JSON. The weights are mapped onto
this package's `Equiformer` (same function, fused weight layout), and the checkpoint's
Wigner-3j buffers (e3nn 0.4.4 signs) are checked against the coefficients used here.
"""

import json
import os
from typing import Dict, List, Sequence, Tuple

import torch
from ase.data import chemical_symbols

from ..files import check_archive
from ..model import Equiformer
from ..nn.irreps import Block, blocks, simplify
from ..nn.linear import IrrepsLinear
from ..nn.w3j import wigner_3j

# the official code embeds one-hot atomic numbers below this bound
MAX_ATOM_TYPE = 64

_L2 = {
    "irreps_node": "128x0e+64x1e+32x2e", "irreps_sh": "1x0e+1x1e+1x2e", "irreps_head": "32x0e+16x1e+8x2e",
    "irreps_mlp": "384x0e+192x1e+96x2e",
}
_L2E3 = {
    "irreps_node": "128x0e+32x0o+32x1e+32x1o+16x2e+16x2o", "irreps_sh": "1x0e+1x1o+1x2e",
    "irreps_head": "32x0e+8x0o+8x1e+8x1o+4x2e+4x2o", "irreps_mlp": "384x0e+96x0o+96x1e+96x1o+48x2e+48x2o",
}
_L3E3 = {
    "irreps_node": "128x0e+64x0o+32x1e+32x1o+32x2e+32x2o+16x3e+16x3o", "irreps_sh": "1x0e+1x1o+1x2e+1x3o",
    "irreps_head": "32x0e+16x0o+8x1e+8x1o+8x2e+8x2o+4x3e+4x3o",
    "irreps_mlp": "384x0e+192x0o+96x1e+96x1o+96x2e+96x2o+48x3e+48x3o",
}
_L3 = {
    "irreps_node": "128x0e+64x1e+64x2e+32x3e", "irreps_sh": "1x0e+1x1e+1x2e+1x3e",
    "irreps_head": "32x0e+16x1e+16x2e+8x3e", "irreps_mlp": "384x0e+192x1e+192x2e+96x3e",
}

# registered official MD17 models that this importer reproduces, with their architecture
OFFICIAL_MODELS: Dict[str, Dict[str, object]] = {
    "graph_attention_transformer_nonlinear_exp_l2_md17": {**_L2, "radial_basis": "exp"},
    "graph_attention_transformer_nonlinear_exp_l3_md17": {**_L3, "radial_basis": "exp"},
    "graph_attention_transformer_nonlinear_l2_md17": {**_L2, "radial_basis": "gaussian"},
    "graph_attention_transformer_nonlinear_l2_e3_md17": {**_L2E3, "radial_basis": "gaussian"},
    "graph_attention_transformer_nonlinear_bessel_l2_md17": {**_L2, "radial_basis": "bessel"},
    "graph_attention_transformer_nonlinear_exp_l3_e3_md17": {**_L3E3, "radial_basis": "exp"},
    "graph_attention_transformer_nonlinear_bessel_l3_md17": {**_L3, "radial_basis": "bessel"},
    "graph_attention_transformer_nonlinear_bessel_l3_e3_md17": {**_L3E3, "radial_basis": "bessel"},
    "graph_attention_transformer_l2_md17": {**_L2, "radial_basis": "gaussian", "nonlinear_message": False},
    "graph_attention_transformer_nonlinear_attn_exp_l3_md17": {
        **_L3, "radial_basis": "exp", "attention_head": True, "irreps_feature": _L3["irreps_node"]},
    "dot_product_attention_transformer_exp_l2_md17": {**_L2, "radial_basis": "exp", "attention": "dot_product"},
    "dot_product_attention_transformer_exp_l3_md17": {**_L3, "radial_basis": "exp", "attention": "dot_product"},
}

RECIPE_KEYS = ("model_name", "irreps_in", "radius", "num_basis", "task_mean", "task_std", "energy_unit", "length_unit")


def read_recipe(path: str) -> Dict[str, object]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"recipe file {path} does not exist")
    try:
        with open(path) as f:
            recipe = json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"recipe {path} is not valid JSON: {exc}") from None
    missing = [k for k in RECIPE_KEYS if k not in recipe]
    if missing:
        raise ValueError(f"recipe {path} is missing {', '.join(missing)} (needs {', '.join(RECIPE_KEYS)})")
    if recipe["model_name"] not in OFFICIAL_MODELS:
        raise ValueError(
            f"recipe names unknown official model {recipe['model_name']!r}; supported: {', '.join(OFFICIAL_MODELS)}"
        )
    if recipe["irreps_in"] != f"{MAX_ATOM_TYPE}x0e":
        raise ValueError(f"recipe irreps_in {recipe['irreps_in']!r} is not supported: the MD17 models use '64x0e'")
    return recipe


def official_hparams(recipe: Dict[str, object]) -> Dict[str, object]:
    arch = OFFICIAL_MODELS[recipe["model_name"]]
    return {
        **arch,
        "species": [chemical_symbols[z] for z in range(1, MAX_ATOM_TYPE)],
        "cutoff": float(recipe["radius"]),
        "num_basis": int(recipe["num_basis"]),
        # the official model's function exactly: hard cutoff, per-block norm
        "attention_cutoff": "mask",
        "layer_norm": "per_block",
        "energy_unit": recipe["energy_unit"],
        "length_unit": recipe["length_unit"],
    }


def fused_linear_weight(flat: torch.Tensor, in_blocks: Sequence[Block], out_blocks: Sequence[Block],
                        layer: IrrepsLinear, name: str) -> torch.Tensor:
    """Reorder an official per-instruction weight vector into `IrrepsLinear`'s layout.

    The official layer has one ``[mul_in, mul_out]`` chunk per (input block, output block) of
    the same irrep, in input-major order; here blocks of one irrep form one matrix.
    """
    chunks: List[Tuple[int, int, int, int, int, int]] = []  # l, p, row, col, mul_in, mul_out
    row: Dict[Tuple[int, int], int] = {}
    offset = 0
    for mi, li, pi in in_blocks:
        col: Dict[Tuple[int, int], int] = {}
        for mo, lo, po in out_blocks:
            if (lo, po) == (li, pi):
                chunks.append((li, pi, row.get((li, pi), 0), col.get((lo, po), 0), mi, mo))
                offset += mi * mo
            col[(lo, po)] = col.get((lo, po), 0) + mo
        row[(li, pi)] = row.get((li, pi), 0) + mi
    if offset != flat.numel():
        raise ValueError(f"{name}: official weight has {flat.numel()} values, the recipe's architecture needs {offset}")
    out = torch.zeros_like(layer.weight, dtype=flat.dtype)
    position = 0
    for l, p, r, c, mi, mo in chunks:
        start, rows, cols = layer.type_slice(l, p)
        target = out[start: start + rows * cols].view(rows, cols)
        target[r: r + mi, c: c + mo] = flat[position: position + mi * mo].view(mi, mo)
        position += mi * mo
    return out


class _Mapper:
    """Collects this model's state dict from an official one, key by key, with clear errors."""

    def __init__(self, official: Dict[str, torch.Tensor], model: Equiformer):
        self.src = official
        self.model = model
        self.out: Dict[str, torch.Tensor] = {}
        self.used = set()

    def take(self, key: str) -> torch.Tensor:
        if key not in self.src:
            raise KeyError(key)
        self.used.add(key)
        return self.src[key]

    def copy(self, dst: str, src: str) -> None:
        value = self.take(src)
        target = self.model.state_dict()[dst]
        if value.shape != target.shape:
            raise ValueError(f"official {src} has shape {tuple(value.shape)}, the recipe's architecture needs {tuple(target.shape)}")
        self.out[dst] = value

    def linear(self, dst: str, src: str, in_blocks, out_blocks) -> None:
        layer = self.model.get_submodule(dst)
        self.out[dst + ".weight"] = fused_linear_weight(self.take(src + ".tp.weight"), in_blocks, out_blocks, layer, src)
        if layer.num_bias > 0:
            self.copy(dst + ".bias", src + ".bias.0")
        self.used.add(src + ".tp.output_mask")

    def radial(self, dst: str, src: str) -> None:
        for key in self.model.get_submodule(dst).state_dict():
            self.copy(f"{dst}.{key}", f"{src}.{key}")

    def depthwise(self, dst: str, src: str, internal: bool) -> None:
        # the checkpoint's 3j buffers must be the coefficients this package uses (e3nn 0.4.4
        # signs); their stored (float32) values are then used, as the official model does
        prefix = src + ".tp._compiled_main_left_right._w3j_"
        stored = {}
        for key in [k for k in self.src if k.startswith(prefix)]:
            l1, l2, l3 = (int(v) for v in key[len(prefix):].split("_"))
            ours = wigner_3j(l1, l2, l3)
            theirs = self.take(key).to(torch.float64)
            if theirs.shape != ours.shape or not torch.allclose(theirs, ours, atol=1e-6):
                raise ValueError(f"{key}: the checkpoint's Wigner-3j symbol differs from e3nn 0.4.4's; "
                                 "this checkpoint was not written by the official Equiformer code")
            stored[(l1, l2, l3)] = theirs
        self.out[dst + ".cg"] = self.model.get_submodule(dst).coefficients(stored)
        self.used.add(src + ".tp.output_mask")
        if internal:
            self.copy(dst + ".weight", src + ".tp.weight")
        else:
            self.used.add(src + ".tp.weight")


def _map_separable(m: _Mapper, dst: str, src: str, sep) -> None:
    m.depthwise(f"{dst}.dtp", f"{src}.dtp", internal=not sep.has_radial)
    if sep.has_radial:
        m.radial(f"{dst}.dtp_rad", f"{src}.dtp_rad")
    m.linear(f"{dst}.lin", f"{src}.lin", simplify(sep.dtp.irreps_out), sep.lin.irreps_out)
    if sep.has_gate:
        for key in ("mul.weight", "mul.output_mask"):
            m.used.add(f"{src}.gate.{key}")


def _map_graph_attention(m: _Mapper, dst: str, src: str, ga, node, out) -> None:
    m.copy(f"{dst}.alpha_dot", f"{src}.alpha_dot")
    m.linear(f"{dst}.merge_src", f"{src}.merge_src", node, node)
    m.linear(f"{dst}.merge_dst", f"{src}.merge_dst", node, node)
    if ga.nonlinear_message:
        _map_separable(m, f"{dst}.sep_act", f"{src}.sep_act", ga.sep_act)
        # the official alpha layer reads the unmerged depthwise output blocks
        m.linear(f"{dst}.sep_alpha", f"{src}.sep_alpha", ga.sep_act.dtp.irreps_out, ga.sep_alpha.irreps_out)
        _map_separable(m, f"{dst}.sep_value", f"{src}.sep_value", ga.sep_value)
    else:
        _map_separable(m, f"{dst}.sep", f"{src}.sep", ga.sep)
    m.linear(f"{dst}.proj", f"{src}.proj", ga.proj.irreps_in, out)


def _map_dot_product(m: _Mapper, prefix: str, dpa, node) -> None:
    m.linear(f"{prefix}.query", f"{prefix}.query", node, dpa.query.irreps_out)
    m.linear(f"{prefix}.merge_src", f"{prefix}.merge_src", node, node)
    m.linear(f"{prefix}.merge_dst", f"{prefix}.merge_dst", node, node)
    _map_separable(m, f"{prefix}.key_value", f"{prefix}.key_value", dpa.key_value)
    m.linear(f"{prefix}.proj", f"{prefix}.proj", dpa.proj.irreps_in, node)


def map_state_dict(official: Dict[str, torch.Tensor], model: Equiformer) -> Dict[str, torch.Tensor]:
    hp = model.hparams
    node = blocks(hp["irreps_node"])
    feature = blocks(hp["irreps_feature"])
    m = _Mapper(official, model)
    try:
        z = torch.tensor(model.atomic_numbers)
        emb = m.take("atom_embed.atom_type_lin.tp.weight")
        n0 = model.atom_embed.num_scalars
        if emb.numel() != MAX_ATOM_TYPE * n0:
            raise ValueError(f"atom_embed.atom_type_lin.tp.weight has {emb.numel()} values, expected {MAX_ATOM_TYPE * n0}")
        m.out["atom_embed.weight"] = emb.view(MAX_ATOM_TYPE, n0)[z]
        m.copy("atom_embed.bias", "atom_embed.atom_type_lin.bias.0")
        m.used.add("atom_embed.atom_type_lin.tp.output_mask")
        if hp["radial_basis"] == "bessel":
            m.copy("rbf.frequencies", "rbf.rbf.frequencies")
        else:
            m.radial("rbf", "rbf")
        ede = model.edge_deg_embed
        m.linear("edge_deg_embed.exp", "edge_deg_embed.exp", [(1, 0, 1)], node)
        m.depthwise("edge_deg_embed.dw", "edge_deg_embed.dw", internal=False)
        m.radial("edge_deg_embed.rad", "edge_deg_embed.rad")
        m.linear("edge_deg_embed.proj", "edge_deg_embed.proj", simplify(ede.dw.irreps_out), node)
        for k, blk in enumerate(model.blocks):
            b = f"blocks.{k}"
            out_irreps = node if k < len(model.blocks) - 1 else feature
            for norm in ("norm_1", "norm_2"):
                m.radial(f"{b}.{norm}", f"{b}.{norm}")
            if blk.dot_product:
                _map_dot_product(m, f"{b}.dpa", blk.dpa, node)
            else:
                _map_graph_attention(m, f"{b}.ga", f"{b}.ga", blk.ga, node, node)
            m.linear(f"{b}.ffn.fctp_1", f"{b}.ffn.fctp_1", node, blk.ffn.fctp_1.irreps_out)
            for key in ("gate.mul.weight", "gate.mul.output_mask"):
                m.used.add(f"{b}.ffn.fctp_1.{key}")
            m.linear(f"{b}.ffn.fctp_2", f"{b}.ffn.fctp_2", blk.ffn.gate.irreps_out, out_irreps)
            if blk.has_shortcut:
                m.linear(f"{b}.ffn_shortcut", f"{b}.ffn_shortcut", node, out_irreps)
        m.radial("head.norm", "norm")
        if model.head.attention:
            _map_graph_attention(m, "head.head", "head", model.head.head, feature, [(1, 0, 1)])
        else:
            m.linear("head.head.0", "head.0", feature, feature)
            m.linear("head.head.2", "head.2", feature, [(1, 0, 1)])
    except KeyError as exc:
        raise ValueError(
            f"the checkpoint has no {exc.args[0]!r}, which the recipe's model "
            f"{model.hparams.get('official_model', '')} needs: does the recipe name the model that wrote it?"
        ) from None
    unused = sorted(set(official) - m.used)
    if unused:
        shown = ", ".join(unused[:8]) + (" ..." if len(unused) > 8 else "")
        raise ValueError(f"the checkpoint has {len(unused)} key(s) the recipe's model does not use: {shown}")
    for key, value in model.state_dict().items():
        m.out.setdefault(key, value)  # buffers that only this package has (energy scale and references)
    return m.out


def load_official(checkpoint: str, recipe_path: str, dtype: torch.dtype = torch.float64) -> Equiformer:
    """This package's model computing exactly what the official checkpoint computes."""
    recipe = read_recipe(recipe_path)
    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
    check_archive(checkpoint, "official checkpoint", "download it again")
    try:
        raw = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{checkpoint} cannot be read as a torch checkpoint: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict) or "state_dict" not in raw or not isinstance(raw["state_dict"], dict):
        raise ValueError(f"{checkpoint} is not an official Equiformer checkpoint: expected a dict with a 'state_dict'")
    official = {k: v for k, v in raw["state_dict"].items() if isinstance(v, torch.Tensor)}
    model = Equiformer(official_hparams(recipe))
    state = map_state_dict(official, model)
    model.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in state.items()})
    model.set_energy_normalization(torch.zeros(len(model.species_symbols)), float(recipe["task_std"]),
                                   offset=float(recipe["task_mean"]))
    return model.to(dtype)
