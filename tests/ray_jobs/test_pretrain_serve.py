"""The product path against the real parts: videos in SeaweedFS -> Ray Data -> Ray Train (2-worker
gloo DDP) -> MLflow run + registry -> Ray Serve over HTTP."""

import math
import socket

import mlflow
import numpy as np
import pytest
import requests
from mlflow.tracking import MlflowClient

from jepa.config import load_config
from pipelines.storage import get_bytes
from pipelines.synth_physics import PhysicsConfig, synthesize

pytestmark = pytest.mark.integration

TOKEN = "test-token"
OVERRIDES = [
    "model.img_size=32", "model.num_frames=8", "model.patch_size=8",
    "model.pred_depth=1", "model.pred_embed_dim=64", "model.pred_num_heads=2",
    "train.steps=4", "train.batch_size=2", "train.num_workers=2", "train.log_every=1",
    "data.held_out_fraction=0.25", "tracking.experiment=e2e", "tracking.registered_model=jepa-e2e",
]


@pytest.fixture(scope="module")
def stack_env(stack_client_env):
    """12 synthetic videos under `source`, and the API token the Serve replicas will require."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JEPA_API_TOKEN", TOKEN)  # forwarded to the Serve replicas at deploy time
        source = f"s3://{stack_client_env.bucket}/raw/e2e"
        synthesize(12, source, seed=3, cfg=PhysicsConfig(size=64, seconds=1.5, fps=8), progress=False)
        yield source


@pytest.fixture(scope="module")
def trained(stack_env):
    """One pretraining run (direct mode: clips decoded from the raw videos) shared below."""
    from ray_jobs.pretrain import pretrain

    cfg = load_config("configs/tiny.yaml", OVERRIDES + [f"data.source={stack_env}"])
    return cfg, pretrain(cfg)


def test_pretrain_streams_ingested_shards(stack_env, local_stack):
    from pipelines.ingest import ingest
    from pipelines.shards import ClipSpec
    from ray_jobs.pretrain import pretrain

    dataset = f"s3://{local_stack.config.bucket}/datasets/e2e"
    report = ingest(stack_env, dataset, ClipSpec(fps=8, short_side=32, frames=8), progress=False)
    assert report.segments == 12, report.summary()
    cfg = load_config("configs/tiny.yaml", OVERRIDES + [
        f"data.dataset={dataset}", "data.held_out_fraction=0", "train.steps=3",
        "tracking.registered_model=jepa-e2e-shards",
    ])
    result = pretrain(cfg)
    losses = MlflowClient().get_metric_history(result.run_id, "loss")
    assert sorted(m.step for m in losses) == [0, 1, 2]
    params = MlflowClient().get_run(result.run_id).data.params
    assert params["ddp.fingerprint.rank0"] == params["ddp.fingerprint.rank1"]


def test_ddp_ranks_hold_identical_parameters(trained):
    cfg, result = trained
    params = MlflowClient().get_run(result.run_id).data.params
    prints = [params[f"ddp.fingerprint.rank{r}"] for r in range(cfg.train.num_workers)]
    assert len(prints) == 2 and prints[0] == prints[1]


def test_run_has_per_step_metrics_and_registered_alias(trained):
    cfg, result = trained
    client = MlflowClient()
    losses = client.get_metric_history(result.run_id, "loss")
    assert sorted(m.step for m in losses) == list(range(cfg.train.steps))
    assert all(math.isfinite(m.value) for m in losses)
    for name in ("lr", "clips_per_s", "target_std"):
        assert client.get_metric_history(result.run_id, name), name
    assert client.get_run(result.run_id).data.params["model.arch"] == "tiny"
    version = client.get_model_version_by_alias("jepa-e2e", "candidate")
    assert int(version.version) == result.version and version.run_id == result.run_id


def test_registered_model_loads_as_pyfunc(trained):
    cfg, _ = trained
    model = mlflow.pyfunc.load_model("models:/jepa-e2e@candidate")
    clips = np.random.default_rng(0).integers(0, 255, (2, 8, 32, 32, 3), dtype=np.uint8)
    embeddings = model.predict(clips)
    assert embeddings.shape == (2, 192) and np.isfinite(embeddings).all()


@pytest.fixture(scope="module")
def endpoint(trained):
    from ray import serve

    from ray_jobs.serve_app import deploy
    from ray_jobs.serve_config import ServeConfig

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JEPA_API_TOKEN", TOKEN)
        url = deploy("models:/jepa-e2e@candidate",
                     ServeConfig(port=port, max_replicas=1, num_cpus=0.25, max_batch_size=2, batch_wait_timeout_s=2.0))
    yield url
    serve.shutdown()


def _embed(url, data, name="clip.mp4", token=TOKEN, **form):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.post(f"{url}/v1/embed", files={"video": (name, data, "video/mp4")}, data=form,
                         headers=headers, timeout=60)


def test_serve_embeds_a_held_out_video_over_http(trained, endpoint):
    cfg, result = trained
    assert requests.get(f"{endpoint}/healthz", timeout=10).json() == {"status": "ok"}
    info = requests.get(f"{endpoint}/v1/model", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10).json()
    assert info["name"] == "jepa-e2e" and info["version"] == result.version
    assert info["token_grid"] == [4, 4, 4] and info["embed_dim"] == 192

    answer = _embed(endpoint, get_bytes(result.held_out[0]))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["dim"] == 192 and len(body["embedding"]) == 192
    assert all(math.isfinite(v) for v in body["embedding"])


def test_requests_that_arrive_together_share_one_forward(trained, endpoint):
    """max_batch_size 2 and a 2 s wait: two concurrent requests meet in one batch. Each answer
    is the embedding of its own clip, as a request alone gets it."""
    from concurrent.futures import ThreadPoolExecutor

    _, result = trained
    videos = [get_bytes(uri) for uri in result.held_out[:2]]
    with ThreadPoolExecutor(2) as pool:
        together = [r.json() for r in pool.map(lambda v: _embed(endpoint, v), videos)]
    assert [a["batch"]["size"] for a in together] == [2, 2]
    assert together[0]["batch"]["forward"] == together[1]["batch"]["forward"]
    alone = _embed(endpoint, videos[1]).json()  # waits 2 s for a partner, then runs alone
    assert alone["batch"]["size"] == 1 and alone["batch"]["forward"] > together[0]["batch"]["forward"]
    np.testing.assert_allclose(together[1]["embedding"], alone["embedding"], rtol=1e-4, atol=1e-5)
    assert not np.allclose(together[0]["embedding"], together[1]["embedding"])


def test_bad_requests_get_4xx_json_and_the_replica_survives(trained, endpoint):
    _, result = trained
    video = get_bytes(result.held_out[0])
    cases = {
        "not a video": (_embed(endpoint, b"this is not an mp4"), 415),
        "empty upload": (_embed(endpoint, b""), 400),
        "truncated mp4": (_embed(endpoint, video[: len(video) // 3]), 400),
        "negative start": (_embed(endpoint, video, start_s="-1"), 422),
        "no file": (requests.post(f"{endpoint}/v1/embed", headers={"Authorization": f"Bearer {TOKEN}"},
                                  timeout=30), 422),
        "no token": (_embed(endpoint, video, token=None), 401),
        "wrong token": (_embed(endpoint, video, token="nope"), 401),
    }
    for case, (response, status) in cases.items():
        assert response.status_code == status, (case, response.status_code, response.text)
        assert response.json()["error"], case
    assert _embed(endpoint, video).status_code == 200


def test_serve_status_json_and_unknown_model_errors(trained, endpoint, capsys, monkeypatch):
    import json

    from ray_jobs.cli import main

    assert main(["serve", "status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["jepa"]["status"] == "RUNNING"
    assert list(status["jepa"]["deployments"]["JepaService"]["replicas"].values()) == [1]
    for model, message in [("models:/no-such-model@candidate", "is not registered at"),
                           ("models:/jepa-e2e@no-such-alias", "is not registered at"),
                           ("jepa-e2e", "expected models:/NAME@ALIAS")]:
        with pytest.raises(SystemExit) as exit_info:
            main(["serve", "deploy", "--model", model])
        # stderr also carries the Serve replica's log lines that Ray streams to this driver
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert exit_info.value.code == 2 and len(errors) == 1 and message in errors[0], errors


def _scrape(pattern: str, timeout_s: float = 90.0) -> str:
    """The first line of the head node's Prometheus metrics matching `pattern` (Ray exports every
    few seconds, so this polls)."""
    import re
    import time

    import ray

    port = next(n["MetricsExportPort"] for n in ray.nodes() if n["Alive"])
    deadline = time.monotonic() + timeout_s
    while True:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        match = re.search(pattern, text, re.MULTILINE)
        if match or time.monotonic() > deadline:
            assert match, f"no metric line matches {pattern!r}"
            return match.group(0)
        time.sleep(2)


def test_request_ids_and_prometheus_metrics(trained, endpoint):
    _, result = trained
    answer = _embed(endpoint, get_bytes(result.held_out[0]))
    assert answer.status_code == 200 and answer.headers["X-Request-ID"]
    refused = requests.post(f"{endpoint}/v1/embed", files={"video": ("a.mp4", b"", "video/mp4")},
                            headers={"Authorization": f"Bearer {TOKEN}", "X-Request-ID": "caller-42"}, timeout=30)
    assert refused.status_code == 400 and refused.headers["X-Request-ID"] == "caller-42"
    assert refused.json()["request_id"] == "caller-42"

    route = r'route="/v1/embed"'
    assert _scrape(rf'^ray_jepa_requests_total\{{(?=[^}}]*{route})(?=[^}}]*status="200")[^}}]*\}} [1-9]')
    assert _scrape(rf'^ray_jepa_requests_total\{{(?=[^}}]*{route})(?=[^}}]*status="400")[^}}]*\}} [1-9]')
    assert _scrape(rf'^ray_jepa_request_latency_ms_count\{{(?=[^}}]*{route})[^}}]*\}} [1-9]')
    assert _scrape(rf'^ray_jepa_model_version\{{(?=[^}}]*version="{result.version}")[^}}]*\}} 1')
    assert _scrape(r'^ray_jepa_embed_batch_size_count\{[^}]*\} [1-9]')


def test_openapi_describes_every_route_and_its_errors(endpoint):
    spec = requests.get(f"{endpoint}/openapi.json", timeout=10).json()
    routes = {"/healthz", "/v1/model", "/v1/embed", "/v1/surprise", "/v1/predict", "/v1/plan"}
    assert set(spec["paths"]) == routes
    error = {"$ref": "#/components/schemas/ErrorAnswer"}
    for path in routes - {"/healthz"}:
        (op,) = spec["paths"][path].values()
        assert "200" in op["responses"] and "401" in op["responses"], path
        assert all(r["content"]["application/json"]["schema"] == error
                   for status, r in op["responses"].items() if status != "200"), path
        if path != "/v1/model":
            assert op["requestBody"]["content"], path
    assert {"uri", "stride_frames"} <= set(
        spec["paths"]["/v1/surprise"]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"])
    docs = requests.get(f"{endpoint}/docs", timeout=10)
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
