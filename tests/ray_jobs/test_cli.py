import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from jepa.config import load_config
from ray_jobs.cli import main

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = [[], ["stack"], ["synth", "physics"], ["ingest"], ["pretrain"], ["ensemble"], ["config"], ["serve", "deploy"],
            ["serve", "status"], ["demo"]]


@pytest.mark.parametrize("words", COMMANDS, ids=lambda w: " ".join(w) or "jepa")
def test_every_command_has_help(words, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*words, "--help"])
    assert exit_info.value.code == 0
    assert "usage: jepa" in capsys.readouterr().out


def test_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"jepa {version('jepa-ray')}"


def fails(capsys, *words: str) -> str:
    """Runs `jepa WORDS`, which must exit 2 with exactly one line on stderr; returns that line."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(words))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_config_errors_are_one_line_and_exit_2(capsys):
    assert fails(capsys, "pretrain", "--config", "configs/tiny.yaml", "train.stpes=3").startswith(
        "error: unknown config key(s): train.stpes")
    assert "missing.yaml" in fails(capsys, "pretrain", "--config", "missing.yaml")
    assert "model.arch: 'colossal' is not one of" in fails(capsys, "config", "model.arch=colossal")


def test_bad_uris_are_one_line_and_exit_2(capsys, tmp_path):
    assert "S3 URI has no bucket name: 's3://'" in fails(capsys, "ingest", "s3://", "--dataset", str(tmp_path))
    assert "S3 URI has no bucket name" in fails(capsys, "synth", "physics", "--videos", "1", "--out", "s3:///x")
    assert "source folder not found" in fails(capsys, "ingest", str(tmp_path / "nope"), "--dataset", str(tmp_path))


def test_serve_needs_a_running_cluster(tmp_path):
    """Without RAY_ADDRESS, deploying would start a Ray that dies with the command: refused, with the fix."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"MLFLOW_TRACKING_URI": str(tmp_path)}
    for words in (["serve", "deploy", "--model", "models:/jepa-tiny@candidate"], ["serve", "status"]):
        done = subprocess.run([sys.executable, "-m", "ray_jobs.cli", *words], capture_output=True, text=True,
                              timeout=120, env=env, cwd=ROOT)
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith("error: no Ray cluster to ") and "jepa stack up" in done.stderr
        assert len(done.stderr.splitlines()) == 1, done.stderr


def test_config_prints_the_resolved_config_that_loads_back(capsys, tmp_path):
    assert main(["config", "--config", "configs/tiny.yaml", "train.steps=3", "optim.betas=[0.8,0.9]"]) == 0
    text = capsys.readouterr().out
    (tmp_path / "resolved.yaml").write_text(text)
    expected = load_config(ROOT / "configs/tiny.yaml", ["train.steps=3", "optim.betas=[0.8,0.9]"])
    assert load_config(tmp_path / "resolved.yaml") == expected
    assert yaml.safe_load(text)["train"]["steps"] == 3


def test_configuration_reference_is_generated_from_the_code(capsys):
    assert main(["config", "--reference"]) == 0
    generated = capsys.readouterr().out
    assert (ROOT / "docs/configuration.md").read_text() == generated, "run: jepa config --reference > docs/configuration.md"
    assert "| `train.run_name` | str |" in generated and "`warmup_constant` \\| `cosine`" in generated


def test_synth_cli_writes_videos_and_sidecars(tmp_path):
    out = tmp_path / "videos"
    done = subprocess.run([sys.executable, "-m", "ray_jobs.cli", "synth", "physics", "--videos", "2",
                           "--out", str(out), "--size", "32", "--seconds", "0.5"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "physics_000000.mp4", "physics_000000.state.parquet",
        "physics_000001.mp4", "physics_000001.state.parquet",
    ]
