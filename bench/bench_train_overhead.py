"""Ray Train overhead: the same training steps inside a 1-worker Ray Train TorchTrainer and in a
plain PyTorch loop, in one run.

Identical work on both sides: the tiny JEPA (32 px, 8 frames, patch 8, predictor 1x64) on CPU, a
fixed set of synthetic clips and masks held in memory (no Ray Data), the same torch thread count,
the same seed. Prints per-step times (median over the timed steps, after warm-up) and the ratio
Ray Train / plain; start-up (cluster, worker group) is reported apart, not in the step time.

    python bench/bench_train_overhead.py --steps 40 --threads 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from jepa.config import load_config
from jepa.masks import sample_masks
from jepa.model import build_jepa
from jepa.optim import build_optimizer
from jepa.train_step import train_step

TINY = ["model.img_size=32", "model.num_frames=8", "model.patch_size=8", "model.pred_depth=1",
        "model.pred_embed_dim=64", "model.pred_num_heads=2"]
CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml")


def run_steps(args: dict, prepare=None) -> list[float]:
    """Build the model, train `warmup + steps` steps on fixed batches; seconds of each timed step."""
    torch.set_num_threads(args["threads"])
    cfg = load_config(CONFIG, TINY)
    torch.manual_seed(0)
    model = build_jepa(cfg.model, len(cfg.masks))
    optimizer = build_optimizer(model, cfg.optim)
    wrapped = prepare(model) if prepare else model
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(args["batch_size"], 3, 8, 32, 32, generator=g),
                sample_masks(model.token_grid, cfg.masks, args["batch_size"], g)) for _ in range(4)]
    times = []
    for step in range(args["warmup"] + args["steps"]):
        t0 = time.perf_counter()
        train_step(wrapped, [batches[step % len(batches)]], optimizer, 1e-3, 0.99, torch.device("cpu"))
        if step >= args["warmup"]:
            times.append(time.perf_counter() - t0)
    return times


def ray_train_steps(args: dict) -> tuple[list[float], float]:
    import ray
    import ray.train
    import ray.train.torch
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    out_dir = args["out_dir"]

    def loop(config: dict) -> None:
        times = run_steps(config, prepare=ray.train.torch.prepare_model)
        with open(os.path.join(out_dir, "times.txt"), "w") as f:
            f.write(" ".join(map(str, times)))

    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        TorchTrainer(loop, train_loop_config=args,
                     scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
                     run_config=ray.train.RunConfig(storage_path=out_dir)).fit()
    finally:
        ray.shutdown()
    wall = time.perf_counter() - t0
    with open(os.path.join(out_dir, "times.txt")) as f:
        return [float(x) for x in f.read().split()], wall


def main() -> None:
    import tempfile

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=40, help="timed steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--threads", type=int, default=1, help="torch threads on both sides")
    a = p.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    args = {"steps": a.steps, "warmup": a.warmup, "batch_size": a.batch_size, "threads": a.threads}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        plain = run_steps(args)
        plain_wall = time.perf_counter() - t0
        ray_times, ray_wall = ray_train_steps(args | {"out_dir": tmp})
        plain_again = run_steps(args)  # the machine is shared: plain before and after Ray
    plain_med = statistics.median(plain + plain_again)
    ray_med = statistics.median(ray_times)
    print(f"{a.steps} timed steps after {a.warmup} warm-up, batch {a.batch_size}, {a.threads} torch thread(s)")
    print("| loop | median step ms | mean step ms | wall s (incl. start-up) |")
    print("|---|---:|---:|---:|")
    print(f"| plain PyTorch | {plain_med * 1e3:.1f} | {statistics.mean(plain + plain_again) * 1e3:.1f} "
          f"| {plain_wall:.1f} |")
    print(f"| Ray Train (1 worker) | {ray_med * 1e3:.1f} | {statistics.mean(ray_times) * 1e3:.1f} | {ray_wall:.1f} |")
    print(f"ratio Ray Train / plain (median step): {ray_med / plain_med:.3f} (target <= 1.10)")


if __name__ == "__main__":
    main()
