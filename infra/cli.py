"""The command line of the local stack: `add_stack_parser` mounts `stack up|down|status|env` on the
`jepa` CLI (ray_jobs/cli.py), and `cli()` runs the same commands alone (`python -m infra.cli` or
`python -m infra.stack`). It exists to keep argument parsing and terminal output (a StackError is
one `error:` line and exit code 1, never a traceback) out of `infra.stack`, whose `Stack` class is
also driven from Python (tests, `jepa demo`)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

from infra.config import StackConfig
from infra.processes import ServiceError
from infra.stack import Stack


def _config_from_args(args: argparse.Namespace) -> StackConfig:
    cfg = StackConfig()
    if getattr(args, "dir", None):
        cfg.state_dir = Path(args.dir).absolute()
    if getattr(args, "no_ray", False):
        cfg.ray = False
    return cfg


def _cmd_up(args: argparse.Namespace) -> int:
    stack = Stack(_config_from_args(args))
    t0 = time.monotonic()
    stack.up()
    print(f"stack up in {time.monotonic() - t0:.1f} s; state in {stack.config.state_dir}\n"
          f"use it from a shell with:  eval \"$(jepa stack env)\"")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    stack = Stack(_config_from_args(args))
    stack.down()
    print("stack down")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    stack = Stack(_config_from_args(args))
    status = stack.status()
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        for name, s in status.items():
            state = "running" if s["healthy"] else ("starting/unhealthy" if s["running"] else "stopped")
            pid = f"pid {s['pid']}" if s["pid"] else ""
            print(f"{name:<10} {state:<19} {pid:<11} {s['address']}")
    return 0 if all(s["healthy"] for s in status.values()) else 1


def _cmd_env(args: argparse.Namespace) -> int:
    stack = Stack(_config_from_args(args))
    if not stack.is_up():
        print("# warning: the stack is not (fully) running; `jepa stack up` first", file=sys.stderr)
    for key, value in stack.env().items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


def add_stack_parser(subparsers) -> argparse.ArgumentParser:
    """Mount `stack up|down|status|env` on a parent CLI; each sets `func(args) -> exit code`."""
    stack = subparsers.add_parser(
        "stack", help="local embedded stack: SeaweedFS S3, MLflow server, Ray head",
        description="Local embedded stack: SeaweedFS S3 (127.0.0.1:8333), MLflow tracking server "
                    "(127.0.0.1:5000, artifacts in the bucket), Ray head (127.0.0.1:6379). State in "
                    "$JEPA_STACK_DIR or ./.stack; ports from JEPA_S3_PORT, JEPA_MLFLOW_PORT, JEPA_RAY_PORT.")
    actions = stack.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, help_: str, func: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
        p = actions.add_parser(name, help=help_, description=help_)
        p.add_argument("--dir", help="state folder (default: $JEPA_STACK_DIR or ./.stack)")
        p.set_defaults(func=lambda args: _run(func, args))
        return p

    up = action("up", "start what is not running (idempotent); fails if a port is taken", _cmd_up)
    up.add_argument("--no-ray", action="store_true", help="S3 and MLflow only (or JEPA_STACK_RAY=0)")
    action("down", "stop what `up` started (only those processes)", _cmd_down)
    status = action("status", "show each service; exit code 0 only if all are running and healthy",
                    _cmd_status)
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    action("env", "print `export K=V` lines for clients: eval \"$(jepa stack env)\"", _cmd_env)
    return stack


def _run(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> None:
    """Run a stack command: a StackError is one clear line (no traceback); exit with its code."""
    try:
        code = func(args)
    except ServiceError as e:  # StackError is one
        print(f"error: {e}", file=sys.stderr)
        code = 1
    if code:
        raise SystemExit(code)


def cli(argv: list[str] | None = None) -> int:
    """`python -m infra.cli up|down|status|env` (or `python -m infra.stack ...`) without the rest of the
    `jepa` CLI."""
    parser = argparse.ArgumentParser(prog="jepa")
    add_stack_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["stack", *(sys.argv[1:] if argv is None else argv)])
    try:
        args.func(args)
    except SystemExit as e:
        return int(e.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
