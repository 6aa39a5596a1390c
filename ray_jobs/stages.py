"""What the one-command recipes (`jepa demo`) share: stage headings with the time so far, and the
local stack brought up with its client settings exported to this process."""

from __future__ import annotations

import os
import time

from infra.config import StackConfig
from infra.stack import Stack


class Stages:
    """``stage(title)`` prints ``=== [n/total] title  (t+Ns)``; without ``total``, no count."""

    def __init__(self, total: int | None = None):
        self.total, self.n, self.t0 = total, 0, time.perf_counter()

    def __call__(self, title: str) -> None:
        self.n += 1
        count = f"[{self.n}/{self.total}] " if self.total else ""
        print(f"\n=== {count}{title}  (t+{time.perf_counter() - self.t0:.0f}s)", flush=True)


def local_stack() -> Stack:
    """SeaweedFS, MLflow and a Ray head on this machine (reused when running); their client
    variables (S3 endpoint and keys, MLflow URI, RAY_ADDRESS) go into this process's environment."""
    stack = Stack(StackConfig())
    stack.up()
    os.environ.update(stack.env())
    return stack
