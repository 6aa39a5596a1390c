"""Two Ray nodes on this machine (`ray.cluster_utils.Cluster`): a 2-worker TorchTrainer puts one
rank on each node (2 CPUs per worker, 2 CPUs per node) and gloo DDP keeps their weights identical.

The cluster runs in a subprocess, so it never meets the session's `ray_local` Ray. No object store
or MLflow: synthetic clips, results written to a local folder."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent('''
    import json, os, sys
    import ray, ray.train, ray.train.torch, torch
    from ray.cluster_utils import Cluster
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    out = sys.argv[1]

    def loop(config):
        from jepa.config import load_config
        from jepa.masks import sample_masks
        from jepa.model import build_jepa
        from jepa.optim import build_optimizer
        from jepa.train_step import train_step
        from ray_jobs.pretrain import fingerprint

        torch.set_num_threads(1)
        ctx = ray.train.get_context()
        rank = ctx.get_world_rank()
        cfg = load_config(config["config"], config["overrides"])
        torch.manual_seed(rank)  # different initial weights per rank: DDP must broadcast rank 0's
        plain = build_jepa(cfg.model, len(cfg.masks))
        model = ray.train.torch.prepare_model(plain)
        opt = build_optimizer(plain, cfg.optim)
        g = torch.Generator().manual_seed(100 + rank)  # each rank its own clips
        for step in range(2):
            clips = torch.randn(2, 3, 8, 32, 32, generator=g)
            masks = sample_masks(plain.token_grid, cfg.masks, 2, torch.Generator().manual_seed(step))
            train_step(model, [(clips, masks)], opt, 1e-3, 0.99, torch.device("cpu"))
        with open(os.path.join(config["out"], f"rank{rank}.json"), "w") as f:
            json.dump({"node": ray.get_runtime_context().get_node_id(), "fingerprint": fingerprint(plain)}, f)

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    cluster.add_node(num_cpus=2)
    try:
        ray.init(address=cluster.address)
        TorchTrainer(
            loop,
            train_loop_config={"config": os.path.abspath("configs/tiny.yaml"), "out": out, "overrides": [
                "model.img_size=32", "model.num_frames=8", "model.patch_size=8", "model.pred_depth=1",
                "model.pred_embed_dim=64", "model.pred_num_heads=2"]},
            scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 2}),
            run_config=ray.train.RunConfig(storage_path=out),
        ).fit()
    finally:
        ray.shutdown()
        cluster.shutdown()
''')


def test_one_rank_per_node_and_identical_weights(tmp_path):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["node"] != ranks[1]["node"]
    assert ranks[0]["fingerprint"] == ranks[1]["fingerprint"]
