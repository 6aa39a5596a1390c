import json

from ray_jobs.cluster import _job_env_keys, forwarded_env


def test_forwards_only_the_storage_and_tracking_settings(monkeypatch):
    monkeypatch.setenv("JEPA_S3_ENDPOINT", "http://127.0.0.1:1")
    monkeypatch.setenv("UNRELATED", "x")
    env = forwarded_env()
    assert env["JEPA_S3_ENDPOINT"] == "http://127.0.0.1:1" and "UNRELATED" not in env


def test_keys_a_submitted_job_already_sets_are_left_to_it(monkeypatch):
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    assert _job_env_keys() == set()
    job = {"runtime_env": {"env_vars": {"MLFLOW_TRACKING_URI": "http://mlflow:5000"}}}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(job))
    assert _job_env_keys() == {"MLFLOW_TRACKING_URI"}
