"""Throughput and peak memory of `jepa.train_step.train_step` on synthetic clips.

No data loading: three random batches of normalised clips with pre-sampled masks (default V-JEPA 2
configs), cycled, so the figure is the model step alone. bf16 autocast on CUDA, float32 on CPU.
Timed like the reference anchor of bench/bench_vs_reference.py (median step after warm-up), so
that script can put the two side by side.

    python bench/bench_train_step.py --arch tiny --batch-size 2 --frames 4 --img-size 32 --patch-size 8
    python bench/bench_train_step.py --arch large --batch-size 24 --img-size 256 --device cuda --ckpt
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from jepa.config import MaskConfig, ModelConfig, OptimConfig
from jepa.masks import sample_masks
from jepa.model import build_jepa, compile_blocks
from jepa.optim import build_optimizer
from jepa.train_step import train_step
from jepa.vit import ENCODER_PRESETS


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="tiny", choices=list(ENCODER_PRESETS))
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--patch-size", type=int, default=16)
    p.add_argument("--tubelet-size", type=int, default=2)
    p.add_argument("--pred-depth", type=int, default=12)
    p.add_argument("--pred-embed-dim", type=int, default=384)
    p.add_argument("--pred-num-heads", type=int, default=12)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--ckpt", action="store_true", help="activation checkpointing")
    p.add_argument("--compile", action="store_true", help="torch.compile each transformer block (train.compile)")
    p.add_argument("--peak-tflops", type=float, default=790.0,
                   help="the device's dense bf16 peak, for the fraction reached (H200: ~790)")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--json", action="store_true", help="print one JSON line instead of text")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    return p.parse_args()


def peak_memory_gib(device: torch.device) -> tuple[str, float]:
    if device.type == "cuda":
        return "peak cuda allocated", torch.cuda.max_memory_allocated(device) / 2**30
    return "peak RSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = ModelConfig(
        arch=args.arch, img_size=args.img_size, num_frames=args.frames, patch_size=args.patch_size,
        tubelet_size=args.tubelet_size, pred_depth=args.pred_depth, pred_embed_dim=args.pred_embed_dim,
        pred_num_heads=args.pred_num_heads, activation_checkpointing=args.ckpt,
    )
    mask_cfgs = [MaskConfig(8, 0.15), MaskConfig(2, 0.7)]
    torch.manual_seed(0)
    model = build_jepa(cfg, len(mask_cfgs)).to(device)
    optimizer = build_optimizer(model, OptimConfig())
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randn(args.batch_size, 3, args.frames, args.img_size, args.img_size, device=device),
                sample_masks(model.token_grid, mask_cfgs, args.batch_size, generator)) for _ in range(3)]

    with FlopCounterMode(display=False) as counter:  # the step's math, counted once in eager mode
        train_step(model, [batches[0]], optimizer, 1e-4, 0.99925, device)
    tflop = counter.get_total_flops() / 1e12
    if args.compile:
        compile_blocks(model)
    times = []
    for step in range(args.warmup + args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        metrics = train_step(model, [batches[step % 3]], optimizer, 1e-4, 0.99925, device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    achieved = tflop / median

    n_params = sum(p.numel() for p in model.encoder.parameters()) / 1e6
    n_pred = sum(p.numel() for p in model.predictor.parameters()) / 1e6
    label, mem = peak_memory_gib(device)
    if args.json:
        print(json.dumps({"arch": args.arch, "bs": args.batch_size, "frames": args.frames, "crop": args.img_size,
                          "ckpt": args.ckpt, "compile": args.compile, "device": device.type,
                          "step_s_median": round(median, 4), "clips_per_s": round(args.batch_size / median, 2),
                          "peak_mem_gib": round(mem, 1), "step_tflop": round(tflop, 3),
                          "tflop_per_s": round(achieved, 2), "fraction_of_peak": round(achieved / args.peak_tflops, 4),
                          "loss": metrics["loss"]}))
        return
    print(
        f"{args.arch} ({n_params:.1f}M) + predictor {args.pred_depth}x{args.pred_embed_dim} ({n_pred:.1f}M), "
        f"{args.frames}x{args.img_size}px, tokens {model.token_grid}, batch {args.batch_size}, "
        f"{device.type}, ckpt={args.ckpt}, compile={args.compile}, torch threads {torch.get_num_threads()}"
    )
    print(
        f"{args.batch_size / median:.2f} clips/s  {median:.3f} s/step (median of {args.steps})  "
        f"{label} {mem:.2f} GiB  last loss {metrics['loss']:.4f}"
    )
    print(f"{tflop:.3f} TFLOP/step  {achieved:.2f} TFLOP/s  {100 * achieved / args.peak_tflops:.1f}% of "
          f"{args.peak_tflops:g} TFLOP/s")


if __name__ == "__main__":
    main()
