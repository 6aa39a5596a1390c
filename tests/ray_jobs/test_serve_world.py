"""`/v1/model`, `/v1/predict` and `/v1/plan` of an action-conditioned model over real HTTP: a tiny
world model registered in MLflow, served by Ray Serve, frames rendered by MuJoCo; and a client
that reaches goals through `/v1/plan` alone, as `jepa eval plan` does in-process."""

import base64
import dataclasses
import io
import json
import math
import socket

import numpy as np
import pytest
import requests
import torch
from PIL import Image

from jepa.world_model import load_world_model
from pipelines.planning_protocol import Episode, Protocol, make_goal
from ray_jobs import tracking
from ray_jobs.eval_plan import run_episodes, served_client, world_model_episode
from ray_jobs.eval_runs import ModelRef
from ray_jobs.tiny_models import register_tiny, register_tiny_world

pytestmark = pytest.mark.integration

P = Protocol(img_size=32)


def png(frame: np.ndarray, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def served(stack_client_env, tmp_path_factory):
    """(base URL, model URI) of the app on a tiny world model."""
    from ray import serve

    from ray_jobs.serve_app import deploy
    from ray_jobs.serve_config import ServeConfig

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    uri = register_tiny_world("jepa-world", tmp_path_factory.mktemp("world"))
    yield deploy(uri, ServeConfig(port=port, max_replicas=1, num_cpus=0.25, max_upload_mb=1, max_plan_samples=64)), uri
    serve.shutdown()


@pytest.fixture(scope="module")
def world(served):
    return load_world_model(tracking.download_checkpoint(served[1]))


def ok(response: requests.Response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()


def test_model_describes_the_env(served):
    info = ok(requests.get(f"{served[0]}/v1/model", timeout=30))
    assert info["action_conditioned"] is True
    env = info["env"]
    assert (env["domain"], env["task"], env["camera_id"], env["img_size"], env["frameskip"]) == ("reacher", "easy", 0, 32, 5)
    assert env["action_dim"] == 2 and env["action_low"] == [-1.0, -1.0] and env["action_high"] == [1.0, 1.0]
    assert env["uses_state"] is True and env["replan_every"] == 5 and env["state_dim"] == 4


def test_predict_matches_the_model_in_process(served, world):
    goal = make_goal(P, 0)
    ep = Episode(P, goal)
    frames, states = [ep.observation()], [ep.state()]
    ep.step(np.array([0.5, -0.5]))
    frames.append(ep.observation())
    states.append(ep.state())
    actions = [[0.5, -0.5], [1.0, 0.0], [-0.3, 0.2]]  # 1 between the frames, 2 to imagine
    body = ok(requests.post(f"{served[0]}/v1/predict", json={"frames": [png(f) for f in frames], "actions": actions,
                                                              "state": [s.tolist() for s in states]}, timeout=60))
    assert body["steps"] == 2 and len(body["predictions"]) == 2 and len(body["states"]) == 2
    with torch.no_grad():
        want = world.predictor.rollout(world.encode(np.stack(frames))[None], torch.tensor(actions)[None],
                                       torch.tensor(np.stack(states))[None], steps=2)
    np.testing.assert_allclose(body["predictions"], want.frames[0].mean(1).numpy(), atol=1e-4)
    # a frame of another size is resized the way training saw it: a 64 px render gives nearly the same
    big = Episode(Protocol(img_size=64), goal).observation()
    resized = ok(requests.post(f"{served[0]}/v1/predict", json={"frames": [png(big)], "actions": [[0.0, 0.0]],
                                                                 "state": states[0].tolist()}, timeout=60))
    assert len(resized["predictions"]) == 1 and all(math.isfinite(x) for x in resized["predictions"][0])


def test_plan_returns_control_step_actions(served):
    goal = make_goal(P, 1)
    ep = Episode(P, goal)
    body = ok(requests.post(f"{served[0]}/v1/plan", json={
        "observation": png(ep.observation()), "goal": png(goal.image, "JPEG"), "state": ep.state().tolist(),
        "horizon": 3, "samples": 32, "iterations": 3, "elites": 4, "seed": 7}, timeout=60))
    assert len(body["actions"]) == 3 * 5 and body["frameskip"] == 5 and body["replan_every"] == 3
    assert np.all(np.abs(body["actions"]) <= 1.0)
    assert body["actions"][:5] == [body["agent_actions"][0]] * 5  # each agent action held for frameskip
    assert len(body["energy"]) == 3 and body["energy"] == sorted(body["energy"], reverse=True)
    assert np.asarray(body["warm_start"]).shape == (3, 2) and body["latency_ms"] > 0

    from ray_jobs.client import JepaClient  # the Python client sends the same request

    cem = {"horizon": 3, "samples": 32, "iterations": 3, "elites": 4, "seed": 7}
    raw = ok(requests.post(f"{served[0]}/v1/plan", json={"observation": png(ep.observation()), "goal": png(goal.image),
                                                         "state": ep.state().tolist(), **cem}, timeout=60))
    assert JepaClient(served[0]).plan(ep.observation(), goal.image, ep.state(), **cem)["actions"] == raw["actions"]


def test_bad_requests_get_4xx_and_the_replica_lives(served):
    url = served[0]
    obs = png(make_goal(P, 2).image)
    state = [0.0, 0.0, 0.0, 0.0]
    plan = {"observation": obs, "goal": obs, "state": state}
    cases = {
        "nan action": ("/v1/predict", {"frames": [obs], "actions": [[float("nan"), 0.0]], "state": state}, 422),
        "wrong action width": ("/v1/predict", {"frames": [obs], "actions": [[0.0, 0.0, 0.0]], "state": state}, 422),
        "action out of range": ("/v1/predict", {"frames": [obs], "actions": [[2.0, 0.0]], "state": state}, 422),
        "no future action": ("/v1/predict", {"frames": [obs, obs], "actions": [[0.0, 0.0]], "state": [state, state]}, 422),
        "missing state": ("/v1/predict", {"frames": [obs], "actions": [[0.0, 0.0]]}, 422),
        "state an object": ("/v1/predict", {"frames": [obs], "actions": [[0.0, 0.0]], "state": {"0": 1}}, 422),
        "integer beyond float": ("/v1/plan", {**plan, "state": [10**400, 0.0, 0.0, 0.0]}, 422),
        "state too short": ("/v1/plan", {**plan, "state": [0.0]}, 422),
        "undecodable image": ("/v1/plan", {**plan, "goal": base64.b64encode(b"not an image").decode()}, 422),
        "not base64": ("/v1/plan", {**plan, "observation": "@@@"}, 422),
        "not square": ("/v1/plan", {**plan, "goal": png(np.zeros((32, 16, 3), np.uint8))}, 422),
        "absurd samples": ("/v1/plan", {**plan, "samples": 10**9}, 422),
        "elites above samples": ("/v1/plan", {**plan, "samples": 8, "elites": 9}, 422),
        "horizon zero": ("/v1/plan", {**plan, "horizon": 0}, 422),
        "unknown field": ("/v1/plan", {**plan, "temperature": 1}, 422),
        "missing goal": ("/v1/plan", {"observation": obs, "state": state}, 422),
        "not an object": ("/v1/plan", [1, 2], 422),
    }
    for name, (route, body, status) in cases.items():
        # json.dumps writes NaN as the bare token NaN, which Python's JSON reader accepts: the
        # server's own check has to refuse it
        r = requests.post(f"{url}{route}", data=json.dumps(body), headers={"content-type": "application/json"},
                          timeout=60)
        assert r.status_code == status, (name, r.status_code, r.text)
        assert "error" in r.json(), name
    r = requests.post(f"{url}/v1/plan", data="observation=x", headers={"content-type": "text/plain"}, timeout=30)
    assert r.status_code == 415
    assert ok(requests.get(f"{url}/healthz", timeout=30))["status"] == "ok"


def test_a_client_through_v1_plan_reaches_what_eval_plan_reaches(served, world):
    """`jepa eval plan`'s served policy reads the env spec from /v1/model, renders, executes
    `replan_every` agent steps of the returned control actions, and replans, sending the seed and
    warm start MPC uses: its episodes end exactly where the in-process MPC ends them."""
    url, uri = served
    p = Protocol(img_size=P.img_size, budget=15)
    client = served_client(url, ModelRef.of(uri), p, world.planner)
    # what each of eval plan's Ray tasks runs for its share of the served policy's episodes
    served_runs = run_episodes(uri, "served", p, world.planner, [0, 1], server=(client.url, client.token))
    for episode, over_http in enumerate(served_runs):
        in_process = world_model_episode(world, p, world.planner, episode, keep_strip=False)
        assert len(over_http.plan_seconds) == 3
        assert over_http.outcome.success == in_process.outcome.success
        assert over_http.outcome.final_distance == pytest.approx(in_process.outcome.final_distance, abs=1e-4)
        assert np.concatenate(over_http.energies) == pytest.approx(np.concatenate(in_process.energies), abs=1e-4)
    with pytest.raises(ValueError, match="not jepa-other/1"):
        served_client(url, ModelRef("models:/jepa-other/1", "jepa-other", 1, None), p, world.planner)
    with pytest.raises(ValueError, match="replanning every 5"):
        served_client(url, ModelRef.of(uri), p, dataclasses.replace(world.planner, replan_every=2))
    with pytest.raises(ValueError, match="--select"):
        served_client(url, ModelRef.of(uri), p, dataclasses.replace(world.planner, select="best"))
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with pytest.raises(ValueError, match="no Serve app answers"):
        served_client(closed, ModelRef.of(uri), p, world.planner)


def test_fuzzed_from_its_openapi_schema(served):
    """Schemathesis cases for every route, fitting the schema and breaking it (`make bench-fuzz`
    runs many more), and valid requests with one field broken: never an answer >= 500 or a
    dropped connection, and the replica stays up."""
    from bench.fuzz_serve import fuzz, mutate, world_bodies

    url = served[0]
    report = fuzz(url, examples=8)
    mutated = mutate(url, 16, 0, {}, world_bodies(P.img_size))
    report.add(mutated)
    assert not report.server_errors and not report.dropped, report.server_errors + report.dropped
    paths = ok(requests.get(f"{url}/openapi.json", timeout=30))["paths"]
    expected = {(f"{method.upper()} {path}", mode) for path, ops in paths.items() for method in ops
                for mode in ("positive", "negative") if method == "post" or mode == "positive"}
    assert {(label, mode) for label, mode, _ in report.statuses} >= expected  # every POST broken too
    assert mutated.cases == 32
    assert ok(requests.get(f"{url}/healthz", timeout=30))["status"] == "ok"


def test_a_model_without_an_action_head_refuses_to_plan(served, stack_client_env):
    from ray_jobs.serve_app import deploy
    from ray_jobs.serve_config import ServeConfig

    port = int(served[0].rsplit(":", 1)[1])
    url = deploy(register_tiny("jepa-no-actions", [], experiment="serve-world"), ServeConfig(port=port, max_replicas=1,
                                                                                              num_cpus=0.25))
    assert ok(requests.get(f"{url}/v1/model", timeout=30))["action_conditioned"] is False
    for route in ("/v1/plan", "/v1/predict"):
        r = requests.post(f"{url}{route}", json={"observation": "x", "goal": "y"}, timeout=30)
        assert r.status_code == 409 and "no action head" in r.json()["error"]
