"""Zero-downtime model swaps: `jepa models promote` moves an alias, `jepa serve reload` rolls the
app onto that version while a client keeps calling it. Real MLflow, Ray Serve and HTTP."""

import socket
import threading
import time

import numpy as np
import pytest
import requests

from pipelines.synth_physics import PhysicsConfig, make_video
from ray_jobs.tiny_models import register_tiny

pytestmark = pytest.mark.integration

NAME = "jepa-swap"


@pytest.fixture(scope="module")
def served(stack_client_env):
    """Versions 1 and 2 of one tiny model (different seeds, so different weights), served
    through models:/NAME@champion pointing at version 1."""
    from ray import serve

    from ray_jobs import tracking
    from ray_jobs.serve_app import deploy
    from ray_jobs.serve_config import ServeConfig

    for seed in (0, 1):
        register_tiny(NAME, [f"train.seed={seed}"], experiment="serve-swap")
    tracking.promote(NAME, 1, alias="champion")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    yield deploy(f"models:/{NAME}@champion", ServeConfig(port=port, min_replicas=1, max_replicas=1, num_cpus=0.25))
    serve.shutdown()


def _reference_embeddings(video: bytes) -> dict[int, np.ndarray]:
    """The pooled embedding of `video` by each version, computed in this process."""
    import torch

    from jepa.checkpoint import load_model
    from jepa.transforms import clips_to_tensor
    from pipelines.video import decode_clip
    from ray_jobs import tracking

    out = {}
    for version in (1, 2):
        model, cfg = load_model(tracking.download_checkpoint(f"models:/{NAME}/{version}"))
        clip = decode_clip(video, cfg.model.num_frames, cfg.data.fps, cfg.model.img_size, start_s=0.0)
        with torch.no_grad():
            out[version] = model.embed(clips_to_tensor(clip[None]))[0].mean(0).numpy()
    return out


def test_reload_swaps_versions_under_traffic_without_a_failed_request(served, capsys):
    from ray_jobs import tracking
    from ray_jobs.cli import main

    video = make_video(PhysicsConfig(size=32, seconds=1, fps=8), seed=3)[0]
    reference = _reference_embeddings(video)
    assert not np.allclose(reference[1], reference[2], atol=1e-3)
    answers, failures, stop = [], [], threading.Event()

    def client():
        while not stop.is_set():
            try:
                r = requests.post(f"{served}/v1/embed", files={"video": ("v.mp4", video, "video/mp4")}, timeout=60)
            except requests.RequestException as err:
                failures.append(repr(err))
                continue
            if r.status_code != 200:
                failures.append(f"{r.status_code} {r.text}")
            else:
                answers.append((time.monotonic(), r.json()))

    threads = [threading.Thread(target=client) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        time.sleep(3)
        tracking.promote(NAME, 2, alias="champion")
        assert main(["serve", "reload"]) == 0
        reloaded = time.monotonic()
        assert "version 1 -> 2 on every replica" in capsys.readouterr().out
        time.sleep(3)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not failures, failures[:3]
    versions = [int(a["model"].rsplit("/", 1)[1]) for _, a in answers]
    assert versions[0] == 1 and versions[-1] == 2, versions
    assert {v for (t, _), v in zip(answers, versions) if t > reloaded + 1} == {2}  # old replicas drained
    for (_, answer), version in zip(answers, versions):  # each answer is wholly one version's
        np.testing.assert_allclose(answer["embedding"], reference[version], rtol=1e-4, atol=1e-5)
    info = requests.get(f"{served}/v1/model", timeout=10).json()
    assert info["version"] == 2 and info["uri"] == f"models:/{NAME}@champion"
    assert main(["serve", "reload"]) == 0
    assert "still version 2" in capsys.readouterr().out
