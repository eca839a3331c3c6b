"""Wigner 3j symbols in the sign convention of e3nn 0.4.4.

Official Equiformer checkpoints were trained with e3nn 0.4.4; e3nn 0.5.0 flipped the sign of
some 3j symbols (found by comparing the two versions' tables). Using 0.4.4's convention
everywhere means a checkpoint from the official code and one trained here compute with the
same coefficients. Paths with an l=0 input or output use e3nn's specialised formulas
(identity / sqrt(2l+1)), which are the same in every version.
"""

import math

import torch
from e3nn import o3

# (l1, l2, l3) whose e3nn >= 0.5 symbol is the negative of e3nn 0.4.4's
_FLIPPED_SINCE_0_5 = {
    (1, 2, 2), (2, 1, 2), (2, 2, 1),
    (1, 3, 3), (3, 1, 3), (3, 3, 1),
    (1, 4, 4), (4, 1, 4), (4, 4, 1),
    (3, 4, 6), (4, 3, 6), (4, 4, 5),
}


def wigner_3j(l1: int, l2: int, l3: int, dtype=torch.float64) -> torch.Tensor:
    """The e3nn 0.4.4 symbol C[i, j, k] of shape (2l1+1, 2l2+1, 2l3+1)."""
    if min(l1, l2, l3) == 0:
        d = 2 * max(l1, l2, l3) + 1
        eye = torch.eye(d, dtype=torch.float64) / math.sqrt(d)
        if l1 == 0:
            c = eye.reshape(1, d, d)
        elif l2 == 0:
            c = eye.reshape(d, 1, d)
        else:
            c = eye.reshape(d, d, 1)
        return c.to(dtype)
    if max(l1, l2, l3) > 4 and (l1, l2, l3) not in _FLIPPED_SINCE_0_5:
        # beyond the compared tables the convention is unknown: refuse rather than guess
        raise NotImplementedError(f"3j symbol ({l1},{l2},{l3}): only l <= 4 is supported")
    c = o3.wigner_3j(l1, l2, l3, dtype=torch.float64)
    if (l1, l2, l3) in _FLIPPED_SINCE_0_5:
        c = -c
    return c.to(dtype)
