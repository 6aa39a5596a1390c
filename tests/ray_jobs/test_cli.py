import subprocess
import sys

import pytest

from ray_jobs.cli import main

COMMANDS = [[], ["stack"], ["synth", "physics"], ["ingest"], ["pretrain"], ["serve", "deploy"], ["serve", "status"], ["demo"]]


@pytest.mark.parametrize("words", COMMANDS, ids=lambda w: " ".join(w) or "jepa")
def test_every_command_has_help(words, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*words, "--help"])
    assert exit_info.value.code == 0
    assert "usage: jepa" in capsys.readouterr().out


def test_config_errors_are_one_line_and_exit_2(capsys):
    assert main(["pretrain", "--config", "configs/tiny.yaml", "train.stpes=3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown config key(s): train.stpes") and "Traceback" not in err
    assert main(["pretrain", "--config", "missing.yaml"]) == 2


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
