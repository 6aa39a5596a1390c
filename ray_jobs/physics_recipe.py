"""`jepa demo --recipe physics` (`make physics`): does the model understand physics?

On the local stack: synthesise training videos, held-out violation pairs and held-out probe videos
(three seeds, so no scene is shared), pretrain with configs/physics.yaml, then run both
evaluations and print their tables. Every figure lands in MLflow (experiment jepa-eval) too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from jepa.config import load_config
from pipelines.direct_clips import list_videos
from pipelines.physics_labels import sidecar_uri
from pipelines.physics_pairs import PAIRS_METADATA_KEY, read_pairs, synthesize_pairs
from pipelines.storage import get_bytes, join_uri, list_objects
from pipelines.synth_physics import GENERATOR_VERSION, PhysicsConfig, recorded_world, synthesize, world_as_json
from ray_jobs.stages import Stages, local_stack

WORLD = PhysicsConfig(size=64, fps=16, seconds=4.0, background="plain", max_balls=3, radius_range=(0.08, 0.13))
"""The recipe's world, rendered at the model's 64 px (decoding does not downscale): plain
backgrounds and at most three larger balls, so that what a CPU-sized model has to learn is the
balls' motion rather than texture."""


SURPRISE_SCORE_STEPS = 1
"""Token time steps of each window's prediction that the recipe's surprise scores: the first, the
one the predictor gets most nearly right, so a broken law stands out most (bench/NOTES.md)."""


@dataclass
class RecipeSizes:
    train_videos: int = 1000
    pairs_per_type: int = 200
    probe_videos: int = 1500


def _synth_once(uri: str, n: int, seed: int) -> None:
    videos = list_videos(uri)
    if len(videos) >= n:
        table = pq.read_table(pa.BufferReader(get_bytes(sidecar_uri(videos[0]))))
        _check_reusable(uri, *recorded_world(table))
        print(f"{len(videos)} videos already in {uri}; reusing them")
    else:
        synthesize(n, uri, seed=seed, cfg=WORLD)


def _check_reusable(uri: str, generator: int, world: dict) -> None:
    """Reuse only data this generator would make for the recipe's world: stale videos (e.g. from
    before ball 0 was red) would give other figures, and probe labels naming no visible ball."""
    if generator != GENERATOR_VERSION or world != world_as_json(WORLD):
        what = (f"generator version {generator}, this code writes {GENERATOR_VERSION}" if generator != GENERATOR_VERSION
                else "another world config than the recipe's")
        raise ValueError(f"{uri} holds physics data made by {what}: delete it (the recipe then synthesises "
                         f"afresh) or point data.source elsewhere")


def run_physics(config: str = "configs/physics.yaml", overrides: list[str] = (), sizes: RecipeSizes | None = None,
                report: str | None = "physics-report.md") -> None:
    from ray_jobs.eval_probe import evaluate_probes
    from ray_jobs.eval_probe import record as record_probe
    from ray_jobs.eval_runs import load_evaluated_model
    from ray_jobs.eval_surprise import evaluate_surprise
    from ray_jobs.eval_surprise import record as record_surprise
    from ray_jobs.pretrain import pretrain

    sizes = sizes or RecipeSizes()
    stage = Stages()
    cfg = load_config(config, list(overrides))
    root = cfg.data.source.rsplit("/", 1)[0]
    pairs_uri, probe_uri = join_uri(root, "pairs"), join_uri(root, "probe")

    stage("local stack: SeaweedFS S3, MLflow server, Ray head")
    local_stack()

    stage(f"synthesise {sizes.train_videos} training videos, {sizes.pairs_per_type} pairs per type, "
           f"{sizes.probe_videos} probe videos")
    _synth_once(cfg.data.source, sizes.train_videos, seed=cfg.train.seed)
    _synth_once(probe_uri, sizes.probe_videos, seed=cfg.train.seed + 2)
    if any(list_objects(pairs_uri, suffixes=("pairs.parquet",))):
        _check_reusable(pairs_uri, *recorded_world(read_pairs(pairs_uri), PAIRS_METADATA_KEY))
        print(f"pairs already in {pairs_uri}; reusing them")
    else:
        synthesize_pairs(sizes.pairs_per_type, pairs_uri, seed=cfg.train.seed + 1, cfg=WORLD)

    stage(f"pretrain {cfg.model.arch} for {cfg.joint_steps} steps, then its predictor alone for "
          f"{cfg.predictor_stage.steps} ({cfg.train.num_workers} Ray Train workers)")
    result = pretrain(cfg)
    evaluated = load_evaluated_model(result.model_uri)

    stage(f"surprise on {pairs_uri}")
    surprise = evaluate_surprise(evaluated, pairs_uri, score_steps=SURPRISE_SCORE_STEPS, precision=cfg.train.precision)
    record_surprise(evaluated, surprise)
    print(surprise.table().text())

    stage(f"attentive probes on {probe_uri}")
    probes = evaluate_probes(evaluated, probe_uri)
    record_probe(evaluated, probes)
    print(probes.table().text())

    if report:
        Path(report).write_text(surprise.markdown() + "\n" + probes.markdown())
        print(f"\nreport: {report}")
    stage(f"done: {result.model_uri}")
