"""Ray Train overhead: the same training steps inside a 1-worker Ray Train TorchTrainer and in a
plain PyTorch loop, in one run.

Identical work on both sides: by default the tiny JEPA (32 px, 8 frames, patch 8, predictor 1x64)
on CPU, a fixed set of synthetic clips and masks held in memory (no Ray Data), the same torch thread
count, the same seed. Prints per-step times (median over the timed steps, after warm-up) and the
ratio Ray Train / plain; start-up (cluster, worker group) is reported apart, not in the step time.

With --gpu the Ray Train side is the production GPU path: `use_gpu=True` (one GPU per worker, the
NCCL process group, `prepare_model` on cuda:0) and bf16 autocast; the plain side trains on the
same GPU without Ray. --config/--set pick a larger model (e.g. configs/vitl16.yaml).

    python bench/bench_train_overhead.py --steps 40 --threads 1
    python bench/bench_train_overhead.py --gpu --config configs/vitl16.yaml --steps 10 --warmup 3
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


def run_steps(args: dict, prepare=None, device: torch.device = torch.device("cpu")) -> list[float]:
    """Build the model, train `warmup + steps` steps on fixed batches; seconds of each timed step."""
    torch.set_num_threads(args["threads"])
    cfg = load_config(args["config"], args["overrides"])
    m, b = cfg.model, args["batch_size"]
    torch.manual_seed(0)
    model = build_jepa(cfg.model, len(cfg.masks))
    wrapped = prepare(model) if prepare else model.to(device)
    optimizer = build_optimizer(model, cfg.optim)  # after the move: fused AdamW on CUDA
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(b, 3, m.num_frames, m.img_size, m.img_size, generator=g).to(device),
                sample_masks(model.token_grid, cfg.masks, b, g)) for _ in range(4)]
    times = []
    for step in range(args["warmup"] + args["steps"]):
        t0 = time.perf_counter()
        train_step(wrapped, [batches[step % len(batches)]], optimizer, 1e-4, 0.99925, device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
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
        import torch.distributed as dist

        device = ray.train.torch.get_device()
        times = run_steps(config, prepare=ray.train.torch.prepare_model, device=device)
        backend = dist.get_backend() if dist.is_initialized() else "none"
        with open(os.path.join(out_dir, "times.txt"), "w") as f:
            f.write(" ".join(map(str, times)))
        with open(os.path.join(out_dir, "where.txt"), "w") as f:
            f.write(f"{device} process group {backend}")

    t0 = time.perf_counter()
    from ray_jobs.cluster import job_runtime_env

    ray.init(address="local", num_cpus=2, num_gpus=1 if args["gpu"] else 0, dashboard_host="127.0.0.1",
             runtime_env=job_runtime_env({}))
    try:
        TorchTrainer(loop, train_loop_config=args,
                     scaling_config=ScalingConfig(num_workers=1, use_gpu=args["gpu"], resources_per_worker={"CPU": 1}),
                     run_config=ray.train.RunConfig(storage_path=out_dir)).fit()
    finally:
        ray.shutdown()
    wall = time.perf_counter() - t0
    with open(os.path.join(out_dir, "times.txt")) as f, open(os.path.join(out_dir, "where.txt")) as g:
        return [float(x) for x in f.read().split()], wall, g.read()


def main() -> None:
    import tempfile

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=40, help="timed steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--threads", type=int, default=1, help="torch threads on both sides")
    p.add_argument("--gpu", action="store_true", help="one GPU: Ray Train with use_gpu (NCCL), bf16")
    p.add_argument("--config", default=CONFIG, help="run config for the model (default: configs/tiny.yaml)")
    p.add_argument("--set", nargs="*", default=None, metavar="KEY=VALUE",
                   help="config overrides (default with the tiny config: a 32 px, 8-frame model)")
    a = p.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    overrides = a.set if a.set is not None else (TINY if a.config == CONFIG else [])
    args = {"steps": a.steps, "warmup": a.warmup, "batch_size": a.batch_size, "threads": a.threads,
            "gpu": a.gpu, "config": str(Path(a.config).resolve()), "overrides": overrides}
    device = torch.device("cuda" if a.gpu else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        plain = run_steps(args, device=device)
        plain_wall = time.perf_counter() - t0
        ray_times, ray_wall, where = ray_train_steps(args | {"out_dir": tmp})
        plain_again = run_steps(args, device=device)  # the machine is shared: plain before and after Ray
    plain_med = statistics.median(plain + plain_again)
    ray_med = statistics.median(ray_times)
    cfg = load_config(args["config"], overrides).model
    print(f"{cfg.arch} {cfg.num_frames}x{cfg.img_size}px, {a.steps} timed steps after {a.warmup} warm-up, "
          f"batch {a.batch_size}, {a.threads} torch thread(s); Ray Train worker on {where}")
    print("| loop | median step ms | mean step ms | wall s (incl. start-up) |")
    print("|---|---:|---:|---:|")
    print(f"| plain PyTorch | {plain_med * 1e3:.1f} | {statistics.mean(plain + plain_again) * 1e3:.1f} "
          f"| {plain_wall:.1f} |")
    print(f"| Ray Train (1 worker) | {ray_med * 1e3:.1f} | {statistics.mean(ray_times) * 1e3:.1f} | {ray_wall:.1f} |")
    print(f"ratio Ray Train / plain (median step): {ray_med / plain_med:.3f} (target <= 1.10)")


if __name__ == "__main__":
    main()
