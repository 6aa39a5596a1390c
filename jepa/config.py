"""Typed run configuration: YAML -> nested dataclasses, strict about keys and types.

The reference's untyped YAML dicts silently ignore typos; here an unknown key or a value of the
wrong type is an error that names the key, and `key=value` overrides use the same checks.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A config key is unknown, or its value has the wrong type or is not allowed; the message names the key."""


Arch = Literal["tiny", "small", "base", "large", "huge", "giant"]
"""Encoder presets (`jepa.vit.ENCODER_PRESETS` holds their widths and depths)."""
Schedule = Literal["warmup_constant", "cosine"]
Modality = Literal["video", "image"]
MaskKind = Literal["multiblock", "future"]
Precision = Literal["auto", "bf16", "fp32"]
PlanSelect = Literal["mean", "best"]
PlanEnergy = Literal["final", "min", "mean"]


def check_choices(obj: Any, prefix: str = "") -> None:
    """Every `Literal[...]` field of dataclass `obj` holds one of its choices; for configs built
    in Python (`from_dict` checks the same while loading, naming the full key)."""
    for name, tp in typing.get_type_hints(type(obj)).items():
        if typing.get_origin(tp) is Literal:
            _check_literal(getattr(obj, name), tp, prefix + name)


def _check_literal(value: Any, tp: Any, key: str) -> Any:
    choices = typing.get_args(tp)
    if value not in choices or type(value) is not type(choices[0]):
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, choices))}")
    return value


@dataclass
class ModelConfig:
    arch: Arch = "tiny"
    """Encoder preset: tiny, small, base, large, huge, giant (widths/depths of the reference)."""
    img_size: int = 64
    """Square crop side in pixels fed to the encoder."""
    num_frames: int = 16
    """Frames per clip."""
    patch_size: int = 16
    """Spatial patch side in pixels."""
    tubelet_size: int = 2
    """Frames per temporal patch."""
    pred_depth: int = 12
    """Predictor transformer blocks."""
    pred_embed_dim: int = 384
    """Predictor width."""
    pred_num_heads: int = 12
    """Predictor attention heads."""
    pred_copy_context: bool = False
    """Each prediction starts from the latest context token at its place (layer-normed; with a
    future mask, the last context step), and the predictor learns only the change: at init it
    predicts "nothing moves". Off in the reference, whose predictions start from mask tokens."""
    pred_error_scale: bool = False
    """The predictor also predicts how wrong it will be: a Laplace scale per predicted feature,
    trained by the negative log-likelihood of the detached errors (so it never pulls the
    predictions toward easy tokens). Surprise is then that likelihood: a miss where the model
    expected to be right counts more than one where it knew it could not be (a bounce, a
    collision). Off in the reference."""
    loss: Literal["l1", "mse"] = "l1"
    """Regression loss on the layer-normed targets: l1 (the reference's) or mse (I-JEPA's). Under L1
    every token an exact copy already predicts pulls the predicted change toward zero as hard as a
    moving token pulls it away; under MSE a token pulls in proportion to its error."""
    activation_checkpointing: bool = False
    """Recompute block activations in backward to save memory."""
    init_from: str = ""
    """A V-JEPA 2 checkpoint (facebookresearch/vjepa2 `.pt` layout; a local path or s3:// URI) that a
    new run starts from instead of random weights; the sections above must describe its networks.
    A resumed run loads its own checkpoint instead."""
    init_predictor: bool = True
    """With `init_from`: load the file's predictor too; false for encoder-only files, whose
    predictor then starts freshly initialised."""

    def __post_init__(self) -> None:
        check_choices(self, "model.")


@dataclass
class MaskConfig:
    """One mask config. multiblock-3D: blocks span all time steps, targets are their union.
    future: the clip's first token time steps are the context, the rest the targets."""

    num_blocks: int = 8
    """Blocks sampled per clip."""
    spatial_scale: float = 0.15
    """Fraction of the spatial grid covered by each block."""
    aspect_ratio: tuple[float, float] = (0.75, 1.5)
    """Range of block height/width ratios."""
    kind: MaskKind = "multiblock"
    """multiblock (V-JEPA: spatial blocks as tubes through time) or future (predict the last token
    time steps from the first `context_steps`: the future prediction that surprise scoring uses)."""
    context_steps: int = 0
    """future masks: token time steps (tubelets) of context; 0 = half of the clip's."""

    def __post_init__(self) -> None:
        check_choices(self, "masks.")
        if self.context_steps < 0:
            raise ConfigError(f"masks.context_steps: must be >= 0, got {self.context_steps}")


@dataclass
class ImageMaskConfig:
    """I-JEPA multiblock-2D masks (image mode): target blocks plus one context block on a (1, H, W)
    grid. Targets are the union of the target blocks, the context is the context block minus them."""

    num_targets: int = 4
    """Target blocks sampled per image; their union is one mask config (K = 1)."""
    target_scale: tuple[float, float] = (0.15, 0.2)
    """Range of each target block's area as a fraction of the grid."""
    target_aspect: tuple[float, float] = (0.75, 1.5)
    """Range of target block height/width ratios."""
    context_scale: tuple[float, float] = (0.85, 1.0)
    """Range of the context block's area as a fraction of the grid (aspect ratio 1)."""


def _default_masks() -> list[MaskConfig]:
    return [MaskConfig(8, 0.15), MaskConfig(2, 0.7)]


@dataclass
class OptimConfig:
    lr: float = 5.25e-4
    """Peak learning rate, reached at the end of warmup."""
    start_lr: float = 1e-4
    """Learning rate at step 0."""
    final_lr: float = 0.0
    """Learning rate at the last step (cosine schedule only)."""
    warmup_steps: int = 12000
    """Linear warmup length in optimizer steps."""
    schedule: Schedule = "warmup_constant"
    """warmup_constant (V-JEPA 2: linear warmup, then constant) or cosine (warmup, then cosine
    decay to `final_lr`)."""
    weight_decay: float = 0.04
    """AdamW decay; never applied to biases and 1-D parameters."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    predictor_lr_scale: float = 1.0
    """The predictor's learning rate as a multiple of the encoder's (the schedule's); the
    reference trains both at one rate."""
    ema_momentum: float = 0.99925
    """Target-encoder EMA momentum (constant)."""

    def __post_init__(self) -> None:
        check_choices(self, "optim.")


@dataclass
class DataConfig:
    source: str = "s3://jepa/raw/physics"
    """Bucket prefix holding the training videos (.mp4)."""
    fps: float = 4.0
    """Frame rate clips are sampled at."""
    held_out_fraction: float = 0.1
    """Fraction of videos kept out of training, chosen by a hash of the key."""
    decode_cpus: float = 0.5
    """Ray CPUs reserved by each decoding task."""
    decode_tasks: int = 1
    """Decoding tasks run at once; one keeps pace with a 2-core trainer, raise it on GPU nodes."""
    dataset: str = ""
    """Ingested dataset (s3://B/datasets/NAME) to stream shards from; empty = decode `source` directly."""
    crop_scale: tuple[float, float] = (0.3, 1.0)
    """Random resized crop (shard mode): range of the crop area as a fraction of the frame."""
    crop_aspect: tuple[float, float] = (0.75, 1.35)
    """Random resized crop (shard mode): range of the crop's width/height ratio."""
    flip: float = 0.5
    """Probability of a horizontal flip per clip (shard mode)."""
    modality: Modality = "video"
    """video (V-JEPA: .mp4 clips, `masks`) or image (I-JEPA: .jpg/.jpeg/.png under `source` trained as
    1-frame clips with `image_masks`; needs model.num_frames = 1)."""

    def __post_init__(self) -> None:
        check_choices(self, "data.")


@dataclass
class TrainConfig:
    steps: int = 1000
    """Optimizer steps."""
    batch_size: int = 8
    """Clips per worker per step."""
    num_workers: int = 2
    """Ray Train workers (DDP ranks)."""
    cpus_per_worker: float = 1.0
    """Ray CPUs reserved by each training worker."""
    use_gpu: bool = False
    """One GPU per worker, NCCL and bf16 autocast."""
    precision: Precision = "auto"
    """Autocast dtype of the training forward passes: auto = bf16 on GPUs (as the reference trains),
    float32 on CPUs; bf16 = bf16 on CPUs too (about 1.5x faster steps on CPUs with native bf16
    matmuls, AVX512-BF16 or AMX, but slower on CPUs without them); fp32 = float32 everywhere."""
    compile: bool = False
    """torch.compile each transformer block (`jepa.model.compile_blocks`): faster steps on a GPU
    once the first steps have paid for compilation; the weights and checkpoints are unchanged."""
    seed: int = 0
    """Seed for weights, masks and data order."""
    log_every: int = 10
    """Steps between metric logs."""
    global_batch_size: int = 0
    """Clips per optimizer step over all workers; 0 = num_workers x batch_size. A larger value is
    reached by gradient accumulation and must be a multiple of num_workers x batch_size."""
    checkpoint_every: int = 0
    """Optimizer steps between checkpoints to object storage; 0 = only the final one."""
    keep_checkpoints: int = 3
    """Checkpoints kept in storage (the oldest are deleted); at least 1, the latest."""
    checkpoint_uri: str = ""
    """Where runs keep their checkpoints (s3://B/P or a local folder); empty = s3://B/checkpoints
    in the bucket of `data.dataset` (or `data.source`)."""
    run_name: str = ""
    """The training run's name, and so its identity: its folder under `checkpoint_uri` and the
    display name of the MLflow run it creates. Relaunching with the same name resumes from the
    run's latest checkpoint and logs to the same MLflow run (`--run-name` on the CLI sets it).
    Empty = a new run each time, in folder `<job>-<MLflow run id>` (MLflow picks its display name)."""
    max_failures: int = 3
    """Worker-group failures `jepa pretrain` recovers from (a restart from the latest checkpoint, its
    dataset starting at that checkpoint's data position; node preemptions do not count); -1 = no limit."""

    def __post_init__(self) -> None:
        check_choices(self, "train.")
        self.accumulation_steps  # validates global_batch_size
        if self.keep_checkpoints < 1:
            raise ConfigError(f"train.keep_checkpoints: must be at least 1 (the latest checkpoint), "
                              f"got {self.keep_checkpoints}")

    @property
    def accumulation_steps(self) -> int:
        """Micro-batches per optimizer step on each worker: global / (num_workers x batch_size)."""
        per_step = self.num_workers * self.batch_size
        if self.global_batch_size == 0:
            return 1
        if self.global_batch_size < 0 or self.global_batch_size % per_step:
            raise ConfigError(
                f"train.global_batch_size: {self.global_batch_size} is not a positive multiple of "
                f"num_workers x batch_size = {self.num_workers} x {self.batch_size} = {per_step}"
            )
        return self.global_batch_size // per_step


@dataclass
class TrackingConfig:
    experiment: str = "jepa-pretrain"
    """MLflow experiment name."""
    registered_model: str = "jepa-tiny"
    """Registry name the final model is registered under."""
    alias: str = "candidate"
    """Registry alias set on the new version."""


@dataclass
class PredictorStageConfig:
    """The end of pretraining spent on the predictor alone: the encoders are frozen, each worker
    encodes `cache_clips` clips once, and the predictor (with its error scales) trains on those
    features at several times the joint step's speed. Its forecasts get sharper without moving
    the features (bench/NOTES.md, "Intuitive physics")."""

    steps: int = 0
    """The last `steps` of `train.steps` are the stage's (0 = no stage). Needs a future mask in
    `masks`: the stage trains the predictor to forecast, from the context steps of that mask."""
    batch_size: int = 16
    """Cached clips per worker per step."""
    cache_clips: int = 2048
    """Clips each worker takes from its data stream and encodes when the stage starts (a run
    resumed within the stage encodes a fresh cache from where its data stands)."""

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or self.cache_clips < self.batch_size:
            raise ConfigError(f"predictor_stage: need steps >= 0, batch_size >= 1 and cache_clips >= batch_size, "
                              f"got steps={self.steps}, batch_size={self.batch_size}, cache_clips={self.cache_clips}")


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    masks: list[MaskConfig] = field(default_factory=_default_masks)
    image_masks: ImageMaskConfig = field(default_factory=ImageMaskConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    predictor_stage: PredictorStageConfig = field(default_factory=PredictorStageConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        if self.data.modality == "image" and self.model.num_frames != 1:
            raise ConfigError(f"model.num_frames: must be 1 with data.modality=image, got {self.model.num_frames}")
        stage = self.predictor_stage
        if stage.steps and stage.steps >= self.train.steps:
            raise ConfigError(f"predictor_stage.steps: {stage.steps} must be fewer than train.steps ({self.train.steps}), "
                              f"which count the stage's steps too")
        if stage.steps and (self.data.modality == "image" or not any(m.kind == "future" for m in self.masks)):
            raise ConfigError("predictor_stage.steps: the stage trains forecasting and needs a future mask in masks "
                              "(video data)")

    @property
    def joint_steps(self) -> int:
        """Steps that train encoder and predictor together: train.steps less the predictor stage's."""
        return self.train.steps - self.predictor_stage.steps

    @property
    def num_mask_configs(self) -> int:
        """Mask configs per clip: len(masks) for video; 1 for images (the target blocks' union)."""
        return 1 if self.data.modality == "image" else len(self.masks)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class ACModelConfig:
    """The action-conditioned predictor (`jepa train-ac`) on top of a frozen encoder."""

    encoder: str = ""
    """The frozen encoder: a registered `jepa pretrain` model (models:/NAME@ALIAS or /VERSION) or a
    local model folder. Its target encoder turns each frame (duplicated into a tubelet) into tokens."""
    pool: int = 1
    """Average-pool the encoder's token grid by this factor per side: fewer tokens per frame make
    training and every planning rollout cheaper."""
    dim: int = 192
    """Predictor width."""
    depth: int = 6
    """Predictor transformer blocks."""
    num_heads: int = 6
    """Predictor attention heads."""
    uses_state: bool = True
    """Add a state token (qpos, qvel) per step; the predictor also predicts the next state."""
    rollout_steps: int = 2
    """Steps of the rollout loss (the predictor fed its own predictions), on top of teacher forcing."""
    loss: Literal["l1", "change_mse"] = "l1"
    """Frame-token loss: l1 (the reference's) on the layer-normed tokens; or change_mse, squared
    error in units of each channel's one-step change spread (from the training windows), which
    weighs the few tokens an action moves above the many it does not."""
    state_reader: bool = False
    """Also train a state reader (``jepa.state_reader``): the configuration a frame shows, read from
    its unpooled tokens, so the planner can weigh the distance to the goal image's configuration
    (``planner.state_weight``). Needs ``uses_state``, whose imagined states it is compared with."""

    def __post_init__(self) -> None:
        check_choices(self, "model.")
        if self.state_reader and not self.uses_state:
            raise ConfigError("model.state_reader: needs model.uses_state (the planner compares imagined states)")


@dataclass
class ACDataConfig:
    dataset: str = ""
    """Episode windows (`jepa ingest` of a `jepa synth mujoco` dataset): s3://B/datasets/NAME."""
    frames: int = 0
    """Agent steps per training window; 0 = the windows' full length."""
    decode_cpus: float = 0.5
    """Ray CPUs reserved by each decoding task."""


@dataclass
class PlannerConfig:
    """CEM defaults stored with the model: what `jepa eval plan` and `/v1/plan` use unless told otherwise."""

    samples: int = 300
    """Action sequences sampled per iteration."""
    elites: int = 30
    """Lowest-energy samples the Gaussian is refitted to."""
    iterations: int = 10
    """CEM iterations per plan."""
    horizon: int = 5
    """Agent steps planned ahead."""
    replan_every: int = 5
    """Agent steps executed from each plan before planning again (MPC)."""
    init_std: float = 1.0
    """Initial standard deviation, as a fraction of half the action range."""
    min_std: float = 0.05
    """Floor on the standard deviation, same units."""
    select: PlanSelect = "mean"
    """The plan returned: ``best``, the lowest-energy sequence scored, or ``mean``, the final
    Gaussian's mean (the default; never scored itself, it can average elites that head different ways)."""

    energy: PlanEnergy = "final"
    """How a sequence's imagined steps make its energy: the distance to the goal after the last
    step (``final``, V-JEPA 2-AC's), the closest step (``min``: a goal passed through counts, as
    it does in the reacher protocol), or the mean over steps (``mean``: arrive soon and stay)."""
    state_weight: float = 0.0
    """Added to the energy per unit of distance (rad or env units, largest coordinate) between
    the imagined final state and the goal's state as the model's state reader sees it in the goal
    image (``jepa.state_reader``); 0 plans on tokens alone. Token distances stop growing once the
    arm no longer overlaps its goal pose; this term keeps growing."""

    def __post_init__(self) -> None:
        check_choices(self, "planner.")
        for name, value in dataclasses.asdict(self).items():
            if name not in ("select", "energy", "state_weight") and not value > 0:
                raise ConfigError(f"planner.{name}: must be > 0, got {value}")
        if not self.state_weight >= 0:
            raise ConfigError(f"planner.state_weight: must be >= 0, got {self.state_weight}")
        if self.elites > self.samples:
            raise ConfigError(f"planner.elites: {self.elites} exceeds planner.samples {self.samples}")
        if self.replan_every > self.horizon:
            raise ConfigError(f"planner.replan_every: {self.replan_every} exceeds planner.horizon {self.horizon}")


@dataclass
class ACRunConfig:
    model: ACModelConfig = field(default_factory=ACModelConfig)
    data: ACDataConfig = field(default_factory=ACDataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=lambda: TrackingConfig("jepa-ac", "jepa-ac"))
    planner: PlannerConfig = field(default_factory=PlannerConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _convert(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return from_dict(tp, value, prefix=key + ".")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple:
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} values, got {value!r}")
            return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        return [_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _convert(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} does not match {tp}")
    if origin is Literal:
        return _check_literal(value, tp, key)
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}: expected null, got {value!r}")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass `cls` from `data`, rejecting unknown keys and wrong types by name."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown config key(s): {', '.join(prefix + k for k in unknown)} "
            f"(valid under '{prefix or '<root>'}': {', '.join(sorted(names))})"
        )
    kwargs = {k: _convert(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of dataclass `cls` (the string literal after it in the
    source), so the configuration reference is generated from the code it documents."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def apply_override(data: dict[str, Any], override: str) -> None:
    """Apply one `a.b.c=value` override (value parsed as YAML) to a nested dict in place."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} is not of the form key=value")
    dotted, raw = override.split("=", 1)
    keys = dotted.strip().split(".")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {k!r} is not a section")
    node[keys[-1]] = yaml.safe_load(raw)


def load_yaml(cls: type, path: str | Path | None = None, overrides: list[str] = ()) -> Any:
    """Read a YAML file into dataclass `cls`, apply `key=value` overrides and validate the result."""
    data: dict[str, Any] = {}
    if path is not None:
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
    for override in overrides:
        apply_override(data, override)
    return from_dict(cls, data)


def load_ac_config(path: str | Path | None = None, overrides: list[str] = ()) -> ACRunConfig:
    """`load_config` for `jepa train-ac` configs."""
    return load_yaml(ACRunConfig, path, overrides)


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML run config, apply `key=value` overrides and validate the result."""
    return load_yaml(RunConfig, path, overrides)
