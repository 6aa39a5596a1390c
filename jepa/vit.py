"""Video ViT encoder: Conv3d tubelet tokens, RoPE self-attention, no CLS token, no pos-embed.

Parameter names and shapes follow facebookresearch/vjepa2 (`patch_embed.proj`,
`blocks.{i}.norm1/attn.qkv/attn.proj/norm2/mlp.fc1/mlp.fc2`, `norm`), so its checkpoints load
after stripping their wrapper prefixes. With RoPE there is no position table, so one encoder
accepts any clip size divisible by the patch and tubelet.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from jepa.config import ModelConfig
from jepa.rope import rope_tables, rotate, rotation

LN_EPS = 1e-6
INIT_STD = 0.02


class EncoderPreset(NamedTuple):
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float


# Widths/depths/heads of the reference's vit_* constructors; "giant" is vit_giant_xformers
# (22 heads of 64 dims), the ViT-g of the released V-JEPA 2 checkpoints.
ENCODER_PRESETS: dict[str, EncoderPreset] = {
    "tiny": EncoderPreset(192, 12, 3, 4.0),
    "small": EncoderPreset(384, 12, 6, 4.0),
    "base": EncoderPreset(768, 12, 12, 4.0),
    "large": EncoderPreset(1024, 24, 16, 4.0),
    "huge": EncoderPreset(1280, 32, 16, 4.0),
    "giant": EncoderPreset(1408, 40, 22, 48 / 11),
}


class PatchEmbed3D(nn.Module):
    """Non-overlapping tubelet x patch x patch cubes -> tokens in (t, h, w)-major order."""

    def __init__(self, patch_size: int, tubelet_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        size = (tubelet_size, patch_size, patch_size)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=size, stride=size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, C, T, H, W) -> (B, N, D)


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    """Multi-head self-attention with 3D RoPE on queries and keys (not values)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(x).unflatten(-1, (3, self.num_heads, -1)).permute(2, 0, 3, 1, 4)  # (B, h, N, hd)
        x = F.scaled_dot_product_attention(rotate(q, cos, sin), rotate(k, cos, sin), v)  # (B, h, N, hd)
        return self.proj(x.transpose(1, 2).reshape(B, N, D))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, attention: type[Attention] = Attention):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x), cos, sin)
        return x + self.mlp(self.norm2(x))


def gather_tokens(x: Tensor, ids: Tensor) -> Tensor:
    """x (B, N, D) at token indices ids (B, K) -> (B, K, D)."""
    return torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def run_blocks(blocks: nn.ModuleList, x: Tensor, cos: Tensor, sin: Tensor, ckpt: bool) -> Tensor:
    """Apply `blocks` in order; with `ckpt`, keep only block inputs and recompute in backward."""
    for blk in blocks:
        if ckpt and torch.is_grad_enabled():
            x = checkpoint(blk, x, cos, sin, use_reentrant=False)
        else:
            x = blk(x, cos, sin)
    return x


def init_weights(module: nn.Module, blocks: nn.ModuleList) -> None:
    """Reference init: truncated normal (std 0.02) weights, zero biases, and the residual
    output projections of block i (1-based) scaled by 1/sqrt(2i) so deep stacks start stable."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv3d)):
            nn.init.trunc_normal_(m.weight, std=INIT_STD)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    with torch.no_grad():
        for i, blk in enumerate(blocks, start=1):
            blk.attn.proj.weight.div_(math.sqrt(2.0 * i))
            blk.mlp.fc2.weight.div_(math.sqrt(2.0 * i))


class VisionTransformer(nn.Module):
    def __init__(
        self,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        patch_size: int = 16,
        tubelet_size: int = 2,
        in_chans: int = 3,
        activation_checkpointing: bool = False,
    ):
        super().__init__()
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.patch_size = patch_size
        self.tubelet_size = tubelet_size
        self.activation_checkpointing = activation_checkpointing
        self.patch_embed = PatchEmbed3D(patch_size, tubelet_size, in_chans, embed_dim)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=LN_EPS)
        init_weights(self, self.blocks)

    def token_grid(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """Token grid (T', H', W') of a clip of the given size in frames and pixels; one frame
        (an image) is one tubelet, as `forward` repeats it."""
        p, t = self.patch_size, self.tubelet_size
        frames = t if frames == 1 else frames
        if frames % t or height % p or width % p:
            raise ValueError(f"clip {frames}x{height}x{width} is not divisible by tubelet {t} / patch {p}")
        return frames // t, height // p, width // p

    def forward(self, x: Tensor, keep: Tensor | None = None) -> Tensor:
        """Encode clips x (B, C, T, H, W) — or images, (B, C, H, W) or T = 1, repeated over one
        tubelet as the reference does — keeping only the tokens `keep` (B, K) if given:
        (B, N or K, D)."""
        if x.ndim == 4:
            x = x.unsqueeze(2)  # (B, C, 1, H, W)
        if x.shape[2] == 1:
            x = x.repeat(1, 1, self.tubelet_size, 1, 1)
        grid = self.token_grid(*x.shape[-3:])
        x = self.patch_embed(x)  # (B, N, D)
        if keep is None:
            ids = torch.arange(x.shape[1], device=x.device)  # (N,)
        else:
            ids = keep  # (B, K)
            x = gather_tokens(x, keep)  # (B, K, D)
        head_dim = self.embed_dim // self.num_heads
        cos, sin = rotation(*rope_tables(ids, grid, head_dim), head_dim)
        x = run_blocks(self.blocks, x, cos, sin, self.activation_checkpointing)
        return self.norm(x)


def build_encoder(cfg: ModelConfig) -> VisionTransformer:
    return VisionTransformer(
        **ENCODER_PRESETS[cfg.arch]._asdict(),
        patch_size=cfg.patch_size,
        tubelet_size=cfg.tubelet_size,
        activation_checkpointing=cfg.activation_checkpointing,
    )
