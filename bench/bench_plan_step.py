"""Time one planning step of the world model at V-JEPA 2-AC's sizes, and check it against an eager CEM.

A planning step is what `/v1/plan` and `jepa eval plan` do per replanning call (`jepa.mpc.plan_toward`):
encode the current frame, then CEM over action sequences, every sample rolled out by the AC
predictor in one batched call per imagined step, the keys and values of earlier steps cached.
The goal frame is encoded once per episode, outside the step, as MPC does.

`--size reference` (for a GPU): random weights at the sizes of the V-JEPA 2-AC planning figure, a
ViT-g/16 encoder at 256 px (16x16 tokens per frame), a 24-block width-1024 AC predictor with
7-D actions and states, CEM with 400 samples, top 10, 10 iterations, horizon 2 (`--samples 300
--iterations 15 --horizon 3` is the reference's second setting). `--size tiny` runs the same code
in seconds on a CPU.

The check: the same CEM, same seed, with an eager energy that recomputes every imagined step from
the start with the predictor's teacher-forcing pass (no cache), must reach the same energy.

    python bench/bench_plan_step.py --size reference --device cuda --dtype bf16
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import nullcontext

import numpy as np
import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from jepa.ac_predictor import ACPredictor
from jepa.config import ACModelConfig, PlannerConfig, load_config
from jepa.model import build_jepa
from jepa.mpc import plan_toward, view_goal
from jepa.planner import Energy, cem
from jepa.world_model import WorldModel, build_predictor

SIZES = {  # encoder overrides of configs/tiny.yaml, predictor (dim, depth, heads), CEM defaults
    "reference": (["model.arch=giant", "model.img_size=256", "model.patch_size=16"], (1024, 24, 16),
                  dict(samples=400, elites=10, iterations=10, horizon=2)),
    "tiny": (["model.img_size=64", "model.patch_size=16"], (64, 2, 2),
             dict(samples=64, elites=8, iterations=4, horizon=2)),
}
ACTION_DIM = STATE_DIM = 7  # DROID's end-effector actions and states


def build(size: str, device: torch.device) -> WorldModel:
    encoder_overrides, (dim, depth, heads), _ = SIZES[size]
    cfg = load_config("configs/tiny.yaml", encoder_overrides + ["model.num_frames=1", "data.modality=image"])
    torch.manual_seed(0)
    jepa = build_jepa(cfg.model, num_mask_configs=cfg.num_mask_configs)
    env = {"action_low": [-1.0] * ACTION_DIM, "action_high": [1.0] * ACTION_DIM, "state_dim": STATE_DIM}
    ac = ACModelConfig(dim=dim, depth=depth, num_heads=heads)
    predictor = build_predictor(jepa, cfg, ac, env).eval()
    return WorldModel(jepa, cfg, predictor, ac, env, PlannerConfig()).to(device)


def eager_energy(model: ACPredictor, context: Tensor, goal: Tensor, states: Tensor) -> Energy:
    """`jepa.planner.latent_energy` without a cache: imagined step k reruns the teacher-forcing
    pass over the context and every step imagined so far."""

    @torch.no_grad()
    def energy(samples: Tensor) -> Tensor:
        S, H, _ = samples.shape
        z, s = context.expand(S, -1, -1, -1), states.expand(S, -1, -1)
        for k in range(H):
            pred = model(z, samples[:, : k + 1], s)
            z, s = torch.cat((z, pred.frames[:, -1:]), 1), torch.cat((s, pred.states[:, -1:]), 1)
        return (z[:, -1] - goal).abs().mean(dim=(1, 2))

    return energy


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="tiny")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16", help="autocast dtype on CUDA")
    ap.add_argument("--samples", type=int)
    ap.add_argument("--elites", type=int)
    ap.add_argument("--iterations", type=int)
    ap.add_argument("--horizon", type=int)
    ap.add_argument("--repeats", type=int, default=3, help="timed plan steps after one warm-up step")
    ap.add_argument("--compile", action="store_true", help="torch.compile each predictor block (regional)")
    ap.add_argument("--check-tolerance", type=float, default=None,
                    help="relative energy tolerance of the eager check (default 1e-4 fp32, 2e-2 bf16)")
    args = ap.parse_args()

    device = torch.device(args.device)
    bf16 = args.dtype == "bf16" and device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else nullcontext()
    cem_defaults = SIZES[args.size][2]
    cem_cfg = PlannerConfig(**{k: getattr(args, k) or v for k, v in cem_defaults.items()},
                            replan_every=1)
    world = build(args.size, device)
    if args.compile:
        for block in world.predictor.blocks:
            block.compile()
    side = world.img_size
    rng = np.random.default_rng(0)
    observation, goal_image = rng.integers(0, 256, (2, side, side, 3), dtype=np.uint8)
    state = rng.standard_normal(STATE_DIM).astype(np.float32)

    def plan_step(seed: int):
        with autocast:
            return plan_toward(world, observation, goal, state, cem_cfg,
                               generator=torch.Generator(device).manual_seed(seed))

    with autocast:
        goal = view_goal(world, goal_image, cem_cfg)
    plan_step(0)  # warm-up (and compilation)
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    for r in range(args.repeats):
        t0 = time.perf_counter()
        call = plan_step(r + 1)
        sync(device)
        seconds.append(time.perf_counter() - t0)
    with FlopCounterMode(display=False) as flops:
        ours = plan_step(0).energy[-1]  # also the cached side of the check below
    peak_gib = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")

    # The check: same seed, cached rollout vs eager recomputation.
    with autocast:
        context = world.encode(observation[None])[None]
        states = torch.as_tensor(state, device=device)[None, None]
        low, high = world.predictor.action_low, world.predictor.action_high
        eager = cem(eager_energy(world.predictor, context, goal.tokens, states), low, high, cem_cfg,
                    generator=torch.Generator(device).manual_seed(0)).energy[-1]
    tolerance = args.check_tolerance or (2e-2 if bf16 else 1e-4)
    agree = abs(ours - eager) <= tolerance * abs(eager)

    step_s = statistics.median(seconds)
    total = flops.get_total_flops()
    result = {
        "size": args.size, "device": str(device), "dtype": "bf16" if bf16 else "fp32", "compile": args.compile,
        **{k: getattr(cem_cfg, k) for k in ("samples", "elites", "iterations", "horizon")},
        "tokens_per_step": world.predictor.tokens_per_step, "plan_step_s": round(step_s, 4),
        "plan_step_s_all": [round(s, 4) for s in seconds], "pflop": round(total / 1e15, 4),
        "tflop_per_s": round(total / step_s / 1e12, 2), "peak_mem_gib": round(peak_gib, 2),
        "energy": round(call.energy[-1], 6), "energy_seed0": ours, "eager_energy_seed0": eager,
        "eager_agrees": agree,
    }
    print(f"plan step ({args.size}, {result['dtype']}{', compiled' if args.compile else ''}, {device}): "
          f"{step_s:.3f} s median of {args.repeats}; {total / 1e12:.4g} TFLOP, {result['tflop_per_s']} TFLOP/s; "
          f"peak {peak_gib:.1f} GiB; energy {call.energy[-1]:.4f}")
    print(f"eager check (seed 0): cached {ours:.6f}, eager {eager:.6f} -> {'agree' if agree else 'DIFFER'} "
          f"(tolerance {tolerance:g} relative)")
    print(json.dumps(result))
    if not agree:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
