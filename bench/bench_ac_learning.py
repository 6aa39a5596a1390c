"""Does the action-conditioned predictor learn the arm's motion? A fast check, in one process.

`make reacher` needs about an hour per try; this trains the AC predictor of
configs/reacher-ac.yaml (or overrides) in-process, without Ray, on the frozen encoder's tokens of
episodes recorded by `jepa synth mujoco`, once per ``--losses`` value, and every ``--eval-every``
steps prints, on held-out episodes:

- **pred/copy**: the teacher-forcing L1 to the next frame's tokens over that of "nothing moves"
  (this frame's tokens copied forward); below 1 means it predicts motion;
- **moving**: the same over the 10% of tokens that change most, the arm's;
- **actions**: the share of windows whose rollout with their own actions ends closer (L1 over the
  last frame's tokens, the planner's energy) to the window's true last frame than the rollout
  with another window's actions: what planning needs; an action-blind model gets ties (0.5);
- **roll@H**: the L1 of a rollout over the planner's horizon H (its own actions) to the true frame
  H steps on, over that of the first frame copied forward: how much of the motion the planner's
  imagination still gets right where its energy is read.

The same two on training episodes tell overfitting (train far better) from underfitting. With
``--model``, nothing is trained: a trained world model (`jepa train-ac`, or ``--save``) is measured
on all ``--count`` episodes, which should be recorded apart from its training episodes (another
``jepa synth mujoco --seed``).

    MUJOCO_GL=egl jepa synth mujoco --episodes 120 --out /tmp/reacher-episodes
    python bench/bench_ac_learning.py --episodes /tmp/reacher-episodes --steps 2000 --losses l1,change_mse
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jepa.ac_predictor import ACPredictor, ac_losses  # noqa: E402
from jepa.config import load_ac_config, load_config  # noqa: E402
from jepa.optim import build_optimizer, lr_at  # noqa: E402
from jepa.world_model import WorldModel, build_predictor, save_world_model  # noqa: E402
from pipelines import storage  # noqa: E402
from pipelines.episode_shards import WindowSpec, check_episode  # noqa: E402
from pipelines.episodes import EnvSpec, data_uri, read_info, video_uri  # noqa: E402
from pipelines.shards import decode_segment  # noqa: E402
from ray_jobs.eval_runs import load_evaluated_model, random_init  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--episodes", required=True, help="episode dataset from `jepa synth mujoco` (folder or s3://)")
    p.add_argument("--count", type=int, default=120, help="episodes used (the first ones); a sixth are held out")
    p.add_argument("--encoder", default="random",
                   help="models:/NAME@ALIAS of a `jepa pretrain` encoder, or 'random' (configs/reacher.yaml at init)")
    p.add_argument("--config", default="configs/reacher-ac.yaml", help="AC config: predictor, window, optimiser, batch")
    p.add_argument("--losses", default="l1,change_mse", help="model.loss values, one training each (comma-separated)")
    p.add_argument("--steps", type=int, default=2000, help="training steps per loss")
    p.add_argument("--eval-every", type=int, default=500, help="steps between evaluations")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--save", help="save the last loss's world model to this folder (for `jepa eval plan --model FOLDER`)")
    p.add_argument("--model", help="measure this trained world model (models:/NAME@ALIAS or a folder) on the "
                                   "episodes instead of training one")
    p.add_argument("overrides", nargs="*", help="AC config overrides, key=value (e.g. model.pool=1)")
    return p.parse_args()


def load_tokens(world: WorldModel, root: str, count: int, env: EnvSpec, frames: int):
    """Per episode, the tokens, actions and states of its agent steps: (E, T, N, D), (E, T, A), (E, T, S)."""
    z, a, s = [], [], []
    t0 = time.time()
    for i in range(count):
        video = decode_segment(storage.get_bytes(video_uri(root, i)))
        actions, states = check_episode(video, storage.get_table(data_uri(root, i)), env, WindowSpec(frames=frames))
        k = env.frameskip
        steps = len(video) // k
        z.append(world.encode(video[: steps * k : k]).half())
        a.append(torch.from_numpy(actions[: steps * k].reshape(steps, k, -1).mean(1)))
        s.append(torch.from_numpy(states[: steps * k : k]))
        if (i + 1) % 20 == 0 or i + 1 == count:
            print(f"[bench-ac] encoded {i + 1}/{count} episodes ({time.time() - t0:.0f} s)", flush=True)
    return torch.stack(z), torch.stack(a), torch.stack(s)


def global_batch(cfg) -> int:
    """One process stands in for the config's DDP ranks: it takes their whole batch per step."""
    return cfg.train.batch_size * cfg.train.num_workers


def windows(episodes: torch.Tensor, steps: int, frames: int, batch: int, rng: np.random.Generator):
    e = episodes[torch.as_tensor(rng.integers(0, len(episodes), batch))]
    t = torch.as_tensor(rng.integers(0, steps - frames + 1, batch))[:, None] + torch.arange(frames)
    return e[:, None], t


@torch.no_grad()
def evaluate(pred: ACPredictor, z, a, s, test, frames: int, horizon: int) -> dict[str, float]:
    e, t = windows(test, z.shape[1], max(frames, horizon + 1), 512, np.random.default_rng(1))
    zl, al = z[e, t].float(), a[e, t]
    sl = s[e, t] if pred.state_dim else None
    zw, aw, sw = zl[:, :frames], al[:, :frames], None if sl is None else sl[:, :frames]
    tf = pred(zw[:, :-1], aw[:, :-1], None if sw is None else sw[:, :-1])
    change = (zw[:, 1:] - zw[:, :-1]).abs()
    err = (tf.frames - zw[:, 1:]).abs()
    moving = change.mean(-1) > change.mean(-1).flatten().quantile(0.9)
    s0 = None if sw is None else sw[:, :1]

    def energy(actions):
        end = pred.rollout(zw[:, :1], actions[:, : frames - 1], s0, steps=frames - 1).frames[:, -1]
        return (end - zw[:, -1]).abs().mean((1, 2))

    own = energy(aw)
    wins = [((own < other).float() + 0.5 * (own == other).float()).mean().item()
            for other in (energy(aw.roll(shift, 0)) for shift in (1, 2, 3))]
    far = pred.rollout(zl[:, :1], al[:, :horizon], s0, steps=horizon).frames[:, -1]
    return {"pred/copy": (err.mean() / change.mean()).item(),
            "moving": (err.mean(-1)[moving].mean() / change.mean(-1)[moving].mean()).item(),
            "actions": float(np.mean(wins)),
            "roll@H": ((far - zl[:, horizon]).abs().mean() / (zl[:, 0] - zl[:, horizon]).abs().mean()).item()}


def train(world: WorldModel, z, a, s, train_eps, test_eps, loss: str, args) -> ACPredictor:
    cfg = load_ac_config(args.config, [*args.overrides, f"model.loss={loss}"])
    torch.manual_seed(cfg.train.seed)
    pred = build_predictor(world.jepa, world.encoder_cfg, cfg.model, world.env)
    if pred.state_dim:
        st = s[train_eps].flatten(0, 1)
        pred.set_state_stats(st.mean(0), st.std(0))
    zt = z[train_eps].float()
    pred.set_change_stats((zt[:, 1:] - zt[:, :-1]).square().mean((0, 1, 2)).sqrt())
    del zt
    optimizer = build_optimizer(pred, cfg.optim)
    frames, rng = cfg.data.frames or WindowSpec.frames, np.random.default_rng(cfg.train.seed)
    t0 = time.time()
    for step in range(args.steps + 1):
        if step % args.eval_every == 0 or step == args.steps:
            pred.eval()
            m, fit = (evaluate(pred, z, a, s, eps, frames, cfg.planner.horizon) for eps in (test_eps, train_eps))
            print(f"| {loss} | {step} | {m['pred/copy']:.3f} | {m['moving']:.3f} | {m['actions']:.3f} | "
                  f"{m['roll@H']:.3f} | {fit['pred/copy']:.3f} | {fit['actions']:.3f} | {time.time() - t0:.0f} |",
                  flush=True)
            pred.train()
        if step == args.steps:
            break
        e, t = windows(train_eps, z.shape[1], frames, global_batch(cfg), rng)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg.optim, args.steps)
        losses = ac_losses(pred, z[e, t].float(), a[e, t], s[e, t] if pred.state_dim else None,
                           cfg.model.rollout_steps, loss)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimizer.step()
    return pred.eval()


def measure(args) -> None:
    from ray_jobs.eval_plan import load_world

    world = load_world(args.model)[0]
    frames = load_ac_config(args.config, args.overrides).data.frames or WindowSpec.frames
    z, a, s = load_tokens(world, args.episodes, args.count, EnvSpec.from_dict(world.env), frames)
    with torch.no_grad():
        m = evaluate(world.predictor.eval(), z, a, s, torch.arange(args.count), frames, world.planner.horizon)
    print(f"\n{args.model} on {args.count} episodes of {args.episodes}, windows of {frames} steps\n\n"
          f"| pred/copy | moving | actions | roll@{world.planner.horizon} |\n|---:|---:|---:|---:|\n"
          f"| {m['pred/copy']:.3f} | {m['moving']:.3f} | {m['actions']:.3f} | {m['roll@H']:.3f} |")


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    if args.model:
        return measure(args)
    cfg = load_ac_config(args.config, args.overrides)
    env = read_info(args.episodes)["env"]
    if args.encoder == "random":
        enc_cfg = load_config("configs/reacher.yaml")
        jepa = random_init(enc_cfg)
    else:
        loaded = load_evaluated_model(args.encoder)
        jepa, enc_cfg = loaded.model, loaded.cfg
    world = WorldModel(jepa, enc_cfg, build_predictor(jepa, enc_cfg, cfg.model, env), cfg.model, env, cfg.planner)
    frames = cfg.data.frames or WindowSpec.frames
    z, a, s = load_tokens(world, args.episodes, args.count, EnvSpec.from_dict(env), frames)
    held_out = max(1, args.count // 6)
    train_eps, test_eps = torch.arange(args.count - held_out), torch.arange(args.count - held_out, args.count)
    print(f"\n{args.count - held_out} training and {held_out} held-out episodes of {z.shape[1]} agent steps, "
          f"{z.shape[2]} tokens per frame (encoder: {args.encoder}), windows of {frames} steps, "
          f"batch {global_batch(cfg)}\n")
    print(f"| loss | step | pred/copy | moving | actions | roll@{cfg.planner.horizon} | train pred/copy | train actions | s |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for loss in args.losses.split(","):
        pred = train(world, z, a, s, train_eps, test_eps, loss, args)
    if args.save:
        world.predictor, world.cfg = pred, replace(cfg.model, loss=loss)
        print(f"saved {save_world_model(world, args.save)}")


if __name__ == "__main__":
    main()
