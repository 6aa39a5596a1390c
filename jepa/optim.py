"""AdamW with the reference's weight-decay split, and step-indexed learning-rate schedules."""

from __future__ import annotations

import math

import torch
from torch import nn

from jepa.config import OptimConfig

def build_optimizer(module: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters of `module`: decay on weight matrices (and other
    >1-D tensors such as mask tokens, as in the reference), none on biases and 1-D params.
    With `predictor_lr_scale` != 1, the `predictor.*` parameters get groups of their own whose
    `lr_scale` `set_lr` applies. Build it after moving `module` to its device: on CUDA it uses
    the fused kernel."""
    scales = (1.0,) if cfg.predictor_lr_scale == 1.0 else (1.0, cfg.predictor_lr_scale)
    params: dict[tuple[float, bool], list[nn.Parameter]] = {(s, d): [] for s in scales for d in (True, False)}
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        scale = cfg.predictor_lr_scale if name.startswith("predictor.") else 1.0
        params[scale, not (name.endswith("bias") or p.ndim <= 1)].append(p)
    groups = [{"params": ps, "weight_decay": cfg.weight_decay if decay else 0.0, "lr_scale": scale}
              for (scale, decay), ps in params.items()]
    fused = all(p.is_cuda for group in groups for p in group["params"])
    return torch.optim.AdamW(groups, lr=cfg.start_lr, betas=cfg.betas, fused=fused or None)


def lr_at(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """Learning rate for optimizer step `step` (0-based) of `total_steps`.

    Both schedules warm up linearly from start_lr (step 0) to lr (step warmup_steps);
    warmup_constant then stays at lr (V-JEPA 2), cosine decays to final_lr at total_steps.
    """
    if step < cfg.warmup_steps:
        return cfg.start_lr + (cfg.lr - cfg.start_lr) * step / cfg.warmup_steps
    if cfg.schedule == "warmup_constant":
        return cfg.lr
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    return cfg.final_lr + (cfg.lr - cfg.final_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
