"""Image mode (I-JEPA) end to end: PNGs in SeaweedFS -> Ray Data -> Ray Train (2 workers) -> MLflow."""

import io
import math

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from jepa.config import load_config
from pipelines.storage import put_bytes

pytestmark = pytest.mark.integration

OVERRIDES = [
    "model.img_size=32", "model.patch_size=8", "model.pred_depth=1", "model.pred_embed_dim=64",
    "model.pred_num_heads=2", "train.steps=2", "train.batch_size=2", "train.num_workers=2",
    "train.log_every=1", "data.held_out_fraction=0.0", "tracking.experiment=e2e-image",
    "tracking.registered_model=ijepa-e2e",
]


def _png(rng: np.random.Generator) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def stack_env(stack_client_env):
    """12 small PNGs (plus one broken one) under `source`."""
    source = f"s3://{stack_client_env.bucket}/raw/e2e-images"
    rng = np.random.default_rng(0)
    for i in range(12):
        put_bytes(f"{source}/img{i:02d}.png", _png(rng))
    put_bytes(f"{source}/broken.jpg", b"not a jpeg")  # skipped with a warning
    return source


def test_pretrain_in_image_mode(stack_env):
    from ray_jobs.pretrain import pretrain

    cfg = load_config("configs/ijepa_tiny.yaml", OVERRIDES + [f"data.source={stack_env}"])
    result = pretrain(cfg)
    client = MlflowClient()
    losses = client.get_metric_history(result.run_id, "loss")
    assert sorted(m.step for m in losses) == [0, 1]
    assert all(math.isfinite(m.value) for m in losses)
    version = client.get_model_version_by_alias("ijepa-e2e", "candidate")
    assert int(version.version) == result.version and version.run_id == result.run_id
