"""`model.init_from`: start a pretraining run from a V-JEPA 2 checkpoint (the official weights, or
an `export_vjepa2` file) on disk or in the bucket, instead of from random weights."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from jepa.config import ConfigError, RunConfig
from jepa.model import JEPA
from jepa.vjepa2 import load_vjepa2
from pipelines.storage import is_s3, parse_uri, s3_client


def check_init_from(cfg: RunConfig) -> None:
    """Fail in the driver, before any worker starts, when `model.init_from` names no file."""
    uri = cfg.model.init_from
    if not uri:
        return
    if is_s3(uri):
        bucket, key = parse_uri(uri)
        try:
            s3_client().head_object(Bucket=bucket, Key=key)
        except Exception as err:  # botocore's ClientError: 404, 403, no such bucket
            raise ConfigError(f"model.init_from: cannot read {uri}: {err}") from err
    elif not Path(uri).is_file():
        raise ConfigError(f"model.init_from: no file {uri}")


def load_init_weights(model: JEPA, cfg: RunConfig) -> None:
    """Copy the encoders (and, with `model.init_predictor`, the predictor) of the `model.init_from`
    file into `model`, strictly: the run config's `model:` section must describe the file.

    Under DDP only rank 0 needs to call this: DistributedDataParallel broadcasts rank 0's
    parameters, target encoder included, when it wraps the model."""
    m = cfg.model
    with tempfile.TemporaryDirectory() as tmp:
        path = m.init_from
        if is_s3(path):  # to disk, then memory-mapped: a ViT-g file is ~12 GB
            bucket, key = parse_uri(path)
            path = str(Path(tmp) / "init.pt")
            s3_client().download_file(bucket, key, path)
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        src, src_cfg = load_vjepa2(state, m.arch, predictor=m.init_predictor,
                                   num_mask_tokens=cfg.num_mask_configs, pred_num_heads=m.pred_num_heads)
        keys = ["patch_size", "tubelet_size"] + (["pred_depth", "pred_embed_dim"] if m.init_predictor else [])
        for key in keys:
            if getattr(src_cfg, key) != getattr(m, key):
                raise ConfigError(f"model.{key}: {getattr(m, key)} in the config, but {m.init_from} has "
                                  f"{getattr(src_cfg, key)}")
        model.encoder.load_state_dict(src.encoder.state_dict())
        model.target_encoder.load_state_dict(src.target_encoder.state_dict())
        if m.init_predictor:  # an error scale head is ours alone: it starts fresh (at scale 1)
            model.predictor.load_state_dict(src.predictor.state_dict(), strict=model.predictor.log_scale is None)
