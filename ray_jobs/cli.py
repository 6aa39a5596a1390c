"""The `jepa` console script: one entry point, a subcommand per workflow.

Heavy imports (torch, ray, mlflow) happen inside each command so `jepa --help` stays instant.
"""

from __future__ import annotations

import argparse
import sys


def _synth_physics(args: argparse.Namespace) -> None:
    from pipelines.synth_physics import PhysicsConfig, synthesize

    cfg = PhysicsConfig(size=args.size, fps=args.fps, seconds=args.seconds)
    written = synthesize(args.videos, args.out, seed=args.seed, cfg=cfg)
    print(f"wrote {len(written)} videos (+ state sidecars) to {args.out}")


def _ingest(args: argparse.Namespace) -> None:
    from pipelines.ingest import IngestError, check_access, ingest
    from pipelines.shards import ClipSpec
    from ray_jobs.cluster import connect

    try:
        spec = ClipSpec(fps=args.fps, short_side=args.short_side, frames=args.frames)
        if args.batch_objects < 1:
            raise ValueError(f"--batch-objects must be >= 1, got {args.batch_objects}")
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    suffixes = tuple(f".{s.strip().lstrip('.').lower()}" for s in args.suffixes.split(",") if s.strip())
    try:
        check_access(args.source, args.dataset)  # before Ray starts: fail in a second, not ten
        connect()
        report = ingest(args.source, args.dataset, spec, progress=not args.no_progress,
                        batch_objects=args.batch_objects, suffixes=suffixes)
    except IngestError as err:  # the job cannot run at all; bad objects never get here
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(report.summary())


def _pretrain(args: argparse.Namespace) -> None:
    from jepa.config import load_config
    from ray_jobs.pretrain import pretrain
    from ray_jobs.tracking import run_url

    cfg = load_config(args.config, args.overrides)
    result = pretrain(cfg, run_name=args.run_name)
    print(f"registered {result.model_uri} (@{cfg.tracking.alias}); run {run_url(result.run_id)}")


def _serve_deploy(args: argparse.Namespace) -> None:
    from ray_jobs.serve_app import deploy, load_serve_config

    url = deploy(args.model, load_serve_config(args.config, args.overrides))
    print(f"serving {args.model} at {url} (GET {url}/healthz, POST {url}/v1/embed)")


def _serve_status(args: argparse.Namespace) -> None:
    from ray import serve

    from ray_jobs.cluster import connect

    connect()
    applications = serve.status().applications
    if not applications:
        print("no Serve application is running")
    for name, app in applications.items():
        print(f"{name}: {app.status}")
        for dep_name, dep in app.deployments.items():
            print(f"  {dep_name}: {dep.status} replicas={dict(dep.replica_states)} {dep.message}".rstrip())


def _models_promote(args: argparse.Namespace) -> None:
    from ray_jobs.tracking import RegistryError, promote

    try:
        previous = promote(args.name, args.version, alias=args.alias)
    except RegistryError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    was = f"previous @{args.alias}: v{previous}" if previous is not None else f"no previous @{args.alias}"
    print(f"models:/{args.name}@{args.alias} -> v{args.version} ({was})")


def _models_list(args: argparse.Namespace) -> None:
    from datetime import datetime, timezone

    from ray_jobs.tracking import RegistryError, list_versions

    try:
        versions = list_versions(args.name)
    except RegistryError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"{'version':>7}  {'aliases':<22} {'run_id':<32}  created (UTC)     status")
    for v in versions:
        created = datetime.fromtimestamp(v["created_ms"] / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M")
        aliases = ",".join(f"@{a}" for a in v["aliases"]) or "-"
        print(f"{v['version']:>7}  {aliases:<22} {v['run_id'] or '-':<32}  {created}  {v['status']}")


def _demo(args: argparse.Namespace) -> None:
    from ray_jobs.demo import run_demo

    run_demo(videos=args.videos, config=args.config, overrides=args.overrides)


def build_parser() -> argparse.ArgumentParser:
    from ray_jobs.stack import add_stack_parser

    parser = argparse.ArgumentParser(prog="jepa", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    add_stack_parser(sub)

    synth = sub.add_parser("synth", help="generate synthetic training worlds")
    synth_sub = synth.add_subparsers(dest="world", required=True, metavar="WORLD")
    physics = synth_sub.add_parser("physics", help="balls under gravity with collisions and occluders",
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    physics.add_argument("--videos", type=int, required=True, help="number of videos")
    physics.add_argument("--out", required=True, help="s3://BUCKET/PREFIX or a local folder")
    physics.add_argument("--seed", type=int, default=0, help="the same seed gives the same videos")
    physics.add_argument("--size", type=int, default=128, help="frame side in pixels")
    physics.add_argument("--fps", type=int, default=16, help="frames per second")
    physics.add_argument("--seconds", type=float, default=4.0, help="duration of each video")
    physics.set_defaults(func=_synth_physics)

    ing = sub.add_parser("ingest", help="probe, quarantine and transcode a bucket of video into a training dataset",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ing.add_argument("source", metavar="SOURCE", help="s3://BUCKET/PREFIX or a local folder of videos")
    ing.add_argument("--dataset", required=True, help="s3://BUCKET/datasets/NAME or a local folder")
    ing.add_argument("--fps", type=float, default=4.0, help="frame rate of the training segments")
    ing.add_argument("--short-side", type=int, default=288, help="short side of stored frames in pixels (even)")
    ing.add_argument("--frames", type=int, default=16, help="frames per training segment")
    ing.add_argument("--batch-objects", type=int, default=16, help="objects per Ray task, and so per shard file")
    ing.add_argument("--suffixes", default=".mp4,.m4v,.mov,.mkv,.webm,.avi,.mpg,.mpeg,.ts,.3gp",
                     help="comma-separated file suffixes to ingest; other objects are ignored")
    ing.add_argument("--no-progress", action="store_true", help="no progress bars (logs, CI)")
    ing.set_defaults(func=_ingest)

    pre = sub.add_parser("pretrain", help="V-JEPA pretraining with Ray Train (DDP), tracked in MLflow")
    pre.add_argument("--config", required=True, help="YAML run config, e.g. configs/tiny.yaml")
    pre.add_argument("--run-name", help="MLflow run name")
    pre.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.steps=50")
    pre.set_defaults(func=_pretrain)

    srv = sub.add_parser("serve", help="Ray Serve application")
    srv_sub = srv.add_subparsers(dest="action", required=True, metavar="ACTION")
    dep = srv_sub.add_parser("deploy", help="deploy a registered model as an autoscaling HTTP endpoint")
    dep.add_argument("--model", required=True, help="models:/NAME@ALIAS or models:/NAME/VERSION")
    dep.add_argument("--config", help="YAML serve config (autoscaling, port), e.g. configs/serve.yaml")
    dep.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. max_replicas=4")
    dep.set_defaults(func=_serve_deploy)
    st = srv_sub.add_parser("status", help="print the Serve application status")
    st.set_defaults(func=_serve_status)

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
    lst.set_defaults(func=_models_list)

    demo = sub.add_parser("demo", help="the whole flow end to end on the embedded stack",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    demo.add_argument("--videos", type=int, default=200, help="synthetic videos to generate")
    demo.add_argument("--config", default="configs/tiny.yaml", help="pretraining config")
    demo.add_argument("overrides", nargs="*", metavar="key=value", help="pretraining config overrides")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # config and input errors: one clear line, not a traceback
        from jepa.config import ConfigError

        if isinstance(e, (ConfigError, FileNotFoundError)):
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
