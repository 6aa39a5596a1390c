"""Where a training run lives: `<checkpoint root>/<run name>/`, holding Ray Train's checkpoints
(`checkpoint_*`, listed in its snapshot once uploaded), `jepa_run.json` (the MLflow run the
training run logs to) and, in every checkpoint, `position.json` (where the data stood)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import ray.train

from pipelines.storage import arrow_location, get_bytes, is_s3, join_uri, parse_uri, put_bytes

RUN_INFO_FILE = "jepa_run.json"
POSITION_FILE = "position.json"
"""In each checkpoint folder: `{"step", "rows", "clips_seen_per_rank", "world_size"}`, tiny, so
the driver finds the resume point without loading a multi-GB train state."""
RAY_SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"
"""Ray Train's list of a run's complete checkpoints, in the run folder."""


def checkpoint_root(configured: str, data_uri: str) -> str:
    """`configured` (`train.checkpoint_uri`), else s3://BUCKET/checkpoints in the bucket the data
    comes from, else ./checkpoints (data in a local folder: one machine only)."""
    if configured:
        return configured
    if is_s3(data_uri):
        return f"s3://{parse_uri(data_uri)[0]}/checkpoints"
    return str(Path("checkpoints").resolve())


@dataclass(frozen=True)
class DataStart:
    """Where an attempt's dataset starts: `rows` input rows over all ranks, which is where each
    rank had seen `clips_seen` clips; a worker skips only what the dataset did not."""

    rows: int = 0
    clips_seen: int = 0

    @classmethod
    def from_position(cls, position: dict[str, Any] | None) -> DataStart:
        if position is None:
            return cls()
        return cls(rows=int(position["rows"]), clips_seen=int(position["clips_seen_per_rank"][0]))


@dataclass(frozen=True)
class RunFolder:
    root: str
    """Checkpoint root: s3://B/P or a local folder."""
    name: str
    """The run's name (`train.run_name`, or `<job>-<MLflow run id>`)."""

    @property
    def uri(self) -> str:
        return join_uri(self.root, self.name)

    def ray_storage(self) -> tuple[str, pafs.FileSystem]:
        """(storage_path, storage_filesystem) for Ray Train's RunConfig; the run is `name` under it."""
        filesystem, path = arrow_location(self.root)
        return path, filesystem

    def mlflow_run_id(self) -> str | None:
        try:
            return json.loads(get_bytes(join_uri(self.uri, RUN_INFO_FILE)))["mlflow_run_id"]
        except FileNotFoundError:
            return None

    def record_mlflow_run(self, run_id: str) -> None:
        put_bytes(join_uri(self.uri, RUN_INFO_FILE), json.dumps({"mlflow_run_id": run_id}).encode())

    def latest_position(self) -> dict[str, Any] | None:
        """POSITION_FILE of the run's latest complete checkpoint, the one Ray Train hands the next
        attempt's workers (`Result.from_path` reads the snapshot, which lists only uploaded
        checkpoints); None if the run has none. Never loads a train state."""
        storage_path, filesystem = self.ray_storage()
        run_path = f"{storage_path}/{self.name}"
        if filesystem.get_file_info(f"{run_path}/{RAY_SNAPSHOT_FILE}").type == pafs.FileType.NotFound:
            return None
        checkpoint = ray.train.Result.from_path(run_path, storage_filesystem=filesystem).checkpoint
        if checkpoint is None:
            return None
        path = f"{checkpoint.path}/{POSITION_FILE}"
        if checkpoint.filesystem.get_file_info(path).type == pafs.FileType.NotFound:
            print(f"[train] {checkpoint.path} has no {POSITION_FILE} (written before positions were "
                  f"recorded): the dataset starts at row 0 and the workers skip what it consumed", flush=True)
            return None
        with checkpoint.filesystem.open_input_stream(path) as f:
            return json.loads(f.read())
