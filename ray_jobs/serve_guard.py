"""What the Serve app refuses before it spends work: oversize bodies, URIs outside the allowed
buckets, uploads that are not videos (the ingest's own header checks), videos beyond the limits,
and wrong bearer tokens. Each refusal is an `HTTPException` (4xx) or, for the body size, a 413
sent by the ASGI middleware before the body is read.
"""

from __future__ import annotations

import hmac
import json
import posixpath
from typing import Any

from fastapi import HTTPException

from pipelines.probe import VideoScan
from pipelines.storage import is_s3
from pipelines.video import VideoDecodeError, probe

MEDIA_ERRORS = {"still_image": 415, "not_video": 415, "audio_only": 415, "zero_bytes": 400, "truncated": 400}
"""Status per header verdict of `pipelines.probe.VideoScan`: the same classes the ingest quarantines."""


def token_matches(header: str | None, token: str) -> bool:
    """`Authorization: Bearer TOKEN`, compared in constant time (no timing oracle on the token)."""
    return hmac.compare_digest((header or "").encode(), f"Bearer {token}".encode())


def check_uri(uri: str, allowed_buckets: list[str]) -> None:
    """Refuse, before any read, a URI outside `s3://ALLOWED/KEY`: other schemes (file://, http://),
    other buckets, and keys that are empty, absolute or walk with `.` or `..` segments."""
    if not is_s3(uri):
        raise HTTPException(400, f"uri must name an object as s3://BUCKET/KEY, got {uri!r}")
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket:
        raise HTTPException(400, f"bad uri: no bucket in {uri!r}")
    if not allowed_buckets:
        raise HTTPException(403, "uri inputs are off on this deployment: the Serve config lists no allowed_buckets")
    if bucket not in allowed_buckets:
        raise HTTPException(403, f"bucket {bucket!r} is not one this deployment reads "
                                 f"(allowed: {', '.join(allowed_buckets)})")
    parts = key.split("/")
    if not key or key.startswith("/") or "\\" in key or any(p in (".", "..") for p in parts) \
            or posixpath.normpath(key) != key:
        raise HTTPException(400, f"bad uri: the key must be a plain object path, got {key!r}")


def check_video(data: bytes, name: str, max_seconds: float, max_side: int) -> dict[str, Any]:
    """The upload's container metadata (`pipelines.video.probe`) if it is a video within the
    limits; otherwise the 4xx the ingest's header checks (or the limits) call for."""
    with VideoScan(data) as scan:
        verdict = scan.header_verdict
    if verdict is not None:
        raise HTTPException(MEDIA_ERRORS.get(verdict.reason, 400),
                            f"{name} is not a usable video ({verdict.reason}): {verdict.detail}")
    try:
        info = probe(data)
    except VideoDecodeError as e:
        raise HTTPException(400, f"could not decode {name}: {e}") from None
    if info["n_frames"] <= 1:
        raise HTTPException(415, f"{name} is not a usable video (still_image): a video stream of one frame")
    if info["duration_s"] > max_seconds:
        raise HTTPException(413, f"{name} lasts {info['duration_s']:.1f} s, more than the {max_seconds:g} s "
                                 f"this deployment accepts")
    if max(info["width"], info["height"]) > max_side:
        raise HTTPException(413, f"{name} is {info['width']}x{info['height']}, larger than {max_side} px "
                                 f"on a side")
    return info


class BodyTooLarge(HTTPException):
    """Raised from the body stream: an HTTPException, so that FastAPI's form parsing passes it on
    as a 413 instead of wrapping it in a 400."""

    def __init__(self, max_bytes: int):
        super().__init__(413, f"request body larger than {max_bytes} bytes")


class BodyLimit:
    """ASGI middleware: a request whose body exceeds the app's `state.max_body_bytes` (set by the
    replica from its config) gets a 413 JSON error. A declared Content-Length is checked before
    anything is read; a chunked body is counted as it arrives."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        max_bytes = getattr(scope["app"].state, "max_body_bytes", None) if "app" in scope else None
        if scope["type"] != "http" or max_bytes is None:
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or ()).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > max_bytes):
            return await _refuse(scope, send, BodyTooLarge(max_bytes))
        seen = 0
        started = False

        async def counting_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > max_bytes:
                    raise BodyTooLarge(max_bytes)
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge as e:  # raised where no exception handler caught it
            if not started:
                await _refuse(scope, send, e)


async def _refuse(scope, send, error: HTTPException) -> None:
    request_id = dict(scope.get("headers") or ()).get(b"x-request-id", b"").decode() or None
    body = json.dumps({"error": error.detail, "request_id": request_id}).encode()
    await send({"type": "http.response.start", "status": error.status_code,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
