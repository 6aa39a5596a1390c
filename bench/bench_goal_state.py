"""Can a goal's joint angles, read from its image, give the reacher planner an energy that slopes?

The world model's energy (L1 between imagined and goal tokens) is flat beyond ~0.8 rad: the arm is
a thin line, and two poses that do not overlap look equally far from each other (bench/NOTES.md).
Its predictor also imagines the next *state* at every step (`uses_state`), so the planner can add
the distance between the imagined final joint angles and the goal's (`planner.state_weight`),
once something reads the goal's angles from the goal image (`jepa.state_reader`). This bench, in
one process without Ray:

1. trains a state reader on the world model's frozen encoder tokens (unpooled grid) of the
   episodes' frames, against their recorded joint angles, and prints its held-out error per joint
   (``--reader FILE`` loads one saved by ``--save-reader`` instead; with neither, the model's own,
   as `jepa train-ac ... model.state_reader=true` trains it);
2. plans on the tuning goals (``--seed-base``) with `jepa eval plan`'s protocol, MPC loop, planner
   and energy plus ``--weight`` times that distance, where the goal's angles are the true ones
   (``oracle``: what a perfect reader would buy) or the reader's (``reader``); ``--read-only``
   instead prints the reader's error on those goal images;
3. with ``--save FOLDER`` (or ``--register NAME``), writes (registers) the world model with the
   reader and ``state_weight`` in its planner config, for `jepa eval plan` and `jepa serve deploy`.

    MUJOCO_GL=egl python bench/bench_goal_state.py --model models:/jepa-reacher-ac/1 \\
        --episodes s3://jepa/reacher/episodes --count 600 --steps 1500 --goals 20 --sources oracle,reader
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jepa.state_reader import StateReader, state_distance  # noqa: E402
from pipelines import storage  # noqa: E402
from pipelines.episode_shards import WindowSpec, check_episode  # noqa: E402
from pipelines.episodes import EnvSpec, data_uri, video_uri  # noqa: E402
from pipelines.shards import decode_segment  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a reacher world model (models:/NAME@ALIAS or a folder)")
    p.add_argument("--episodes", help="episodes recorded by `jepa synth mujoco` (the model's training set)")
    p.add_argument("--count", type=int, default=600, help="episodes to read; the last sixth is held out")
    p.add_argument("--steps", type=int, default=1500, help="reader training steps of 128 frames")
    p.add_argument("--reader", help="a reader saved by --save-reader, instead of training one (neither this "
                                    "nor --episodes: the model's own reader)")
    p.add_argument("--save-reader", help="keep the trained reader in this file")
    p.add_argument("--save", help="write the world model with the reader and --weight as its planner's state_weight")
    p.add_argument("--register", metavar="NAME", help="also register that world model as NAME@candidate in MLflow "
                                                      "(for `jepa serve deploy`)")
    p.add_argument("--goals", type=int, default=20, help="tuning goals to plan for (0: none)")
    p.add_argument("--seed-base", type=int, default=2_000_000, help="goal seeds (not the reported 1,000,000)")
    p.add_argument("--sources", default="oracle,reader", help="goal angles to plan with: oracle, reader")
    p.add_argument("--read-only", action="store_true", help="only read the goals' angles and print the reader's "
                                                            "error on them (seconds, not a plan per goal)")
    p.add_argument("--weight", type=float, default=0.2, help="energy per radian of distance to the goal's angles")
    p.add_argument("--threads", type=int, default=2, help="torch threads / planning processes")
    args = p.parse_args()
    args.sources = [s for s in args.sources.split(",") if s]
    if unknown := set(args.sources) - {"oracle", "reader"}:
        p.error(f"unknown --sources {sorted(unknown)}; choose from oracle, reader")
    return args


def load_frames(world, root: str, count: int) -> tuple[Tensor, Tensor]:
    """Unpooled tokens and joint angles of every agent step's frame: (E, T, N, D) half, (E, T, Q)."""
    env = EnvSpec.from_dict(world.env)
    z, q, t0 = [], [], time.time()
    for i in range(count):
        video = decode_segment(storage.get_bytes(video_uri(root, i)))
        _, states = check_episode(video, storage.get_table(data_uri(root, i)), env, WindowSpec())
        k = env.frameskip
        steps = len(video) // k
        z.append(world.encode(video[: steps * k : k], pool=1).half())
        q.append(torch.from_numpy(states[: steps * k : k, : env.qpos_dim]).float())
        if (i + 1) % 100 == 0 or i + 1 == count:
            print(f"[goal-state] encoded {i + 1}/{count} episodes ({time.time() - t0:.0f} s)", flush=True)
    return torch.stack(z), torch.stack(q)


def train_reader(z: Tensor, q: Tensor, steps: int) -> StateReader:
    held = max(1, len(z) // 6)
    train_z, train_q = z[:-held].flatten(0, 1), q[:-held].flatten(0, 1)
    test_z, test_q = z[-held:].flatten(0, 1), q[-held:].flatten(0, 1)
    torch.manual_seed(0)
    reader = StateReader(z.shape[2], z.shape[3], q.shape[-1], angular=True)
    opt = torch.optim.AdamW(reader.parameters(), 1e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 1e-3, total_steps=steps, pct_start=0.05)
    t0 = time.time()
    for step in range(1, steps + 1):
        idx = torch.randint(len(train_z), (128,))
        loss = reader.loss(train_z[idx].float(), train_q[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % max(1, steps // 5) == 0 or step == steps:
            with torch.no_grad():
                reader.eval()
                err = torch.cat([state_distance(reader(c.float())[..., None], t[..., None], angular=True)
                                 for c, t in zip(test_z.split(512), test_q.split(512))])
                reader.train()
            worst = err.max(1).values
            print(f"[goal-state] step {step}: held-out error (rad) shoulder median {err[:, 0].median():.3f}, "
                  f"wrist median {err[:, 1].median():.3f}; larger joint median {worst.median():.3f}, "
                  f"p90 {worst.quantile(0.9):.3f}, under 0.1 rad {(worst < 0.1).float().mean():.0%} "
                  f"({len(test_z)} frames of {held} episodes; {time.time() - t0:.0f} s)", flush=True)
    return reader.eval()


def with_reader(model: str, reader_file: str, weight: float):
    """The world model of ``model`` reading goal states with the saved reader, planning with ``weight``."""
    from ray_jobs.eval_plan import load_world

    world = load_world(model)[0]
    saved = torch.load(reader_file)
    reader = StateReader(**saved["spec"])
    reader.load_state_dict(saved["state"])
    world.attach_state_reader(reader)
    world.planner = replace(world.planner, state_weight=weight)
    return world


def plan_episode(job: tuple) -> dict:
    """One goal of `jepa eval plan`'s protocol, planned by `jepa.mpc.run_mpc` with the state term."""
    model, reader_file, source, weight, seed_base, episode = job
    torch.set_num_threads(1)
    from jepa.mpc import run_mpc
    from pipelines.planning_protocol import Episode, Protocol, make_goal

    world = with_reader(model, reader_file, weight)
    p = Protocol(env=world.env["domain"], frameskip=world.env["frameskip"], img_size=world.env["img_size"],
                 seed_base=seed_base)
    goal = make_goal(p, episode)
    true_q = torch.as_tensor(np.asarray(goal.qpos), dtype=torch.float32)
    if source == "oracle":
        world.read_state = lambda frames: true_q[None]
    goal_q = world.read_state(goal.image[None])[0]
    ep = Episode(p, goal)
    trace = run_mpc(world, goal.image, lambda: (ep.observation(), ep.state()), ep.step, p.budget, world.planner,
                    seed=goal.seed)
    o = ep.outcome()
    return {"episode": episode, "success": o.success, "best": o.best_distance, "start": goal.start_distance,
            "goal_error": float(state_distance(goal_q, true_q, angular=True)),
            "seconds": float(np.mean([c.seconds for c in trace.calls]))}


def read_goals(model: str, reader_file: str, seed_base: int, goals: int) -> None:
    """The reader's error on the goal images of `jepa eval plan`'s protocol: what the state term aims at."""
    from pipelines.planning_protocol import Protocol, make_goal

    world = with_reader(model, reader_file, 0.0)
    p = Protocol(env=world.env["domain"], frameskip=world.env["frameskip"], img_size=world.env["img_size"],
                 seed_base=seed_base)
    errors = []
    for episode in range(goals):
        goal = make_goal(p, episode)
        true_q = torch.as_tensor(np.asarray(goal.qpos), dtype=torch.float32)
        errors.append(float(state_distance(world.read_state(goal.image[None])[0], true_q, angular=True)))
    e = np.asarray(errors)
    print(f"[goal-state] reader on {goals} goals (seeds {seed_base}+): larger joint's error median {np.median(e):.3f} "
          f"rad, p90 {np.quantile(e, 0.9):.3f}, under 0.05 rad {np.mean(e < 0.05):.0%}, under 0.1 {np.mean(e < 0.1):.0%}")


def register(folder: str, name: str, params: dict) -> None:
    from ray_jobs import tracking
    from ray_jobs.training.registration import register_model

    run_id = tracking.start_run("jepa-ac", params, {"jepa.state_reader": "bench/bench_goal_state.py"},
                                run_name="state reader")
    version = register_model(run_id, folder, registered_model=name, alias="candidate",
                             python_model=tracking.WorldModelPyfunc())
    print(f"[goal-state] registered models:/{name}/{version} (@candidate)")


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    from jepa.world_model import save_world_model
    from ray_jobs.eval_plan import load_world

    with tempfile.TemporaryDirectory() as tmp:
        reader_file = args.reader
        if reader_file is None:
            world = load_world(args.model)[0]
            if args.episodes:
                reader = train_reader(*load_frames(world, args.episodes, args.count), args.steps)
            elif (reader := world.state_reader) is None:
                sys.exit(f"{args.model} has no state reader: give --episodes to train one, or --reader")
            reader_file = args.save_reader or str(Path(tmp) / "reader.pt")
            torch.save({"spec": reader.spec(), "state": reader.state_dict()}, reader_file)
        if args.read_only:
            return read_goals(args.model, reader_file, args.seed_base, args.goals)
        if args.save or args.register:
            folder = args.save or str(Path(tmp) / "world")
            save_world_model(with_reader(args.model, reader_file, args.weight), folder)
            print(f"[goal-state] world model with its state reader (state_weight {args.weight}) in {folder}")
        if args.register:
            register(folder, args.register, {"state_reader.model": args.model, "planner.state_weight": args.weight})
        if args.goals == 0:
            return
        print(f"\n| goal angles | success | of | by start (<1, 1-2, >2 rad) | goal angle error (median, rad) "
              f"| best dist. (median) | s/call |\n|---|---:|---:|---|---:|---:|---:|")
        for source in args.sources:
            jobs = [(args.model, reader_file, source, args.weight, args.seed_base, e) for e in range(args.goals)]
            with mp.get_context("spawn").Pool(args.threads) as pool:
                rs = list(pool.imap(plan_episode, jobs))
            bands = [sum(r["success"] for r in rs if lo <= r["start"] < hi) for lo, hi in ((0, 1), (1, 2), (2, 9))]
            print(f"| {source} (weight {args.weight}) | {sum(r['success'] for r in rs)} | {len(rs)} | "
                  f"{', '.join(map(str, bands))} | {np.median([r['goal_error'] for r in rs]):.3f} | "
                  f"{np.median([r['best'] for r in rs]):.3f} | {np.mean([r['seconds'] for r in rs]):.1f} |", flush=True)


if __name__ == "__main__":
    main()
