"""`jepa demo`: stack up -> synthesise videos -> pretrain (Ray Train DDP) -> register in MLflow ->
held-out evaluation -> deploy on Ray Serve -> embed a held-out video over HTTP."""

from __future__ import annotations

import time

import mlflow
import requests

from jepa.checkpoint import load_model
from jepa.config import load_config
from pipelines.direct_clips import list_videos
from pipelines.storage import get_bytes
from pipelines.synth_physics import synthesize
from ray_jobs import tracking
from ray_jobs.evaluate import MIN_IMPROVEMENT, MIN_TARGET_STD, held_out_report, load_held_out_clips
from ray_jobs.pretrain import pretrain
from ray_jobs.serve_app import deploy
from ray_jobs.serve_config import load_serve_config
from ray_jobs.stages import Stages, local_stack

def _wait_healthy(url: str, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/healthz", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(1.0)
    raise TimeoutError(f"{url}/healthz did not answer within {timeout_s:.0f}s")


def run_demo(videos: int = 200, config: str = "configs/tiny.yaml", overrides: list[str] = ()) -> None:
    stage = Stages(7)
    cfg = load_config(config, list(overrides))

    stage("local stack: SeaweedFS S3, MLflow server, Ray head")
    local_stack()

    stage(f"synthesise {videos} physics videos into {cfg.data.source}")
    have = len(list_videos(cfg.data.source))
    if have >= videos:
        print(f"{have} videos already there; reusing them")
    else:
        synthesize(videos, cfg.data.source, seed=cfg.train.seed)

    stage(f"pretrain {cfg.model.arch} with {cfg.train.num_workers} Ray Train workers "
          f"({cfg.train.steps} steps)")
    result = pretrain(cfg)

    stage(f"held-out evaluation on {len(result.held_out)} unseen videos")
    model, _ = load_model(tracking.download_checkpoint(result.model_uri))
    clips = load_held_out_clips(result.held_out, cfg)
    report = held_out_report(model, cfg, clips)
    with mlflow.start_run(run_id=result.run_id):
        mlflow.log_metrics(report.as_metrics())
    print(f"held-out JEPA loss: init {report.loss_init:.4f} -> trained {report.loss_trained:.4f} "
          f"({100 * report.improvement:.1f}% lower; need >= {100 * MIN_IMPROVEMENT:.0f}%) on {report.clips} clips")
    print(f"target feature std per dimension: init {report.target_std_init:.3f}, "
          f"trained {report.target_std_trained:.3f} (collapse floor {MIN_TARGET_STD})")

    alias_uri = f"models:/{cfg.tracking.registered_model}@{cfg.tracking.alias}"
    stage(f"deploy {alias_uri} on Ray Serve")
    url = deploy(alias_uri, load_serve_config("configs/serve.yaml", []))
    _wait_healthy(url)
    print(f"GET {url}/v1/model -> {requests.get(f'{url}/v1/model', timeout=30).json()}")

    stage("POST a held-out video to /v1/embed over HTTP")
    video_uri = result.held_out[0]
    response = requests.post(f"{url}/v1/embed", timeout=120,
                             files={"video": (video_uri.rsplit("/", 1)[-1], get_bytes(video_uri), "video/mp4")})
    response.raise_for_status()
    answer = response.json()
    head = ", ".join(f"{v:+.3f}" for v in answer["embedding"][:8])
    print(f"{video_uri} -> {answer['model']}: embedding dim {answer['dim']}, token grid "
          f"{answer['token_grid']}, {answer['latency_ms']} ms\n  [{head}, ...]")

    stage("summary")
    print(f"MLflow run: {tracking.run_url(result.run_id)}")
    print(f"Serve endpoint: {url}/v1/embed   (stop everything with `make stack-down`)")
    learned = report.improvement >= MIN_IMPROVEMENT and report.target_std_trained >= MIN_TARGET_STD
    print(f"learned: {'yes' if learned else 'NO'}")
    if not learned:
        raise SystemExit(1)
