"""Serve under load, on loopback, in one run (`make bench-serve`):

1. Load sweep: closed-loop clients at concurrency 1, 4, 16 and 64 post `/v1/embed` for a fixed
   time each, with batching off (max_batch_size 1) and on; throughput, p50/p95/p99 latency,
   errors and the replica count over time (sampled from `serve.status()` every second), then an
   idle spell that shows autoscaling going back down.
2. Overhead: `/v1/embed` throughput at saturation on one replica, divided by direct in-process
   calls of the same model (decode + forward, one torch thread like a replica) at the batch size
   the replica averaged.

Needs a running stack (`jepa stack up; eval "$(jepa stack env)"`); registers an untrained model of
configs/tiny.yaml as `jepa-bench-serve` and leaves the app running at the end.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import requests
import torch

from jepa.checkpoint import save_model
from jepa.config import load_config
from jepa.model import build_jepa
from jepa.transforms import clips_to_tensor
from pipelines.synth_physics import PhysicsConfig, make_video
from pipelines.video import decode_clip


def register(config: str) -> str:
    from ray_jobs import tracking
    from ray_jobs.training.registration import register_model

    cfg = load_config(config, ["tracking.experiment=bench-serve"])
    torch.manual_seed(0)
    model = build_jepa(cfg.model, num_mask_configs=cfg.num_mask_configs)
    run_id = tracking.start_run(cfg.tracking.experiment, cfg.to_dict(), {})
    with tempfile.TemporaryDirectory() as tmp:
        save_model(model, cfg, tmp)
        register_model(run_id, tmp, registered_model="jepa-bench-serve", alias="bench",
                       python_model=tracking.JepaPyfunc(),
                       signature=tracking.model_signature(cfg, model.encoder.embed_dim))
    return "models:/jepa-bench-serve@bench"


def replicas() -> int:
    from ray import serve

    app = serve.status().applications.get("jepa")
    if app is None:
        return 0
    return sum(n for d in app.deployments.values() for state, n in d.replica_states.items()
               if getattr(state, "value", str(state)) == "RUNNING")


@dataclass
class Level:
    concurrency: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    batch_sizes: list[int] = field(default_factory=list)

    def row(self) -> str:
        lat = np.asarray(self.latencies_ms) if self.latencies_ms else np.asarray([np.nan])
        p50, p95, p99 = np.percentile(lat, [50, 95, 99])
        batch = statistics.mean(self.batch_sizes) if self.batch_sizes else float("nan")
        return (f"| {self.concurrency} | {len(self.latencies_ms) / self.seconds:.1f} | {p50:.0f} | {p95:.0f} | "
                f"{p99:.0f} | {self.errors} | {batch:.1f} |")


def load(url: str, video: bytes, concurrency: int, seconds: float) -> Level:
    """Closed loop: `concurrency` clients, each posting as soon as its last answer came."""
    level, stop = Level(concurrency, seconds), time.monotonic() + seconds
    lock = threading.Lock()

    def client():
        session = requests.Session()
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            try:
                r = session.post(f"{url}/v1/embed", files={"video": ("v.mp4", video, "video/mp4")}, timeout=120)
                ok = r.status_code == 200
            except requests.RequestException:
                ok = False
            with lock:
                if ok:
                    level.latencies_ms.append(1000 * (time.perf_counter() - t0))
                    level.batch_sizes.append(r.json()["batch"]["size"])
                else:
                    level.errors += 1

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return level


class ReplicaLog:
    """Samples the running replica count every second in the background."""

    def __init__(self):
        self.t0, self.samples, self._stop = time.monotonic(), [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            self.samples.append((time.monotonic() - self.t0, replicas()))
            time.sleep(1.0)

    def mark(self) -> float:
        return time.monotonic() - self.t0

    def stop(self) -> list[tuple[float, int]]:
        self._stop.set()
        self._thread.join()
        return self.samples


def in_process(config: str, video: bytes, batch: int, seconds: float) -> float:
    """Clips/s of decode + forward of the same model in this process, one torch thread."""
    cfg = load_config(config)
    torch.manual_seed(0)
    model = build_jepa(cfg.model, num_mask_configs=cfg.num_mask_configs).eval()
    torch.set_num_threads(1)
    m, n, stop = cfg.model, 0, time.monotonic() + seconds
    while time.monotonic() < stop:
        clips = np.stack([decode_clip(video, m.num_frames, cfg.data.fps, m.img_size, start_s=0.0) for _ in range(batch)])
        with torch.no_grad():
            model.embed(clips_to_tensor(clips)).mean(dim=1).tolist()
        n += batch
    return n / seconds


def main() -> None:
    from ray_jobs.serve_app import deploy
    from ray_jobs.serve_config import ServeConfig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/tiny.yaml", help="model config of the served (untrained) model")
    ap.add_argument("--seconds", type=float, default=15.0, help="load time per concurrency level")
    ap.add_argument("--levels", default="1,4,16,64", help="concurrency levels")
    ap.add_argument("--max-replicas", type=int, default=2)
    ap.add_argument("--idle", type=float, default=90.0, help="seconds of no load after the sweep, to see scale-down")
    ap.add_argument("--port", type=int, default=8000)
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]

    model = register(args.config)
    video = make_video(PhysicsConfig(size=64, seconds=2.5, fps=8), seed=0)[0]
    url = f"http://127.0.0.1:{args.port}"
    scaling = dict(min_replicas=1, max_replicas=args.max_replicas, target_ongoing_requests=2, upscale_delay_s=3,
                   downscale_delay_s=10, num_cpus=0.5, port=args.port)
    print(f"model {model} ({args.config}); {args.seconds:g} s per level; replicas 1..{args.max_replicas}, "
          f"target 2 ongoing requests per replica, upscale delay 3 s, downscale delay 10 s\n")
    for name, batch in (("off", dict(max_batch_size=1)), ("on", dict(max_batch_size=16, batch_wait_timeout_s=0.01))):
        deploy(model, ServeConfig(**scaling, **batch))
        load(url, video, 1, 3.0)  # warm-up
        log = ReplicaLog()
        marks, rows = [], []
        for c in levels:
            marks.append((c, log.mark()))
            rows.append(load(url, video, c, args.seconds).row())
        end = log.mark()
        time.sleep(args.idle)
        samples = log.stop()
        print(f"### batching {name}\n")
        print("| concurrency | req/s | p50 ms | p95 ms | p99 ms | errors | mean batch |")
        print("|---|---|---|---|---|---|---|")
        print("\n".join(rows))
        peak = max(n for _, n in samples)
        trace = " ".join(f"{t:.0f}s:{n}" for t, n in samples[:: max(1, len(samples) // 30)])
        starts = ", ".join(f"c={c} from {t:.0f}s" for c, t in marks)
        print(f"\nreplicas over time (running; {starts}; load ends at {end:.0f}s): {trace}")
        print(f"peak {peak}, at the end of the idle spell {samples[-1][1]}\n")

    # Overhead: one replica, batching on, saturated; in-process at the batch size it averaged.
    deploy(model, ServeConfig(**{**scaling, "max_replicas": 1}, max_batch_size=16, batch_wait_timeout_s=0.01))
    load(url, video, 4, 3.0)
    served = load(url, video, 16, args.seconds)
    http_rate = len(served.latencies_ms) / served.seconds
    batch = max(1, round(statistics.mean(served.batch_sizes)))
    direct = in_process(args.config, video, batch, args.seconds)
    print("### overhead\n")
    print(f"/v1/embed at concurrency 16, 1 replica: {http_rate:.1f} clips/s (mean batch "
          f"{statistics.mean(served.batch_sizes):.1f}, {served.errors} errors)")
    print(f"in-process decode + forward at batch {batch}, 1 thread: {direct:.1f} clips/s")
    print(f"ratio HTTP / in-process: {http_rate / direct:.2f}x")


if __name__ == "__main__":
    main()
