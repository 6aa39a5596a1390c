"""The `jepa` console script: one entry point, a subcommand per workflow.

Heavy imports (torch, ray, mlflow) happen inside each command; only the dataclasses that give the
flags their defaults load with the parser. A user error (bad config, input, URI or model name, no
cluster) prints one line and exits with code 2; a bug still shows its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys


class UsageError(Exception):
    """A command-line value the user has to change; the message says which."""


def _user_errors() -> tuple[type[Exception], ...]:
    from infra.processes import ServiceError
    from jepa.config import ConfigError
    from pipelines.ingest import IngestError
    from pipelines.storage import URIError
    from pipelines.training_data import DatasetTooSmall
    from requests import ConnectionError as Unreachable

    from ray_jobs.client import ApiError
    from ray_jobs.cluster import ClusterError
    from ray_jobs.tracking import RegistryError

    return (UsageError, ConfigError, FileNotFoundError, URIError, IngestError, DatasetTooSmall, ClusterError,
            RegistryError, ServiceError, ApiError, Unreachable)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("jepa-ray")
    except PackageNotFoundError:  # a checkout on PYTHONPATH (e.g. `ray job submit --working-dir .`)
        return "unknown (not installed)"


def _synth_physics(args: argparse.Namespace) -> None:
    from pipelines.synth_physics import PhysicsConfig, synthesize

    cfg = PhysicsConfig(size=args.size, fps=args.fps, seconds=args.seconds)
    if args.videos is not None:
        written = synthesize(args.videos, args.out, seed=args.seed, cfg=cfg)
        print(f"wrote {len(written)} videos (+ state sidecars) to {args.out}")
        return
    from pipelines.physics_pairs import PAIR_TYPES, onset_window, synthesize_pairs, type_config

    types = [t.strip() for t in args.types.split(",") if t.strip()]
    unknown = sorted(set(types) - set(PAIR_TYPES))
    if unknown or not types:
        raise UsageError(f"--types: unknown {unknown or 'empty list'}; choose from {','.join(PAIR_TYPES)}")
    if args.pairs < 1:
        raise UsageError(f"--pairs must be >= 1, got {args.pairs}")
    try:
        for t in types:
            onset_window(type_config(cfg, t))
    except ValueError as err:
        raise UsageError(str(err)) from None
    table = synthesize_pairs(args.pairs, args.out, seed=args.seed, cfg=cfg, types=types)
    print(f"wrote {table.num_rows} pairs ({args.pairs} each of {','.join(types)}; 2 videos + 2 state sidecars each) "
          f"and pairs.parquet to {args.out}")


def _synth_mujoco(args: argparse.Namespace) -> None:
    from pipelines.mujoco_record import RecordConfig, record
    from ray_jobs.cluster import connect

    try:
        cfg = RecordConfig(env=args.env, episodes=args.episodes, steps=args.steps, frameskip=args.frameskip,
                           img_size=args.img_size, seed=args.seed)
    except ValueError as err:
        raise UsageError(str(err)) from None
    connect()
    episodes = record(cfg, args.out, progress=not args.no_progress)
    frames = sum(episodes.column("n_frames").to_pylist())
    print(f"wrote {episodes.num_rows} {cfg.env} episodes ({frames} frames; MP4 + per-frame action/state/reward "
          f"parquet each) and meta/ to {args.out}")


def _ingest_episodes(args: argparse.Namespace) -> None:
    from pipelines.episode_shards import WindowSpec, ingest_episodes
    from ray_jobs.cluster import connect

    try:
        spec = WindowSpec(frames=args.frames or WindowSpec.frames, stride=args.stride)
    except ValueError as err:
        raise UsageError(str(err)) from None
    connect()
    summary = ingest_episodes(args.source, args.dataset, spec, episodes_per_shard=args.batch_objects,
                              progress=not args.no_progress)
    print(f"{summary['episodes']} episodes -> {summary['windows']} windows of {spec.frames} agent steps in "
          f"{summary['shards']} shards; {summary['quarantined']} quarantined ({args.dataset}/quarantine.parquet)")


def _ingest(args: argparse.Namespace) -> None:
    from pipelines.episodes import is_episode_dataset
    from pipelines.ingest import check_access, ingest
    from pipelines.shards import ClipSpec
    from ray_jobs.cluster import connect

    if args.batch_objects < 1:
        raise UsageError(f"--batch-objects must be >= 1, got {args.batch_objects}")
    if is_episode_dataset(args.source):
        return _ingest_episodes(args)
    try:
        spec = ClipSpec(fps=args.fps, short_side=args.short_side, frames=args.frames or ClipSpec.frames)
    except ValueError as err:
        raise UsageError(str(err)) from None
    suffixes = tuple(f".{s.strip().lstrip('.').lower()}" for s in args.suffixes.split(",") if s.strip())
    check_access(args.source, args.dataset)  # before Ray starts: fail in a second, not ten
    connect()
    report = ingest(args.source, args.dataset, spec, progress=not args.no_progress,
                    batch_objects=args.batch_objects, suffixes=suffixes)
    print(report.summary())


def _pretrain(args: argparse.Namespace) -> None:
    from jepa.config import load_config
    from ray_jobs.pretrain import pretrain
    from ray_jobs.tracking import run_url

    overrides = [*args.overrides, *([f"train.run_name={args.run_name}"] if args.run_name else [])]
    cfg = load_config(args.config, overrides)
    result = pretrain(cfg)
    print(f"registered {result.model_uri} (@{cfg.tracking.alias}); run {run_url(result.run_id)}")


def _train_ac(args: argparse.Namespace) -> None:
    from jepa.config import load_ac_config
    from ray_jobs.tracking import run_url
    from ray_jobs.train_ac import train_ac

    overrides = [*args.overrides, *([f"train.run_name={args.run_name}"] if args.run_name else [])]
    cfg = load_ac_config(args.config, overrides)
    result = train_ac(cfg)
    print(f"registered {result.model_uri} (@{cfg.tracking.alias}); run {run_url(result.run_id)}")


def _ensemble(args: argparse.Namespace) -> None:
    from ray_jobs.ensemble import register_ensemble, save_ensemble
    from ray_jobs.tracking import run_url

    if (args.register is None) == (args.out is None):
        raise UsageError("give one of --register NAME (the MLflow registry) or --out FOLDER")
    try:
        if args.out:
            print(f"wrote the ensemble of {len(args.models)} world models to {save_ensemble(args.models, args.out)}")
            return
        run_id, version = register_ensemble(args.models, args.register, args.alias, args.experiment)
    except ValueError as err:  # members that cannot plan together
        raise UsageError(str(err)) from err
    print(f"registered models:/{args.register}/{version} (@{args.alias}); run {run_url(run_id)}")


def _eval_output(args: argparse.Namespace, evaluated, report, record) -> None:
    """What every `jepa eval` command prints and writes: a table (or --json), --report, MLflow."""
    import contextlib
    from pathlib import Path

    from ray_jobs.tracking import run_url

    with contextlib.redirect_stdout(sys.stderr):  # MLflow prints run links: keep stdout for the result
        run_id = None if args.no_mlflow else record(evaluated, report)
    if args.report:
        Path(args.report).write_text(report.markdown())
    if args.json:
        print(json.dumps(report.as_dict() | {"mlflow_run_id": run_id}, indent=2))
        return
    print(report.markdown().split("\n\n", 1)[1].rstrip())
    if run_id:
        print(f"\nMLflow evaluation run: {run_url(run_id)}")


def _eval_surprise(args: argparse.Namespace) -> None:
    from ray_jobs.eval_runs import load_evaluated_model
    from jepa.surprise import surprise_mask
    from ray_jobs.eval_surprise import evaluate_surprise, record

    if args.max_pairs is not None and args.max_pairs < 1:
        raise UsageError(f"--max-pairs must be >= 1, got {args.max_pairs}")
    if args.stride_frames is not None and args.stride_frames < 1:
        raise UsageError(f"--stride-frames must be >= 1, got {args.stride_frames}")
    evaluated = load_evaluated_model(args.model)
    steps = evaluated.model.token_grid[0]
    predicted = steps - surprise_mask(evaluated.cfg.masks, steps)[1]
    if args.score_steps is not None and not 0 < args.score_steps <= predicted:
        raise UsageError(f"--score-steps must be in 1..{predicted} (the token time steps this model predicts), "
                         f"got {args.score_steps}")
    if args.score == "nll" and evaluated.model.predictor.log_scale is None:
        raise UsageError(f"--score nll needs error scales, and {args.model} was trained without them "
                         f"(model.pred_error_scale: false); use --score l1")
    report = evaluate_surprise(evaluated, args.pairs, max_pairs=args.max_pairs, stride_frames=args.stride_frames,
                               score_steps=args.score_steps, score=args.score, precision=args.precision,
                               progress=not args.no_progress)
    _eval_output(args, evaluated, report, record)


def _eval_plan(args: argparse.Namespace) -> None:
    from ray_jobs.cluster import connect
    from ray_jobs.eval_plan import POLICIES, evaluate_plan, record

    if args.episodes < 1:
        raise UsageError(f"--episodes must be >= 1, got {args.episodes}")
    policies = tuple(p.strip() for p in args.policies.split(",") if p.strip())
    if not policies or set(policies) - set(POLICIES):
        raise UsageError(f"--policies: choose from {','.join(POLICIES)}, got {args.policies!r}")
    planner = {k: v for k, v in {"samples": args.samples, "elites": args.elites, "iterations": args.iterations,
                                 "horizon": args.horizon, "replan_every": args.replan_every,
                                 "select": args.select, "energy": args.energy,
                                 "state_weight": args.state_weight}.items() if v is not None}
    connect()
    try:
        report, ref = evaluate_plan(args.model, env=args.env, episodes=args.episodes, policies=policies,
                                    planner=planner, progress=not args.no_progress, seed_base=args.seed_base,
                                    url=args.url)
    except ValueError as err:  # not an action-conditioned model, another env, a bad planner setting
        raise UsageError(str(err)) from None
    _eval_output(args, ref, report, record)


def _eval_probe(args: argparse.Namespace) -> None:
    from ray_jobs.eval_probe import evaluate_probes, record
    from ray_jobs.eval_runs import load_evaluated_model

    evaluated = load_evaluated_model(args.model)
    report = evaluate_probes(evaluated, args.dataset, max_videos=args.max_videos, progress=not args.no_progress)
    _eval_output(args, evaluated, report, record)


def _config(args: argparse.Namespace) -> None:
    from ray_jobs.config_reference import reference_markdown, resolved_yaml

    print(reference_markdown() if args.reference else resolved_yaml(args.config, args.overrides), end="")


def _serve_deploy(args: argparse.Namespace) -> None:
    from ray_jobs.serve_app import deploy
    from ray_jobs.serve_config import load_serve_config

    url = deploy(args.model, load_serve_config(args.config, args.overrides))
    print(f"serving {args.model} at {url} (GET {url}/healthz, POST {url}/v1/embed, POST {url}/v1/surprise)")


def _client(args: argparse.Namespace):
    from ray_jobs.client import JepaClient

    return JepaClient(args.url)


def _embed(args: argparse.Namespace) -> None:
    answer = _client(args).embed(args.file, start_s=args.start_s)
    if args.json:
        print(json.dumps(answer))
        return
    head = ", ".join(f"{v:.4f}" for v in answer["embedding"][:6])
    print(f"{answer['model']}: {answer['dim']}-dim embedding [{head}, ...] in {answer['latency_ms']} ms")


def _surprise(args: argparse.Namespace) -> None:
    from pipelines.storage import is_s3

    client = _client(args)
    if is_s3(args.video):
        answer = client.surprise(uri=args.video, stride_frames=args.stride_frames)
    else:
        answer = client.surprise(args.video, stride_frames=args.stride_frames)
    if args.json:
        print(json.dumps(answer))
        return
    print(f"{answer['model']}: windows of {answer['window_frames']} frames at {answer['fps']:g} fps, "
          f"{answer['context_frames']} of context ({answer['mask']} mask)")
    print(f"{'from frame':>10}  {'t (s)':>6}  surprise")
    for frame, value in zip(answer["predicted_from_frame"], answer["surprise"]):
        print(f"{frame:>10}  {frame / answer['fps']:>6.2f}  {value:.4f}")
    print(f"max {answer['max']:.4f}, mean {answer['mean']:.4f}" + ("  (video truncated)" if answer["truncated"] else ""))


def _serve_reload(args: argparse.Namespace) -> None:
    from ray_jobs.serve_app import reload
    from ray_jobs.serve_config import load_serve_config

    cfg = load_serve_config(args.config, []) if args.config else None
    before, now = reload(cfg)
    model = f"{now['name']} ({now['uri']})"
    if before["version"] == now["version"]:
        print(f"{model}: still version {now['version']}" + ("; config updated" if cfg else ""))
    else:
        print(f"{model}: version {before['version']} -> {now['version']} on every replica")


def _serve_status(args: argparse.Namespace) -> None:
    from ray import serve

    from ray_jobs.cluster import connect, require_cluster

    require_cluster("read the Serve status")
    connect()
    def name(state) -> str:  # Serve's states are str enums, whose str() is "Class.MEMBER"
        return getattr(state, "value", str(state))

    applications = {
        app_name: {"status": name(app.status),
                   "deployments": {dep_name: {"status": name(dep.status),
                                              "replicas": {name(k): n for k, n in dep.replica_states.items()},
                                              "message": dep.message} for dep_name, dep in app.deployments.items()}}
        for app_name, app in serve.status().applications.items()
    }  # fmt: skip
    if args.json:
        print(json.dumps(applications, indent=2))
        return
    if not applications:
        print("no Serve application is running")
    for name, app in applications.items():
        print(f"{name}: {app['status']}")
        for dep_name, dep in app["deployments"].items():
            print(f"  {dep_name}: {dep['status']} replicas={dep['replicas']} {dep['message']}".rstrip())


def _models_promote(args: argparse.Namespace) -> None:
    from ray_jobs.tracking import promote

    previous = promote(args.name, args.version, alias=args.alias)
    was = f"previous @{args.alias}: v{previous}" if previous is not None else f"no previous @{args.alias}"
    print(f"models:/{args.name}@{args.alias} -> v{args.version} ({was})")


def _models_list(args: argparse.Namespace) -> None:
    from datetime import datetime, timezone

    from ray_jobs.tracking import list_versions

    versions = list_versions(args.name)
    if args.json:
        print(json.dumps(versions, indent=2))
        return
    print(f"{'version':>7}  {'aliases':<22} {'run_id':<32}  created (UTC)     status")
    for v in versions:
        created = datetime.fromtimestamp(v["created_ms"] / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M")
        aliases = ",".join(f"@{a}" for a in v["aliases"]) or "-"
        print(f"{v['version']:>7}  {aliases:<22} {v['run_id'] or '-':<32}  {created}  {v['status']}")


def _demo(args: argparse.Namespace) -> None:
    if args.recipe == "physics":
        from ray_jobs.physics_recipe import run_physics

        run_physics(config=args.config or "configs/physics.yaml", overrides=args.overrides,
                    report=args.report or "physics-report.md")
        return
    if args.recipe in ("reacher", "point-mass"):
        from ray_jobs.world_model_recipe import RecipeSizes, run_world_model

        if (args.episodes is not None and args.episodes < 1) or args.eval_episodes < 1:
            raise UsageError("--episodes and --eval-episodes must be >= 1")
        run_world_model(args.recipe, encoder_config=args.config, overrides=args.overrides,
                        sizes=RecipeSizes(episodes=args.episodes, eval_episodes=args.eval_episodes),
                        report=args.report)
        return
    from ray_jobs.demo import run_demo

    run_demo(videos=args.videos, config=args.config or "configs/tiny.yaml", overrides=args.overrides)


def build_parser() -> argparse.ArgumentParser:
    from infra.cli import add_stack_parser

    parser = argparse.ArgumentParser(prog="jepa", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_stack_parser(sub)
    for add in (_add_synth, _add_ingest, _add_pretrain, _add_train_ac, _add_ensemble, _add_eval, _add_config, _add_serve, _add_client,
                _add_models, _add_demo):
        add(sub)
    return parser


def _add_synth(sub) -> None:
    from pipelines.physics_pairs import DEFAULT_ONSET_RANGE_S, PAIR_TYPES
    from pipelines.synth_physics import PhysicsConfig

    synth = sub.add_parser("synth", help="generate synthetic training worlds")
    synth_sub = synth.add_subparsers(dest="world", required=True, metavar="WORLD")
    physics = synth_sub.add_parser("physics", help="balls under gravity with collisions and occluders",
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    world = PhysicsConfig()
    what = physics.add_mutually_exclusive_group(required=True)
    what.add_argument("--videos", type=int, help="number of videos (training data)")
    lo, hi = DEFAULT_ONSET_RANGE_S
    what.add_argument("--pairs", type=int,
                      help=f"matched possible/impossible video pairs per type, for surprise evaluation; the "
                           f"violation starts at {lo}-{hi} s, so videos need ~0.5 s more (docs/physics-pairs.md)")
    physics.add_argument("--types", default=",".join(PAIR_TYPES), help="with --pairs: comma-separated pair types")
    physics.add_argument("--out", required=True, help="s3://BUCKET/PREFIX or a local folder")
    physics.add_argument("--seed", type=int, default=0, help="the same seed gives the same videos")
    physics.add_argument("--size", type=int, default=world.size, help="frame side in pixels")
    physics.add_argument("--fps", type=int, default=world.fps, help="frames per second")
    physics.add_argument("--seconds", type=float, default=world.seconds, help="duration of each video")
    physics.set_defaults(func=_synth_physics)

    from pipelines.mujoco_record import ENVS, RecordConfig

    rec = RecordConfig()
    mujoco = synth_sub.add_parser("mujoco", help="DeepMind Control episodes: random exploration with actions and "
                                                 "states (docs/episodes.md)",
                                  formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    mujoco.add_argument("--env", choices=list(ENVS), default=rec.env, help="environment")
    mujoco.add_argument("--episodes", type=int, required=True, help="number of episodes")
    mujoco.add_argument("--out", required=True, help="s3://BUCKET/PREFIX or a local folder")
    mujoco.add_argument("--steps", type=int, default=rec.steps, help="control steps (frames) per episode")
    mujoco.add_argument("--frameskip", type=int, default=rec.frameskip,
                        help="control steps each random action is held (one agent step)")
    mujoco.add_argument("--img-size", type=int, default=rec.img_size, help="rendered frame side in pixels")
    mujoco.add_argument("--seed", type=int, default=rec.seed, help="the same seed gives the same episodes")
    mujoco.add_argument("--no-progress", action="store_true", help="no progress bar")
    mujoco.set_defaults(func=_synth_mujoco)


def _add_ingest(sub) -> None:
    from pipelines.episode_shards import WindowSpec
    from pipelines.ingest import BATCH_OBJECTS, VIDEO_SUFFIXES
    from pipelines.shards import ClipSpec

    ing = sub.add_parser("ingest", help="probe, quarantine and transcode a bucket of video into a training dataset",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    spec = ClipSpec()
    ing.add_argument("source", metavar="SOURCE",
                     help="s3://BUCKET/PREFIX or a local folder of videos, or an episode dataset (`jepa synth "
                          "mujoco`; it has meta/info.json), which becomes windows of frames with their actions")
    ing.add_argument("--dataset", required=True, help="s3://BUCKET/datasets/NAME or a local folder")
    ing.add_argument("--fps", type=float, default=spec.fps, help="frame rate of the training segments")
    ing.add_argument("--short-side", type=int, default=spec.short_side,
                     help="short side of stored frames in pixels (even)")
    ing.add_argument("--frames", type=int,
                     help=f"frames per training segment (default {spec.frames}); for episodes, agent steps per "
                          f"window (default {WindowSpec.frames})")
    ing.add_argument("--stride", type=int, default=WindowSpec.stride,
                     help="episodes only: agent steps between the starts of consecutive windows")
    ing.add_argument("--batch-objects", type=int, default=BATCH_OBJECTS,
                     help="objects (or episodes) per Ray task, and so per shard file")
    ing.add_argument("--suffixes", default=",".join(VIDEO_SUFFIXES),
                     help="comma-separated file suffixes to ingest; other objects are ignored")
    ing.add_argument("--no-progress", action="store_true", help="no progress bars (logs, CI)")
    ing.set_defaults(func=_ingest)


def _add_train_ac(sub) -> None:
    ac = sub.add_parser("train-ac", help="action-conditioned predictor on a frozen encoder, from episodes (Ray Train DDP)",
                        description="Post-train an action-conditioned predictor (a world model that plans) on "
                                    "episode windows over a frozen registered encoder; registers encoder + "
                                    "predictor + env spec as one model (docs/world-model.md).")
    ac.add_argument("--config", required=True, help="YAML config, e.g. configs/reacher-ac.yaml")
    ac.add_argument("--run-name", metavar="NAME", help="the run's name: relaunching with NAME resumes it")
    ac.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.steps=50")
    ac.set_defaults(func=_train_ac)


def _add_ensemble(sub) -> None:
    ens = sub.add_parser("ensemble", help="join world models trained apart into one that plans with their average",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                         description="Join `jepa train-ac` models over the same encoder (e.g. trained with "
                                     "different train.seed) into one world model whose predictor averages "
                                     "theirs; `jepa eval plan` and `jepa serve deploy` take it like any other "
                                     "(docs/world-model.md).")
    ens.add_argument("models", nargs="+", metavar="MODEL",
                     help="world models: models:/NAME@ALIAS, models:/NAME/VERSION or a folder (2 or more)")
    ens.add_argument("--register", metavar="NAME", help="register the ensemble as this model in MLflow")
    ens.add_argument("--out", metavar="FOLDER", help="write the ensemble's model folder here instead")
    ens.add_argument("--alias", default="candidate", help="alias of the registered version")
    ens.add_argument("--experiment", default="jepa-ac", help="MLflow experiment of the run that registers it")
    ens.set_defaults(func=_ensemble)


def _add_pretrain(sub) -> None:
    pre = sub.add_parser("pretrain", help="V-JEPA pretraining with Ray Train (DDP), tracked in MLflow")
    pre.add_argument("--config", required=True, help="YAML run config, e.g. configs/tiny.yaml")
    pre.add_argument("--run-name", metavar="NAME",
                     help="the run's name, same as train.run_name=NAME: its checkpoint folder and MLflow run "
                          "name; relaunching with the same name resumes the run (default: a new run each time)")
    pre.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.steps=50")
    pre.set_defaults(func=_pretrain)


def _add_eval(sub) -> None:
    import typing

    from jepa.config import PlanEnergy, PlanSelect, Precision

    ev = sub.add_parser("eval", help="what a trained model learned: surprise on violation pairs, frozen probes")
    ev_sub = ev.add_subparsers(dest="evaluation", required=True, metavar="EVALUATION")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", required=True,
                       help="models:/NAME@ALIAS, models:/NAME/VERSION or a local checkpoint folder")
        p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
        p.add_argument("--report", metavar="FILE.md", help="also write the report as Markdown")
        p.add_argument("--no-mlflow", action="store_true", help="do not log an MLflow evaluation run")
        p.add_argument("--no-progress", action="store_true", help="no progress bars (logs, CI)")

    sur = ev_sub.add_parser("surprise", help="pairwise accuracy on possible/impossible video pairs",
                            description="Score matched possible/impossible pairs (`jepa synth physics --pairs`) "
                                        "by surprise: the trained model, the same architecture at random "
                                        "initialisation and a pixel extrapolator, per violation type, with "
                                        "bootstrap 95% intervals. Logged to MLflow experiment jepa-eval.")
    common(sur)
    sur.add_argument("--pairs", required=True, help="s3://BUCKET/PREFIX (or a folder) holding pairs.parquet")
    sur.add_argument("--max-pairs", type=int, help="score only the first N pairs of each type")
    sur.add_argument("--stride-frames", type=int, help="frames between windows (default: one tubelet)")
    sur.add_argument("--score-steps", type=int, metavar="N",
                     help="score only the first N predicted token time steps of each window (default: all)")
    sur.add_argument("--score", choices=("l1", "nll"),
                     help="a window's surprise: l1 = mean L1 to the target features; nll = their negative "
                          "log-likelihood under the predictor's error scales (needs model.pred_error_scale). "
                          "Default: nll when the model has error scales, else l1")
    sur.add_argument("--precision", choices=typing.get_args(Precision), default="auto",
                     help="autocast dtype of the networks, as train.precision: auto = bf16 on a GPU, float32 "
                          "on a CPU; bf16 = bf16 on a CPU too (about 2x faster where it has native bf16)")
    sur.set_defaults(func=_eval_surprise)

    pro = ev_sub.add_parser("probe", help="attentive probes on a frozen encoder vs random init and pixels",
                            description="Train attentive probes on the frozen encoder's features to read "
                                        "ground truth from the physics sidecars (ball count, mean speed, a "
                                        "ball's position), best of several (lr, wd) heads on validation, "
                                        "reported on test with bootstrap 95% intervals; compared with a "
                                        "random-init encoder and raw pixels.")
    common(pro)
    pro.add_argument("--dataset", required=True,
                     help="s3://BUCKET/PREFIX (or a folder) of physics videos with .state.parquet sidecars")
    pro.add_argument("--max-videos", type=int, help="use at most N videos")
    pro.set_defaults(func=_eval_probe)

    plan = ev_sub.add_parser("plan", help="goal-reaching success of CEM/MPC with an action-conditioned world model",
                             description="Plan toward goal images with the world model (CEM + MPC) on held-out "
                                         "DeepMind Control episodes, beside a random policy and CEM with the true "
                                         "simulator; success rate with a 95% Wilson interval, distances to the "
                                         "goal, planning time per call (docs/world-model.md).")
    common(plan)
    plan.add_argument("--env", help="the environment (default: the one the model was trained on)")
    plan.add_argument("--episodes", type=int, default=50, help="held-out goals per policy")
    plan.add_argument("--policies", default="world-model,random,simulator-cem",
                      help="comma-separated, from world-model, random, simulator-cem, simulator-energy (the "
                           "model's planner and energy over the true simulator: a perfect predictor; slow) and served "
                           "(the model deployed by `jepa serve deploy`, planning through its /v1/plan at --url)")
    plan.add_argument("--url", help="the Serve app of the served policy (default: JEPA_SERVE_URL, else "
                                    "http://127.0.0.1:8000); it must serve --model")
    plan.add_argument("--seed-base", type=int, default=1_000_000,
                      help="goal i comes from seed SEED_BASE + i; tune planner settings on another base than the one you report")
    for name in ("samples", "elites", "iterations", "horizon", "replan-every"):
        plan.add_argument(f"--{name}", type=int, help=f"CEM {name.replace('-', ' ')} (default: the model's planner config)")
    plan.add_argument("--select", choices=typing.get_args(PlanSelect),
                      help="the plan CEM returns: the lowest-energy sequence scored, or the final Gaussian's mean "
                           "(default: the model's planner config)")
    plan.add_argument("--energy", choices=typing.get_args(PlanEnergy),
                      help="a sequence's energy: the distance to the goal after its last imagined step, the closest "
                           "step, or the mean over steps (default: the model's planner config)")
    plan.add_argument("--state-weight", type=float,
                      help="weight of the distance from the imagined final state to the goal's state as the model's "
                           "state reader sees it in the goal image; 0 plans on tokens alone (default: the model's "
                           "planner config)")
    plan.set_defaults(func=_eval_plan)


def _add_config(sub) -> None:
    conf = sub.add_parser("config", help="print a resolved run config, or the reference of every config key",
                          description="Print the run config that `jepa pretrain --config FILE key=value ...` "
                                      "would use, as YAML; or, with --reference, every key of the run and "
                                      "Serve configs with its type, default and meaning (docs/configuration.md).")
    conf.add_argument("--config", help="YAML run config (default: the built-in defaults)")
    conf.add_argument("--reference", action="store_true", help="print the Markdown reference of every key")
    conf.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.steps=50")
    conf.set_defaults(func=_config)


def _add_serve(sub) -> None:
    srv = sub.add_parser("serve", help="Ray Serve application")
    srv_sub = srv.add_subparsers(dest="action", required=True, metavar="ACTION")
    dep = srv_sub.add_parser("deploy", help="deploy a registered model as an autoscaling HTTP endpoint",
                             description="Deploy a registered model into the running Ray cluster (RAY_ADDRESS, "
                                         "e.g. from `jepa stack env`); the app keeps running after this command.")
    dep.add_argument("--model", required=True, help="models:/NAME@ALIAS or models:/NAME/VERSION")
    dep.add_argument("--config", help="YAML serve config (autoscaling, port), e.g. configs/serve.yaml")
    dep.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. max_replicas=4")
    dep.set_defaults(func=_serve_deploy)
    rel = srv_sub.add_parser("reload", help="move the running app to the version its model alias names now",
                             description="Resolve the running app's models:/NAME@ALIAS again (e.g. after `jepa "
                                         "models promote`) and roll every replica onto that version, without "
                                         "downtime. Until then every replica serves the version resolved at deploy.")
    rel.add_argument("--config", help="YAML serve config to apply too (default: keep the running app's)")
    rel.set_defaults(func=_serve_reload)
    st = srv_sub.add_parser("status", help="print the Serve application status")
    st.add_argument("--json", action="store_true", help="print the status as JSON")
    st.set_defaults(func=_serve_status)


def _add_client(sub) -> None:
    def common(p) -> None:
        p.add_argument("--url", help="the Serve app (default: JEPA_SERVE_URL, else http://127.0.0.1:8000); "
                                     "JEPA_API_TOKEN is sent as its bearer token")
        p.add_argument("--json", action="store_true", help="print the answer as JSON")

    emb = sub.add_parser("embed", help="embed one clip of a video through the Serve app (POST /v1/embed)",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    emb.add_argument("file", metavar="FILE", help="a video file")
    emb.add_argument("--start-s", type=float, default=0.0, help="where the clip starts, in seconds")
    common(emb)
    emb.set_defaults(func=_embed)
    sur = sub.add_parser("surprise", help="the surprise curve of a video through the Serve app (POST /v1/surprise)")
    sur.add_argument("video", metavar="FILE|URI", help="a video file to upload, or s3://BUCKET/KEY the app reads")
    sur.add_argument("--stride-frames", type=int, help="frames between windows (default: one tubelet)")
    common(sur)
    sur.set_defaults(func=_surprise)


def _add_models(sub) -> None:
    mod = sub.add_parser("models", help="the MLflow model registry: list versions, promote one to @champion")
    mod_sub = mod.add_subparsers(dest="action", required=True, metavar="ACTION")
    prom = mod_sub.add_parser("promote", help="point models:/NAME@champion at VERSION; prints the previous one",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    prom.add_argument("name", metavar="NAME", help="registered model name, e.g. jepa-tiny")
    prom.add_argument("version", metavar="VERSION", type=int, help="registered version number")
    prom.add_argument("--alias", default="champion", help="alias to move")
    prom.set_defaults(func=_models_promote)
    lst = mod_sub.add_parser("list", help="versions of a registered model with their aliases and runs")
    lst.add_argument("name", metavar="NAME", help="registered model name, e.g. jepa-tiny")
    lst.add_argument("--json", action="store_true", help="print the versions as JSON")
    lst.set_defaults(func=_models_list)


def _add_demo(sub) -> None:
    demo = sub.add_parser("demo", help="the whole flow end to end on the embedded stack",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                          description="embed (default): synthesise, pretrain, register, serve, embed over HTTP. "
                                      "physics: synthesise training videos, violation pairs and probe videos, "
                                      "pretrain with configs/physics.yaml, then `eval surprise` and `eval probe`. "
                                      "reacher, point-mass: record MuJoCo episodes, pretrain the encoder "
                                      "(configs/RECIPE.yaml), train the action-conditioned predictor "
                                      "(configs/RECIPE-ac.yaml), then `eval plan`.")
    demo.add_argument("--recipe", choices=("embed", "physics", "reacher", "point-mass"), default="embed",
                      help="which flow to run")
    demo.add_argument("--videos", type=int, default=200, help="synthetic videos to generate (embed)")
    demo.add_argument("--episodes", type=int,
                      help="episodes to record (reacher, point-mass); None = the recipe's: 600 reacher, 300 point-mass")
    demo.add_argument("--eval-episodes", type=int, default=50, help="held-out goals per policy (reacher, point-mass)")
    demo.add_argument("--config", help="pretraining config; None = configs/tiny.yaml (embed), else configs/RECIPE.yaml")
    demo.add_argument("--report", help="Markdown report (physics, reacher, point-mass); None = RECIPE-report.md")
    demo.add_argument("overrides", nargs="*", metavar="key=value",
                      help="pretraining config overrides; reacher, point-mass: ac.key=value overrides the AC config")
    demo.set_defaults(func=_demo)


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns 0, or exits with 2 (one line on stderr) on a user error."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as err:
        if not isinstance(err, _user_errors()):
            raise
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
