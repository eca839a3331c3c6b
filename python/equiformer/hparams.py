"""Model hyperparameters: every one with its default (the paper's MD17 L_max = 2 model),
presets, validation, and how files written by earlier versions read."""

import copy
from typing import Dict

from ase.data import atomic_numbers

from .nn.norm import LAYER_NORMS

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


