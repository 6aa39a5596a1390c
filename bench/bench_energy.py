"""Can a planner's energy find the goal at all? The encoder's goal landscape on reacher.

Planning in representation space (``jepa eval plan``) can only succeed when the energy, L1 between
a configuration's tokens and the goal image's tokens, is lower near the goal than away from it,
down to the protocol's 0.05 rad tolerance. This checks that with a perfect predictor: for goals
made as the protocol makes them, it sets the arm to configurations at known distances from the
goal (every joint moved, the largest move exactly ``d``), renders them and scores each
representation by

- ``rank``: Spearman correlation of energy with distance, mean over goals (1 = perfect ordering);
- ``acc@d``: how often a configuration inside the tolerance (``d = 0.03``) has a lower energy than
  one at distance ``d``: 0.5 = blind at that distance, 1 = always right;
- ``a<b``: the same between neighbouring distances, so whether the energy still slopes toward the
  goal far from it (where a planner starts on far goals) or is flat there (0.5).

Representations: raw pixels, the world model's frozen encoder (``--model``, each pooling in
``--pools``) and the same architecture at random initialisation.

    python bench/bench_energy.py --model models:/jepa-reacher-ac@candidate   # ~2 min on 2 cores
    python bench/bench_energy.py --model ... --distances 0.03,0.4,0.8,1.2,1.6,2.0,2.4,2.8
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipelines.planning_protocol import TOLERANCE, Protocol, fresh_env, make_goal, render  # noqa: E402

DISTANCES = (0.03, 0.06, 0.1, 0.2, 0.4, 0.8, 1.6)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return float(np.corrcoef(rx, ry)[0, 1])


def goal_frames(p: Protocol, episode: int, per_distance: int, distances=DISTANCES
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The goal image, and frames of the arm at each of ``distances`` (``per_distance`` random
    directions each) -> (goal (H, W, 3), frames (K, H, W, 3), distances (K,))."""
    goal = make_goal(p, episode)
    env = fresh_env(p, goal.seed)
    physics = env.physics
    rng = np.random.default_rng([goal.seed, 7])
    frames, dists = [], []
    for d in distances:
        for _ in range(per_distance):
            move = rng.uniform(-1, 1, len(goal.qpos))
            move *= d / np.abs(move).max()
            with physics.reset_context():
                physics.data.qpos[:] = goal.qpos + move
                physics.data.qvel[:] = 0
            frames.append(render(p, env))
            dists.append(d)
    return goal.image, np.stack(frames), np.array(dists)


def encoders(model_uri: str | None, pools: list[int]):
    """name -> function frames (B, H, W, 3) uint8 -> features (B, F)."""
    out = {"pixels": lambda f: torch.as_tensor(f).float().flatten(1) / 255}
    if model_uri is None:
        return out
    from dataclasses import replace

    from jepa.model import build_jepa
    from jepa.world_model import WorldModel
    from ray_jobs.eval_plan import load_world

    world = load_world(model_uri)[0]
    torch.manual_seed(0)
    random_jepa = build_jepa(world.encoder_cfg.model, world.encoder_cfg.num_mask_configs)
    for name, jepa in (("encoder", world.jepa), ("random-init", random_jepa)):
        for pool in pools:
            model = WorldModel(jepa, world.encoder_cfg, world.predictor, replace(world.cfg, pool=pool), world.env,
                               world.planner)
            out[f"{name} pool {pool}"] = lambda f, model=model: model.encode(f).flatten(1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a `jepa train-ac` world model (models:/NAME@ALIAS or a folder); "
                                    "without it, pixels only")
    ap.add_argument("--pools", default="1,2", help="token-grid poolings to score (comma-separated)")
    ap.add_argument("--goals", type=int, default=20)
    ap.add_argument("--per-distance", type=int, default=8)
    ap.add_argument("--env", default="reacher")
    ap.add_argument("--distances", default=",".join(map(str, DISTANCES)),
                    help="comma-separated, ascending; the first is the configuration inside the tolerance")
    args = ap.parse_args()
    distances = tuple(float(x) for x in args.distances.split(","))
    if list(distances) != sorted(set(distances)) or len(distances) < 2:
        ap.error("--distances: two or more, ascending")
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    p = Protocol(env=args.env)
    reps = encoders(args.model, [int(x) for x in args.pools.split(",")])
    ranks = {n: [] for n in reps}
    wins = {n: {d: [] for d in distances[1:]} for n in reps}
    steps = {n: {d: [] for d in distances[1:]} for n in reps}
    for e in range(args.goals):
        goal, frames, dists = goal_frames(p, e, args.per_distance, distances)
        for name, fn in reps.items():
            feats = fn(np.concatenate([goal[None], frames]))
            energy = (feats[1:] - feats[:1]).abs().mean(1).numpy()
            ranks[name].append(spearman(energy, dists))
            inside = energy[dists == distances[0]]
            for near, d in zip(distances, distances[1:]):
                outside = energy[dists == d]
                wins[name][d].append(float((inside[:, None] < outside[None, :]).mean()))
                steps[name][d].append(float((energy[dists == near][:, None] < outside[None, :]).mean()))
        print(f"goal {e + 1}/{args.goals}", file=sys.stderr, end="\r")
    print(f"\n{args.env}: {args.goals} goals x {args.per_distance} configurations per distance; tolerance "
          f"{TOLERANCE[args.env]}; inside = {distances[0]}")
    print(f"{'representation':<22}{'rank':>7}" + "".join(f"{'acc@' + str(d):>9}" for d in distances[1:]))
    for name in reps:
        print(f"{name:<22}{np.mean(ranks[name]):>7.3f}" + "".join(f"{np.mean(wins[name][d]):>9.2f}" for d in distances[1:]))
    print("\nneighbouring distances ordered (a<b)")
    print(f"{'representation':<22}" + "".join(f"{f'{a}<{b}':>11}" for a, b in zip(distances, distances[1:])))
    for name in reps:
        print(f"{name:<22}" + "".join(f"{np.mean(steps[name][d]):>11.2f}" for d in distances[1:]))


if __name__ == "__main__":
    main()
