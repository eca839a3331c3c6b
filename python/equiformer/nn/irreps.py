"""Irreps bookkeeping done once at construction (never inside `forward`).

Blocks are ``(mul, l, p)`` tuples with p = +1 (even) or -1 (odd); a feature tensor is the
concatenation of its blocks, each laid out ``[mul, 2l+1]`` (e3nn's layout).
"""

from typing import List, Sequence, Tuple

from e3nn import o3

Block = Tuple[int, int, int]


def blocks(irreps) -> List[Block]:
    return [(mul, ir.l, ir.p) for mul, ir in o3.Irreps(irreps)]


def dim(bs: Sequence[Block]) -> int:
    return sum(mul * (2 * l + 1) for mul, l, _ in bs)


def to_irreps(bs: Sequence[Block]) -> o3.Irreps:
    return o3.Irreps([(mul, (l, p)) for mul, l, p in bs])


def sort_even_first(bs: Sequence[Block]) -> Tuple[List[Block], List[int]]:
    """Sort blocks by (l, even parity first, original position), as the official code does.

    Returns the sorted blocks and ``position[i]``: where original block i lands.
    """
    order = sorted(range(len(bs)), key=lambda i: (bs[i][1], -bs[i][2], i))
    position = [0] * len(bs)
    for new, old in enumerate(order):
        position[old] = new
    return [bs[i] for i in order], position


def simplify(bs: Sequence[Block]) -> List[Block]:
    """Merge adjacent blocks of the same irrep (layout unchanged)."""
    out: List[Block] = []
    for mul, l, p in bs:
        if out and out[-1][1] == l and out[-1][2] == p:
            out[-1] = (out[-1][0] + mul, l, p)
        elif mul > 0:
            out.append((mul, l, p))
    return out


def gate_split(bs: Sequence[Block]) -> Tuple[List[Block], List[Block], List[Block]]:
    """Scalars (0e), gates (one 0e per gated irrep) and gated irreps of an output irreps."""
    scalars = simplify([b for b in bs if b[1] == 0 and b[2] == 1])
    gated = simplify([b for b in bs if not (b[1] == 0 and b[2] == 1)])
    gates = simplify([(mul, 0, 1) for mul, _, _ in gated])
    return scalars, gates, gated


def num_scalars(bs: Sequence[Block]) -> int:
    return sum(mul for mul, l, p in bs if l == 0 and p == 1)


def check_sorted(bs: Sequence[Block], what: str) -> None:
    keys = [(l, -p) for _, l, p in simplify(bs)]
    if keys != sorted(set(keys)) or len(keys) != len(set(keys)):
        raise ValueError(
            f"{what} irreps {to_irreps(bs)} must list each irrep once, sorted by l with even parity first "
            "(for example '128x0e+64x1e+32x2e')"
        )
