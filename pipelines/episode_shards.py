"""Episode shards: an episode dataset (``pipelines.episodes``) cut into training windows.

An action-conditioned model steps ``frameskip`` control steps at a time, so a window keeps every
``frameskip``-th frame: ``frames`` agent steps, their states, and for each agent step the
``frameskip`` actions applied between it and the next kept frame (flattened, control step major).
Windows start every ``stride`` agent steps of an episode.

Written under ``D/``: ``shards/episodes-NNNNN.parquet`` (the columns below), ``quarantine.parquet``
(episode_index, uri, reason) for episodes that cannot be used, and ``episode_dataset.json`` (the
window spec, the env spec and the counts).

==============  =====================  ===================================================
column          arrow type             meaning
==============  =====================  ===================================================
episode_index   int32                  the episode the window comes from
start           int32                  first agent step of the window
frames          binary                 lossless RGB H.264 MP4 of the ``frames`` kept frames
actions         list<float32>          (frames, frameskip, action_dim), flattened
states          list<float32>          (frames, state_dim), flattened
==============  =====================  ===================================================
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa

from pipelines import storage
from pipelines.av_streams import VideoDecodeError
from pipelines.episodes import EnvSpec, data_uri, read_episodes, read_info, video_uri
from pipelines.ray_tasks import finished
from pipelines.shards import ClipSpec, decode_segment, encode_segment

SHARDS = "shards"
QUARANTINE = "quarantine.parquet"
DATASET_JSON = "episode_dataset.json"
SHARD_SCHEMA = pa.schema([
    ("episode_index", pa.int32()),
    ("start", pa.int32()),
    ("frames", pa.binary()),
    ("actions", pa.list_(pa.float32())),
    ("states", pa.list_(pa.float32())),
])  # fmt: skip


@dataclass(frozen=True)
class WindowSpec:
    frames: int = 8
    """Agent steps per window."""
    stride: int = 1
    """Agent steps between the starts of consecutive windows."""

    def __post_init__(self) -> None:
        if self.frames < 2 or self.stride < 1:
            raise ValueError(f"windows need frames >= 2 and stride >= 1, got {self}")


class BadEpisode(ValueError):
    """An episode that cannot become training windows; the message is its quarantine reason."""


@dataclass
class Window:
    start: int
    frames: np.ndarray  # (T, H, W, 3) uint8
    actions: np.ndarray  # (T, frameskip, A)
    states: np.ndarray  # (T, S)


def check_episode(frames: np.ndarray, table: pa.Table, env: EnvSpec, spec: WindowSpec) -> tuple[np.ndarray, np.ndarray]:
    """(actions (N, A), states (N, S)) of a usable episode, or ``BadEpisode`` saying why not."""
    if len(frames) != table.num_rows:
        raise BadEpisode(f"{len(frames)} video frames but {table.num_rows} data rows")
    actions = np.asarray(table.column("action").to_pylist(), np.float32).reshape(table.num_rows, -1)
    states = np.asarray(table.column("state").to_pylist(), np.float32).reshape(table.num_rows, -1)
    if actions.shape[1] != env.action_dim or states.shape[1] != env.state_dim:
        raise BadEpisode(f"action/state widths {actions.shape[1]}/{states.shape[1]}, env says "
                         f"{env.action_dim}/{env.state_dim}")
    if not (np.isfinite(actions).all() and np.isfinite(states).all()):
        raise BadEpisode("non-finite action or state values")
    low, high = np.asarray(env.action_low), np.asarray(env.action_high)
    if (actions < low - 1e-6).any() or (actions > high + 1e-6).any():
        raise BadEpisode("actions outside the env's action bounds")
    agent_steps = len(frames) // env.frameskip
    if agent_steps < spec.frames:
        raise BadEpisode(f"too short: {agent_steps} agent steps (frameskip {env.frameskip}), a window needs "
                         f"{spec.frames}")
    return actions, states


def episode_windows(frames: np.ndarray, actions: np.ndarray, states: np.ndarray, env: EnvSpec,
                    spec: WindowSpec) -> list[Window]:
    """Every window of a checked episode; a trailing partial agent step is dropped."""
    k = env.frameskip
    agent_steps = len(frames) // k
    kept = frames[: agent_steps * k : k]
    acts = actions[: agent_steps * k].reshape(agent_steps, k, -1)
    sts = states[: agent_steps * k : k]
    return [Window(s, kept[s : s + spec.frames], acts[s : s + spec.frames], sts[s : s + spec.frames])
            for s in range(0, agent_steps - spec.frames + 1, spec.stride)]  # fmt: skip


def window_row(episode_index: int, window: Window, fps: float) -> dict:
    return {
        "episode_index": episode_index,
        "start": window.start,
        "frames": encode_segment(window.frames, ClipSpec(fps=fps), lossless=True),
        "actions": window.actions.reshape(-1).tolist(),
        "states": window.states.reshape(-1).tolist(),
    }


def decode_window(row: dict, env: EnvSpec) -> Window:
    frames = decode_segment(row["frames"])
    t = len(frames)
    return Window(int(row["start"]), frames, np.asarray(row["actions"], np.float32).reshape(t, env.frameskip, -1),
                  np.asarray(row["states"], np.float32).reshape(t, -1))


def shard_episodes(root: str, indices: list[int], out_uri: str, shard: int, env: EnvSpec, spec: WindowSpec,
                   settings=None) -> tuple[int, list[dict]]:
    """Cut episodes ``indices`` of ``root`` into one shard file; returns (rows written, quarantined)."""
    rows, bad = [], []
    fps = env.fps / env.frameskip
    for i in indices:
        video = video_uri(root, i)
        try:
            frames = decode_segment(storage.get_bytes(video, settings))  # every frame: one per data row
            actions, states = check_episode(frames, storage.get_table(data_uri(root, i), settings), env, spec)
        except (BadEpisode, VideoDecodeError, FileNotFoundError, pa.ArrowInvalid, ValueError) as err:
            bad.append({"episode_index": i, "uri": video, "reason": f"{type(err).__name__}: {err}"})
            continue
        rows.extend(window_row(i, w, fps) for w in episode_windows(frames, actions, states, env, spec))
    if rows:
        table = pa.Table.from_pylist(rows, schema=SHARD_SCHEMA)
        table = table.take(np.random.default_rng(shard).permutation(table.num_rows))
        storage.put_table(storage.join_uri(out_uri, SHARDS, f"episodes-{shard:05d}.parquet"), table, settings,
                          row_group_size=256, compression="none")
    return len(rows), bad


def ingest_episodes(root: str, out_uri: str, spec: WindowSpec = WindowSpec(), episodes_per_shard: int = 50,
                    progress: bool = True) -> dict:
    """Shard every episode of ``root`` into ``out_uri`` with Ray tasks; returns episode_dataset.json."""
    import ray

    settings = storage.S3Settings.from_env() if storage.is_s3(root) or storage.is_s3(out_uri) else None
    if storage.is_s3(out_uri):
        storage.ensure_bucket(out_uri, settings)
    info = read_info(root, settings)
    env = EnvSpec.from_dict(info["env"])
    indices = read_episodes(root, settings).column("episode_index").to_pylist()
    groups = [indices[i : i + episodes_per_shard] for i in range(0, len(indices), episodes_per_shard)]
    task = ray.remote(num_cpus=1)(shard_episodes)
    sizes = {task.remote(root, g, out_uri, n, env, spec, settings): len(g) for n, g in enumerate(groups)}
    windows, shards, quarantined = 0, 0, []
    for _, (n, bad) in finished(sizes, "episodes -> shards", "episode", progress):
        windows, shards, quarantined = windows + n, shards + (n > 0), quarantined + bad
    q = pa.Table.from_pylist(quarantined, schema=pa.schema([("episode_index", pa.int32()), ("uri", pa.string()),
                                                             ("reason", pa.string())]))
    storage.put_table(storage.join_uri(out_uri, QUARANTINE), q, settings)
    summary = {"source": root, "window": asdict(spec), "env": env.as_dict(), "episodes": len(indices),
               "quarantined": len(quarantined), "windows": windows, "shards": shards}
    storage.put_bytes(storage.join_uri(out_uri, DATASET_JSON), json.dumps(summary, indent=2).encode(), settings)
    return summary
