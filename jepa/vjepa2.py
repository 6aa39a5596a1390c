"""Read and write the checkpoint layout of facebookresearch/vjepa2.

A V-JEPA 2 `.pt` file is a dict with `encoder`, `target_encoder` and `predictor` state dicts
(a training checkpoint also holds `opt`, `scaler`, `epoch`, ...: ignored here). The reference
wraps each network as `DistributedDataParallel(MultiSeqWrapper(net))`, so every key starts with
`module.backbone.`; we accept that prefix, `backbone.` alone, or none.

Key mapping (after the prefix):
- encoder / target_encoder: identical names (`patch_embed.proj`, `blocks.{i}.…`, `norm`).
- predictor: `predictor_embed` -> `embed`, `predictor_blocks` -> `blocks`, `predictor_norm` ->
  `norm`, `predictor_proj` -> `proj`; `mask_tokens.{i}` keep name and (1, 1, D) shape.

Mask tokens. The reference allocates `len(masks) * len(dataset_fpcs)` tokens (6 in its ViT-L/H/g
configs, 10 in its hub models) but indexes them by clip-length group, so 16-frame training only
ever uses `mask_tokens.0` (for both mask configs); the others stay at their zero init. Our
predictor has one token per mask config. Loading a reference file therefore copies
`mask_tokens.0` into every one of our slots (`mask_tokens="first"`). Files written by
`export_vjepa2` carry a `jepa_ray` marker and map token i to slot i (`"each"`), so a round trip
is exact. Tokens beyond the ones used are the only keys that load without a destination.

Also skipped: `pos_embed` / `predictor_pos_embed`, the fixed sin-cos tables a model built
without RoPE would hold (not learned; never used with RoPE). Every other key must map to a
parameter of the same shape, and every parameter must be covered, or loading fails with an
error that names the keys.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from jepa.config import ModelConfig
from jepa.model import JEPA, token_grid
from jepa.predictor import Predictor
from jepa.vit import ENCODER_PRESETS, VisionTransformer

WRAPPER_PREFIX = "module.backbone."
MARKER = "jepa_ray"
ENCODERS = ("encoder", "target_encoder")
# Reference constructor names -> our presets (ours are accepted too). V-JEPA 2 released L/H/g; the
# smaller ones are for files exported from small models trained here (`model.init_from` in tests).
ARCH_NAMES = {
    "vit_tiny": "tiny",
    "vit_small": "small",
    "vit_base": "base",
    "vit_large": "large",
    "vit_huge": "huge",
    "vit_giant": "giant",
    "vit_giant_xformers": "giant",
}
PREDICTOR_RENAMES = (
    ("predictor_embed.", "embed."),
    ("predictor_blocks.", "blocks."),
    ("predictor_norm.", "norm."),
    ("predictor_proj.", "proj."),
)
UNUSED_WITH_ROPE = {"encoder": "pos_embed", "predictor": "predictor_pos_embed"}
_MASK_TOKEN = re.compile(r"mask_tokens\.(\d+)$")


class VJEPA2CheckpointError(ValueError):
    """A V-JEPA 2 checkpoint does not match the requested architecture."""


def resolve_arch(arch: str) -> str:
    """`vit_large` / `vit_huge` / `vit_giant_xformers` / ... (or our `large` / `huge` / ...) -> preset."""
    name = ARCH_NAMES.get(arch, arch)
    if name not in ENCODER_PRESETS:
        raise VJEPA2CheckpointError(
            f"unknown V-JEPA 2 arch {arch!r}; choose from {', '.join([*ARCH_NAMES, *ENCODER_PRESETS])}"
        )
    return name


def _strip_prefix(key: str) -> str:
    for prefix in ("module.", "backbone."):
        if key.startswith(prefix):
            key = key[len(prefix):]
    return key


def reference_to_ours(network: str, key: str) -> str:
    """A reference key (prefix already stripped) -> our parameter name in `network`."""
    if network == "predictor":
        for old, new in PREDICTOR_RENAMES:
            if key.startswith(old):
                return new + key[len(old):]
    return key


def ours_to_reference(network: str, key: str) -> str:
    """Our parameter name in `network` -> the reference key, with the `module.backbone.` prefix."""
    if network == "predictor":
        for old, new in PREDICTOR_RENAMES:
            if key.startswith(new):
                key = old + key[len(new):]
                break
    return WRAPPER_PREFIX + key


def _block_count(keys: list[str], prefix: str) -> int:
    ids = {int(m.group(1)) for k in keys if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return max(ids) + 1 if ids else 0


def _read(source: str | Path | Mapping) -> Mapping:
    if isinstance(source, Mapping):
        return source
    # weights_only: a checkpoint is data, never code. Reference files (tensors, numbers,
    # strings, dicts) load this way.
    ckpt = torch.load(source, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, Mapping):
        raise VJEPA2CheckpointError(f"{source}: expected a dict of state dicts, got {type(ckpt).__name__}")
    return ckpt


def _stripped(ckpt: Mapping, network: str) -> dict[str, Tensor]:
    sd = ckpt[network]
    if not isinstance(sd, Mapping):
        raise VJEPA2CheckpointError(f"'{network}' is not a state dict ({type(sd).__name__})")
    out = {}
    for key, value in sd.items():
        short = _strip_prefix(key)
        if short in out:
            raise VJEPA2CheckpointError(f"'{network}': two keys map to {short!r} (one is {key!r})")
        out[short] = value
    out.pop(UNUSED_WITH_ROPE["predictor" if network == "predictor" else "encoder"], None)
    return out


def _names(keys, limit: int = 12) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def _load_strict(module: torch.nn.Module, weights: dict[str, Tensor], network: str) -> None:
    """Copy `weights` (our names) into `module`; every parameter covered, nothing left over,
    shapes equal, or a VJEPA2CheckpointError that names the offending keys."""
    expected = module.state_dict()
    missing = set(expected) - set(weights)
    unexpected = set(weights) - set(expected)
    wrong = [
        f"{k}: file {tuple(weights[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(weights))
        if tuple(weights[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_names(unexpected)}")
    if wrong:
        problems.append("shape mismatches: " + "; ".join(wrong[:12]))
    if problems:
        raise VJEPA2CheckpointError(f"'{network}' does not match the model ({' | '.join(problems)})")
    # Own float32 copies: never alias the caller's tensors, nor one network's another's (the
    # same weights may feed both encoders; mask token 0 may feed several slots).
    weights = {k: v.detach().to(torch.float32, copy=True) for k, v in weights.items()}
    module.load_state_dict(weights, strict=True, assign=True)


def load_vjepa2(
    source: str | Path | Mapping,
    arch: str = "vit_large",
    *,
    predictor: bool = True,
    num_mask_tokens: int | None = None,
    mask_tokens: str = "auto",
    pred_num_heads: int = 12,
    depth: int | None = None,
    img_size: int = 256,
    num_frames: int = 16,
) -> tuple[JEPA, ModelConfig]:
    """Load a V-JEPA 2 checkpoint (a path to the `.pt`, or the loaded dict) strictly into a JEPA.

    arch: `vit_large`, `vit_huge`, `vit_giant_xformers` (or `large`, `huge`, `giant`; smaller
        presets too, for our own exports); the encoder width in the file must match it. Heads cannot be read from shapes, so they come
        from the preset (and `pred_num_heads` for the predictor, 12 in every V-JEPA 2 config).
    predictor: load the predictor too (the file must have one). With False the file's
        predictor, if any, is ignored and ours stays freshly initialised (12 x 384, 12 heads):
        for encoder-only files such as evaluation releases.
    num_mask_tokens: our mask tokens (one per mask config); default: the number recorded by
        `export_vjepa2`, else 2 (the default mask configs).
    mask_tokens: "first" (copy the file's token 0 into every slot: how the reference uses them),
        "each" (token i -> slot i) or "auto" ("each" for our own exports, else "first").
    depth: expected encoder depth; default the preset's (24 / 32 / 40). Only for truncated
        test files: the returned ModelConfig names the preset, so `build_jepa(cfg)` would
        build the full depth.
    img_size, num_frames: the training clip size recorded in the config (RoPE has no table,
        so the weights fix neither).

    Only one of `encoder` / `target_encoder` present: it is copied into both. Predictor width
    and depth are read from the file. Returns (model in eval mode on CPU, its ModelConfig).
    """
    ckpt = _read(source)
    arch_name = resolve_arch(arch)
    preset = ENCODER_PRESETS[arch_name]
    encoders = [n for n in ENCODERS if n in ckpt]
    if not encoders:
        raise VJEPA2CheckpointError(f"no 'encoder' or 'target_encoder' in checkpoint (keys: {_names(ckpt)})")
    if predictor and "predictor" not in ckpt:
        raise VJEPA2CheckpointError("no 'predictor' in checkpoint; pass predictor=False to load the encoder only")
    marker = ckpt.get(MARKER, {})

    # -- encoder geometry from the file; width must match the arch
    enc = {n: _stripped(ckpt, n) for n in encoders}
    first = enc[encoders[0]]
    if "patch_embed.proj.weight" not in first:
        raise VJEPA2CheckpointError(f"'{encoders[0]}' has no patch_embed.proj.weight (keys: {_names(first)})")
    width, in_chans, tubelet, patch, _ = first["patch_embed.proj.weight"].shape
    if width != preset.embed_dim:
        raise VJEPA2CheckpointError(
            f"'{encoders[0]}' has width {width}, but {arch} is {preset.embed_dim} wide; pick the matching arch"
        )
    # Built on the meta device (no init: ViT-g's truncated-normal init alone takes seconds),
    # then every parameter is assigned from the file, which the strict check guarantees.
    with torch.device("meta"):
        encoder = VisionTransformer(
            embed_dim=preset.embed_dim,
            depth=preset.depth if depth is None else depth,
            num_heads=preset.num_heads,
            mlp_ratio=preset.mlp_ratio,
            patch_size=patch,
            tubelet_size=tubelet,
            in_chans=in_chans,
        )

    # -- predictor geometry from the file
    pred_sd = _stripped(ckpt, "predictor") if predictor else None
    pred_dim, pred_depth = 384, 12
    if pred_sd is not None:
        if "predictor_embed.weight" not in pred_sd:
            raise VJEPA2CheckpointError(f"'predictor' has no predictor_embed.weight (keys: {_names(pred_sd)})")
        pred_dim = pred_sd["predictor_embed.weight"].shape[0]
        pred_depth = _block_count(list(pred_sd), "predictor_blocks.")
    if num_mask_tokens is None:
        num_mask_tokens = int(marker.get("num_mask_tokens", 2))
    with torch.device("meta" if predictor else "cpu"):  # a predictor not loaded is initialised
        pred = Predictor(
            embed_dim=width,
            pred_embed_dim=pred_dim,
            depth=pred_depth,
            num_heads=pred_num_heads,
            num_mask_tokens=num_mask_tokens,
        )

    cfg = ModelConfig(
        arch=arch_name,
        img_size=img_size,
        num_frames=num_frames,
        patch_size=patch,
        tubelet_size=tubelet,
        pred_depth=pred_depth,
        pred_embed_dim=pred_dim,
        pred_num_heads=pred_num_heads,
    )
    model = JEPA(encoder, pred, token_grid(cfg))

    for name in ENCODERS:
        _load_strict(getattr(model, name), enc.get(name, first), name)
    if pred_sd is not None:
        _load_strict(pred, _predictor_weights(pred_sd, num_mask_tokens, mask_tokens, marker), "predictor")
    return model.eval(), cfg


def _predictor_weights(sd: dict[str, Tensor], ours: int, mode: str, marker: Mapping) -> dict[str, Tensor]:
    """Reference predictor keys -> ours, mask tokens assigned per `mode`."""
    if mode == "auto":
        mode = "each" if marker.get("mask_tokens") == "each" else "first"
    if mode not in ("first", "each"):
        raise VJEPA2CheckpointError(f"mask_tokens must be 'auto', 'first' or 'each', not {mode!r}")
    tokens = {int(m.group(1)): v for k, v in sd.items() if (m := _MASK_TOKEN.match(k))}
    weights = {reference_to_ours("predictor", k): v for k, v in sd.items() if not _MASK_TOKEN.match(k)}
    if not tokens:
        return weights  # the strict check will name the missing mask tokens
    if mode == "first":
        if 0 not in tokens:
            raise VJEPA2CheckpointError("'predictor' has mask tokens but no mask_tokens.0")
        weights.update({f"mask_tokens.{i}": tokens[0] for i in range(ours)})
    else:
        absent = [i for i in range(ours) if i not in tokens]
        if absent:
            raise VJEPA2CheckpointError(
                f"'predictor' lacks mask tokens {absent} for mask_tokens='each' (file has {sorted(tokens)})"
            )
        weights.update({f"mask_tokens.{i}": tokens[i] for i in range(ours)})
    return weights


def export_vjepa2(
    model: JEPA,
    path: str | Path | None = None,
    *,
    num_mask_tokens: int | None = None,
    predictor: bool = True,
) -> dict:
    """Write (and return) `model` in the reference layout: `encoder`, `target_encoder` and
    `predictor` with `module.backbone.` keys and `predictor_` names, plus a `jepa_ray` marker
    dict (ignored by the reference, read back by `load_vjepa2`).

    num_mask_tokens: how many `mask_tokens.{i}` to write; the reference loads strictly into a
        predictor with `len(masks) * len(dataset_fpcs)` tokens (6 in its configs, 10 in its hub
        models). Our token i is written as token i; extra slots repeat our token 0, the one the
        reference uses for 16-frame clips. Default: exactly ours.
    """
    ours = len(model.predictor.mask_tokens)
    n_tokens = ours if num_mask_tokens is None else num_mask_tokens
    if n_tokens < ours:
        raise VJEPA2CheckpointError(f"num_mask_tokens={n_tokens} would drop some of our {ours} mask tokens")
    out: dict = {}
    networks = ENCODERS + (("predictor",) if predictor else ())
    for name in networks:
        sd = {}
        for key, value in getattr(model, name).state_dict().items():
            if _MASK_TOKEN.match(key):
                continue
            sd[ours_to_reference(name, key)] = value.detach().cpu().clone()
        if name == "predictor":
            tokens = model.predictor.mask_tokens
            for i in range(n_tokens):
                sd[f"{WRAPPER_PREFIX}mask_tokens.{i}"] = tokens[i if i < ours else 0].detach().cpu().clone()
        out[name] = sd
    out[MARKER] = {"format": 1, "mask_tokens": "each", "num_mask_tokens": ours}
    if path is not None:
        torch.save(out, path)
    return out


def reference_shapes(
    arch: str = "vit_large",
    *,
    depth: int | None = None,
    pred_depth: int = 12,
    pred_embed_dim: int = 384,
    num_mask_tokens: int = 6,
) -> dict[str, dict[str, torch.Size]]:
    """{network: {reference key: shape}} of a V-JEPA 2 checkpoint of `arch` (encoder depth
    default: the preset's), without allocating any weights."""
    preset = ENCODER_PRESETS[resolve_arch(arch)]
    with torch.device("meta"):
        encoder = VisionTransformer(
            preset.embed_dim, preset.depth if depth is None else depth, preset.num_heads, preset.mlp_ratio
        )
        pred = Predictor(preset.embed_dim, pred_embed_dim, pred_depth, num_mask_tokens=num_mask_tokens)
    shapes = {}
    for name, module in (("encoder", encoder), ("target_encoder", encoder), ("predictor", pred)):
        shapes[name] = {ours_to_reference(name, k): v.shape for k, v in module.state_dict().items()}
    return shapes


def synthetic_vjepa2_checkpoint(
    arch: str = "vit_large",
    *,
    depth: int = 2,
    pred_depth: int = 2,
    pred_embed_dim: int = 384,
    num_mask_tokens: int = 6,
    seed: int = 0,
) -> dict:
    """A reference-layout checkpoint with deterministic random weights (no download): the real
    widths of `arch`, `depth` encoder blocks, `num_mask_tokens` distinct mask tokens, the
    target encoder the encoder plus 0.01. Weights are uniform with variance 1/fan_in (linear,
    conv) so attention is sharp enough for positions (RoPE) to matter; norm weights 1 + U,
    biases and norm shifts U, with U of std 0.1; mask tokens of std 1.

    The values depend only on key names, shapes and `seed` (one CPU generator, keys in sorted
    order), which is what the golden test against the reference relies on.
    """
    shapes = reference_shapes(
        arch, depth=depth, pred_depth=pred_depth, pred_embed_dim=pred_embed_dim, num_mask_tokens=num_mask_tokens
    )
    g = torch.Generator().manual_seed(seed)

    def draw(key: str, shape: torch.Size) -> Tensor:
        x = (torch.rand(shape, generator=g) - 0.5) * 12**0.5  # mean 0, std 1; rand is cheaper than randn
        if key.endswith("bias"):
            return 0.1 * x
        if len(shape) == 1:  # LayerNorm weight
            return 1.0 + 0.1 * x
        if "mask_tokens" in key:
            return x
        return x / shape[1:].numel() ** 0.5

    out = {name: {k: draw(k, shapes[name][k]) for k in sorted(shapes[name])} for name in ("encoder", "predictor")}
    out["target_encoder"] = {k: v + 0.01 for k, v in out["encoder"].items()}  # distinct, and cheap
    return out
