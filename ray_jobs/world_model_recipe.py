"""`jepa demo --recipe reacher|point-mass` (`make reacher`, `make point-mass`): a world model that
plans, on a DeepMind Control environment.

On the local stack: record random-exploration episodes, pretrain the frozen encoder on their frames
(configs/RECIPE.yaml), cut the episodes into windows, train the action-conditioned predictor over
the encoder (configs/RECIPE-ac.yaml), then `jepa eval plan` beside the random policy and the
simulator-CEM ceiling, and print the table. Steps whose output is already in the bucket are reused.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from jepa.config import load_ac_config, load_config
from pipelines import manifest, storage
from ray_jobs.stages import Stages, local_stack


@dataclass
class RecipeSizes:
    episodes: int | None = None
    """None: the recipe's own count (EPISODES)."""
    steps: int = 250
    eval_episodes: int = 50


RECIPES = {"reacher": "reacher", "point-mass": "point_mass"}
"""``jepa demo --recipe`` name -> the recorder's env; its configs are configs/NAME.yaml and NAME-ac.yaml."""

EPISODES = {"reacher": 600, "point-mass": 300}
"""Episodes each recipe records. Reacher's predictor overfit 300 (bench/NOTES.md, 2026-12-05)."""


def run_world_model(recipe: str = "reacher", encoder_config: str | None = None, ac_config: str | None = None,
                    overrides: list[str] = (), sizes: RecipeSizes | None = None, report: str | None = None) -> None:
    """``overrides``: ``key=value`` for the encoder's config, ``ac.key=value`` for the AC config."""
    from pipelines.episode_shards import DATASET_JSON, WindowSpec, ingest_episodes
    from pipelines.episodes import is_episode_dataset, read_info
    from pipelines.mujoco_record import RecordConfig, record
    from ray_jobs.eval_plan import evaluate_plan
    from ray_jobs.eval_plan import record as record_plan
    from ray_jobs.pretrain import pretrain
    from ray_jobs.train_ac import train_ac

    env = RECIPES[recipe]
    encoder_config, ac_config = encoder_config or f"configs/{recipe}.yaml", ac_config or f"configs/{recipe}-ac.yaml"
    sizes = sizes or RecipeSizes()
    n_episodes = sizes.episodes or EPISODES[recipe]
    stage = Stages()
    ac_overrides = [o.removeprefix("ac.") for o in overrides if o.startswith("ac.")]
    enc_cfg = load_config(encoder_config, [o for o in overrides if not o.startswith("ac.")])
    videos = enc_cfg.data.source
    episodes = videos.rstrip("/").rsplit("/", 1)[0]  # the encoder trains on P/videos of episode dataset P

    stage("local stack: SeaweedFS S3, MLflow server, Ray head")
    local_stack()

    stage(f"record {n_episodes} {env} episodes of {sizes.steps} control steps to {episodes}")
    have = 0
    if is_episode_dataset(episodes):
        try:
            have = read_info(episodes)["total_episodes"]
        except ValueError as e:  # an older format (lossy videos): record again
            print(f"{e}; recording again")
    recorded = have < n_episodes
    if not recorded:
        print(f"{have} episodes already in {episodes}; reusing them")
    else:
        from ray_jobs.cluster import connect

        connect()
        record(RecordConfig(env=env, episodes=n_episodes, steps=sizes.steps, img_size=enc_cfg.model.img_size),
               episodes)

    stage(f"pretrain the encoder ({encoder_config}, {enc_cfg.train.steps} steps)")
    encoder = pretrain(enc_cfg)

    ac = load_ac_config(ac_config, [*ac_overrides, f"model.encoder={encoder.model_uri}"])
    windows = ac.data.dataset
    spec = WindowSpec(frames=ac.data.frames or WindowSpec.frames)
    stage(f"episodes -> windows of {spec.frames} agent steps in {windows}")
    summary = storage.join_uri(windows, DATASET_JSON)
    cut = json.loads(storage.get_bytes(summary)) if manifest.exists(summary) else None
    if cut is not None and not recorded and cut.get("source") == episodes and cut.get("window") == asdict(spec):
        print(f"windows already in {windows}; reusing them")
    else:  # none yet, or cut from other episodes or to another length
        manifest.delete(windows)
        ingest_episodes(episodes, windows, spec)

    stage(f"train the action-conditioned predictor ({ac_config}, {ac.train.steps} steps)")
    world = train_ac(ac)

    stage(f"plan toward {sizes.eval_episodes} held-out goals: world model, random, simulator CEM")
    plan, ref = evaluate_plan(world.model_uri, episodes=sizes.eval_episodes)
    record_plan(ref, plan)
    print(plan.table().text())
    report = f"{recipe}-report.md" if report is None else report
    if report:
        Path(report).write_text(plan.markdown())
        print(f"\nreport: {report}")
    stage(f"done: {world.model_uri}")
