"""One optimisation step of V-JEPA pretraining, and the matching held-out loss."""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from jepa.ema import ema_update
from jepa.masks import MaskBatch
from jepa.optim import set_lr


def autocast(device: torch.device, precision: str = "auto") -> torch.autocast:
    """bf16 autocast on CUDA (as the reference trains) or wherever ``precision`` is "bf16"; float32
    otherwise (``train.precision``)."""
    enabled = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def emulated_bf16(device: torch.device, precision: str, cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True when ``precision`` asks for bf16 on a CPU that has no bf16 matmul instructions
    (AVX512-BF16 or AMX): there bf16 is emulated, and a step takes several times longer than in
    float32. False where the CPU's flags cannot be read."""
    if precision != "bf16" or device.type != "cpu":
        return False
    try:
        with open(cpuinfo) as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return bool(flags) and not {"avx512_bf16", "amx_bf16"} & set(flags)


MicroBatch = tuple[Tensor, list[MaskBatch]]
"""Normalised clips (B, 3, T, H, W) and one MaskBatch per mask config."""


def _diagnostics(out: dict[str, Tensor]) -> dict[str, float]:
    """Collapse statistics of the target features (see `jepa.objective.collapse_warning`), and the
    error scale's loss when the predictor has one."""
    return {k: out[k].item() for k in ("target_std", "effective_rank", "error_nll") if k in out}


def train_step(
    model: nn.Module,
    micro_batches: list[MicroBatch],
    optimizer: torch.optim.Optimizer,
    lr: float,
    momentum: float,
    device: torch.device,
    precision: str = "auto",
) -> dict[str, float]:
    """One optimizer step of `model` (a JEPA, possibly DDP-wrapped) over `micro_batches`.

    Gradients of the micro-batches accumulate (each loss scaled by 1/len, so k micro-batches of
    B clips equal one batch of k*B); under DDP only the last backward all-reduces. Then one AdamW
    step and one EMA update. bf16 needs no loss scaling, and the reference clips no gradients.
    """
    set_lr(optimizer, lr)
    ddp = isinstance(model, nn.parallel.DistributedDataParallel)
    loss = 0.0
    diagnostics: dict[str, float] = {}  # means over the micro-batches
    for i, (clips, masks) in enumerate(micro_batches):
        clips = clips.to(device, non_blocking=True)
        masks = [m.to(device, non_blocking=True) for m in masks]
        last = i == len(micro_batches) - 1
        with model.no_sync() if ddp and not last else contextlib.nullcontext():
            with autocast(device, precision):
                out = model(clips, masks)
            ((out["loss"] + out.get("error_nll", 0.0)) / len(micro_batches)).backward()
        loss += out["loss"].item() / len(micro_batches)
        for k, v in _diagnostics(out).items():
            diagnostics[k] = diagnostics.get(k, 0.0) + v / len(micro_batches)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    jepa = model.module if ddp else model
    ema_update(jepa.target_encoder, jepa.encoder, momentum)
    return {"loss": loss, "lr": lr, **diagnostics}


@torch.no_grad()
def evaluate_loss(
    model: nn.Module, clips: Tensor, masks: list[MaskBatch], device: torch.device
) -> dict[str, float]:
    """The training loss and collapse statistics on held-out clips, without updating anything."""
    clips = clips.to(device, non_blocking=True)
    masks = [m.to(device, non_blocking=True) for m in masks]
    with autocast(device):
        out = model(clips, masks)
    return {"loss": out["loss"].item(), **_diagnostics(out)}
