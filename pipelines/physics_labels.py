"""Ground-truth probe labels for clips of the synthetic physics world (`pipelines.synth_physics`).

A probe clip is the first `num_frames` frames of a video at `fps` (times k / fps, k < num_frames),
decoded as `pipelines.video.decode_clip(..., start_s=0.0)` does. For each of those times the
sidecar row nearest in time is used (ties go to the later frame, as the decoder's), so the labels
describe exactly the frames the encoder saw:

- ``num_balls`` (classification; the class is the count);
- ``mean_speed``: |v| averaged over balls and the clip's frames, box units / s;
- ``ball0_last_xy``: ball 0's (x, y) at the clip's last frame, box units (x right, y down). Ball 0
  is the red ball, the only one (``pipelines.synth_physics``), so the label names a ball the clip shows.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jepa.probe import ProbeTask
from pipelines import storage

VIDEO_SUFFIX = ".mp4"
SIDECAR_SUFFIX = ".state.parquet"
TASK_NAMES = ("num_balls", "mean_speed", "ball0_last_xy")


@dataclass(frozen=True)
class PhysicsLabels:
    """One clip's ground truth (see the module docstring for units)."""

    num_balls: int
    mean_speed: float
    ball0_last_xy: tuple[float, float]

    def as_dict(self) -> dict:
        return asdict(self)


def sidecar_uri(video_uri: str) -> str:
    """`.../physics_000012.mp4` -> `.../physics_000012.state.parquet`."""
    if not video_uri.endswith(VIDEO_SUFFIX):
        raise ValueError(f"not an {VIDEO_SUFFIX} video: {video_uri!r}")
    return video_uri[: -len(VIDEO_SUFFIX)] + SIDECAR_SUFFIX


def list_physics_videos(dataset_uri: str) -> list[str]:
    """Sorted URIs of the videos under `dataset_uri` (s3:// or local) that have a sidecar; one
    listing for both kinds of object, so it stays a single pass over a large bucket."""
    objects = {obj.uri for obj in storage.list_objects(dataset_uri, (VIDEO_SUFFIX, SIDECAR_SUFFIX))}
    return sorted(uri for uri in objects if uri.endswith(VIDEO_SUFFIX) and sidecar_uri(uri) in objects)


def nearest_frames(frame_times: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Index into sorted `frame_times` (F,) of the time nearest each target (K,), ties to the
    later frame (the decoder's rule); targets past the end get the last frame."""
    after = np.clip(np.searchsorted(frame_times, targets, side="left"), 0, len(frame_times) - 1)  # first >= target
    before = np.clip(after - 1, 0, None)
    use_before = (targets - frame_times[before]) < (frame_times[after] - targets)
    return np.where(use_before, before, after)


def clip_labels(sidecar: dict[str, np.ndarray], num_frames: int, fps: float) -> PhysicsLabels:
    """Labels of the clip of `num_frames` frames at `fps` from t = 0, from a sidecar's columns
    (one row per (frame, ball): frame, t, ball, x, y, vx, vy, ...)."""
    frame, ball = sidecar["frame"].astype(np.int64), sidecar["ball"].astype(np.int64)
    n_frames, n_balls = int(frame.max()) + 1, int(ball.max()) + 1
    if len(frame) != n_frames * n_balls:
        raise ValueError(f"sidecar has {len(frame)} rows, expected {n_frames} frames x {n_balls} balls")

    def grid(column: str) -> np.ndarray:  # (F, balls), whatever the row order
        out = np.empty((n_frames, n_balls), dtype=np.float64)
        out[frame, ball] = sidecar[column]
        return out

    t = np.empty(n_frames, dtype=np.float64)
    t[frame] = sidecar["t"]
    picked = nearest_frames(t, np.arange(num_frames) / fps)  # (num_frames,)
    speed = np.hypot(grid("vx")[picked], grid("vy")[picked])  # (num_frames, balls)
    last = picked[-1]
    return PhysicsLabels(
        num_balls=n_balls,
        mean_speed=float(speed.mean()),
        ball0_last_xy=(float(grid("x")[last, 0]), float(grid("y")[last, 0])),
    )


def sidecar_columns(table: pa.Table) -> dict[str, np.ndarray]:
    """A sidecar table -> {column: array}, as ``clip_labels`` takes it."""
    return {name: table.column(name).to_numpy() for name in table.column_names}


def read_sidecar(data: bytes) -> dict[str, np.ndarray]:
    """Parquet bytes -> {column: array}."""
    return sidecar_columns(pq.read_table(io.BytesIO(data)))


def video_labels(video_uri: str, num_frames: int, fps: float) -> PhysicsLabels:
    """Labels of a video's first clip, read from its sidecar."""
    return clip_labels(read_sidecar(storage.get_bytes(sidecar_uri(video_uri))), num_frames, fps)


def physics_tasks(labels: list[PhysicsLabels]) -> list[ProbeTask]:
    """The three probe tasks; `num_balls` has a class per count up to the largest seen."""
    max_balls = max(label.num_balls for label in labels)
    return [
        ProbeTask("num_balls", "classification", num_classes=max_balls + 1),
        ProbeTask("mean_speed", "regression", dim=1),
        ProbeTask("ball0_last_xy", "regression", dim=2),
    ]


def task_targets(labels: list[PhysicsLabels], task: str) -> np.ndarray:
    """Targets of one task over clips: int64 (n,) for num_balls, float32 (n, dim) otherwise."""
    if task == "num_balls":
        return np.array([label.num_balls for label in labels], dtype=np.int64)
    if task == "mean_speed":
        return np.array([[label.mean_speed] for label in labels], dtype=np.float32).reshape(len(labels), 1)
    if task == "ball0_last_xy":
        return np.array([label.ball0_last_xy for label in labels], dtype=np.float32).reshape(len(labels), 2)
    raise ValueError(f"unknown physics task {task!r}; expected one of {', '.join(TASK_NAMES)}")
