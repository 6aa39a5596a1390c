"""`jepa demo --recipe reacher` (`make reacher`): a world model that plans, on DeepMind Control reacher.

On the local stack: record random-exploration episodes, pretrain the frozen encoder on their frames
(configs/reacher.yaml), cut the episodes into windows, train the action-conditioned predictor over
the encoder (configs/reacher-ac.yaml), then `jepa eval plan` beside the random policy and the
simulator-CEM ceiling, and print the table. Steps whose output is already in the bucket are reused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from jepa.config import load_ac_config, load_config
from pipelines import manifest, storage
from ray_jobs.stages import Stages, local_stack


@dataclass
class RecipeSizes:
    episodes: int = 300
    steps: int = 250
    eval_episodes: int = 50


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
    stage = Stages()
    ac_overrides = [o.removeprefix("ac.") for o in overrides if o.startswith("ac.")]
    enc_cfg = load_config(encoder_config, [o for o in overrides if not o.startswith("ac.")])
    videos = enc_cfg.data.source
    episodes = videos.rstrip("/").rsplit("/", 1)[0]  # the encoder trains on P/videos of episode dataset P

    stage("local stack: SeaweedFS S3, MLflow server, Ray head")
    local_stack()

    stage(f"record {sizes.episodes} reacher episodes of {sizes.steps} control steps to {episodes}")
    have = 0
    if is_episode_dataset(episodes):
        try:
            have = read_info(episodes)["total_episodes"]
        except ValueError as e:  # an older format (lossy videos): record again
            print(f"{e}; recording again")
    recorded = have < sizes.episodes
    if not recorded:
        print(f"{have} episodes already in {episodes}; reusing them")
    else:
        from ray_jobs.cluster import connect

        connect()
        record(RecordConfig(env="reacher", episodes=sizes.episodes, steps=sizes.steps, img_size=enc_cfg.model.img_size),
               episodes)

    stage(f"pretrain the encoder ({encoder_config}, {enc_cfg.train.steps} steps)")
    encoder = pretrain(enc_cfg)

    ac = load_ac_config(ac_config, [*ac_overrides, f"model.encoder={encoder.model_uri}"])
    windows = ac.data.dataset
    spec = WindowSpec(frames=ac.data.frames or WindowSpec.frames)
    stage(f"episodes -> windows of {spec.frames} agent steps in {windows}")
    if recorded:  # windows cut from the episodes recorded before, if any, are stale
        manifest.delete(windows)
    if manifest.exists(storage.join_uri(windows, DATASET_JSON)):
        print(f"windows already in {windows}; reusing them")
    else:
        ingest_episodes(episodes, windows, spec)

    stage(f"train the action-conditioned predictor ({ac_config}, {ac.train.steps} steps)")
    world = train_ac(ac)

    stage(f"plan toward {sizes.eval_episodes} held-out goals: world model, random, simulator CEM")
    plan, ref = evaluate_plan(world.model_uri, episodes=sizes.eval_episodes)
    record_plan(ref, plan)
    print(plan.table().text())
    if report:
        Path(report).write_text(plan.markdown())
        print(f"\nreport: {report}")
    stage(f"done: {world.model_uri}")
