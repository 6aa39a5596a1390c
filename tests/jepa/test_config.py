import pytest

from jepa.config import ConfigError, RunConfig, load_config


def write(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_defaults_are_the_reference_masks():
    cfg = RunConfig()
    assert [(m.num_blocks, m.spatial_scale) for m in cfg.masks] == [(8, 0.15), (2, 0.7)]


def test_yaml_and_overrides(tmp_path):
    cfg = load_config(write(tmp_path, "model:\n  arch: small\ntrain:\n  steps: 5\n"),
                      ["train.steps=7", "optim.lr=1e-3", "optim.betas=[0.8, 0.9]"])
    assert cfg.model.arch == "small" and cfg.train.steps == 7
    assert cfg.optim.lr == 1e-3 and cfg.optim.betas == (0.8, 0.9)


def test_unknown_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match="train.stpes"):
        load_config(write(tmp_path, "train:\n  stpes: 5\n"))


def test_wrong_type_is_named(tmp_path):
    with pytest.raises(ConfigError, match="train.steps"):
        load_config(write(tmp_path, "train:\n  steps: many\n"))
    with pytest.raises(ConfigError, match="train.use_gpu"):
        load_config(None, ["train.use_gpu=3"])


def test_int_promotes_to_float_but_bool_is_not_an_int():
    assert load_config(None, ["optim.lr=1"]).optim.lr == 1.0
    with pytest.raises(ConfigError):
        load_config(None, ["train.steps=true"])


def test_nested_list_of_masks(tmp_path):
    cfg = load_config(write(tmp_path, "masks:\n  - {num_blocks: 4, spatial_scale: 0.2}\n"))
    assert len(cfg.masks) == 1 and cfg.masks[0].aspect_ratio == (0.75, 1.5)
    with pytest.raises(ConfigError, match=r"masks\[0\].scale"):
        load_config(write(tmp_path, "masks:\n  - {scale: 0.2}\n"))


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.steps"])


def test_choice_fields_are_checked_at_load_with_the_key_named(tmp_path):
    with pytest.raises(ConfigError, match="model.arch: 'colossal' is not one of tiny, small, base"):
        load_config(write(tmp_path, "model:\n  arch: colossal\n"))
    with pytest.raises(ConfigError, match="optim.schedule: 'step' is not one of warmup_constant, cosine"):
        load_config(None, ["optim.schedule=step"])
    with pytest.raises(ConfigError, match="data.modality"):
        load_config(None, ["data.modality=1"])
    assert load_config(None, ["optim.schedule=cosine", "model.arch=giant"]).model.arch == "giant"


def test_keep_checkpoints_is_checked_at_load():
    with pytest.raises(ConfigError, match="train.keep_checkpoints: must be at least 1"):
        load_config(None, ["train.keep_checkpoints=0"])


def test_predictor_stage_is_checked_at_load():
    future = ["masks=[{num_blocks: 8}, {kind: future, context_steps: 5}]", "train.steps=10"]
    cfg = load_config(None, future + ["predictor_stage.steps=4"])
    assert cfg.joint_steps == 6 and RunConfig().joint_steps == RunConfig().train.steps
    with pytest.raises(ConfigError, match=r"predictor_stage.steps: 10 must be fewer than train.steps \(10\)"):
        load_config(None, future + ["predictor_stage.steps=10"])
    with pytest.raises(ConfigError, match="needs a future mask"):
        load_config(None, ["train.steps=10", "predictor_stage.steps=4"])
    with pytest.raises(ConfigError, match="cache_clips >= batch_size"):
        load_config(None, future + ["predictor_stage.steps=4", "predictor_stage.cache_clips=8"])
