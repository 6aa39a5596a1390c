"""Pure-PyTorch V-JEPA core: video ViT with 3D RoPE (`vit`, `rope`), predictor, multiblock-3D
masks, EMA target, L1 objective, optimiser and schedules, and `train_step`.

No Ray, S3 or MLflow here (a test enforces it). Nothing is re-exported so that importing
`jepa.config` alone stays cheap; import from the submodules, e.g. `from jepa.model import build_jepa`.
"""
