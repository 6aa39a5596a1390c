"""Tiny untrained models registered in MLflow the way `pretrain` and `train-ac` register one (same run
params, same pyfunc with the checkpoint folder inside), without the cost of Ray Train: for tests,
benchmarks and fuzzing."""

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


def tiny_world_model(folder, img_size: int = 32, uses_state: bool = True, state_weight: float = 0.0) -> str:
    """Save a seeded, untrained world model (tiny image encoder + 1-block AC predictor) for reacher
    frames of `img_size` px into `folder`; returns the folder. ``state_weight`` > 0 adds an
    untrained state reader and plans with it."""
    from jepa.config import ACModelConfig, PlannerConfig
    from jepa.state_reader import StateReader
    from jepa.world_model import WorldModel, build_predictor, save_world_model
    from pipelines.mujoco_record import env_spec, load_env

    cfg = load_config("configs/tiny.yaml", TINY + ["model.num_frames=1", "data.modality=image",
                                                   f"model.img_size={img_size}"])
    torch.manual_seed(0)
    jepa = build_jepa(cfg.model, num_mask_configs=cfg.num_mask_configs)
    env = env_spec("reacher", load_env("reacher", 0), img_size, 5).as_dict()
    ac = ACModelConfig(encoder="tiny", pool=2, dim=32, depth=1, num_heads=2, uses_state=uses_state)
    planner = PlannerConfig(samples=16, elites=4, iterations=2, horizon=5, replan_every=5, state_weight=state_weight)
    world = WorldModel(jepa, cfg, build_predictor(jepa, cfg, ac, env), ac, env, planner)
    if state_weight > 0:
        h, w = world.token_grid
        world.attach_state_reader(StateReader(h * w, jepa.encoder.embed_dim, env["qpos_dim"], angular=True, dim=16,
                                              depth=1, num_heads=2))
    save_world_model(world, folder)
    return str(folder)


def register_tiny_world(name: str, folder, experiment: str = "tiny-models") -> str:
    """`tiny_world_model` registered as `name`@candidate the way `jepa train-ac` registers one."""
    from ray_jobs import tracking
    from ray_jobs.training.registration import register_model

    tiny_world_model(folder)
    run_id = tracking.start_run(experiment, {"tiny_world_model": True}, {})
    register_model(run_id, folder, registered_model=name, alias="candidate", python_model=tracking.WorldModelPyfunc())
    return f"models:/{name}@candidate"
