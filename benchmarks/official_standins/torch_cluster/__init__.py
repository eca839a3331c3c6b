"""Minimal pure-torch stand-in for torch_cluster (only radius_graph).

Convention as in torch_cluster (flow='source_to_target'):
edge_index[0] = neighbour j (source), edge_index[1] = centre i (target).
Pairs with |x_i - x_j| < r in the same batch, no self loops unless loop=True.
Edges are ordered by target then source (torch_cluster orders by centre too).
"""
import torch


def radius_graph(x, r, batch=None, loop=False, max_num_neighbors=32,
                 flow='source_to_target', num_workers=1, batch_size=None):
    n = x.shape[0]
    if batch is None:
        batch = torch.zeros(n, dtype=torch.long, device=x.device)
    with torch.no_grad():
        d = torch.cdist(x.detach(), x.detach())
        mask = (d < r) & (batch[:, None] == batch[None, :])
        if not loop:
            mask.fill_diagonal_(False)
        # rows = centre i, cols = neighbour j
        centre, neigh = mask.nonzero(as_tuple=True)
        # apply max_num_neighbors per centre (keep the first ones, like torch_cluster)
        if max_num_neighbors is not None:
            counts = torch.zeros(n, dtype=torch.long, device=x.device)
            keep = torch.ones_like(centre, dtype=torch.bool)
            # rank within each centre's list
            order = torch.arange(centre.numel(), device=x.device)
            start = torch.zeros(n + 1, dtype=torch.long, device=x.device)
            start[1:] = torch.bincount(centre, minlength=n).cumsum(0)
            rank = order - start[centre]
            keep = rank < max_num_neighbors
            centre, neigh = centre[keep], neigh[keep]
    if flow == 'source_to_target':
        return torch.stack([neigh, centre], dim=0)
    return torch.stack([centre, neigh], dim=0)


def radius(x, y, r, batch_x=None, batch_y=None, max_num_neighbors=32, num_workers=1, batch_size=None):
    raise NotImplementedError('stub torch_cluster: only radius_graph is provided')
