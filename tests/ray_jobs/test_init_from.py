"""`model.init_from`: `jepa pretrain` starts from a V-JEPA 2 layout checkpoint in the bucket, on
every DDP rank, and refuses a file its config does not describe."""

import io

import pytest
import torch
from mlflow.tracking import MlflowClient

from jepa.config import ConfigError, load_config
from jepa.model import build_jepa
from jepa.vjepa2 import export_vjepa2
from pipelines.storage import put_bytes
from pipelines.synth_physics import PhysicsConfig, synthesize
from ray_jobs.init_from import check_init_from, load_init_weights
from ray_jobs.training.registration import fingerprint

pytestmark = pytest.mark.integration

OVERRIDES = [
    "model.img_size=32", "model.num_frames=8", "model.patch_size=8",
    "model.pred_depth=1", "model.pred_embed_dim=64", "model.pred_num_heads=2",
    "train.steps=1", "train.batch_size=2", "train.num_workers=2", "data.held_out_fraction=0",
    "tracking.experiment=init-from", "tracking.registered_model=jepa-init-from",
]
# A step that changes nothing: the weights after training are the ones training started from.
FROZEN = ["optim.lr=0", "optim.start_lr=0", "optim.weight_decay=0", "optim.ema_momentum=1.0"]


@pytest.fixture(scope="module")
def official(stack_client_env):
    """A V-JEPA 2 layout file of a model this config describes (seeded apart from the run's own
    initialisation), in the bucket, plus the training videos."""
    bucket = stack_client_env.bucket
    cfg = load_config("configs/tiny.yaml", OVERRIDES)
    torch.manual_seed(1234)
    model = build_jepa(cfg.model, cfg.num_mask_configs)
    uri = f"s3://{bucket}/weights/vjepa2-tiny.pt"
    buf = io.BytesIO()
    torch.save(export_vjepa2(model), buf)
    put_bytes(uri, buf.getvalue())
    source = f"s3://{bucket}/raw/init-from"
    synthesize(4, source, seed=11, cfg=PhysicsConfig(size=64, seconds=1.5, fps=8), progress=False)
    return uri, model, source


def test_pretrain_starts_every_rank_from_the_file(official):
    from ray_jobs.pretrain import pretrain

    uri, model, source = official
    cfg = load_config("configs/tiny.yaml", OVERRIDES + FROZEN + [f"data.source={source}", f"model.init_from={uri}"])
    result = pretrain(cfg)
    params = MlflowClient().get_run(result.run_id).data.params
    expected = fingerprint(model)
    # rank 0 loaded the file; rank 1 holds it too (DDP's broadcast), and nothing else moved them
    assert params["ddp.fingerprint.rank0"] == params["ddp.fingerprint.rank1"] == expected
    fresh = build_jepa(cfg.model, cfg.num_mask_configs)
    assert fingerprint(fresh) != expected  # the check would fail without init_from


def test_init_from_rejects_a_config_that_does_not_describe_the_file(official):
    uri, _, _ = official
    cfg = load_config("configs/tiny.yaml", OVERRIDES + [f"model.init_from={uri}", "model.pred_depth=2"])
    with pytest.raises(ConfigError, match="model.pred_depth: 2 in the config, but .* has 1"):
        load_init_weights(build_jepa(cfg.model, cfg.num_mask_configs), cfg)
    # an encoder-only start does not care about the predictor's shape
    cfg = load_config("configs/tiny.yaml", OVERRIDES + [f"model.init_from={uri}", "model.pred_depth=2",
                                                        "model.init_predictor=false"])
    target = build_jepa(cfg.model, cfg.num_mask_configs)
    load_init_weights(target, cfg)
    for name, value in official[1].encoder.state_dict().items():
        assert torch.equal(target.encoder.state_dict()[name], value), name


def test_missing_init_file_fails_before_training(official):
    uri, _, _ = official
    for missing in (uri.replace("vjepa2-tiny", "nope"), "/no/such/vitl.pt"):
        cfg = load_config("configs/tiny.yaml", OVERRIDES + [f"model.init_from={missing}"])
        with pytest.raises(ConfigError, match="model.init_from"):
            check_init_from(cfg)
