"""Ray Serve application: a FastAPI ingress over a registered JEPA model.

Every error a caller can fix is a 4xx JSON `{"error": ...}`; a bad upload never kills a replica.
"""


import itertools
import logging
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError
from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile as FormFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from jepa.checkpoint import load_model
from jepa.config import from_dict
from jepa.world_model import is_world_model, load_world_model
from jepa.surprise import surprise_curve, surprise_mask
from jepa.transforms import clips_to_tensor
from pipelines.storage import URIError, get_bytes
from pipelines.video import VideoDecodeError, decode_clip, decode_video
from ray_jobs import serve_metrics, serve_schemas as schemas, serve_world, tracking
from ray_jobs.cluster import ClusterError, connect, forwarded_env, require_cluster
from ray_jobs.serve_config import ServeConfig
from ray_jobs.serve_guard import BodyLimit, check_uri, check_video, token_matches

APP_NAME = "jepa"
logger = logging.getLogger("ray.serve")  # Serve's replica logger: its lines carry the request id


app = FastAPI(title="jepa-ray", description="Embeddings, surprise, prediction and planning from a V-JEPA world model")
app.add_middleware(BodyLimit)
app.add_middleware(serve_metrics.RequestMetrics)  # outermost: it also counts the 413s


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Ours (FastAPI's HTTPException is a subclass) and Starlette's own: unknown route, bad multipart."""
    return _error(request, str(exc.detail), exc.status_code)


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    return _error(request, f"invalid request: {problems}", 422)


def _error(request: Request, message: str, status: int) -> JSONResponse:
    """The JSON error, with the request id that Serve's proxy also returns as `X-Request-ID` and
    writes in the replica's log lines: what a caller quotes when reporting a problem."""
    logger.info("%s %s -> %d: %s", request.method, request.url.path, status, message)
    return JSONResponse({"error": message, "request_id": request.headers.get("x-request-id")}, status_code=status)


def _require_token(request: Request) -> None:
    token = os.environ.get("JEPA_API_TOKEN")
    if token and not token_matches(request.headers.get("authorization"), token):
        raise HTTPException(401, "missing or wrong bearer token")


@contextmanager
def _decoding(name: str) -> Iterator[None]:
    """A video that does not decode is the caller's 400."""
    try:
        yield
    except VideoDecodeError as e:
        raise HTTPException(400, f"could not decode {name}: {e}") from None


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def _json_body(request: Request) -> dict[str, Any]:
    """The JSON object of a JSON-only route; 415 for any other content type."""
    media = _media_type(request)
    if media != "application/json":
        raise HTTPException(415, f"send application/json, got {media or 'no Content-Type'}")
    return await _json_object(request)


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise HTTPException(400, f"body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise HTTPException(422, f"the JSON body must be an object, got {type(body).__name__}")
    return body


SURPRISE_FIELDS = ("video", "uri", "stride_frames")


def _surprise_fields(fields: Mapping[str, Any]) -> tuple[FormFile | None, str | None, int | None]:
    """(upload, uri, stride) from the form fields or JSON keys of a /v1/surprise request: exactly
    one of upload and uri; the stride a whole number of frames >= 1, or None for the default."""
    unknown = sorted(set(fields) - set(SURPRISE_FIELDS))
    if unknown:
        raise HTTPException(422, f"unknown field(s) {', '.join(unknown)}; "
                                 f"expected {', '.join(SURPRISE_FIELDS)}")
    video, uri, stride = (fields.get(name) for name in SURPRISE_FIELDS)
    if video is not None and not isinstance(video, FormFile):
        raise HTTPException(422, "video must be a file upload (multipart/form-data)")
    if uri is not None and not isinstance(uri, str):
        raise HTTPException(422, "uri must be a string: s3://BUCKET/KEY")
    if (video is None) == (uri is None):
        either = "not both" if video is not None else "got neither"
        raise HTTPException(422, f"give either a video upload or a uri, {either}")
    if stride is not None:
        if isinstance(stride, str):  # a form field
            try:
                stride = int(stride)
            except ValueError:
                pass
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
            raise HTTPException(422, f"stride_frames must be a whole number of frames >= 1, got {stride!r}")
    return video, uri, stride


@serve.deployment
@serve.ingress(app)
class JepaService:
    def __init__(self, info: dict[str, Any], cfg: ServeConfig):
        """`info` is the model version `deploy` resolved (`tracking.resolve_model_version`): every
        replica, including one autoscaling adds later, loads that version, whatever the alias
        says by then. Only a deploy or `reload` moves the app to another version."""
        self.info = info
        folder = tracking.download_checkpoint(f"models:/{info['name']}/{info['version']}")
        self.world = load_world_model(folder) if is_world_model(folder) else None
        """The action-conditioned world model (`jepa train-ac`), or None: then no /v1/predict, /v1/plan."""
        if self.world is not None:  # embed and surprise use its frozen encoder
            self.model, self.cfg = self.world.jepa, self.world.encoder_cfg
        else:
            self.model, self.cfg = load_model(folder)
        self.serve_cfg = cfg
        app.state.max_body_bytes = cfg.max_upload_bytes  # read by BodyLimit in this replica's process
        self._embed_batch.set_max_batch_size(cfg.max_batch_size)
        self._embed_batch.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)
        self.forwards = itertools.count(1)
        serve_metrics.record_model_version(self.info["name"], self.info["version"])
        torch.set_num_threads(1)

    def deployed(self) -> dict[str, Any]:
        """What `reload` needs to redeploy the app: the model it was given and its config."""
        return {"model": self.info, "config": asdict(self.serve_cfg)}

    def check_health(self) -> None:
        """Serve's health probe: a replica whose model is gone is restarted."""
        if self.model is None or next(self.model.parameters(), None) is None:
            raise RuntimeError(f"replica of {self.model_name} has no model loaded")

    @property
    def model_name(self) -> str:
        return f"{self.info['name']}/{self.info['version']}"

    def _check_size(self, size: int, what: str) -> None:
        limit = self.serve_cfg.max_upload_bytes
        if size > limit:
            raise HTTPException(413, f"{what} larger than {limit} bytes")

    def _read_upload(self, upload: FormFile) -> bytes:
        data = upload.file.read(self.serve_cfg.max_upload_bytes + 1)
        self._check_size(len(data), "upload")
        return data

    def _fetch(self, uri: str) -> bytes:
        """The object at `uri`, in an allowed bucket only: anything else is refused before any read."""
        check_uri(uri, self.serve_cfg.allowed_buckets)
        try:
            data = get_bytes(uri)
        except URIError as e:
            raise HTTPException(400, f"bad uri: {e}") from None
        except ParamValidationError:  # botocore's own checks, e.g. of the bucket name
            raise HTTPException(400, f"bad uri: {uri!r} is not a valid S3 bucket and key") from None
        except FileNotFoundError:
            raise HTTPException(404, f"no object at {uri}") from None
        except ClientError as e:
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 502)
            message = f"object store refused {uri}: {e.response.get('Error', {}).get('Code', e)}"
            raise HTTPException(status if status in (400, 403, 404) else 502, message) from None
        except BotoCoreError as e:
            raise HTTPException(502, f"object store unavailable: {e}") from None
        self._check_size(len(data), "object")
        return data

    def _check_video(self, data: bytes, name: str) -> None:
        """What the ingest would quarantine (a still image, not a video, truncated) and what the
        limits exclude is a 4xx here too."""
        check_video(data, name, self.serve_cfg.max_video_seconds, self.serve_cfg.max_image_side)

    def _surprise_setup(self) -> tuple[int, int, str]:
        """(mask index, context time steps, mask kind) for surprise: the model's future mask config
        if it has one, else mask token 0 with half of the token time steps as context."""
        steps = self.model.token_grid[0]
        if steps < 2:  # an image model
            raise HTTPException(409, f"model {self.model_name} sees {steps} token time step(s) per clip: "
                                     f"no future to predict, so no surprise")
        return surprise_mask(self.cfg.masks, steps)

    def _decode_video(self, data: bytes) -> tuple[np.ndarray, bool]:
        """Up to `max_surprise_frames` frames from the start at the model's fps, and whether the
        video was longer; 422 if it is shorter than one window."""
        fps, cap = self.cfg.data.fps, self.serve_cfg.max_surprise_frames
        frames = decode_video(data, fps=fps, size=self.cfg.model.img_size, max_frames=cap + 1)  # +1: longer?
        window = self.model.token_grid[0] * self.model.encoder.tubelet_size
        if len(frames) < window:
            raise HTTPException(422, f"video too short: {len(frames)} frames at {fps:g} fps, but one window "
                                     f"is {window} frames ({window / fps:g} s)")
        return frames[:cap], len(frames) > cap

    @app.get("/healthz")
    def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/model", dependencies=[Depends(_require_token)], responses=schemas.responses(schemas.ModelAnswer, 401))
    def model_info(self) -> dict[str, Any]:
        m = self.cfg.model
        return {
            **self.info,
            "arch": m.arch,
            "embed_dim": self.model.encoder.embed_dim,
            "clip": {"num_frames": m.num_frames, "fps": self.cfg.data.fps, "img_size": m.img_size},
            "token_grid": list(self.model.token_grid),
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "action_conditioned": self.world is not None,
            **({"env": serve_world.env_info(self.world)} if self.world is not None else {}),
        }

    def _world(self, route: str):
        if self.world is None:
            raise HTTPException(409, f"model {self.model_name} has no action head, so no {route}: register one "
                                     f"with `jepa train-ac` and deploy that")
        return self.world

    @app.post("/v1/predict", dependencies=[Depends(_require_token)], openapi_extra=schemas.json_body(schemas.PredictRequest),
              responses=schemas.responses(schemas.PredictAnswer, 400, 401, 409, 413, 415, 422))
    async def predict(self, request: Request) -> dict[str, Any]:
        """JSON `{"frames": [base64 image...], "actions": [[...]...], "state": [...]}` -> the pooled
        representation of each imagined step (docs/http-api.md)."""
        world = self._world("/v1/predict")
        body = await _json_body(request)
        return await run_in_threadpool(serve_world.predict, world, body, self.model_name, self.serve_cfg)

    @app.post("/v1/plan", dependencies=[Depends(_require_token)], openapi_extra=schemas.json_body(schemas.PlanRequest),
              responses=schemas.responses(schemas.PlanAnswer, 400, 401, 409, 413, 415, 422))
    async def plan(self, request: Request) -> dict[str, Any]:
        """JSON `{"observation": base64 image, "goal": base64 image, "state": [...], ...}` -> the
        planned actions per control step (docs/http-api.md)."""
        world = self._world("/v1/plan")
        body = await _json_body(request)
        return await run_in_threadpool(serve_world.plan, world, body, self.model_name, self.serve_cfg)

    @app.post("/v1/embed", dependencies=[Depends(_require_token)],
              responses=schemas.responses(schemas.EmbedAnswer, 400, 401, 413, 415, 422))
    async def embed(self, video: UploadFile = File(...), start_s: float = Form(0.0)) -> dict[str, Any]:
        """Reading and decoding run per request, off the event loop; the forward is batched."""
        if start_s < 0:
            raise HTTPException(422, "start_s must be >= 0")
        t0 = time.perf_counter()
        clip = await run_in_threadpool(self._embed_input, video, start_s)
        embedding, batch = await self._embed_batch(clip)
        return {
            "model": self.model_name,
            "embedding": embedding,
            "dim": len(embedding),
            "token_grid": list(self.model.token_grid),
            "batch": batch,
            "latency_ms": round(1000 * (time.perf_counter() - t0), 1),
        }

    def _embed_input(self, video: UploadFile, start_s: float) -> np.ndarray:
        data = self._read_upload(video)
        name = video.filename or "upload"
        self._check_video(data, name)
        m = self.cfg.model
        with _decoding(name):
            return decode_clip(data, m.num_frames, self.cfg.data.fps, m.img_size, start_s=start_s)

    @serve.batch
    async def _embed_batch(self, clips: list[np.ndarray]) -> list[tuple[list[float], dict[str, int]]]:
        """One forward over the clips of every request that arrived together."""
        batch = {"size": len(clips), "forward": next(self.forwards)}
        serve_metrics.batch_sizes().observe(len(clips))
        pooled = await run_in_threadpool(self._pooled_embeddings, np.stack(clips))
        return [(row, batch) for row in pooled]

    def _pooled_embeddings(self, clips: np.ndarray) -> list[list[float]]:
        with torch.no_grad():
            tokens = self.model.embed(clips_to_tensor(clips, torch.device("cpu")))  # (B, N, D)
        return tokens.mean(dim=1).tolist()

    @app.post("/v1/surprise", dependencies=[Depends(_require_token)], openapi_extra=schemas.surprise_body(),
              responses=schemas.responses(schemas.SurpriseAnswer, 400, 401, 403, 404, 409, 413, 415, 422))
    async def surprise(self, request: Request) -> dict[str, Any]:
        """A multipart upload (`video`) or a JSON body (`{"uri": "s3://..."}`), `stride_frames`
        optional in either: one route reads both, so it takes the request as it comes."""
        media = _media_type(request)
        if media == "multipart/form-data":
            async with request.form() as form:
                return await run_in_threadpool(self._surprise, *_surprise_fields(form))
        if media == "application/json":
            return await run_in_threadpool(self._surprise, *_surprise_fields(await _json_object(request)))
        raise HTTPException(415, f"send multipart/form-data (a video file) or application/json (a uri), "
                                 f"got {media or 'no Content-Type'}")

    def _surprise(self, upload: FormFile | None, uri: str | None, stride: int | None) -> dict[str, Any]:
        mask_index, context_steps, kind = self._surprise_setup()
        data = self._read_upload(upload) if upload is not None else self._fetch(uri)
        t0 = time.perf_counter()
        self._check_video(data, uri or upload.filename or "upload")
        with _decoding(uri or upload.filename or "upload"):
            frames, truncated = self._decode_video(data)
        video = clips_to_tensor(frames[None], torch.device("cpu"))[0]  # (3, F, H, W)
        curve = surprise_curve(self.model, video, context_steps=context_steps, mask_index=mask_index,
                               stride_frames=stride)
        return {
            **curve.as_dict(),
            "fps": self.cfg.data.fps,
            "frames": len(frames),
            "truncated": truncated,
            "mask": kind,
            "model": self.model_name,
            "latency_ms": round(1000 * (time.perf_counter() - t0), 1),
        }


def build_app(info: dict[str, Any], cfg: ServeConfig):
    return JepaService.options(
        autoscaling_config={
            "min_replicas": cfg.min_replicas,
            "max_replicas": cfg.max_replicas,
            "target_ongoing_requests": cfg.target_ongoing_requests,
            "upscale_delay_s": cfg.upscale_delay_s,
            "downscale_delay_s": cfg.downscale_delay_s,
        },
        max_ongoing_requests=cfg.max_ongoing_requests,
        ray_actor_options={"num_cpus": cfg.num_cpus, "runtime_env": {"env_vars": forwarded_env()}},
    ).bind(info, cfg)


def app_builder(args: dict[str, Any]):
    """The app for Ray's own deploy path (`serve run` / `serve deploy` of a Serve config file, a
    KubeRay RayService): `import_path: ray_jobs.serve_app:app_builder`, with `args` holding
    `model` (models:/NAME@ALIAS, resolved here, once) and any `ServeConfig` key. Host, port and
    request timeout belong to the file's `http_options` there, so they are refused in `args`."""
    args = dict(args)
    model = args.pop("model", None)
    if not isinstance(model, str):
        raise ValueError("Serve config args need `model: models:/NAME@ALIAS` (or models:/NAME/VERSION)")
    misplaced = sorted({"host", "port", "request_timeout_s"} & set(args))
    if misplaced:
        raise ValueError(f"{', '.join(misplaced)}: set these in the Serve config's http_options, not in args")
    return build_app(tracking.resolve_model_version(model), from_dict(ServeConfig, args))


def deploy(model_uri: str, cfg: ServeConfig | None = None) -> str:
    """Deploy (or update) the app on the running cluster (RAY_ADDRESS, or the one this process is
    connected to); returns its base URL. The app outlives this call.

    An alias is resolved here, once: the app serves that version until the next deploy or
    `reload`. Updating a running app is Serve's rolling update: new replicas start and become
    healthy before the old ones drain, so requests keep being answered, each by one version."""
    cfg = cfg or ServeConfig()
    require_cluster("deploy into")
    info = tracking.resolve_model_version(model_uri)  # a clear error here if the model is unknown
    connect()
    serve.start(http_options={"host": cfg.host, "port": cfg.port, "request_timeout_s": cfg.request_timeout_s})
    serve.run(build_app(info, cfg), name=APP_NAME, route_prefix="/", blocking=False)
    return f"http://{cfg.host}:{cfg.port}"


def reload(cfg: ServeConfig | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Resolve the running app's model URI again (e.g. after `jepa models promote` moved its
    alias) and move every replica to that version if it changed; `cfg` replaces the app's config
    when given. Returns (the version served before, the version served now)."""
    require_cluster("reload")
    connect()
    try:
        running = serve.get_app_handle(APP_NAME).options(method_name="deployed").remote().result()
    except serve.exceptions.RayServeException as err:
        raise ClusterError(f"no Serve app {APP_NAME!r} is running to reload ({err}); deploy one first") from None
    before = running["model"]
    now = tracking.resolve_model_version(before["uri"])
    running_cfg = ServeConfig(**running["config"])
    new_cfg = cfg or running_cfg
    if now["version"] != before["version"] or new_cfg != running_cfg:
        serve.run(build_app(now, new_cfg), name=APP_NAME, route_prefix="/", blocking=False)
    return before, now
