"""Standard AWS settings reach every client: the endpoint from `AWS_ENDPOINT_URL_S3` /
`AWS_ENDPOINT_URL` (not only `JEPA_S3_ENDPOINT`), temporary keys, and the SDKs' default chain
(a profile here; IRSA and instance roles on a cluster) when no keys are set."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from video_corpus import two_seconds

from pipelines import storage
from pipelines.storage import S3Settings
from ray_jobs.cluster import FORWARDED_ENV

ROOT = Path(__file__).resolve().parents[2]
AWS_NAMES = ("JEPA_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
             "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION")


@pytest.fixture
def no_aws_env(monkeypatch):
    for name in AWS_NAMES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_endpoint_comes_from_ours_then_the_sdks_own_variables(no_aws_env):
    no_aws_env.setenv("AWS_ACCESS_KEY_ID", "AK")
    no_aws_env.setenv("AWS_SECRET_ACCESS_KEY", "SK")
    no_aws_env.setenv("AWS_SESSION_TOKEN", "TOKEN")
    no_aws_env.setenv("AWS_DEFAULT_REGION", "eu-north-1")
    no_aws_env.setenv("AWS_ENDPOINT_URL", "http://generic:1")
    assert S3Settings.from_env() == S3Settings("http://generic:1", "AK", "SK", "eu-north-1", session_token="TOKEN")
    no_aws_env.setenv("AWS_ENDPOINT_URL_S3", "http://s3-only:2")
    assert S3Settings.from_env().endpoint == "http://s3-only:2"
    no_aws_env.setenv("JEPA_S3_ENDPOINT", "http://ours:3")
    assert S3Settings.from_env().endpoint == "http://ours:3"


def test_workers_get_the_credential_and_mlflow_auth_variables():
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        assert name in FORWARDED_ENV, name


@pytest.mark.integration
def test_a_profile_signs_when_no_keys_are_set(s3_env, no_aws_env, tmp_path):
    """No keys in the environment: boto3 and pyarrow sign with the default chain (here the profile
    named by AWS_PROFILE), not with placeholders, and reach the stack through AWS_ENDPOINT_URL."""
    credentials = tmp_path / "credentials"
    credentials.write_text(f"[jepa-test]\naws_access_key_id = {s3_env.access_key}\n"
                           f"aws_secret_access_key = {s3_env.secret_key}\n")
    no_aws_env.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    no_aws_env.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    no_aws_env.setenv("AWS_PROFILE", "jepa-test")
    no_aws_env.setenv("AWS_ENDPOINT_URL", s3_env.endpoint)
    settings = S3Settings.from_env()
    assert settings.endpoint == s3_env.endpoint and settings.access_key is None  # the chain signs

    uri = f"s3://{s3_env.bucket}/credentials/profile.bin"
    storage.put_bytes(uri, b"signed by a profile")
    assert storage.get_bytes(uri) == b"signed by a profile"
    import boto3

    assert boto3.session.Session(profile_name="jepa-test").get_credentials().access_key == s3_env.access_key
    pq.write_table(__import__("pyarrow").table({"a": [1, 2]}), f"{s3_env.bucket}/credentials/t.parquet",
                   filesystem=storage.pyarrow_fs())
    assert pq.read_table(f"{s3_env.bucket}/credentials/t.parquet", filesystem=storage.pyarrow_fs())["a"].to_pylist() == [1, 2]


@pytest.mark.integration
def test_ingest_with_only_aws_endpoint_url_s3(s3_env, tmp_path):
    """`jepa ingest` (its own local Ray, so every worker needs the forwarded variables) against the
    stack's SeaweedFS, with the endpoint given only as AWS_ENDPOINT_URL_S3."""
    raw = f"s3://{s3_env.bucket}/credentials/raw"
    dataset = f"s3://{s3_env.bucket}/datasets/credentials"
    for i in range(2):
        storage.put_bytes(f"{raw}/clip{i}.mp4", two_seconds())
    env = {k: v for k, v in os.environ.items() if k not in ("JEPA_S3_ENDPOINT", "RAY_ADDRESS", "AWS_ENDPOINT_URL")}
    env["AWS_ENDPOINT_URL_S3"] = s3_env.endpoint
    done = subprocess.run([sys.executable, "-m", "ray_jobs.cli", "ingest", raw, "--dataset", dataset, "--fps", "4",
                           "--short-side", "32", "--frames", "4", "--no-progress"],
                          capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 listed: 2 new" in done.stdout, done.stdout
    info = json.loads(storage.get_bytes(f"{dataset}/dataset.json"))
    assert info["counts"]["ok"] == 2 and info["counts"]["segments"] > 0
