"""3D rotary position embedding over (t, h, w) token positions, laid out like V-JEPA 2.

Each attention head's dims are split into three equal even-sized chunks rotated by the
temporal, row and column index of the token; leftover dims (head_dim not divisible by 6) pass
through unrotated. Within a chunk of size d the angles are `pos * 10000 ** (-j / (d/2))` for
j < d/2, and — as in the reference, whose published weights were trained this way — that list of
d/2 angles is repeated twice (not interleaved) across the d dims, while the rotation pairs
adjacent dims (2i, 2i+1). The two dims of a pair therefore turn at slightly different rates, so
scores are not exactly a function of the relative offset; we keep it for checkpoint fidelity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

ROPE_BASE = 10000.0


def axis_dim(head_dim: int) -> int:
    """Dims rotated per axis: the largest even number not above head_dim // 3."""
    return 2 * ((head_dim // 3) // 2)


def rope_frequencies(dim: int, device: torch.device | None = None) -> Tensor:
    """Angular frequencies of one axis chunk of `dim` dims: (dim // 2,)."""
    j = torch.arange(dim // 2, dtype=torch.float32, device=device)
    return 1.0 / ROPE_BASE ** (j / (dim / 2))  # written as the reference does: bit-identical tables


def grid_positions(ids: Tensor, grid: tuple[int, int, int]) -> Tensor:
    """Flattened (t, h, w)-major token indices (..., N) -> float positions (..., N, 3)."""
    _, height, width = grid
    t = ids // (height * width)
    h = (ids % (height * width)) // width
    w = ids % width
    return torch.stack((t, h, w), dim=-1).float()


def rope_tables(ids: Tensor, grid: tuple[int, int, int], head_dim: int) -> tuple[Tensor, Tensor]:
    """cos and sin tables for tokens `ids` (N,) or (B, N): each (1 or B, 1, N, 3 * axis_dim).

    Computed once per forward in float32 and shared by every block; the head axis is a
    broadcast dim.
    """
    return rope_tables_at(grid_positions(ids, grid), head_dim)


def rope_tables_at(positions: Tensor, head_dim: int) -> tuple[Tensor, Tensor]:
    """``rope_tables`` for explicit float (t, h, w) positions (..., N, 3)."""
    d = axis_dim(head_dim)
    omega = rope_frequencies(d, positions.device)  # (d/2,)
    angles = positions.unsqueeze(-1) * omega  # (..., N, 3, d/2)
    angles = torch.cat((angles, angles), dim=-1).flatten(-2)  # (..., N, 3d): [t | h | w]
    return angles.cos().unsqueeze(-3), angles.sin().unsqueeze(-3)


def rotation(cos: Tensor, sin: Tensor, head_dim: int) -> tuple[Tensor, Tensor]:
    """The tables of ``rope_tables`` as `rotate` takes them: widened to all ``head_dim`` dims (cos 1
    and sin 0 on the dims that stay) and with each pair's sign folded into sin. Built once per
    forward, they leave each block's rotation two multiplies and an add: no slicing, negation or
    concatenation per block, which stood out in CPU profiles of the tiny models. An odd head's
    last dim is left out of the tables (it has no pair) and `rotate` passes it through."""
    width = head_dim - head_dim % 2
    rest = width - cos.shape[-1]
    sign = torch.tensor([-1.0, 1.0], dtype=sin.dtype, device=sin.device).repeat(width // 2)
    return F.pad(cos, (0, rest), value=1.0), F.pad(sin, (0, rest)) * sign


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate queries or keys x (..., N, head_dim) by `rotation`'s tables: pair (2i, 2i+1) turns
    into (x[2i] cos - x[2i+1] sin, x[2i+1] cos + x[2i] sin), bit for bit as `apply_rope`."""
    width = cos.shape[-1]
    if width < x.shape[-1]:  # an odd head: its last dim stays as it is
        return torch.cat((rotate(x[..., :width], cos, sin), x[..., width:]), dim=-1)
    swapped = x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)  # (x[2i+1], x[2i])
    return x * cos.to(x.dtype) + swapped * sin.to(x.dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate queries or keys x (B, heads, N, head_dim) by ``rope_tables``' cos and sin; dims past
    the tables stay as they are."""
    return rotate(x, *rotation(cos, sin, x.shape[-1]))
