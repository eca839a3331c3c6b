"""Run the official Equiformer code (a checkout given by path) on one structure, for the
benchmark. Only the compiled dependencies are replaced (this folder's torch_cluster,
torch_scatter and ocpmodels stand-ins); the model code is the checkout's, unmodified.
"""

import os
import sys
import types

import torch

MODELS = {
    "md17-l2": "graph_attention_transformer_nonlinear_exp_l2_md17",
    "md17-l3": "graph_attention_transformer_nonlinear_exp_l3_md17",
}


def make(checkout, preset, cutoff, atoms, dtype):
    import torch_geometric.utils  # noqa: F401  (the real PyG first, before the stand-ins)
    import torch_geometric.nn.inits  # noqa: F401

    here = os.path.dirname(os.path.abspath(__file__))
    if here not in sys.path:
        sys.path.insert(0, here)
    if "nets" not in sys.modules:  # import the MD17 modules without nets/__init__ (OC20 models)
        pkg = types.ModuleType("nets")
        pkg.__path__ = [os.path.join(checkout, "nets")]
        sys.modules["nets"] = pkg
    import nets.graph_attention_transformer_md17  # noqa: F401
    from nets.registry import model_entrypoint

    gat = sys.modules["nets.graph_attention_transformer"]

    def embed(self, node_atom):  # the official one-hot is always float32; cast for float64 runs
        onehot = torch.nn.functional.one_hot(node_atom, self.max_atom_type).to(self.atom_type_lin.tp.weight.dtype)
        return self.atom_type_lin(onehot), onehot, onehot

    gat.NodeEmbeddingNetwork.forward = embed
    model = model_entrypoint(MODELS[preset])(irreps_in="64x0e", radius=cutoff, num_basis=32)
    model = model.to(dtype).eval()
    z = torch.tensor(atoms.get_atomic_numbers())
    pos = torch.tensor(atoms.get_positions(), dtype=dtype)
    batch = torch.zeros(len(atoms), dtype=torch.long)

    def call():
        energy, forces = model(node_atom=z, pos=pos.clone(), batch=batch)
        return forces.detach()

    return call
