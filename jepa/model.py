"""The V-JEPA model: online encoder + predictor trained by regression onto an EMA target encoder."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from jepa.config import ModelConfig
from jepa.masks import MaskBatch
from jepa.objective import abs_error, effective_rank, feature_std, jepa_loss, laplace_nll, normalize_targets
from jepa.predictor import Predictor
from jepa.vit import VisionTransformer, build_encoder, gather_tokens


class JEPA(nn.Module):
    """Everything that needs gradients happens in `forward`, so a caller can wrap the whole
    module in DDP; the target encoder's parameters do not require grad, so DDP skips them and
    the optimizer never sees them. Only `jepa.ema.ema_update` changes the target encoder."""

    def __init__(self, encoder: VisionTransformer, predictor: Predictor, token_grid: tuple[int, int, int],
                 loss: str = "l1"):
        super().__init__()
        self.encoder = encoder
        self.predictor = predictor
        self.loss = loss
        self.target_encoder = copy.deepcopy(encoder).requires_grad_(False)
        self._token_grid = token_grid

    @property
    def token_grid(self) -> tuple[int, int, int]:
        """(T', H', W') tokens of a training clip; masks are sampled on this grid."""
        return self._token_grid

    def forward(self, clips: Tensor, masks: list[MaskBatch]) -> dict[str, Tensor]:
        """clips (B, C, T, H, W), one MaskBatch per mask config -> {"loss", "target_std",
        "effective_rank"}, and "error_nll" when the predictor has an error scale head.

        "target_std" and "effective_rank" are collapse diagnostics of the layer-normed target
        features (no grad). "error_nll" trains the error scale on the detached errors, so it
        learns how wrong the predictions are without changing what they regress to.
        """
        grid = self.encoder.token_grid(*clips.shape[-3:])
        with torch.no_grad():
            targets = self.target_encoder(clips)  # (B, N, D): every token, no masking
        losses, nlls = [], []
        for i, m in enumerate(masks):
            z = self.encoder(clips, keep=m.context)  # (B, Nc, D)
            loss, nll = self.prediction_losses(z, m.context, m.target, gather_tokens(targets, m.target), grid, i)
            losses.append(loss)
            nlls += [] if nll is None else [nll]
        normed = normalize_targets(targets)
        out = {
            "loss": torch.stack(losses).mean(),
            "target_std": feature_std(normed),
            "effective_rank": effective_rank(normed),  # SVD of <= 1024 tokens: bounded cost
        }
        if nlls:
            out["error_nll"] = torch.stack(nlls).mean()
        return out

    def prediction_losses(self, context: Tensor, context_ids: Tensor, target_ids: Tensor, targets: Tensor,
                          grid: tuple[int, int, int], mask_index: int) -> tuple[Tensor, Tensor | None]:
        """From encoded context (B, Nc, D): the regression loss onto the target encoder's tokens
        ``targets`` (B, Nt, D), and the error scale's loss (None when the predictor has no head)."""
        if self.predictor.log_scale is None:
            pred = self.predictor(context, context_ids, target_ids, grid, mask_index=mask_index)
            return jepa_loss(pred, targets, self.loss), None
        pred, log_scale = self.predictor(context, context_ids, target_ids, grid, mask_index=mask_index,
                                         with_log_scale=True)
        return jepa_loss(pred, targets, self.loss), laplace_nll(abs_error(pred.detach(), targets), log_scale).mean()

    @torch.no_grad()
    def embed(self, clips: Tensor) -> Tensor:
        """Features of every token (B, N, D) from the target encoder: the EMA weights are the
        smoother of the two and the ones the reference evaluates and releases."""
        return self.target_encoder(clips)


def token_grid(model_cfg: ModelConfig) -> tuple[int, int, int]:
    """(T', H', W') tokens of a training clip, without building the model (masks need it)."""
    m = model_cfg
    if m.num_frames == 1:  # an image: one tubelet (the encoder repeats the frame)
        return 1, m.img_size // m.patch_size, m.img_size // m.patch_size
    if m.num_frames % m.tubelet_size or m.img_size % m.patch_size:
        raise ValueError(f"clip {m.num_frames}x{m.img_size}px is not divisible by tubelet "
                         f"{m.tubelet_size} / patch {m.patch_size}")
    return m.num_frames // m.tubelet_size, m.img_size // m.patch_size, m.img_size // m.patch_size


def compile_blocks(model: JEPA) -> JEPA:
    """torch.compile every transformer block of the encoder, target encoder and predictor, in
    place (regional compilation: one small graph per block shape, built in seconds where a whole
    model takes minutes). Parameter names and the state dict stay those of the eager model, so
    checkpoints, EMA and DDP see no difference."""
    for blocks in (model.encoder.blocks, model.target_encoder.blocks, model.predictor.blocks):
        for block in blocks:
            block.compile()
    return model


def build_jepa(model_cfg: ModelConfig, num_mask_configs: int) -> JEPA:
    encoder = build_encoder(model_cfg)
    predictor = Predictor(
        embed_dim=encoder.embed_dim,
        pred_embed_dim=model_cfg.pred_embed_dim,
        depth=model_cfg.pred_depth,
        num_heads=model_cfg.pred_num_heads,
        num_mask_tokens=num_mask_configs,
        activation_checkpointing=model_cfg.activation_checkpointing,
        copy_context=model_cfg.pred_copy_context,
        error_scale=model_cfg.pred_error_scale,
    )
    return JEPA(encoder, predictor, token_grid(model_cfg), loss=model_cfg.loss)
