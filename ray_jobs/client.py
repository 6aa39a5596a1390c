"""A small Python client of the Serve app's HTTP API (docs/http-api.md).

    client = JepaClient("http://127.0.0.1:8000")          # token: JEPA_API_TOKEN by default
    client.model()["version"]
    client.embed("clip.mp4")["embedding"]
    client.surprise(uri="s3://jepa/raw/physics/physics_000000.mp4")["max"]

A 503 (Serve has no replica ready, e.g. while scaling up) or a refused connection is retried with
exponential backoff; any other error answer raises `ApiError` with the app's message and the
request id to quote.
"""

from __future__ import annotations

import base64
import io
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import requests

DEFAULT_URL = "http://127.0.0.1:8000"
RETRY_STATUSES = (503,)


class ApiError(RuntimeError):
    """An error answer from the app: `status`, the app's `message`, and its `request_id`."""

    def __init__(self, status: int, message: str, request_id: str | None = None):
        super().__init__(f"HTTP {status}: {message}" + (f" (request {request_id})" if request_id else ""))
        self.status, self.message, self.request_id = status, message, request_id


def image_b64(image: np.ndarray | bytes | str | Path) -> str:
    """A uint8 (H, W, 3) array, PNG/JPEG bytes, or an image file -> the base64 string the API takes."""
    if isinstance(image, np.ndarray):
        from PIL import Image

        out = io.BytesIO()
        Image.fromarray(image).save(out, format="PNG")
        image = out.getvalue()
    elif isinstance(image, (str, Path)):
        image = Path(image).read_bytes()
    return base64.b64encode(image).decode()


class JepaClient:
    def __init__(self, url: str | None = None, token: str | None = None, *, timeout_s: float = 120.0,
                 retries: int = 4, backoff_s: float = 0.5):
        self.url = (url or os.environ.get("JEPA_SERVE_URL") or DEFAULT_URL).rstrip("/")
        self.token = token if token is not None else os.environ.get("JEPA_API_TOKEN")
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self.session = requests.Session()

    def _call(self, method: str, route: str, **kwargs) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        for attempt in range(self.retries + 1):
            try:
                r = self.session.request(method, f"{self.url}{route}", headers=headers, timeout=self.timeout_s,
                                         **kwargs)
            except requests.ConnectionError:
                if attempt == self.retries:
                    raise
            else:
                if r.status_code not in RETRY_STATUSES or attempt == self.retries:
                    break
            time.sleep(self.backoff_s * 2**attempt)
        if r.ok:
            return r.json()
        try:
            body = r.json()
        except ValueError:
            body = {}
        message = body.get("error") if isinstance(body, dict) else None
        raise ApiError(r.status_code, message or r.text[:300] or r.reason,
                       (body.get("request_id") if isinstance(body, dict) else None) or r.headers.get("X-Request-ID"))

    def model(self) -> dict[str, Any]:
        """The served model version, its clip spec and (action-conditioned models) its env."""
        return self._call("GET", "/v1/model")

    def embed(self, video: bytes | str | Path, start_s: float = 0.0) -> dict[str, Any]:
        """The pooled embedding of one clip of `video` (a file path or its bytes) from `start_s`."""
        data = video if isinstance(video, bytes) else Path(video).read_bytes()
        return self._call("POST", "/v1/embed", files={"video": ("video", data, "application/octet-stream")},
                          data={"start_s": str(start_s)})

    def surprise(self, video: bytes | str | Path | None = None, *, uri: str | None = None,
                 stride_frames: int | None = None) -> dict[str, Any]:
        """The surprise curve of an uploaded video, or of the object at `uri` (s3://...)."""
        if (video is None) == (uri is None):
            raise ValueError("give a video or a uri, not both")
        if uri is not None:
            body = {"uri": uri, **({"stride_frames": stride_frames} if stride_frames is not None else {})}
            return self._call("POST", "/v1/surprise", json=body)
        data = video if isinstance(video, bytes) else Path(video).read_bytes()
        form = {"stride_frames": str(stride_frames)} if stride_frames is not None else {}
        return self._call("POST", "/v1/surprise", files={"video": ("video", data, "application/octet-stream")},
                          data=form)

    def predict(self, frames: list, actions: list, state: list | None = None) -> dict[str, Any]:
        """The imagined representation of each future step (action-conditioned models)."""
        body = {"frames": [image_b64(f) for f in frames], "actions": np.asarray(actions, float).tolist()}
        if state is not None:
            body["state"] = np.asarray(state, float).tolist()
        return self._call("POST", "/v1/predict", json=body)

    def plan(self, observation, goal, state: list | None = None, **cem: Any) -> dict[str, Any]:
        """Planned actions from `observation` toward the `goal` image; `cem` takes the optional
        horizon, samples, iterations, elites, seed and init_actions."""
        body = {"observation": image_b64(observation), "goal": image_b64(goal), **cem}
        if state is not None:
            body["state"] = np.asarray(state, float).tolist()
        return self._call("POST", "/v1/plan", json=body)
