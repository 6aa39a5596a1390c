"""Fuzz the Serve app from its own OpenAPI schema (`make bench-fuzz`).

Schemathesis turns `/openapi.json` into Hypothesis strategies: for every route, requests that fit
the schema (positive) and requests that break it (negative: wrong types, missing fields, bad
content types, garbage uploads). Random strings rarely get past the first check (is this a PNG, an
MP4?), so a third mode (mutated) starts from a valid request and breaks one thing: an MP4
truncated, overwritten or spliced with random bytes, or one JSON field replaced, dropped or added.
Each case goes over real HTTP to the running app. The target is no answer >= 500, no dropped
connection, and no replica lost. Generation is seeded, so a run is repeatable.

Two apps are fuzzed, one after the other, so that every route reaches its own code rather than a
409: a video model (embed, surprise) and a world model (predict, plan; embed on its image encoder).
Needs a running stack (`jepa stack up; eval "$(jepa stack env)"`); registers two untrained tiny
models and leaves the last app running.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import requests
from hypothesis import HealthCheck, Phase, given, seed as hypothesis_seed, settings, strategies as st


@dataclass
class FuzzReport:
    statuses: Counter = field(default_factory=Counter)
    """(method path, mode, status) -> count"""
    server_errors: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    no_cases: list[str] = field(default_factory=list)
    """route (mode) for which the schema allows no case"""
    replicas_lost: int = 0

    def record(self, label: str, mode: str, send: Callable[[], requests.Response], shown: str = "") -> None:
        """Send one request and count its answer, or the dropped connection."""
        try:
            response = send()
        except requests.RequestException as err:  # refused, reset, timed out
            self.dropped.append(f"{label} ({mode}){shown} -> {type(err).__name__}: {err}")
            return
        self.statuses[(label, mode, response.status_code)] += 1
        if response.status_code >= 500:
            self.server_errors.append(f"{label} ({mode}){shown} -> {response.status_code} {response.text[:300]}")

    @property
    def cases(self) -> int:
        return sum(self.statuses.values()) + len(self.dropped)

    def add(self, other: FuzzReport) -> None:
        self.statuses.update(other.statuses)
        self.server_errors += other.server_errors
        self.dropped += other.dropped
        self.no_cases += other.no_cases
        self.replicas_lost += other.replicas_lost

    def table(self) -> str:
        routes = sorted({(label, mode) for label, mode, _ in self.statuses})
        lines = ["| route | mode | cases | statuses |", "|---|---|---|---|"]
        for label, mode in routes:
            codes = {s: n for (lab, m, s), n in self.statuses.items() if (lab, m) == (label, mode)}
            spread = ", ".join(f"{s}: {n}" for s, n in sorted(codes.items()))
            lines.append(f"| {label} | {mode} | {sum(codes.values())} | {spread} |")
        return "\n".join(lines)


def fuzz(url: str, examples: int, seed: int = 0, headers: dict[str, str] | None = None,
         timeout_s: float = 60.0) -> FuzzReport:
    """`examples` generated cases per route and mode against the app at `url`."""
    import schemathesis
    from hypothesis.errors import Unsatisfiable
    from schemathesis.generation.modes import GenerationMode

    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    report = FuzzReport()

    def sender(label: str, mode: str) -> Callable:
        def send(case) -> None:
            report.record(label, mode, lambda: case.call(base_url=url, headers=headers, timeout=timeout_s),
                          f": {case.as_curl_command()[:300]}")
        return send

    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                _run(operation.as_strategy(mode), sender(operation.label, mode.value), examples, seed)
            except Unsatisfiable:  # nothing to break, e.g. negative cases of a GET without parameters
                report.no_cases.append(f"{operation.label} ({mode.value})")
    return report


def _run(strategy: st.SearchStrategy, send: Callable, examples: int, seed: int) -> None:
    run = given(strategy)(send)
    run = settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
                   suppress_health_check=list(HealthCheck))(run)
    hypothesis_seed(seed)(run)()


@st.composite
def broken_bytes(draw, data: bytes) -> bytes:
    """`data` truncated, with bytes overwritten, or with random bytes spliced in."""
    at = draw(st.integers(0, len(data) - 1))
    kind = draw(st.sampled_from(["truncate", "overwrite", "splice"]))
    if kind == "truncate":
        return data[:at]
    if kind == "splice":
        return data[:at] + draw(st.binary(min_size=1, max_size=512)) + data[at:]
    out = bytearray(data)
    for i in draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=64)):
        out[i] = draw(st.integers(0, 255))
    return bytes(out)


JSON_VALUES = st.recursive(  # floats include NaN and Infinity, which Python's JSON reader accepts
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=16),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def broken_json(draw, body: dict) -> dict:
    """`body` with one field given another value (any JSON), dropped, or joined by an unknown one."""
    body, key = dict(body), draw(st.sampled_from(sorted(body)))
    kind = draw(st.sampled_from(["replace", "drop", "add"]))
    if kind == "replace":
        body[key] = draw(JSON_VALUES)
    elif kind == "drop":
        del body[key]
    else:
        body[draw(st.text(min_size=1, max_size=8).filter(lambda k: k not in body))] = draw(JSON_VALUES)
    return body


def mutate(url: str, examples: int, seed: int, uploads: dict[str, bytes], bodies: dict[str, dict],
           timeout_s: float = 60.0) -> FuzzReport:
    """`examples` mutated cases per route: an MP4 upload of `uploads[route]` broken by
    `broken_bytes`, or the JSON `bodies[route]` broken by `broken_json`."""
    report = FuzzReport()

    def upload(route: str) -> Callable:
        def send(data: bytes) -> None:
            report.record(f"POST {route}", "mutated", lambda: requests.post(
                f"{url}{route}", files={"video": ("clip.mp4", data, "video/mp4")}, timeout=timeout_s))
        return send

    def post_json(route: str) -> Callable:
        def send(body: dict) -> None:  # json.dumps writes NaN and Infinity as bare tokens
            report.record(f"POST {route}", "mutated", lambda: requests.post(
                f"{url}{route}", data=json.dumps(body), headers={"content-type": "application/json"},
                timeout=timeout_s))
        return send

    for route, video in uploads.items():
        _run(broken_bytes(video), upload(route), examples, seed)
    for route, body in bodies.items():
        _run(broken_json(body), post_json(route), examples, seed)
    return report


def world_bodies(img_size: int = 32) -> dict[str, dict]:
    """Valid /v1/predict and /v1/plan bodies for a reacher world model: a rendered frame and state."""
    from pipelines.planning_protocol import Episode, Protocol, make_goal
    from ray_jobs.client import image_b64

    protocol = Protocol(img_size=img_size)
    goal = make_goal(protocol, 0)
    episode = Episode(protocol, goal)
    frame, state = image_b64(episode.observation()), episode.state().tolist()
    return {"/v1/predict": {"frames": [frame], "actions": [[0.1, -0.2], [0.3, 0.0]], "state": state},
            "/v1/plan": {"observation": frame, "goal": image_b64(goal.image), "state": state, "samples": 16,
                         "iterations": 2, "horizon": 3, "elites": 4, "seed": 0}}


def replicas() -> set[str]:
    """Actor ids of the app's live replicas: Serve replaces a replica that crashed or failed its
    health check with a new actor, so the same set before and after means none was lost."""
    from ray.util.state import list_actors

    return {a.actor_id for a in list_actors(filters=[("state", "=", "ALIVE")], limit=10_000)
            if a.class_name.startswith("ServeReplica:jepa:")}


def main() -> None:
    from pipelines.synth_physics import PhysicsConfig, make_video
    from ray_jobs.serve_app import deploy
    from ray_jobs.serve_config import ServeConfig
    from ray_jobs.tiny_models import register_tiny, register_tiny_world

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=200,
                    help="generated cases per route and mode (positive, negative, mutated)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--port", type=int, default=8000)
    args = ap.parse_args()

    url = f"http://127.0.0.1:{args.port}"
    cfg = ServeConfig(port=args.port, max_replicas=1, num_cpus=0.5, max_upload_mb=1, max_plan_samples=64,
                      allowed_buckets=["jepa"])
    total, started = FuzzReport(), time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        video = make_video(PhysicsConfig(size=64, seconds=2.5, fps=8), seed=0)[0]
        apps = {  # name: (register, MP4 uploads to break, JSON bodies to break)
            "video model": (lambda: register_tiny("jepa-fuzz-video", [], experiment="fuzz"),
                            {"/v1/embed": video, "/v1/surprise": video}, {}),
            "world model": (lambda: register_tiny_world("jepa-fuzz-world", tmp, experiment="fuzz"), {}, world_bodies()),
        }
        for name, (register, uploads, bodies) in apps.items():
            deploy(register(), cfg)
            before, waited = replicas(), time.monotonic()
            while len(before) != 1 and time.monotonic() - waited < 120:  # the last app's replica stopping
                time.sleep(1)
                before = replicas()
            report = fuzz(url, args.examples, args.seed)
            report.add(mutate(url, args.examples, args.seed, uploads, bodies))
            healthy = requests.get(f"{url}/healthz", timeout=30).status_code == 200
            report.replicas_lost = len(before - replicas())
            print(f"### {name}: {report.cases} cases; healthy after: {healthy}; replicas lost: "
                  f"{report.replicas_lost}\n\n{report.table()}\n")
            if report.no_cases:
                print(f"no case to generate: {', '.join(report.no_cases)}\n")
            total.add(report)
    print(f"in all: {total.cases} cases in {time.monotonic() - started:.0f} s; answers >= 500: "
          f"{len(total.server_errors)}; dropped connections: {len(total.dropped)}; replicas lost: {total.replicas_lost}")
    for line in total.server_errors[:20] + total.dropped[:20]:
        print("  ", line)


if __name__ == "__main__":
    main()
