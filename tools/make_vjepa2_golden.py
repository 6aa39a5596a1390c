"""Record golden outputs of the reference V-JEPA 2 code for tests/jepa/test_vjepa2.py.

    VJEPA2_REF=/path/to/facebookresearch/vjepa2 .venv/bin/python tools/make_vjepa2_golden.py

VJEPA2_REF is a checkout (or `git archive` of `src/`) of facebookresearch/vjepa2; its code is
imported from there and never copied into this repository. `timm` and `einops` are replaced by
stubs if absent (the reference imports `drop_path` and `rearrange` without using them here).

For each of ViT-L/H/g it builds `jepa.vjepa2.synthetic_vjepa2_checkpoint` (deterministic weights
from a seed; our parameter names mapped to the reference layout), strips the `module.backbone.`
prefix and loads the three networks into the reference's own `vit_*` / `vit_predictor` modules
with strict=True (so our key mapping is checked against the reference's real names), runs them
in float32 on a fixed random clip, and saves a strided sample of each output plus sums. It also
records the reference's RoPE cos/sin (read off `rotate_queries_or_keys` with unit vectors) and
its rotation of random queries. The test regenerates weights and inputs from the same seeds and
compares our model against these numbers. Also prints our-vs-reference max abs differences.
"""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jepa.rope import apply_rope, rope_tables  # noqa: E402
from jepa.vjepa2 import load_vjepa2, synthetic_vjepa2_checkpoint  # noqa: E402

OUT = ROOT / "tests" / "jepa" / "data" / "vjepa2_golden.pt"
# arch -> encoder depth of the synthetic checkpoint (predictor: 1 block of 384, 12 heads).
CASES = {"vit_large": 2, "vit_huge": 1, "vit_giant_xformers": 1}
PRED_DEPTH = 1
NUM_MASK_TOKENS = 6  # as the reference's ViT-L/H/g configs: 2 masks x 3 datasets
CLIP = (2, 3, 4, 64, 64)  # (B, C, T, H, W) -> token grid (2, 4, 4)
WIDE_CLIP = (1, 3, 4, 48, 80)  # non-square: grid (2, 3, 5)
SAMPLES = 512
ROPE_GRIDS = ((2, 4, 4), (2, 3, 5))
ROPE_HEAD_DIMS = (64, 80, 32)  # ViT-L/g heads, ViT-H heads, predictor heads


def import_reference(root: str):
    sys.path.insert(0, root)
    try:
        import timm  # noqa: F401
    except ImportError:
        layers = types.ModuleType("timm.models.layers")
        layers.drop_path = lambda x, p=0.0, training=False: x
        sys.modules.update({"timm": types.ModuleType("timm"), "timm.models": types.ModuleType("timm.models"),
                            "timm.models.layers": layers})
    try:
        import einops  # noqa: F401
    except ImportError:
        stub = types.ModuleType("einops")
        stub.rearrange = None
        sys.modules["einops"] = stub
    from src.models import predictor as ref_pred
    from src.models import vision_transformer as ref_vit
    from src.models.utils import modules as ref_modules
    return ref_vit, ref_pred, ref_modules


def reference_encoder(ref_vit, arch: str, depth: int, kw: dict):
    """The reference's `vit_*` constructor with its own width, heads and MLP ratio but `depth`
    blocks (a full ViT-g would take minutes to initialise on CPU)."""
    captured = {}
    real = ref_vit.VisionTransformer
    ref_vit.VisionTransformer = lambda **kwargs: captured.update(kwargs)
    try:
        getattr(ref_vit, arch)(**kw)
    finally:
        ref_vit.VisionTransformer = real
    print(arch, {k: captured[k] for k in ("embed_dim", "depth", "num_heads", "mlp_ratio")}, "-> depth", depth)
    return real(**{**captured, "depth": depth}).eval()


def clean(sd: dict) -> dict:
    """The reference hub's key cleaning (`module.` and `backbone.` removed)."""
    return {k.replace("module.", "").replace("backbone.", ""): v for k, v in sd.items()}


def inputs(seed: int = 1):
    """Clip, wide clip, context ids and target ids; test_vjepa2.py regenerates them the same way."""
    g = torch.Generator().manual_seed(seed)
    clip = torch.rand(CLIP, generator=g) * 2 - 1
    wide = torch.rand(WIDE_CLIP, generator=g) * 2 - 1
    n = 2 * 4 * 4
    perms = [torch.randperm(n, generator=g) for _ in range(CLIP[0])]
    ctx = torch.stack([p[:12].sort().values for p in perms])  # (B, 12)
    tgt = torch.stack([p[12:20].sort().values for p in perms])  # (B, 8)
    return clip, wide, ctx, tgt


def summary(x: torch.Tensor) -> dict:
    flat = x.detach().reshape(-1).double()
    stride = max(1, flat.numel() // SAMPLES)
    return {"shape": tuple(x.shape), "sample": flat[::stride][:SAMPLES].float().clone(), "stride": stride,
            "sum": flat.sum().item(), "abs_sum": flat.abs().sum().item()}


def reference_rope(ref_modules, head_dim: int, grid: tuple[int, int, int]):
    """cos, sin (N, 3d) in our [t | h | w] layout and the rotation of random q (N, head_dim)."""
    T, H, W = grid
    attn = ref_modules.RoPEAttention(dim=head_dim, num_heads=1, qkv_bias=True, grid_size=H)
    ids = torch.arange(T * H * W)
    pos = attn.separate_positions(ids.view(1, 1, -1), H, W)  # (frame, height, width) ids
    d = attn.d_dim
    cos, sin = [], []
    for p in pos:
        even = torch.zeros(1, 1, ids.numel(), d)
        even[..., 0::2] = 1.0
        a = ref_modules.rotate_queries_or_keys(even, pos=p)  # [2i] = cos[2i], [2i+1] = sin[2i+1]
        b = ref_modules.rotate_queries_or_keys(1.0 - even, pos=p)  # [2i] = -sin[2i], [2i+1] = cos[2i+1]
        c, s = torch.empty_like(a), torch.empty_like(a)
        c[..., 0::2], c[..., 1::2] = a[..., 0::2], b[..., 1::2]
        s[..., 0::2], s[..., 1::2] = -b[..., 0::2], a[..., 1::2]
        cos.append(c[0, 0])
        sin.append(s[0, 0])
    # the reference forward's rotation of a random query, chunk by chunk as in RoPEAttention.forward
    q = torch.randn(1, 1, ids.numel(), head_dim, generator=torch.Generator().manual_seed(head_dim))
    parts = [ref_modules.rotate_queries_or_keys(q[..., i * d:(i + 1) * d], pos=p) for i, p in enumerate(pos)]
    rotated = torch.cat([*parts, q[..., 3 * d:]], dim=-1)[0, 0]
    return torch.cat(cos, -1), torch.cat(sin, -1), q[0, 0], rotated


def main() -> None:
    root = os.environ.get("VJEPA2_REF")
    if not root:
        sys.exit("set VJEPA2_REF to a checkout of facebookresearch/vjepa2")
    ref_vit, ref_pred, ref_modules = import_reference(root)
    torch.manual_seed(0)
    clip, wide, ctx, tgt = inputs()
    golden = {"inputs_check": {"clip_sum": clip.double().sum().item(), "wide_sum": wide.double().sum().item(),
                               "ctx": ctx, "tgt": tgt}, "cases": {}, "rope": {}}
    for arch, depth in CASES.items():
        ck = synthetic_vjepa2_checkpoint(arch, depth=depth, pred_depth=PRED_DEPTH, num_mask_tokens=NUM_MASK_TOKENS)
        kw = dict(img_size=64, patch_size=16, num_frames=4, tubelet_size=2, use_rope=True, use_sdpa=True)
        enc = reference_encoder(ref_vit, arch, depth, kw)
        tgt_enc = reference_encoder(ref_vit, arch, depth, kw)
        pred = ref_pred.vit_predictor(
            embed_dim=enc.embed_dim, predictor_embed_dim=384, depth=PRED_DEPTH, num_heads=12,
            use_mask_tokens=True, num_mask_tokens=NUM_MASK_TOKENS, **kw,
        ).eval()
        for module, name in ((enc, "encoder"), (tgt_enc, "target_encoder"), (pred, "predictor")):
            module.load_state_dict(clean(ck[name]), strict=True)
        with torch.no_grad():
            ref = {
                "target": tgt_enc(clip),
                "target_wide": tgt_enc(wide),
                "context": enc(clip, masks=[ctx]),
            }
            ref["pred"] = pred(ref["context"], [ctx], [tgt], mask_index=0)
            model, _ = load_vjepa2(ck, arch, depth=depth)
            ours = {
                "target": model.target_encoder(clip),
                "target_wide": model.target_encoder(wide),
                "context": model.encoder(clip, keep=ctx),
            }
            ours["pred"] = model.predictor(ref["context"], ctx, tgt, (2, 4, 4), mask_index=0)
        golden["cases"][arch] = {
            "depth": depth,
            "weights_check": sum(v.double().sum().item() for v in ck["encoder"].values()),
            **{k: summary(v) for k, v in ref.items()},
        }
        diffs = {k: (ours[k] - ref[k]).abs().max().item() for k in ref}
        print(arch, "max |ours - reference|:", {k: f"{v:.2e}" for k, v in diffs.items()})
    for hd in ROPE_HEAD_DIMS:
        for grid in ROPE_GRIDS:
            cos, sin, q, rotated = reference_rope(ref_modules, hd, grid)
            golden["rope"][(hd, grid)] = {"cos": cos, "sin": sin, "rotated": rotated}
            ids = torch.arange(grid[0] * grid[1] * grid[2])
            c, s = rope_tables(ids, grid, hd)  # (1, N, 3d)
            ours = apply_rope(q[None, None], c, s)[0, 0]
            c, s = c[0], s[0]
            print(f"rope head_dim={hd} grid={grid}: cos max diff {(c - cos).abs().max():.2e}, "
                  f"sin {(s - sin).abs().max():.2e}, rotated q {(ours - rotated).abs().max():.2e}, "
                  f"bit-exact tables: {torch.equal(c, cos) and torch.equal(s, sin)}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    torch.save(golden, OUT)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
