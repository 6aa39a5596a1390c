"""Reading a goal's joint configuration from its image: a learned head on frozen encoder tokens.

The planner's energy compares imagined and goal tokens. On reacher the arm is a thin line, so two
poses that do not overlap give tokens about equally far apart, and that energy is flat beyond
~0.8 rad from the goal (bench/NOTES.md). The AC predictor already imagines the next *state* at
every step; what the planner lacks is the goal's state, since the goal is only an image. This head
reads it: a small transformer over one frame's unpooled token grid, trained on recorded episodes'
frames and states, so ``distance(imagined state, read goal state)`` slopes all the way.

For an angular (hinge-chain) env it regresses the sine and cosine of each link's absolute angle,
the running sum of the joint angles along the chain, because that is what an image shows; a
joint's own angle is the difference of two links'. Otherwise it regresses positions.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def wrap_angle(x: Tensor) -> Tensor:
    """Angles to (-pi, pi]."""
    return math.pi - torch.remainder(math.pi - x, 2 * math.pi)


class StateReader(nn.Module):
    """Frame tokens (B, N, E) -> the configuration (B, qpos_dim) the frame shows."""

    def __init__(self, num_tokens: int, embed_dim: int, qpos_dim: int, angular: bool, dim: int = 192, depth: int = 2,
                 num_heads: int = 6):
        super().__init__()
        self.num_tokens, self.embed_dim, self.qpos_dim, self.angular = num_tokens, embed_dim, qpos_dim, angular
        self.inp = nn.Linear(embed_dim, dim)
        self.pos = nn.Parameter(torch.randn(num_tokens, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, num_heads, 4 * dim, 0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.out = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, self.out_dim))
        self.register_buffer("qpos_mean", torch.zeros(qpos_dim))
        self.register_buffer("qpos_std", torch.ones(qpos_dim))

    @property
    def out_dim(self) -> int:
        return 2 * self.qpos_dim if self.angular else self.qpos_dim

    def spec(self) -> dict:
        """What rebuilds this head (``StateReader(**spec)``) before its weights load."""
        return {"num_tokens": self.num_tokens, "embed_dim": self.embed_dim, "qpos_dim": self.qpos_dim,
                "angular": self.angular, "dim": self.inp.out_features, "depth": len(self.blocks.layers),
                "num_heads": self.blocks.layers[0].self_attn.num_heads}

    def raw(self, tokens: Tensor) -> Tensor:
        return self.out(self.blocks(self.inp(tokens) + self.pos).mean(1))

    def target(self, qpos: Tensor) -> Tensor:
        """What ``raw`` regresses for configurations (B, qpos_dim)."""
        if self.angular:
            links = qpos.cumsum(-1)
            return torch.cat([links.sin(), links.cos()], -1)
        return (qpos - self.qpos_mean) / self.qpos_std

    def forward(self, tokens: Tensor) -> Tensor:
        y = self.raw(tokens)
        if not self.angular:
            return y * self.qpos_std + self.qpos_mean
        links = torch.atan2(y[..., : self.qpos_dim], y[..., self.qpos_dim :])
        return wrap_angle(torch.diff(links, dim=-1, prepend=torch.zeros_like(links[..., :1])))

    def loss(self, tokens: Tensor, qpos: Tensor) -> Tensor:
        return (self.raw(tokens) - self.target(qpos)).pow(2).mean()


def state_distance(a: Tensor, b: Tensor, angular: bool) -> Tensor:
    """Largest per-coordinate distance (wrapped for angles), the planning protocol's measure."""
    d = a - b
    return (wrap_angle(d) if angular else d).abs().amax(-1)
