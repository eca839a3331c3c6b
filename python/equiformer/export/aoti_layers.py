"""The layer entries of a compiled package: the model cut at its layers and at chunks of
centres, each piece and its vector-Jacobian product compiled as its own function, so that the
chunked memory schedule (schedule.py) and per-layer exchange (LAMMPS `mode layer`) run from
compiled code (docs/model-format.md, "Layer entries").

Entries (AOTInductor models of one package, by name; F is the edge features as
`features.as_list`, D their `differentiable` part, n/e the rows of a chunk, N/E of the graph):

    features_fwd             (vec[e,3]) -> F
    features_vjp             (vec, dD...) -> dvec
    embed_fwd                (species[n], dst[e], F...) -> x[n,F0]
    embed_vjp                (species, dst, F..., dx) -> dD...
    block{t}_inputs_fwd      (w..., x[N,Fk]) -> (src_side[N,S], dst_side[N,T])
    block{t}_inputs_vjp      (w..., x, dsrc_side, ddst_side) -> dx
    block{t}_fwd             (w..., x[n], src_rows[e,S], dst_side[n,T], dst[e], F...) -> y[n]
    block{t}_vjp             (w..., x, src_rows, dst_side, dst, F..., dy) -> (dx, dsrc_rows, ddst_side, dD...)
    readout_fwd              (species[N], x[N], src[E], dst[E], F...) -> energies[N] float64
    readout_vjp              (species, x, src, dst, F..., denergies) -> (dx, dD...)

In chunk entries ``dst`` indexes the chunk's centres. No name is the beginning of another (AOTInductor's loader finds a model's files by
the prefix of their path). With an MLP head the readout takes
``(species, x)`` only. Blocks of one shape share their entries: their weights ``w`` (the
block's parameters and buffers, in `state_names` order) are inputs, stored once in the
package beside the compiled code (`LAYER_WEIGHTS`), so a package holds 4 + 4 x (block shapes)
+ 2 compiled functions whatever the depth. Every call appends `PAD_ROWS` rows to each
dynamic size (zero node rows, edges into the padded centres with the padding edge vectors'
features), which keeps every compiled size at 2 or more.
"""

from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.func import functional_call

from ..model import Equiformer
from ..nn.features import as_list, differentiable, from_list, with_differentiable

PAD_ROWS = 2
# the package's own entries beside AOTInductor's (paths below the archive's root folder)
LAYER_WEIGHTS = "equiformer/layer_weights.bin"
LAYER_INDEX = "equiformer/layer_weights.txt"
NODE, EDGE = "n", "e"


class Entry(NamedTuple):
    """One compiled function: its callable, example inputs and each input's dynamic row dim."""

    name: str
    fn: Callable[..., Tuple[torch.Tensor, ...]]
    args: Tuple[torch.Tensor, ...]
    rows: Tuple[Optional[str], ...]  # NODE, EDGE or None (a weight: fixed shape)


def state_names(block: torch.nn.Module) -> List[str]:
    """A block's parameters and buffers, in the order the block entries take them."""
    return [n for n, _ in block.named_parameters()] + [n for n, _ in block.named_buffers()]


def state_of(block: torch.nn.Module) -> List[torch.Tensor]:
    tensors = dict(block.named_parameters())
    tensors.update(dict(block.named_buffers()))
    return [tensors[n] for n in state_names(block)]


def block_signature(block: torch.nn.Module) -> List[Tuple[str, Tuple[int, ...], str]]:
    return [(n, tuple(t.shape), str(t.dtype)) for n, t in zip(state_names(block), state_of(block))]


def block_kinds(model: Equiformer) -> List[int]:
    """Kind of each block: blocks with equal parameter names and shapes share entries (the
    export checks every block against the eager one, so a block the shapes alone do not
    describe would be caught there)."""
    signatures: List[list] = []
    kinds = []
    for blk in model.blocks:
        sig = block_signature(blk)
        if sig not in signatures:
            signatures.append(sig)
        kinds.append(signatures.index(sig))
    return kinds


def grads_or_zeros(grads, leaves) -> Tuple[torch.Tensor, ...]:
    return tuple(g if g is not None else torch.zeros_like(t) for g, t in zip(grads, leaves))


def leaves_of(tensors: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    return [t.detach().requires_grad_(True) for t in tensors]


class _Chunk(torch.nn.Module):
    """A block's output for a chunk of centres (its attention over their edges, the residual
    and the feed-forward)."""

    def __init__(self, block: torch.nn.Module):
        super().__init__()
        self.block = block

    def forward(self, x, src_rows, dst_side, dst, features):
        return self.block.feed_forward(x + self.block.attention_edges(src_rows, dst_side, dst, features))


class _Inputs(torch.nn.Module):
    def __init__(self, block: torch.nn.Module):
        super().__init__()
        self.block = block

    def forward(self, x):
        return self.block.attention_inputs(x)


def with_weights(module: torch.nn.Module, names: List[str], weights: Sequence[torch.Tensor], *args):
    """``module(*args)`` with the wrapped block's state replaced by ``weights``."""
    return functional_call(module, {"block." + n: w for n, w in zip(names, weights)}, args)


def layer_entries(model: Equiformer, species: torch.Tensor, edge_index: torch.Tensor,
                  vectors: torch.Tensor) -> List[Entry]:
    """Every entry of ``model`` (a `traceable_copy`), with example inputs taken from the graph
    given (the whole graph as one chunk of centres)."""
    order = torch.argsort(edge_index[1], stable=True)
    src, dst = edge_index[0][order], edge_index[1][order]
    vec = vectors[order]
    features = model.edge_features(vec)
    f_list = as_list(features)
    n_f = len(f_list)
    f_rows = (EDGE,) * n_f
    d_rows = (EDGE,) * len(differentiable(features))
    entries: List[Entry] = []

    def feats(parts: Sequence[torch.Tensor]):
        return from_list(list(parts))

    def features_fn(v):
        return tuple(as_list(model.edge_features(v)))

    def features_vjp_fn(v, *grads):
        with torch.enable_grad():
            leaf = v.detach().requires_grad_(True)
            outs = differentiable(model.edge_features(leaf))
            used = [(o, g) for o, g in zip(outs, grads) if o.requires_grad]
            got = torch.autograd.grad([o for o, _ in used], [leaf], [g for _, g in used], allow_unused=True)
        return grads_or_zeros(got, [leaf])

    d_example = [torch.randn_like(t) for t in differentiable(features)]
    entries.append(Entry("features_fwd", features_fn, (vec,), (EDGE,)))
    entries.append(Entry("features_vjp", features_vjp_fn, (vec, *d_example), (EDGE,) + d_rows))

    def embed_fn(sp, d, *parts):
        return (model.embed(sp, d, feats(parts)),)

    def embed_vjp_fn(sp, d, *rest):
        parts, grad_x = rest[:n_f], rest[n_f]
        f = feats(parts)
        with torch.enable_grad():
            leaves = leaves_of(differentiable(f))
            out = model.embed(sp, d, with_differentiable(f, leaves))
            got = torch.autograd.grad([out], leaves, [grad_x], allow_unused=True)
        return grads_or_zeros(got, leaves)

    with torch.no_grad():
        x = model.embed(species, dst, features)
    entries.append(Entry("embed_fwd", embed_fn, (species, dst, *f_list), (NODE, EDGE) + f_rows))
    entries.append(Entry("embed_vjp", embed_vjp_fn, (species, dst, *f_list, torch.randn_like(x)),
                         (NODE, EDGE) + f_rows + (NODE,)))

    kinds = block_kinds(model)
    for k, blk in enumerate(model.blocks):
        if kinds[k] not in kinds[:k]:  # the first block of a kind gives the kind's entries
            entries.extend(block_entries(f"block{kinds[k]}", blk, x, src, dst, f_list))
        with torch.no_grad():
            x = blk(x, src, dst, features)
    entries.extend(readout_entries(model, species, x, src, dst, f_list))
    return entries


def block_entries(prefix: str, blk: torch.nn.Module, x: torch.Tensor, src: torch.Tensor, dst: torch.Tensor,
                  f_list: List[torch.Tensor]) -> List[Entry]:
    names = state_names(blk)
    weights = tuple(state_of(blk))
    n_w, n_f = len(weights), len(f_list)
    w_rows = (None,) * n_w
    f_rows = (EDGE,) * n_f
    inputs, chunk = _Inputs(blk), _Chunk(blk)

    def inputs_fn(*args):
        return tuple(with_weights(inputs, names, args[:n_w], args[n_w]))

    def inputs_vjp_fn(*args):
        w, (x_, d_src, d_dst) = args[:n_w], args[n_w:]
        with torch.enable_grad():
            leaf = x_.detach().requires_grad_(True)
            s, d = with_weights(inputs, names, w, leaf)
            got = torch.autograd.grad([s, d], [leaf], [d_src, d_dst], allow_unused=True)
        return grads_or_zeros(got, [leaf])

    def chunk_fn(*args):
        w, (x_, rows, side, d), parts = args[:n_w], args[n_w:n_w + 4], args[n_w + 4:]
        return (with_weights(chunk, names, w, x_, rows, side, d, from_list(list(parts))),)

    def chunk_vjp_fn(*args):
        w, (x_, rows, side, d), parts = args[:n_w], args[n_w:n_w + 4], args[n_w + 4:n_w + 4 + n_f]
        grad_y = args[-1]
        f = from_list(list(parts))
        with torch.enable_grad():
            leaves = leaves_of([x_, rows, side] + differentiable(f))
            y = with_weights(chunk, names, w, leaves[0], leaves[1], leaves[2], d,
                             with_differentiable(f, leaves[3:]))
            got = torch.autograd.grad([y], leaves, [grad_y], allow_unused=True)
        return grads_or_zeros(got, leaves)

    with torch.no_grad():
        src_side, dst_side = blk.attention_inputs(x)
        rows = src_side[src].contiguous()
        y = chunk(x, rows, dst_side, dst, from_list(f_list))
    chunk_args = (x, rows, dst_side, dst, *f_list)
    chunk_rows = (NODE, EDGE, NODE, EDGE) + f_rows
    return [
        Entry(prefix + "_inputs_fwd", inputs_fn, weights + (x,), w_rows + (NODE,)),
        Entry(prefix + "_inputs_vjp", inputs_vjp_fn, weights + (x, torch.randn_like(src_side),
                                                                torch.randn_like(dst_side)),
              w_rows + (NODE,) * 3),
        Entry(prefix + "_fwd", chunk_fn, weights + chunk_args, w_rows + chunk_rows),
        Entry(prefix + "_vjp", chunk_vjp_fn, weights + chunk_args + (torch.randn_like(y),),
              w_rows + chunk_rows + (NODE,)),
    ]


def readout_entries(model: Equiformer, species: torch.Tensor, x: torch.Tensor, src: torch.Tensor,
                    dst: torch.Tensor, f_list: List[torch.Tensor]) -> List[Entry]:
    """The head: with attention over all the graph's edges (not chunked, as in schedule.py),
    an MLP head per atom from ``(species, x)`` only."""
    n_f = len(f_list)
    edges = model.head.attention

    def readout_fn(*args):
        if edges:
            return (model.readout(args[0], args[1], args[2], args[3], from_list(list(args[4:]))),)
        return (model.readout(args[0], args[1], src[:0], dst[:0], from_list([t[:0] for t in f_list])),)

    def readout_vjp_fn(*args):
        grad_e = args[-1]
        with torch.enable_grad():
            if edges:
                f = from_list(list(args[4:4 + n_f]))
                leaves = leaves_of([args[1]] + differentiable(f))
                out = model.readout(args[0], leaves[0], args[2], args[3], with_differentiable(f, leaves[1:]))
            else:
                leaves = leaves_of([args[1]])
                out = model.readout(args[0], leaves[0], src[:0], dst[:0], from_list([t[:0] for t in f_list]))
            got = torch.autograd.grad([out], leaves, [grad_e], allow_unused=True)
        return grads_or_zeros(got, leaves)

    with torch.no_grad():
        energies = model.readout(species, x, src, dst, from_list(f_list))
    if edges:
        args, rows = (species, x, src, dst, *f_list), (NODE, NODE, EDGE, EDGE) + (EDGE,) * n_f
    else:
        args, rows = (species, x), (NODE, NODE)
    return [Entry("readout_fwd", readout_fn, args, rows),
            Entry("readout_vjp", readout_vjp_fn, args + (torch.randn_like(energies),), rows + (NODE,))]


# ------------------------------------------------------------------------------- compiling


def export_entry(entry: Entry) -> torch.export.ExportedProgram:
    """Trace the entry (with its gradient) into one forward-only ATen graph with symbolic
    sizes, then export it with dynamic rows (as the one-graph entry is, export/aoti.py)."""
    from torch._decomp import core_aten_decompositions
    from torch.fx.experimental.proxy_tensor import make_fx

    sizes = {r: int(a.shape[0]) for a, r in zip(entry.args, entry.rows) if r is not None}
    if sizes.get(NODE) == sizes.get(EDGE):  # equal example sizes would be traced as one symbol
        raise RuntimeError(f"entry {entry.name}: example node and edge counts must differ")
    graph = make_fx(entry.fn, decomposition_table=core_aten_decompositions(), tracing_mode="symbolic",
                    _allow_non_fake_inputs=True)(*entry.args)
    dims = {NODE: torch.export.Dim(entry.name + "_nodes", min=PAD_ROWS),
            EDGE: torch.export.Dim(entry.name + "_edges", min=PAD_ROWS)}
    dynamic = tuple({0: dims[r]} if r is not None else None for r in entry.rows)
    return torch.export.export(graph, entry.args, dynamic_shapes=dynamic, strict=False)


def compile_entry(entry: Entry, configs: Dict[str, object]) -> List[str]:
    """AOTInductor's files for one entry, to be packaged under its name."""
    program = export_entry(entry)
    args, kwargs = program.example_inputs
    return torch._inductor.aot_compile(program.module(check_guards=False), args, kwargs,
                                       options=dict(configs, **{"aot_inductor.package": True}))


# ------------------------------------------------------------------------------- weights


def layer_weights(model: Equiformer) -> Tuple[bytes, str]:
    """The blocks' weights as one blob and its index, one line per tensor: block, name (in
    `state_names` order), dtype, byte offset in the blob (64-byte aligned), then the shape."""
    blob = bytearray()
    lines = []
    for k, blk in enumerate(model.blocks):
        for name, t in zip(state_names(blk), state_of(blk)):
            blob.extend(b"\0" * (-len(blob) % 64))
            shape = " ".join(str(d) for d in t.shape)
            lines.append(f"{k} {name} {str(t.dtype).replace('torch.', '')} {len(blob)} {shape}".rstrip())
            blob.extend(t.detach().cpu().contiguous().numpy().tobytes())
    return bytes(blob), "\n".join(lines) + "\n"


DTYPES = {"float32": torch.float32, "float64": torch.float64, "int64": torch.int64, "int32": torch.int32,
          "bool": torch.bool}


def read_layer_weights(blob: bytes, index: str, num_blocks: int, device: torch.device) -> List[List[torch.Tensor]]:
    """Each block's weights from `layer_weights`' blob and index (little-endian, as written
    on the machines torch runs on)."""
    out: List[List[torch.Tensor]] = [[] for _ in range(num_blocks)]
    raw = torch.frombuffer(bytearray(blob), dtype=torch.uint8) if len(blob) > 0 else torch.zeros(0, dtype=torch.uint8)
    for line in index.splitlines():
        k, _, dtype, offset, *shape = line.split()
        dt = DTYPES[dtype]
        count = int(np.prod([int(d) for d in shape])) if shape else 1
        size = count * torch.empty(0, dtype=dt).element_size()
        part = raw[int(offset):int(offset) + size].clone().view(dt).reshape([int(d) for d in shape])
        out[int(k)].append(part.to(device))
    return out
