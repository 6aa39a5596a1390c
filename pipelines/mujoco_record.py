"""Recording DeepMind Control Suite episodes: random exploration, rendered off-screen on the CPU.

Each episode resets its environment with its own seed and explores with a uniform-random policy
that holds every action for ``frameskip`` control steps (one agent step), so the arm or the mass
travels far enough in an episode to be worth learning from. Episodes are Ray tasks; the layout they
write is ``pipelines.episodes``.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa

from pipelines import storage
from pipelines.episodes import EnvSpec, data_uri, frames_table, video_uri, write_meta
from pipelines.ray_tasks import finished
from pipelines.video import encode_mp4

ENVS: dict[str, tuple[str, str, int]] = {
    "reacher": ("reacher", "easy", 0),
    "point_mass": ("point_mass", "easy", 0),
}
"""``--env`` name -> (dm_control domain, task, camera id). Camera 0 is each domain's fixed top view."""

EXPLORE_HOLD: dict[str, int] = {"reacher": 1, "point_mass": 5}
"""Agent steps each uniform-random draw of a recording is held. The point mass is heavily damped:
with a new draw every agent step it hardly leaves its start."""


@dataclass(frozen=True)
class RecordConfig:
    env: str = "reacher"
    episodes: int = 100
    steps: int = 250
    """Control steps (= recorded frames) per episode."""
    frameskip: int = 5
    img_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if self.env not in ENVS:
            raise ValueError(f"unknown env {self.env!r}; choose from {', '.join(ENVS)}")
        for name in ("episodes", "steps", "frameskip", "img_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.steps < self.frameskip:
            raise ValueError(f"steps ({self.steps}) must cover at least one agent step of {self.frameskip}")


def episode_seed(seed: int, index: int) -> int:
    """Independent of how many episodes a run records, so episode i is the same in every run."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def load_env(env: str, seed: int):
    """The dm_control environment, its task's randomness seeded (the target and the initial pose)."""
    os.environ.setdefault("MUJOCO_GL", "egl")  # before mujoco loads: no display on servers
    from dm_control import suite

    domain, task, _ = ENVS[env]
    return suite.load(domain, task, task_kwargs={"random": seed})


def env_spec(env_name: str, env, img_size: int, frameskip: int) -> EnvSpec:
    action = env.action_spec()
    data = env.physics.data
    domain, task, camera = ENVS[env_name]
    return EnvSpec(
        domain=domain, task=task, camera_id=camera, img_size=img_size, control_timestep=float(env.control_timestep()),
        frameskip=frameskip, action_low=tuple(float(x) for x in action.minimum),
        action_high=tuple(float(x) for x in action.maximum), qpos_dim=len(data.qpos), qvel_dim=len(data.qvel),
    )  # fmt: skip


def physics_state(env) -> np.ndarray:
    data = env.physics.data
    return np.concatenate([data.qpos, data.qvel]).astype(np.float32)


def render(env, spec: EnvSpec) -> np.ndarray:
    return env.physics.render(spec.img_size, spec.img_size, camera_id=spec.camera_id)


def random_actions(spec: EnvSpec, steps: int, rng: np.random.Generator, hold: int = 1) -> np.ndarray:
    """(steps, A): one uniform draw per ``hold`` agent steps of ``frameskip`` control steps each."""
    per_draw = spec.frameskip * hold
    draws = rng.uniform(spec.action_low, spec.action_high, size=(-(-steps // per_draw), spec.action_dim))
    return np.repeat(draws, per_draw, axis=0)[:steps].astype(np.float32)


def rollout(env, spec: EnvSpec, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """From the env's current state: frames (T, H, W, 3), states (T, S), rewards (T,) for T actions."""
    frames, states, rewards = [], [], []
    for action in actions:
        frames.append(render(env, spec))
        states.append(physics_state(env))
        rewards.append(env.step(action).reward or 0.0)
    return np.stack(frames), np.stack(states), np.asarray(rewards, np.float32)


def render_episode(cfg: RecordConfig, index: int) -> tuple[EnvSpec, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Episode ``index`` of a recording: (spec, actions, frames, states, rewards)."""
    seed = episode_seed(cfg.seed, index)
    env = load_env(cfg.env, seed)
    env.reset()
    spec = env_spec(cfg.env, env, cfg.img_size, cfg.frameskip)
    actions = random_actions(spec, cfg.steps, np.random.default_rng(seed), EXPLORE_HOLD[cfg.env])
    return spec, actions, *rollout(env, spec, actions)


def record_episode(cfg: RecordConfig, index: int, root: str, settings) -> dict:
    spec, actions, frames, states, rewards = render_episode(cfg, index)
    seed = episode_seed(cfg.seed, index)
    video, data = video_uri(root, index), data_uri(root, index)
    storage.put_bytes(video, encode_mp4(frames, spec.fps, lossless=True), settings)
    storage.put_table(data, frames_table(actions, states, rewards, spec.control_timestep), settings)
    return {"episode_index": index, "seed": seed, "n_frames": len(frames), "video": video, "data": data}


def record(cfg: RecordConfig, out_uri: str, progress: bool = True, task_cpus: float = 1.0) -> pa.Table:
    """Record ``cfg.episodes`` episodes into ``out_uri`` as Ray tasks; returns meta/episodes.parquet."""
    import ray

    settings = storage.S3Settings.from_env() if storage.is_s3(out_uri) else None
    if settings is not None:
        storage.ensure_bucket(out_uri, settings)
    spec = env_spec(cfg.env, load_env(cfg.env, cfg.seed), cfg.img_size, cfg.frameskip)  # fails fast, before tasks
    task = ray.remote(num_cpus=task_cpus)(record_episode)
    refs = {task.remote(cfg, i, out_uri, settings): 1 for i in range(cfg.episodes)}
    rows = [row for _, row in finished(refs, f"{cfg.env} episodes", "episode", progress)]
    rows.sort(key=lambda r: r["episode_index"])
    episodes = pa.Table.from_pylist(rows)
    recording = {**asdict(cfg), "hold": EXPLORE_HOLD[cfg.env],
                 "policy": "uniform random, each draw held for hold agent steps of frameskip control steps",
                 "dm_control_env": list(ENVS[cfg.env][:2])}
    write_meta(out_uri, spec, recording, episodes, settings)
    return episodes
