"""Minimal pure-torch stand-in for torch_scatter (only `scatter`, sum/add/mean/max/min)."""
import torch


def _broadcast(index, src, dim):
    if dim < 0:
        dim = src.dim() + dim
    shape = [1] * src.dim()
    shape[dim] = -1
    return index.view(shape).expand_as(src)


def scatter(src, index, dim=-1, out=None, dim_size=None, reduce='sum'):
    if dim < 0:
        dim = src.dim() + dim
    if dim_size is None:
        dim_size = int(index.max()) + 1 if index.numel() > 0 else 0
    size = list(src.shape)
    size[dim] = dim_size
    if reduce in ('sum', 'add'):
        res = src.new_zeros(size).index_add(dim, index, src)
    elif reduce == 'mean':
        s = src.new_zeros(size).index_add(dim, index, src)
        cnt = torch.zeros(dim_size, dtype=src.dtype, device=src.device).index_add(
            0, index, torch.ones_like(index, dtype=src.dtype)).clamp(min=1)
        shape = [1] * src.dim(); shape[dim] = -1
        res = s / cnt.view(shape)
    elif reduce in ('max', 'min'):
        res = src.new_zeros(size).scatter_reduce(dim, _broadcast(index, src, dim), src,
                                                 reduce='a' + reduce, include_self=False)
    else:
        raise NotImplementedError(reduce)
    if out is not None:
        out.copy_(res)
        return out
    return res
