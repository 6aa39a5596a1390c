"""The Serve app's input guards, without a server (the HTTP paths are in test_serve_surprise)."""

import pytest
from fastapi import HTTPException

from pipelines.synth_physics import PhysicsConfig, make_video
from ray_jobs.serve_guard import check_uri, check_video, token_matches


def _status(call, *args) -> int:
    with pytest.raises(HTTPException) as err:
        call(*args)
    return err.value.status_code


def test_uris_outside_the_allowed_buckets_are_refused():
    check_uri("s3://jepa/videos/clip.mp4", ["jepa"])  # allowed: no exception
    cases = {
        "file:///etc/passwd": 400, "/etc/passwd": 400, "http://jepa/clip.mp4": 400, "s3:///clip.mp4": 400,
        "s3://other/clip.mp4": 403, "s3://jepa": 400, "s3://jepa/": 400, "s3://jepa/a/../../b.mp4": 400,
        "s3://jepa/./a.mp4": 400, "s3://jepa//a.mp4": 400, "s3://jepa/a//b.mp4": 400, "s3://jepa/a\\..\\b": 400,
    }
    for uri, status in cases.items():
        assert _status(check_uri, uri, ["jepa"]) == status, uri
    assert _status(check_uri, "s3://jepa/clip.mp4", []) == 403  # no bucket allowed at all


def test_video_limits_and_media_classes():
    video = make_video(PhysicsConfig(size=64, seconds=2, fps=8), seed=0)[0]
    assert check_video(video, "v", max_seconds=2.5, max_side=64)["n_frames"] == 16
    assert _status(check_video, video, "v", 1.5, 64) == 413  # too long
    assert _status(check_video, video, "v", 2.5, 32) == 413  # too large a frame
    assert _status(check_video, b"", "v", 9, 99) == 400
    assert _status(check_video, b"\x89PNG\r\n\x1a\n" + bytes(64), "v", 9, 99) == 415
    assert _status(check_video, video[: len(video) // 3], "v", 9, 99) == 400


def test_token_comparison():
    assert token_matches("Bearer s3cret", "s3cret")
    assert not token_matches("Bearer s3cre", "s3cret")
    assert not token_matches(None, "s3cret")
    assert not token_matches("s3cret", "s3cret")
