"""Every run config shipped in configs/ loads, keeps the batch arithmetic its header comment
documents, and builds a model whose token grid its clips fit and its masks leave context and
targets on (models built on the meta device: no weights, so even ViT-g takes well under a second)."""

import re
from pathlib import Path

import pytest
import torch

from jepa.config import ConfigError, load_config
from jepa.masks import ImageMaskGenerator, sample_masks
from jepa.model import build_jepa
from jepa.rope import axis_dim

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
NOT_RUN_CONFIGS = {"serve.yaml"}  # read by ray_jobs.serve_app.load_serve_config
RUN_CONFIGS = sorted(p for p in CONFIGS.glob("*.yaml") if p.name not in NOT_RUN_CONFIGS)
MIN_KEEP = 4
"""Fewest context or target tokens a clip may be cut to: the reference I-JEPA mask collator's
`min_keep` (it redraws masks that keep fewer); our generators only promise one."""


def header(path: Path) -> str:
    """The comment lines a config starts with, joined into one line."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return " ".join(lines)


def documented_batch(text: str) -> dict[str, int]:
    """The batch arithmetic a header comment states, by the TrainConfig field it describes.

    Understood: "global batch N", "N Ray Train workers", "batch N per GPU", and a product clause
    ending in "x N accumulated", such as "Batch 24 per GPU x 16 GPUs x 8 accumulated" or
    "16 GPUs (2 nodes x 8) x 24 x 8 accumulated": "N GPUs" is num_workers, "N accumulated" the
    accumulation, the remaining factor the per-GPU batch, "(A nodes x B)" the workers again.
    A clause with "accumulated" that does not read this way is an error, not silently skipped.
    """
    doc: dict[str, int] = {}
    if m := re.search(r"global batch (\d+)", text, re.IGNORECASE):
        doc["global_batch_size"] = int(m[1])
    if m := re.search(r"(\d+) Ray Train workers", text):
        doc["num_workers"] = int(m[1])
    if m := re.search(r"batch (\d+) per GPU", text, re.IGNORECASE):
        doc["batch_size"] = int(m[1])
    clauses = [c for c in re.split(r"[.;:]\s", text) if "accumulated" in c]
    assert len(clauses) <= 1, f"more than one accumulation clause in the header: {clauses}"
    for clause in clauses:
        if m := re.search(r"\((\d+) nodes x (\d+)\)", clause):
            doc["nodes x GPUs per node"] = int(m[1]) * int(m[2])
        product = re.sub(r"\([^)]*\)", "", clause.split("accumulated")[0] + "accumulated")
        factors = re.findall(r"(\d+)\s+(GPUs\b|accumulated\b)?", product)
        roles = {"GPUs": "num_workers", "accumulated": "accumulation_steps"}
        named = {roles[word]: int(n) for n, word in factors if word}
        rest = [int(n) for n, word in factors if not word]
        assert set(named) == set(roles.values()) and len(rest) == 1, (
            f"cannot read the batch product in {clause!r}: factors {factors}")
        if "batch_size" in doc:
            assert doc["batch_size"] == rest[0], f"the header gives two per-GPU batches: {clause!r}"
        doc.update(named, batch_size=rest[0])
    return doc


def test_documented_batch_reads_every_header_form():
    assert documented_batch("Batch 24 per GPU x 16 GPUs x 8 accumulated micro-batches = global batch 3072; "
                            "lower batch_size") == {"batch_size": 24, "num_workers": 16, "accumulation_steps": 8,
                                                    "global_batch_size": 3072}
    assert documented_batch("batch 24 per GPU, global batch 3072. The reference reaches 3072 with 128 GPUs x 24; "
                            "here 16 GPUs (2 nodes x 8) x 24 x 8 accumulated micro-batches. Change it") == {
        "batch_size": 24, "num_workers": 16, "accumulation_steps": 8, "global_batch_size": 3072,
        "nodes x GPUs per node": 16}
    assert documented_batch("ViT-tiny, 2 Ray Train workers (gloo DDP).") == {"num_workers": 2}
    assert documented_batch("ViT-tiny on 64 px images.") == {}
    with pytest.raises(AssertionError, match="cannot read"):
        documented_batch("16 GPUs and 8 accumulated micro-batches")


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: p.name)
def test_config_loads(path):
    """The config loads, and its train section is the one its header comment describes: a
    changed batch_size, num_workers or global_batch_size with a stale comment fails here."""
    cfg = load_config(path)
    t = cfg.train
    assert t.accumulation_steps >= 1
    if t.global_batch_size:
        assert t.global_batch_size == t.accumulation_steps * t.num_workers * t.batch_size
    actual = {"global_batch_size": t.global_batch_size or t.num_workers * t.batch_size,
              "num_workers": t.num_workers, "nodes x GPUs per node": t.num_workers,
              "batch_size": t.batch_size, "accumulation_steps": t.accumulation_steps}
    documented = documented_batch(header(path))
    assert {k: actual[k] for k in documented} == documented, f"{path.name}: header comment vs train section"
    if t.accumulation_steps > 1:  # accumulation is a choice the header must explain
        assert {"global_batch_size", "accumulation_steps"} <= documented.keys(), (
            f"{path.name}: {t.accumulation_steps} accumulated micro-batches, not stated in the header comment")


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: p.name)
def test_config_builds_a_model_its_clips_and_masks_fit(path):
    cfg = load_config(path)
    m, batch = cfg.model, cfg.train.batch_size
    with torch.device("meta"):
        model = build_jepa(m, num_mask_configs=cfg.num_mask_configs)
        # A training clip (a 1-frame one in image mode) goes through the encoder whole: no pixel
        # or frame left over, and as many tokens as the grid the masks are drawn on.
        z = model.embed(torch.empty(batch, 3, m.num_frames, m.img_size, m.img_size))
    grid = model.token_grid
    n_tokens = grid[0] * grid[1] * grid[2]
    assert model.encoder.token_grid(m.num_frames, m.img_size, m.img_size) == grid
    assert tuple(z.shape) == (batch, n_tokens, model.encoder.embed_dim)
    if m.num_frames > 1:
        assert grid == (m.num_frames // m.tubelet_size, m.img_size // m.patch_size, m.img_size // m.patch_size)

    # Widths split evenly into heads, and every head is wide enough for 3D RoPE to rotate some of
    # its dims by each of t, h and w: with head_dim < 6 attention would be blind to positions.
    for name, width, heads in (("encoder", model.encoder.embed_dim, model.encoder.num_heads),
                               ("predictor", m.pred_embed_dim, m.pred_num_heads)):
        assert width % heads == 0, f"{name}: width {width} is not divisible by {heads} heads"
        assert axis_dim(width // heads) >= 2, f"{name}: head dim {width // heads} leaves RoPE nothing to rotate"

    # Masks drawn on the real token grid at the real per-worker batch leave every clip context and
    # targets (MIN_KEEP tokens or more), for every mask config, after the cut to the batch minimum.
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        if cfg.data.modality == "image":
            masks = [ImageMaskGenerator(grid, cfg.image_masks)(batch, g)]
        else:
            masks = sample_masks(grid, cfg.masks, batch, g)
        assert len(masks) == len(model.predictor.mask_tokens) == cfg.num_mask_configs
        for k, mb in enumerate(masks):
            assert mb.context.shape[0] == mb.target.shape[0] == batch
            kept = {"context": mb.context.shape[1], "target": mb.target.shape[1]}
            assert min(kept.values()) >= MIN_KEEP, (path.name, f"mask config {k}", grid, kept)
            assert mb.context.shape[1] + mb.target.shape[1] <= n_tokens
            assert int(mb.context.max()) < n_tokens and int(mb.target.max()) < n_tokens
            assert not any(set(c) & set(t) for c, t in zip(mb.context.tolist(), mb.target.tolist()))


def test_reference_preset_is_the_v_jepa_2_recipe():
    cfg = load_config(CONFIGS / "vitl16.yaml")
    m, o, t = cfg.model, cfg.optim, cfg.train
    assert (m.arch, m.num_frames, m.img_size, m.patch_size, cfg.data.fps) == ("large", 16, 256, 16, 4.0)
    assert (m.pred_depth, m.pred_embed_dim, m.activation_checkpointing) == (12, 384, True)
    assert (o.start_lr, o.lr, o.warmup_steps, o.schedule, o.ema_momentum) == (
        1e-4, 5.25e-4, 12000, "warmup_constant", 0.99925)
    assert (t.batch_size, t.global_batch_size, t.use_gpu) == (24, 3072, True)
    # The deployment the header describes: 2 nodes x 8 GPUs, so 8 micro-batches reach 3072.
    assert (t.num_workers, t.accumulation_steps) == (16, 8)
    gpu = [load_config(CONFIGS / f"{n}.yaml").train.use_gpu for n in ("vitb", "vith", "vitg")]
    assert all(gpu)


def test_global_batch_must_be_a_multiple_of_the_per_step_batch():
    assert load_config(None, ["train.batch_size=2", "train.num_workers=2"]).train.accumulation_steps == 1
    cfg = load_config(None, ["train.batch_size=2", "train.num_workers=2", "train.global_batch_size=8"])
    assert cfg.train.accumulation_steps == 2
    with pytest.raises(ConfigError, match="train.global_batch_size"):
        load_config(None, ["train.batch_size=2", "train.num_workers=2", "train.global_batch_size=6"])
