"""The KubeRay manifests parse, pin the Ray version and image we test with, request GPUs, take
S3/MLflow settings from a Secret, and launch `jepa pretrain` with a config that loads."""

import shlex
import sys
from pathlib import Path

import pytest
import ray
import yaml

from jepa.config import load_config

ROOT = Path(__file__).resolve().parents[2]
KUBERAY = ROOT / "infra" / "kuberay"
IMAGE_ROOT = "/home/ray/jepa-ray/"  # WORKDIR of infra/kuberay/Dockerfile: the repo's files live there
SECRET_KEYS = {"JEPA_S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "MLFLOW_TRACKING_URI"}
PY_TAG = f"py{sys.version_info.major}{sys.version_info.minor}"


def _load(name: str) -> dict:
    docs = list(yaml.safe_load_all((KUBERAY / name).read_text()))
    assert len(docs) == 1, name
    return docs[0]


@pytest.fixture(scope="module")
def cluster() -> dict:
    return _load("raycluster.yaml")


@pytest.fixture(scope="module")
def job() -> dict:
    return _load("rayjob-pretrain.yaml")


def _pod_templates(cluster_spec: dict) -> list[dict]:
    return [cluster_spec["headGroupSpec"]["template"]] + [g["template"] for g in cluster_spec["workerGroupSpecs"]]


def _containers(cluster_spec: dict) -> list[dict]:
    return [c for t in _pod_templates(cluster_spec) for c in t["spec"]["containers"]]


def test_every_manifest_parses():
    names = sorted(p.name for p in KUBERAY.glob("*.yaml"))
    assert names == ["raycluster.yaml", "rayjob-pretrain.yaml", "rayservice.yaml", "secret.example.yaml"]
    for name in names:
        doc = _load(name)
        assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"], name


def test_cluster_shape(cluster):
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    spec = cluster["spec"]
    assert spec["rayVersion"] == ray.__version__ == "2.60.0"
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    assert head["template"]["spec"]["containers"][0]["name"] == "ray-head"
    assert spec["workerGroupSpecs"]
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"] and "rayStartParams" in group
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        for c in group["template"]["spec"]["containers"]:
            limits, requests = c["resources"]["limits"], c["resources"]["requests"]
            assert int(limits["nvidia.com/gpu"]) >= 1, c["name"]
            assert requests.get("nvidia.com/gpu", limits["nvidia.com/gpu"]) == limits["nvidia.com/gpu"]
            assert limits["cpu"] and limits["memory"]


def test_job_runs_pretrain_on_the_same_cluster_spec(cluster, job):
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["rayClusterSpec"] == cluster["spec"]
    words = shlex.split(spec["entrypoint"])
    assert words[:2] == ["jepa", "pretrain"]
    config = words[words.index("--config") + 1]
    overrides = [w for w in words[2:] if "=" in w]
    assert "train.use_gpu=true" in overrides
    gpus = sum(g["replicas"] * int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
               for g in cluster["spec"]["workerGroupSpecs"])
    cfg = load_config(ROOT / config.removeprefix(IMAGE_ROOT), overrides)  # unknown keys would raise here
    assert cfg.train.use_gpu and cfg.train.num_workers == gpus  # one Train worker per GPU


@pytest.fixture(scope="module")
def service() -> dict:
    return _load("rayservice.yaml")


def test_service_runs_the_serve_config_file_on_the_same_cluster(cluster, service):
    from ray.serve.schema import ServeDeploySchema

    from jepa.config import from_dict
    from ray_jobs.serve_app import JepaService
    from ray_jobs.serve_config import ServeConfig

    assert (service["apiVersion"], service["kind"]) == ("ray.io/v1", "RayService")
    spec = service["spec"]
    assert spec["rayClusterConfig"] == cluster["spec"]
    serve_cfg = yaml.safe_load(spec["serveConfigV2"])
    assert serve_cfg == yaml.safe_load((ROOT / "infra" / "serve" / "serve-config.yaml").read_text())
    ServeDeploySchema.model_validate(serve_cfg)  # Ray's own schema of a Serve config file
    assert serve_cfg["http_options"]["host"] == "0.0.0.0"  # the Service reaches the proxies
    (app,) = serve_cfg["applications"]
    module, name = app["import_path"].split(":")
    assert module == "ray_jobs.serve_app" and name == "app_builder"
    args = dict(app["args"])
    assert args.pop("model").startswith("models:/")
    from_dict(ServeConfig, args)  # every other arg is a ServeConfig key of the right type
    (deployment,) = app["deployments"]
    assert deployment["name"] == JepaService.name and deployment["health_check_period_s"] > 0
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {"name": "serve", "containerPort": serve_cfg["http_options"]["port"]} in head["ports"]


def test_images_are_pinned_to_our_ray_and_python(cluster, job):
    for spec in (cluster["spec"], job["spec"]["rayClusterSpec"]):
        for c in _containers(spec):
            image = c["image"]
            assert ":" in image and not image.endswith(":latest"), image
            tag = image.rsplit(":", 1)[1]
            assert ray.__version__ in tag and PY_TAG in tag and "gpu" in tag, image
    base = [line.split()[1] for line in (KUBERAY / "Dockerfile").read_text().splitlines() if line.startswith("FROM ")]
    assert base == [f"rayproject/ray:{ray.__version__}-{PY_TAG}-gpu"]


def test_secrets_are_referenced_never_inlined(cluster, job):
    secret = _load("secret.example.yaml")
    assert secret["kind"] == "Secret" and set(secret["stringData"]) == SECRET_KEYS
    assert secret["stringData"]["AWS_ACCESS_KEY_ID"] == secret["stringData"]["AWS_SECRET_ACCESS_KEY"] == "REPLACE_ME"
    for spec in (cluster["spec"], job["spec"]["rayClusterSpec"]):
        for c in _containers(spec):
            assert {"secretRef": {"name": secret["metadata"]["name"]}} in c["envFrom"], c["name"]
            assert not SECRET_KEYS & {e["name"] for e in c.get("env", [])}, c["name"]
    for name in ("raycluster.yaml", "rayjob-pretrain.yaml"):
        text = (KUBERAY / name).read_text()
        assert "AWS_SECRET_ACCESS_KEY" not in text and "AWS_ACCESS_KEY_ID" not in text, name
