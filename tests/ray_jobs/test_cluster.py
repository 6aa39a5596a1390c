import json
import os

import pytest

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


@pytest.mark.integration
def test_workers_state_api_asks_their_own_cluster(ray_local):
    """Ray Train's placement-group cleaner polls the state API from a worker; with more Ray
    clusters on the host (xdist's other worker, a stack's head) it must still find this one."""
    import ray

    @ray.remote(num_cpus=0)
    class Probe:
        def ask(self) -> tuple[str | None, str]:
            from ray.util.state import get_actor

            me = ray.get_runtime_context().get_actor_id()
            return os.environ.get("RAY_ADDRESS"), get_actor(me, timeout=20).state

    probe = Probe.remote()
    address, state = ray.get(probe.ask.remote(), timeout=120)
    assert address == ray.get_runtime_context().gcs_address
    assert state == "ALIVE"
    ray.kill(probe)
