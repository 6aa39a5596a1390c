"""`POST /v1/surprise` against the real parts: a model registered in MLflow the way training
registers one, served by Ray Serve over HTTP, videos uploaded or read from SeaweedFS."""

import functools
import io
import math
import socket

import pytest
import requests

from pipelines.storage import put_bytes
from pipelines.synth_physics import PhysicsConfig, make_video
from ray_jobs.tiny_models import register_tiny

pytestmark = pytest.mark.integration

TOKEN = "test-token"
# context_steps=1 (2 frames), not the default half (2 steps, 4 frames): the answer shows which was used
FUTURE_MASKS = "masks=[{num_blocks: 8, spatial_scale: 0.15}, {kind: future, context_steps: 1}]"
WINDOW, STRIDE, FRAMES = 8, 2, 24  # frames of a window, of the default stride (one tubelet), of _video()
MAX_FRAMES = 32
MAX_SECONDS, MAX_SIDE = 6, 96


@functools.cache
def _video(seconds: float = FRAMES / 8, seed: int = 1, size: int = 64) -> bytes:
    """A synthetic physics MP4 at 8 fps, 64 px; by default FRAMES frames long."""
    return make_video(PhysicsConfig(size=size, seconds=seconds, fps=8), seed=seed)[0]


def _png() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


def _register(name: str, overrides: list[str]) -> str:
    return register_tiny(name, overrides, experiment="surprise-serve")


@pytest.fixture(scope="module")
def serve_config(stack_client_env):
    from ray_jobs.serve_config import ServeConfig

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return ServeConfig(port=port, max_replicas=1, num_cpus=0.25, max_upload_mb=1, max_surprise_frames=MAX_FRAMES,
                       max_video_seconds=MAX_SECONDS, max_image_side=MAX_SIDE, allowed_buckets=[stack_client_env.bucket])


@pytest.fixture(scope="module")
def endpoint(stack_client_env, serve_config):
    """The app on a model with a future mask config; the token set for the module, so that every
    deploy below (its replicas take the variable at deploy time) requires it."""
    from ray import serve

    from ray_jobs.serve_app import deploy

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JEPA_API_TOKEN", TOKEN)
        yield deploy(_register("jepa-surprise", [FUTURE_MASKS]), serve_config)
        serve.shutdown()


@pytest.fixture(scope="module")
def stored_video(stack_client_env):
    uri = f"s3://{stack_client_env.bucket}/surprise/clip.mp4"
    put_bytes(uri, _video())
    return uri


def _auth(token=TOKEN):
    return {"Authorization": f"Bearer {token}"} if token else {}


def _upload(url, data, token=TOKEN, name="clip.mp4", **form):
    return requests.post(f"{url}/v1/surprise", files={"video": (name, data, "video/mp4")}, data=form,
                         headers=_auth(token), timeout=120)


def _by_uri(url, body, token=TOKEN):
    return requests.post(f"{url}/v1/surprise", json=body, headers=_auth(token), timeout=120)


def _ok(response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()


def test_surprise_of_an_upload_and_of_the_same_object_by_uri(endpoint, stored_video):
    body = _ok(_upload(endpoint, _video()))
    n_windows = (FRAMES - WINDOW) // STRIDE + 1
    assert len(body["surprise"]) == n_windows == 9
    assert all(math.isfinite(v) and v > 0 for v in body["surprise"])
    assert body["max"] >= body["mean"] > 0 and body["max"] == pytest.approx(max(body["surprise"]), abs=1e-5)
    assert body["predicted_from_frame"] == [s + 2 for s in range(0, FRAMES - WINDOW + 1, STRIDE)]
    assert {k: body[k] for k in ("window_frames", "context_frames", "stride_frames", "fps", "frames", "mask",
                                 "score")} == {
        "window_frames": WINDOW, "context_frames": 2, "stride_frames": STRIDE, "fps": 8.0, "frames": FRAMES,
        "mask": "future", "score": "l1"}
    assert body["truncated"] is False and body["model"] == "jepa-surprise/1" and body["latency_ms"] > 0

    same = _ok(_by_uri(endpoint, {"uri": stored_video}))
    assert same["surprise"] == body["surprise"] and same["max"] == body["max"]

    strided = _ok(_upload(endpoint, _video(), stride_frames="3"))
    assert strided["stride_frames"] == 3 and len(strided["surprise"]) == (FRAMES - WINDOW) // 3 + 1 == 6
    assert strided["surprise"][::2] == pytest.approx(body["surprise"][::3], abs=1e-4)  # windows at frames 0, 6, 12
    assert _ok(_by_uri(endpoint, {"uri": stored_video, "stride_frames": 3}))["surprise"] == strided["surprise"]


def test_a_long_video_is_scored_on_its_first_frames(endpoint):
    body = _ok(_upload(endpoint, _video(5)))  # 40 frames
    assert body["truncated"] is True and body["frames"] == MAX_FRAMES
    assert len(body["surprise"]) == (MAX_FRAMES - WINDOW) // STRIDE + 1


def test_bad_requests_get_4xx_json_and_the_replica_survives(endpoint, stored_video, stack_client_env):
    bucket = stack_client_env.bucket
    garbage = f"s3://{bucket}/surprise/garbage.mp4"
    put_bytes(garbage, b"this is not an mp4")
    large = f"s3://{bucket}/surprise/large.bin"
    put_bytes(large, bytes(2**20 + 1))
    url = f"{endpoint}/v1/surprise"
    cases = {
        "not a video": (_upload(endpoint, b"this is not an mp4"), 415),
        "still image": (_upload(endpoint, _png(), name="frame.png"), 415),
        "one-frame video": (_upload(endpoint, _video(1 / 8)), 415),
        "empty upload": (_upload(endpoint, b""), 400),
        "too long": (_upload(endpoint, _video(MAX_SECONDS + 1)), 413),
        "too wide": (_upload(endpoint, _video(size=MAX_SIDE + 32)), 413),
        "truncated mp4": (_upload(endpoint, _video()[: len(_video()) // 3]), 400),
        "too short": (_upload(endpoint, _video(0.5)), 422),
        "too large": (_upload(endpoint, bytes(2**20 + 1)), 413),
        "both": (_upload(endpoint, _video(), uri=stored_video), 422),
        "neither (form)": (requests.post(url, files={"stride_frames": (None, "2")}, headers=_auth(), timeout=30), 422),
        "neither (json)": (_by_uri(endpoint, {"stride_frames": 2}), 422),
        "stride 0": (_upload(endpoint, _video(), stride_frames="0"), 422),
        "stride not a number": (_upload(endpoint, _video(), stride_frames="two"), 422),
        "stride 0 (json)": (_by_uri(endpoint, {"uri": stored_video, "stride_frames": 0}), 422),
        "stride 1.5 (json)": (_by_uri(endpoint, {"uri": stored_video, "stride_frames": 1.5}), 422),
        "stride true (json)": (_by_uri(endpoint, {"uri": stored_video, "stride_frames": True}), 422),
        "unknown key": (_by_uri(endpoint, {"uri": stored_video, "stride": 2}), 422),
        "uri not a string": (_by_uri(endpoint, {"uri": 3}), 422),
        "json not an object": (_by_uri(endpoint, [stored_video]), 422),
        "json not json": (requests.post(url, data=b"{uri:", headers=_auth() | {"Content-Type": "application/json"},
                                        timeout=30), 400),
        "other content type": (requests.post(url, data=stored_video, headers=_auth(), timeout=30), 415),
        "local path": (_by_uri(endpoint, {"uri": "/etc/passwd"}), 400),
        "file uri": (_by_uri(endpoint, {"uri": "file:///etc/passwd"}), 400),
        "no key": (_by_uri(endpoint, {"uri": f"s3://{bucket}"}), 400),
        "no bucket": (_by_uri(endpoint, {"uri": "s3:///clip.mp4"}), 400),
        "bucket not allowed": (_by_uri(endpoint, {"uri": "s3://other-bucket/clip.mp4"}), 403),
        "bad bucket name": (_by_uri(endpoint, {"uri": "s3://Bad_Bucket!/clip.mp4"}), 403),
        "dot-dot key": (_by_uri(endpoint, {"uri": f"s3://{bucket}/surprise/../../other/clip.mp4"}), 400),
        "absolute key": (_by_uri(endpoint, {"uri": f"s3://{bucket}//clip.mp4"}), 400),
        "missing object": (_by_uri(endpoint, {"uri": f"s3://{bucket}/surprise/nope.mp4"}), 404),
        "object not a video": (_by_uri(endpoint, {"uri": garbage}), 415),
        "object too large": (_by_uri(endpoint, {"uri": large}), 413),
        "no token": (_upload(endpoint, _video(), token=None), 401),
        "wrong token": (_by_uri(endpoint, {"uri": stored_video}, token="nope"), 401),
    }
    for case, (response, status) in cases.items():
        assert response.status_code == status, (case, response.status_code, response.text)
        assert response.json()["error"], case
    assert "too short" in cases["too short"][0].json()["error"]
    assert requests.get(f"{endpoint}/healthz", timeout=10).json() == {"status": "ok"}
    assert len(_ok(_upload(endpoint, _video()))["surprise"]) == 9


def _raw_request(endpoint: str, head: str, chunks=()) -> str:
    """Send a request head (and body chunks) over a plain socket; the response's status line and
    JSON error (the body comes with a Content-Length)."""
    host, port = endpoint.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(head.encode())
        try:
            for chunk in chunks:
                sock.sendall(chunk)
        except OSError:  # the server answered and closed while the body was still coming
            pass
        reply = sock.makefile("rb")
        status = reply.readline().decode()
        headers = dict(line.decode().lower().strip().split(": ", 1) for line in iter(reply.readline, b"\r\n"))
        return status + reply.read(int(headers["content-length"])).decode()


def test_an_oversize_body_is_refused_before_it_is_read(endpoint):
    head = (f"POST /v1/surprise HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: multipart/form-data; boundary=b\r\n")
    # 10 GB declared, nothing sent: only the Content-Length can have been read.
    reply = _raw_request(endpoint, head + "Content-Length: 10000000000\r\n\r\n")
    assert " 413 " in reply and "request body larger than 1048576 bytes" in reply
    # No length declared: the chunked body is counted as it arrives (1 MiB is the limit here).
    part = b'--b\r\nContent-Disposition: form-data; name="video"; filename="a.mp4"\r\n\r\n'
    chunks = [part] + [b"x" * 2**16] * 24  # a well-formed start, so the parser reads on
    chunked = [b"%x\r\n%s\r\n" % (len(c), c) for c in chunks]
    reply = _raw_request(endpoint, head + "Transfer-Encoding: chunked\r\n\r\n", chunked)
    assert " 413 " in reply and "request body larger than 1048576 bytes" in reply
    assert requests.get(f"{endpoint}/healthz", timeout=10).json() == {"status": "ok"}


def test_the_python_client_and_the_cli(endpoint, stored_video, capsys, monkeypatch, tmp_path):
    import json

    from ray_jobs.cli import main
    from ray_jobs.client import ApiError, JepaClient

    client = JepaClient(endpoint)  # the token from JEPA_API_TOKEN, set for this module
    assert client.model()["name"] == "jepa-surprise"
    by_upload, by_uri = client.surprise(_video()), client.surprise(uri=stored_video)
    assert by_upload["surprise"] == by_uri["surprise"] == _ok(_upload(endpoint, _video()))["surprise"]
    with pytest.raises(ApiError) as err:
        client.surprise(_png())
    assert err.value.status == 415 and "still_image" in err.value.message and err.value.request_id

    monkeypatch.setenv("JEPA_SERVE_URL", endpoint)
    assert main(["surprise", stored_video, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["surprise"] == by_uri["surprise"]
    assert main(["surprise", stored_video]) == 0
    assert f"max {by_uri['max']:.4f}" in capsys.readouterr().out
    path = tmp_path / "clip.mp4"
    path.write_bytes(_video())
    assert main(["embed", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["dim"] == 192
    with pytest.raises(SystemExit) as exit_:
        main(["surprise", str(path), "--url", endpoint.replace(endpoint.rsplit(":", 1)[1], "9")])
    assert exit_.value.code == 2


def test_a_model_without_future_masks_predicts_half_its_window(endpoint, serve_config):
    """Runs last: it redeploys the app on a model trained with multiblock masks only."""
    from ray_jobs.serve_app import deploy

    deploy(_register("jepa-surprise-multiblock", []), serve_config)
    body = _ok(_upload(endpoint, _video()))
    assert body["model"] == "jepa-surprise-multiblock/1" and body["mask"] == "multiblock"
    assert body["context_frames"] == WINDOW // 2 and len(body["surprise"]) == 9
    assert all(math.isfinite(v) for v in body["surprise"])
