"""The Serve app's settings (`jepa serve deploy --config configs/serve.yaml`): scaling, where it
listens, and the limits every request is held to."""

from __future__ import annotations

from dataclasses import dataclass, field

from jepa.config import load_yaml


@dataclass
class ServeConfig:
    min_replicas: int = 1
    """Autoscaling floor."""
    max_replicas: int = 2
    """Autoscaling ceiling."""
    target_ongoing_requests: float = 2.0
    """Requests in flight per replica that autoscaling aims for."""
    upscale_delay_s: float = 30.0
    """How long load must stay above the target before autoscaling adds a replica."""
    downscale_delay_s: float = 600.0
    """How long load must stay below the target before autoscaling removes a replica."""
    num_cpus: float = 0.5
    """Ray CPUs reserved by each replica."""
    host: str = "127.0.0.1"
    """HTTP bind address of the Serve proxy (0.0.0.0 in a cluster, where a Service routes to it)."""
    port: int = 8000
    """HTTP port of the Serve proxy."""
    max_ongoing_requests: int = 16
    """Requests a replica takes at once (Serve queues the rest at the proxy); at least
    max_batch_size, or batches never fill."""
    max_batch_size: int = 8
    """/v1/embed requests that arrive together run as one forward of up to this many clips."""
    batch_wait_timeout_s: float = 0.01
    """How long the first request of a batch waits for others to join it."""
    request_timeout_s: float = 120.0
    """The proxy answers 408 to a request that has not finished in this time."""
    max_upload_mb: float = 64.0
    """Largest request body, refused with 413 from its Content-Length before it is read; also
    the largest object a `uri` may name and the largest image in a JSON body."""
    max_video_seconds: float = 600.0
    """Uploaded (or `uri`) videos longer than this are refused with 413."""
    max_image_side: int = 4096
    """Videos and images larger than this many pixels on a side are refused with 413."""
    max_surprise_frames: int = 256
    """/v1/surprise scores at most this many frames (at the model's fps) from a video's start; the
    answer says when a video was longer (`truncated`)."""
    max_plan_samples: int = 2048
    """/v1/plan refuses more CEM samples per iteration than this (422): one request must not hold a
    replica for minutes."""
    allowed_buckets: list[str] = field(default_factory=list)
    """Buckets a `{"uri": "s3://BUCKET/KEY"}` input may name; any other is a 403 before any read.
    Empty: uri inputs are refused."""

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)


def load_serve_config(path: str | None, overrides: list[str]) -> ServeConfig:
    return load_yaml(ServeConfig, path, overrides)
