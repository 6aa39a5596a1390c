"""Ray Serve application: a FastAPI ingress over a registered JEPA model.

Every error a caller can fix is a 4xx JSON `{"error": ...}`; a bad upload never kills a replica.
"""


import os
import time
from dataclasses import dataclass
from typing import Any

import torch
from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve

from jepa.checkpoint import load_model
from jepa.config import load_yaml
from jepa.transforms import clips_to_tensor
from pipelines.video import VideoDecodeError, decode_clip
from ray_jobs import tracking
from ray_jobs.cluster import connect, forwarded_env, require_cluster

APP_NAME = "jepa"


@dataclass
class ServeConfig:
    min_replicas: int = 1
    """Autoscaling floor."""
    max_replicas: int = 2
    """Autoscaling ceiling."""
    target_ongoing_requests: float = 2.0
    """Requests in flight per replica that autoscaling aims for."""
    num_cpus: float = 0.5
    """Ray CPUs reserved by each replica."""
    host: str = "127.0.0.1"
    """HTTP bind address of the Serve proxy."""
    port: int = 8000
    """HTTP port of the Serve proxy."""
    max_upload_mb: float = 64.0
    """Uploads above this size are refused with 413."""


app = FastAPI(title="jepa-ray", description="Embeddings from a V-JEPA world model")


@app.exception_handler(HTTPException)
async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    return JSONResponse({"error": f"invalid request: {problems}"}, status_code=422)


def _require_token(request: Request) -> None:
    token = os.environ.get("JEPA_API_TOKEN")
    if token and request.headers.get("authorization") != f"Bearer {token}":
        raise HTTPException(401, "missing or wrong bearer token")


@serve.deployment
@serve.ingress(app)
class JepaService:
    def __init__(self, model_uri: str, max_upload_bytes: int):
        self.info = tracking.resolve_model_version(model_uri)
        self.model, self.cfg = load_model(tracking.download_checkpoint(model_uri))
        self.max_upload_bytes = max_upload_bytes
        torch.set_num_threads(1)

    @app.get("/healthz")
    def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/model", dependencies=[Depends(_require_token)])
    def model_info(self) -> dict[str, Any]:
        m = self.cfg.model
        return {
            **self.info,
            "arch": m.arch,
            "embed_dim": self.model.encoder.embed_dim,
            "clip": {"num_frames": m.num_frames, "fps": self.cfg.data.fps, "img_size": m.img_size},
            "token_grid": list(self.model.token_grid),
            "parameters": sum(p.numel() for p in self.model.parameters()),
        }

    @app.post("/v1/embed", dependencies=[Depends(_require_token)])
    def embed(self, video: UploadFile = File(...), start_s: float = Form(0.0)) -> dict[str, Any]:
        data = video.file.read(self.max_upload_bytes + 1)
        if len(data) > self.max_upload_bytes:
            raise HTTPException(413, f"upload larger than {self.max_upload_bytes} bytes")
        if start_s < 0:
            raise HTTPException(422, "start_s must be >= 0")
        m = self.cfg.model
        t0 = time.perf_counter()
        try:
            clip = decode_clip(data, m.num_frames, self.cfg.data.fps, m.img_size, start_s=start_s)
        except VideoDecodeError as e:
            raise HTTPException(400, f"could not decode {video.filename or 'upload'}: {e}") from None
        with torch.no_grad():
            tokens = self.model.embed(clips_to_tensor(clip[None], torch.device("cpu")))  # (1, N, D)
        return {
            "model": f"{self.info['name']}/{self.info['version']}",
            "embedding": tokens.mean(dim=1)[0].tolist(),
            "dim": tokens.shape[-1],
            "token_grid": list(self.model.token_grid),
            "latency_ms": round(1000 * (time.perf_counter() - t0), 1),
        }


def build_app(model_uri: str, cfg: ServeConfig):
    return JepaService.options(
        autoscaling_config={
            "min_replicas": cfg.min_replicas,
            "max_replicas": cfg.max_replicas,
            "target_ongoing_requests": cfg.target_ongoing_requests,
        },
        ray_actor_options={"num_cpus": cfg.num_cpus, "runtime_env": {"env_vars": forwarded_env()}},
    ).bind(model_uri, int(cfg.max_upload_mb * 2**20))


def deploy(model_uri: str, cfg: ServeConfig | None = None) -> str:
    """Deploy (or update) the app on the running cluster (RAY_ADDRESS, or the one this process is
    connected to); returns its base URL. The app outlives this call."""
    cfg = cfg or ServeConfig()
    require_cluster("deploy into")
    tracking.resolve_model_version(model_uri)  # fail here, with a clear error, if the model is unknown
    connect()
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    serve.run(build_app(model_uri, cfg), name=APP_NAME, route_prefix="/", blocking=False)
    return f"http://{cfg.host}:{cfg.port}"


def load_serve_config(path: str | None, overrides: list[str]) -> ServeConfig:
    return load_yaml(ServeConfig, path, overrides)
