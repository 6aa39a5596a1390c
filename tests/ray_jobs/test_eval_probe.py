"""`evaluate_probes` end to end on a tiny untrained model and ~30 local physics videos: the report's
structure, its intervals, JSON, and a split that is stable and shared by every encoder."""

import json
import shutil

import pytest
import torch

from jepa.checkpoint import save_model
from jepa.config import load_config
from jepa.model import build_jepa
from pipelines.synth_physics import PhysicsConfig, synthesize
from ray_jobs.eval_probe import ENCODERS, SPLITS, evaluate_probes, load_probe_data, relative_key, split_of
from ray_jobs.eval_runs import load_evaluated_model

TINY = ["model.img_size=32", "model.num_frames=8", "model.patch_size=8", "model.pred_depth=1",
        "model.pred_embed_dim=64", "model.pred_num_heads=2", "data.fps=4"]
TASKS = ("num_balls", "mean_speed", "ball0_last_xy")
VIDEOS = 30


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    synthesize(VIDEOS, str(root / "data"), seed=5, cfg=PhysicsConfig(size=64, seconds=2, fps=8), progress=False)
    cfg = load_config("configs/tiny.yaml", TINY)
    torch.manual_seed(0)
    save_model(build_jepa(cfg.model, num_mask_configs=cfg.num_mask_configs), cfg, root / "model")
    return root


def test_report_on_a_tiny_model(setup):
    threads = torch.get_num_threads()
    report = evaluate_probes(str(setup / "model"), str(setup / "data"), epochs=2, grid=[(1e-3, 0.01), (3e-3, 0.4)],
                             progress=False)
    assert torch.get_num_threads() == threads  # runs on one thread (the default), then restores the setting
    s = report.settings
    assert sum(s["videos"].values()) == VIDEOS and min(s["videos"].values()) > 0 and s["skipped"] == 0
    assert (s["num_frames"], s["fps"], s["img_size"], s["epochs"]) == (8, 4.0, 32, 2)
    assert s["token_grid"] == [4, 4, 4]  # 8 frames / tubelet 2, 32 px / patch 8: the probes' positions
    assert set(s["majority_class_accuracy"]) == {"num_balls"} and 0 <= s["majority_class_accuracy"]["num_balls"] <= 1
    assert {(r.task, r.encoder) for r in report.results} == {(t, e) for t in TASKS for e in ENCODERS}
    for r in report.results:
        assert (r.lr, r.weight_decay) in [(1e-3, 0.01), (3e-3, 0.4)] and r.epoch in (1, 2)
        assert r.test.n == s["videos"]["test"]
        assert r.test.low <= r.test.value <= r.test.high
        assert r.metric == ("accuracy" if r.task == "num_balls" else "r2")
        if r.metric == "accuracy":
            assert 0.0 <= r.test.value <= 1.0 and not r.extra
        else:
            assert r.extra["mae"].low <= r.extra["mae"].value <= r.extra["mae"].high
    assert set(report.seconds) >= {"decode", "total", *[f"features.{e}" for e in ENCODERS]}

    as_dict = json.loads(json.dumps(report.as_dict()))
    assert len(as_dict["results"]) == 9 and as_dict["dataset"] == str(setup / "data")
    rows = report.rows()
    assert len(rows) == 9 and all(row["test_low"] <= row["test"] <= row["test_high"] for row in rows)
    assert "mae" in report.rows()[[r["task"] for r in rows].index("mean_speed")]
    metrics = report.metrics()
    assert "probe.num_balls.trained.accuracy" in metrics and "probe.mean_speed.pixel.mae.high" in metrics
    markdown = report.markdown()
    title, body = markdown.split("\n\n", 1)  # what `jepa eval probe` prints is the body
    assert title.startswith("# Attentive probes") and "| num_balls | accuracy |" in body


def test_split_is_stable_and_independent_of_where_the_dataset_lives(setup, tmp_path):
    cfg = load_evaluated_model(str(setup / "model")).cfg
    data = load_probe_data(str(setup / "data"), cfg, progress=False)
    copy = tmp_path / "elsewhere"
    shutil.copytree(setup / "data", copy)
    moved = load_probe_data(str(copy), cfg, progress=False)
    assert data.split.tolist() == moved.split.tolist()
    assert set(data.split) == set(SPLITS)
    assert relative_key(str(copy / "physics_000003.mp4"), str(copy)) == "physics_000003.mp4"
    assert relative_key("s3://b/sets/phys/physics_000003.mp4", "s3://b/sets/phys/") == "physics_000003.mp4"
    fractions = [split_of(f"physics_{i:06d}.mp4") for i in range(2000)]
    assert abs(fractions.count("train") / 2000 - 0.6) < 0.05 and abs(fractions.count("test") / 2000 - 0.2) < 0.05
    # max_videos keeps the first videos by name, each in its own split
    few = load_probe_data(str(setup / "data"), cfg, max_videos=10, progress=False)
    assert len(few.uris) == 10 and few.split.tolist() == data.split[:10].tolist()
    assert few.clips.shape == (10, 8, 32, 32, 3)


def test_an_evaluated_model_is_accepted_and_bad_input_is_named(setup, tmp_path):
    evaluated = load_evaluated_model(str(setup / "model"))
    report = evaluate_probes(evaluated, str(setup / "data"), epochs=1, grid=[(1e-3, 0.01)],
                             encoders=("pixel",), progress=False)
    assert {r.encoder for r in report.results} == {"pixel"} and report.model == "model"
    with pytest.raises(FileNotFoundError, match="sidecars"):
        evaluate_probes(evaluated, str(tmp_path), progress=False)
    with pytest.raises(ValueError, match="every split"):
        evaluate_probes(evaluated, str(setup / "data"), max_videos=2, progress=False)
    with pytest.raises(ValueError, match="unknown encoders"):
        evaluate_probes(evaluated, str(setup / "data"), encoders=("trained", "dino"), progress=False)
