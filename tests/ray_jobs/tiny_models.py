"""Tiny untrained models registered in MLflow the way `pretrain` registers one (same run params,
same pyfunc with the checkpoint folder inside), without the cost of Ray Train."""

import tempfile

import torch

from jepa.checkpoint import save_model
from jepa.config import load_config
from jepa.model import build_jepa

TINY = [  # clips of 8 frames at 8 fps, 32 px: a (4, 4, 4) token grid, tubelet 2
    "model.img_size=32", "model.num_frames=8", "model.patch_size=8",
    "model.pred_depth=1", "model.pred_embed_dim=64", "model.pred_num_heads=2",
]


def register_tiny(name: str, overrides: list[str], experiment: str = "tiny-models") -> str:
    """Register a seeded, untrained tiny model as `name`@candidate; returns its models:/ URI."""
    from ray_jobs import tracking
    from ray_jobs.training.registration import register_model

    cfg = load_config("configs/tiny.yaml", TINY + overrides + [f"tracking.experiment={experiment}"])
    torch.manual_seed(cfg.train.seed)
    model = build_jepa(cfg.model, num_mask_configs=cfg.num_mask_configs)
    run_id = tracking.start_run(cfg.tracking.experiment, cfg.to_dict(), {})
    with tempfile.TemporaryDirectory() as tmp:
        save_model(model, cfg, tmp)
        register_model(run_id, tmp, registered_model=name, alias="candidate", python_model=tracking.JepaPyfunc(),
                       signature=tracking.model_signature(cfg, model.encoder.embed_dim))
    return f"models:/{name}@candidate"
