"""The physics recipe reuses synthesised data only when this generator made it for the recipe's world."""

from dataclasses import replace

import pytest

from pipelines.physics_pairs import PAIRS_METADATA_KEY, synthesize_pairs
from pipelines.synth_physics import GENERATOR_VERSION, recorded_world, synthesize, world_as_json
from ray_jobs import physics_recipe
from ray_jobs.physics_recipe import WORLD, _check_reusable, _synth_once


def test_recipe_reuses_its_own_videos(tmp_path, capsys):
    synthesize(2, str(tmp_path), seed=0, cfg=WORLD, progress=False)
    _synth_once(str(tmp_path), 2, seed=0)
    assert "2 videos already in" in capsys.readouterr().out


def test_recipe_refuses_videos_of_another_world(tmp_path):
    synthesize(1, str(tmp_path), seed=0, cfg=replace(WORLD, max_balls=2), progress=False)
    with pytest.raises(ValueError, match="another world config.*delete it"):
        _synth_once(str(tmp_path), 1, seed=0)


def test_recipe_refuses_videos_of_another_generator(tmp_path, monkeypatch):
    synthesize(1, str(tmp_path), seed=0, cfg=WORLD, progress=False)
    monkeypatch.setattr(physics_recipe, "GENERATOR_VERSION", GENERATOR_VERSION + 1)
    with pytest.raises(ValueError, match=f"generator version {GENERATOR_VERSION}, this code writes"):
        _synth_once(str(tmp_path), 1, seed=0)


def test_pairs_record_their_generator_and_world(tmp_path):
    table = synthesize_pairs(1, str(tmp_path), seed=0, cfg=WORLD, types=["control"], progress=False)
    assert recorded_world(table, PAIRS_METADATA_KEY) == (GENERATOR_VERSION, world_as_json(WORLD))
    _check_reusable(str(tmp_path), *recorded_world(table, PAIRS_METADATA_KEY))  # the recipe's own pairs pass
    with pytest.raises(ValueError, match="generator version 1"):
        _check_reusable(str(tmp_path), 1, world_as_json(WORLD))
