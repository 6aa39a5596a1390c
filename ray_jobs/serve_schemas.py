"""OpenAPI descriptions of the Serve app's routes (served at /docs and /openapi.json).

The JSON routes read their bodies themselves, so that every problem is a 4xx naming the field
(`serve_world`, `serve_app`); these models only describe the bodies and answers for the schema.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorAnswer(BaseModel):
    error: str = Field(description="What was wrong, naming the field or limit")
    request_id: str | None = Field(None, description="The X-Request-ID of the request, to quote")


class SurpriseByUri(BaseModel):
    uri: str = Field(description="s3://BUCKET/KEY of a video, BUCKET one of the Serve config's allowed_buckets")
    stride_frames: int | None = Field(None, ge=1, description="Frames between window starts; default one tubelet")


class SurpriseUpload(BaseModel):
    video: bytes = Field(description="A video file (e.g. MP4)")
    stride_frames: int | None = Field(None, ge=1, description="Frames between window starts; default one tubelet")


class PredictRequest(BaseModel):
    frames: list[str] = Field(min_length=1, max_length=16, description="Context frames, base64 PNG or JPEG, square")
    actions: list[list[float]] = Field(description="The actions between the context frames, then those to imagine")
    state: list[float] | None = Field(None, description="qpos then qvel of the last frame (models with a state token)")


class PlanRequest(BaseModel):
    observation: str = Field(description="The current frame, base64 PNG or JPEG, square")
    goal: str = Field(description="The goal image, base64 PNG or JPEG, square")
    state: list[float] | None = Field(None, description="qpos then qvel (models with a state token)")
    horizon: int | None = Field(None, ge=1, le=32, description="Agent steps planned")
    samples: int | None = Field(None, ge=1, description="CEM samples per iteration, at most max_plan_samples")
    iterations: int | None = Field(None, ge=1, le=50)
    elites: int | None = Field(None, ge=1)
    seed: int | None = Field(None, ge=0)
    init_actions: list[list[float]] | None = Field(None, description="A warm start: `warm_start` of the last answer")


class ModelAnswer(BaseModel):
    name: str
    version: int
    run_id: str
    uri: str
    arch: str
    embed_dim: int
    clip: dict[str, Any]
    token_grid: list[int]
    parameters: int
    action_conditioned: bool
    env: dict[str, Any] | None = None


class EmbedAnswer(BaseModel):
    model: str
    embedding: list[float]
    dim: int
    token_grid: list[int]
    batch: dict[str, int]
    latency_ms: float


class SurpriseAnswer(BaseModel):
    surprise: list[float]
    predicted_from_frame: list[int]
    window_frames: int
    context_frames: int
    stride_frames: int
    max: float
    mean: float
    score: str
    """l1, or nll for a model with error scales (docs/evaluation.md)."""
    fps: float
    frames: int
    truncated: bool
    mask: str
    model: str
    latency_ms: float


class PredictAnswer(BaseModel):
    model: str
    steps: int
    dim: int
    predictions: list[list[float]]
    states: list[list[float]] | None = None
    latency_ms: float


class PlanAnswer(BaseModel):
    model: str
    actions: list[list[float]]
    frameskip: int
    agent_actions: list[list[float]]
    replan_every: int
    warm_start: list[list[float]]
    energy: list[float]
    latency_ms: float


_ERRORS = {
    400: "Empty, truncated or undecodable input; malformed JSON; a malformed uri",
    401: "JEPA_API_TOKEN is set and the bearer token is missing or wrong",
    403: "uri outside the allowed buckets",
    404: "No object at the uri",
    408: "The request ran longer than request_timeout_s",
    409: "The model cannot answer this route (no action head; an image model has no surprise)",
    413: "Body, object, video duration or image size beyond the Serve config's limits",
    415: "Not a video (a still image, audio only), or the wrong Content-Type",
    422: "A missing, unknown or out-of-range field",
}


def responses(answer: type[BaseModel] | None, *statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses` of a route: its answer model, and ErrorAnswer for each status it can give."""
    out: dict[int | str, dict[str, Any]] = {200: {"model": answer}} if answer else {}
    return out | {s: {"model": ErrorAnswer, "description": _ERRORS[s]} for s in statuses}


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


def surprise_body() -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": SurpriseUpload.model_json_schema()},
        "application/json": {"schema": SurpriseByUri.model_json_schema()},
    }}}
