"""`jepa demo --recipe reacher` (`make reacher`): a world model that plans, on DeepMind Control reacher.

On the local stack: record random-exploration episodes, pretrain the frozen encoder on their frames
(configs/reacher.yaml), cut the episodes into windows, train the action-conditioned predictor over
the encoder (configs/reacher-ac.yaml), then `jepa eval plan` beside the random policy and the
simulator-CEM ceiling, and print the table. Steps whose output is already in the bucket are reused.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from infra.config import StackConfig
from infra.stack import Stack
from jepa.config import load_ac_config, load_config
from pipelines import storage


@dataclass
class RecipeSizes:
    episodes: int = 300
    steps: int = 250
    eval_episodes: int = 50


def _stage(title: str, t0: float) -> None:
    print(f"\n=== {title}  (t+{time.perf_counter() - t0:.0f}s)", flush=True)


def run_reacher(encoder_config: str = "configs/reacher.yaml", ac_config: str = "configs/reacher-ac.yaml",
                overrides: list[str] = (), sizes: RecipeSizes | None = None, report: str | None = "reacher-report.md") -> None:
    """``overrides``: ``key=value`` for the encoder's config, ``ac.key=value`` for the AC config."""
    from pipelines.episode_shards import DATASET_JSON, WindowSpec, ingest_episodes
    from pipelines.episodes import is_episode_dataset, read_info
    from pipelines.mujoco_record import RecordConfig, record
    from ray_jobs.eval_plan import evaluate_plan
    from ray_jobs.eval_plan import record as record_plan
    from ray_jobs.pretrain import pretrain
    from ray_jobs.train_ac import train_ac

    sizes = sizes or RecipeSizes()
    t0 = time.perf_counter()
    ac_overrides = [o.removeprefix("ac.") for o in overrides if o.startswith("ac.")]
    enc_cfg = load_config(encoder_config, [o for o in overrides if not o.startswith("ac.")])
    videos = enc_cfg.data.source
    episodes = videos.rstrip("/").rsplit("/", 1)[0]  # the encoder trains on P/videos of episode dataset P

    _stage("local stack: SeaweedFS S3, MLflow server, Ray head", t0)
    stack = Stack(StackConfig())
    stack.up()
    os.environ.update(stack.env())

    _stage(f"record {sizes.episodes} reacher episodes of {sizes.steps} control steps to {episodes}", t0)
    if is_episode_dataset(episodes) and read_info(episodes)["total_episodes"] >= sizes.episodes:
        print(f"{read_info(episodes)['total_episodes']} episodes already in {episodes}; reusing them")
    else:
        from ray_jobs.cluster import connect

        connect()
        record(RecordConfig(env="reacher", episodes=sizes.episodes, steps=sizes.steps, img_size=enc_cfg.model.img_size),
               episodes)

    _stage(f"pretrain the encoder ({encoder_config}, {enc_cfg.train.steps} steps)", t0)
    encoder = pretrain(enc_cfg)

    ac = load_ac_config(ac_config, [*ac_overrides, f"model.encoder={encoder.model_uri}"])
    windows = ac.data.dataset
    spec = WindowSpec(frames=ac.data.frames or WindowSpec.frames)
    _stage(f"episodes -> windows of {spec.frames} agent steps in {windows}", t0)
    try:
        storage.get_bytes(storage.join_uri(windows, DATASET_JSON))
        print(f"windows already in {windows}; reusing them")
    except FileNotFoundError:
        ingest_episodes(episodes, windows, spec)

    _stage(f"train the action-conditioned predictor ({ac_config}, {ac.train.steps} steps)", t0)
    world = train_ac(ac)

    _stage(f"plan toward {sizes.eval_episodes} held-out goals: world model, random, simulator CEM", t0)
    plan, ref = evaluate_plan(world.model_uri, episodes=sizes.eval_episodes)
    record_plan(ref, plan)
    print(plan.table().text())
    if report:
        Path(report).write_text(plan.markdown())
        print(f"\nreport: {report}")
    _stage(f"done: {world.model_uri}", t0)
