"""Predictor: from the context tokens' features, predict the target encoder's features at the
masked positions.

Parameters mirror the reference `VisionTransformerPredictor` with its `predictor_` prefix
dropped (`predictor_embed` -> `embed`, `predictor_blocks` -> `blocks`, `predictor_norm` ->
`norm`, `predictor_proj` -> `proj`; `mask_tokens.{i}` keep their name and (1, 1, D) shape).
The reference sorts context and mask tokens by position before its blocks and unsorts after;
attention without a mask is permutation-equivariant and RoPE travels with each token, so we
skip the sort: outputs are the same up to float summation order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jepa.rope import rope_tables, rotation
from jepa.vit import LN_EPS, Block, gather_tokens, init_weights, run_blocks


class Predictor(nn.Module):
    def __init__(
        self,
        embed_dim: int,
        pred_embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 12,
        num_mask_tokens: int = 2,
        mlp_ratio: float = 4.0,
        activation_checkpointing: bool = False,
        copy_context: bool = False,
        error_scale: bool = False,
    ):
        super().__init__()
        self.num_heads = num_heads
        self.copy_context = copy_context
        self.activation_checkpointing = activation_checkpointing
        self.embed = nn.Linear(embed_dim, pred_embed_dim)
        # One learnable query per mask config, zero at init (the reference's zero_init_mask_tokens).
        self.mask_tokens = nn.ParameterList(
            nn.Parameter(torch.zeros(1, 1, pred_embed_dim)) for _ in range(num_mask_tokens)
        )
        self.blocks = nn.ModuleList(Block(pred_embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(pred_embed_dim, eps=LN_EPS)
        self.proj = nn.Linear(pred_embed_dim, embed_dim)
        init_weights(self, self.blocks)
        if copy_context:  # start as "nothing moves": the blocks learn only the change
            nn.init.zeros_(self.proj.weight)
        # How wrong each prediction is likely to be: per feature, the log scale of a Laplace
        # distribution over its error; zero at init (scale 1, so surprise starts as plain L1).
        self.log_scale = nn.Linear(pred_embed_dim, embed_dim) if error_scale else None
        if error_scale:
            nn.init.zeros_(self.log_scale.weight)
            nn.init.zeros_(self.log_scale.bias)

    def forward(
        self,
        context: Tensor,
        context_ids: Tensor,
        target_ids: Tensor,
        grid: tuple[int, int, int],
        mask_index: int = 0,
        with_log_scale: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """context (B, Nc, E) at token indices context_ids (B, Nc) -> predictions (B, Nt, E)
        for target_ids (B, Nt), using mask token `mask_index`; with ``with_log_scale`` also the log
        error scale of each predicted feature (B, Nt, E) (needs ``error_scale``)."""
        B, n_ctx, _ = context.shape
        x = self.embed(context)  # (B, Nc, D)
        queries = self.mask_tokens[mask_index].expand(B, target_ids.shape[1], -1)  # (B, Nt, D)
        x = torch.cat((x, queries), dim=1)  # (B, Nc + Nt, D)
        ids = torch.cat((context_ids, target_ids), dim=1)  # (B, Nc + Nt)
        head_dim = x.shape[-1] // self.num_heads
        cos, sin = rotation(*rope_tables(ids, grid, head_dim), head_dim)
        x = run_blocks(self.blocks, x, cos, sin, self.activation_checkpointing)
        hidden = self.norm(x[:, n_ctx:])  # (B, Nt, D)
        out = self.proj(hidden)  # (B, Nt, E)
        if self.copy_context:
            source, found = latest_context_at_place(context_ids, target_ids, grid)
            start = gather_tokens(F.layer_norm(context, context.shape[-1:]), source)  # (B, Nt, E)
            out = out + start * found.unsqueeze(-1)
        if not with_log_scale:
            return out
        if self.log_scale is None:
            raise ValueError("this predictor has no error scale head (model.pred_error_scale: false)")
        return out, self.log_scale(hidden)


def latest_context_at_place(context_ids: Tensor, target_ids: Tensor, grid: tuple[int, int, int]) -> tuple[Tensor, Tensor]:
    """For each target token, the index into the context of the latest context token at the same
    spatial place no later in time, and whether there is one: (B, Nt) long and (B, Nt) bool."""
    steps, height, width = grid
    B, n_ctx = context_ids.shape
    slot = torch.full((B, steps * height * width), -1, dtype=torch.long, device=context_ids.device)
    slot.scatter_(1, context_ids, torch.arange(n_ctx, device=context_ids.device).expand(B, -1))
    slot = slot.view(B, steps, height * width)
    for t in range(1, steps):  # carry the latest context token at each place forward in time
        slot[:, t] = torch.where(slot[:, t] >= 0, slot[:, t], slot[:, t - 1])
    source = slot.view(B, -1).gather(1, target_ids)
    return source.clamp(min=0), source >= 0
