"""The episode dataset: recorded rollouts with actions, for action-conditioned training.

One layout, LeRobot-like, written by the recorders (``jepa synth mujoco``) and read by the episode
shards and the planning evaluation::

    P/meta/info.json              environment spec, recording settings, seeds, counts
    P/meta/episodes.parquet       one row per episode: index, seed, n_frames, video and data URIs
    P/videos/episode_000000.mp4   the rendered frames, one per control step
    P/data/episode_000000.parquet one row per frame: frame_index, timestamp, action, state, reward

Row ``t`` of an episode's parquet belongs to video frame ``t``: ``state`` is the simulator state
(qpos then qvel) when the frame was rendered, ``action`` the action applied from that frame to the
next, and ``reward`` what the environment returned for that step.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines import storage

FORMAT_VERSION = 2
"""2: lossless RGB videos (1 had yuv420p H.264, too lossy for a 64 px arm; see docs/episodes.md)."""
INFO = "meta/info.json"
EPISODES = "meta/episodes.parquet"


@dataclass(frozen=True)
class EnvSpec:
    """What a model and a planner need to know about the environment the frames came from."""

    domain: str
    task: str
    camera_id: int
    img_size: int
    """Side of the rendered frames in pixels (square)."""
    control_timestep: float
    """Seconds between two recorded frames (one control step)."""
    frameskip: int
    """Control steps per agent step: the exploration policy holds each action this long, and the
    action-conditioned model steps this many frames at a time."""
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]
    qpos_dim: int
    qvel_dim: int

    @property
    def action_dim(self) -> int:
        return len(self.action_low)

    @property
    def state_dim(self) -> int:
        return self.qpos_dim + self.qvel_dim

    @property
    def fps(self) -> float:
        return 1.0 / self.control_timestep

    def as_dict(self) -> dict:
        return {**asdict(self), "action_low": list(self.action_low), "action_high": list(self.action_high),
                "action_dim": self.action_dim, "state_dim": self.state_dim}

    @classmethod
    def from_dict(cls, raw: dict) -> "EnvSpec":
        names = {f.name for f in fields(cls)}
        derived = {"action_dim", "state_dim"}
        unknown = sorted(set(raw) - names - derived)
        if unknown:
            raise ValueError(f"unknown env spec keys {unknown}; expected {sorted(names)}")
        kept = {k: v for k, v in raw.items() if k in names}
        kept["action_low"], kept["action_high"] = tuple(kept["action_low"]), tuple(kept["action_high"])
        return cls(**kept)


def episode_stem(index: int) -> str:
    return f"episode_{index:06d}"


def video_uri(root: str, index: int) -> str:
    return storage.join_uri(root, "videos", f"{episode_stem(index)}.mp4")


def data_uri(root: str, index: int) -> str:
    return storage.join_uri(root, "data", f"{episode_stem(index)}.parquet")


def frames_table(actions: np.ndarray, states: np.ndarray, rewards: np.ndarray, control_timestep: float) -> pa.Table:
    """An episode's per-frame rows; ``actions`` (T, A), ``states`` (T, S), ``rewards`` (T,)."""
    n = len(actions)
    if not (len(states) == len(rewards) == n):
        raise ValueError(f"rows disagree: {n} actions, {len(states)} states, {len(rewards)} rewards")
    return pa.table({
        "frame_index": pa.array(np.arange(n, dtype=np.int32)),
        "timestamp": pa.array(np.arange(n) * control_timestep),
        "action": pa.array(list(np.asarray(actions, np.float32)), pa.list_(pa.float32(), actions.shape[1])),
        "state": pa.array(list(np.asarray(states, np.float32)), pa.list_(pa.float32(), states.shape[1])),
        "reward": pa.array(np.asarray(rewards, np.float32)),
    })  # fmt: skip


def write_meta(root: str, spec: EnvSpec, recording: dict, episodes: pa.Table, settings=None) -> None:
    info = {"format_version": FORMAT_VERSION, "env": spec.as_dict(), "recording": recording,
            "total_episodes": episodes.num_rows, "total_frames": int(pc.sum(episodes["n_frames"]).as_py() or 0),
            "layout": {"video": "videos/episode_{index:06d}.mp4", "data": "data/episode_{index:06d}.parquet"}}
    storage.put_table(storage.join_uri(root, EPISODES), episodes, settings)
    storage.put_bytes(storage.join_uri(root, INFO), json.dumps(info, indent=2).encode(), settings)


def is_episode_dataset(root: str, settings=None) -> bool:
    try:
        storage.get_bytes(storage.join_uri(root, INFO), settings)
    except FileNotFoundError:
        return False
    return True


def read_info(root: str, settings=None) -> dict:
    """meta/info.json of an episode dataset; its ``env`` entry parses with ``EnvSpec.from_dict``."""
    try:
        raw = storage.get_bytes(storage.join_uri(root, INFO), settings)
    except FileNotFoundError:
        raise FileNotFoundError(f"{root} is not an episode dataset: no {INFO} (write one with `jepa synth mujoco`)") from None
    info = json.loads(raw)
    if info.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{root}: episode format {info.get('format_version')}, this version reads {FORMAT_VERSION}")
    return info


def read_episodes(root: str, settings=None) -> pa.Table:
    return storage.get_table(storage.join_uri(root, EPISODES), settings)
