"""Typed, strict configuration mirroring ``params.yaml``.

One pydantic model per pipeline stage (= one ``params.yaml`` section = one ``ganops <verb>``). Every model is
frozen and forbids unknown keys, so a typo in ``params.yaml`` or in a ``-S key=value`` override is an error that
names the field instead of a silently ignored setting (nanoGPT-style strict config).

``load_params`` is the only place that turns YAML into typed config; nothing below the CLI sees raw dicts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class PrepareConfig(_Strict):
    """``prepare``: read a source, write uint8 (N, C, H, W) arrays for the train and test splits + metadata."""

    source: Literal["fashion_mnist", "folder"] = "fashion_mnist"
    # Fashion-MNIST IDX directory; None = /usr/share/datasets/fashion-mnist, then data/raw/fashion-mnist.
    fashion_mnist_dir: str | None = None
    # Image folder (source=folder): images directly inside, or one sub-folder per class.
    folder: str | None = None
    test_fraction: float = Field(0.1, gt=0.0, lt=1.0, description="folder source: share of images held out as test")
    resolution: int = Field(28, ge=8, le=1024, description="output height = width, pixels")
    channels: Literal[1, 3] = 1
    max_train: int | None = Field(None, ge=1, description="keep the first N train images (None = all)")
    max_test: int | None = Field(None, ge=1, description="keep the first N test images (None = all)")
    on_bad_image: Literal["fail", "skip"] = "fail"
    max_image_pixels: int = Field(64_000_000, ge=1, description="refuse images larger than this (width*height)")
    out_dir: str = "data/prepared"

    @model_validator(mode="after")
    def _folder_needs_path(self) -> "PrepareConfig":
        if self.source == "folder" and not self.folder:
            raise ValueError("prepare.folder must be set when prepare.source is 'folder'")
        return self


class ValidateConfig(_Strict):
    """``validate``: Great Expectations suite over the metadata table."""

    min_train_rows: int = Field(100, ge=1)
    min_test_rows: int = Field(10, ge=1)
    # Each class's share of train rows must lie within [1/K * (1 - tol), 1/K * (1 + tol)].
    class_balance_tolerance: float = Field(0.5, ge=0.0)
    expected_classes: list[int] | None = None  # None = 0..num_classes-1 from prepare's summary
    duplicates: Literal["warn", "fail"] = "warn"
    report_dir: str = "reports/validation"


# train.* values a cosine schedule moves to by train.schedule_kimg (None = constant); the EMA one last.
SCHEDULE_END_KEYS = ("lr_g_end", "lr_d_end", "beta2_end", "r1_gamma_end", "r2_gamma_end", "ema_halflife_kimg_end")


class TrainConfig(_Strict):
    """``train``: adversarial training (DCGAN, Radford et al. 2016, by default).

    ``arch`` and ``loss`` are checked against the registries in ``ganops.models`` / ``ganops.losses`` when training
    starts (unknown names list the valid ones). Resolution, channels and the number of classes come from the
    prepared data's ``summary.json``, not from here.
    """

    arch: str = "dcgan"
    conditional: bool = False
    z_dim: int = Field(100, ge=1)
    ngf: int = Field(32, ge=1, description="generator base width (channels)")
    ndf: int = Field(32, ge=1, description="discriminator base width (channels)")
    loss: str = "non_saturating"
    batch_size: int = Field(64, ge=1)
    total_kimg: float = Field(
        300.0, gt=0, allow_inf_nan=False,
        description="training length in thousands of real images shown to D",
    )
    lr_g: float = Field(2e-3, gt=0, allow_inf_nan=False)
    lr_d: float = Field(2e-3, gt=0, allow_inf_nan=False)
    betas_g: tuple[float, float] = (0.5, 0.999)
    betas_d: tuple[float, float] = (0.5, 0.999)
    ema_halflife_kimg: float = Field(
        10.0, ge=0, allow_inf_nan=False, description="G_ema half-life in kimg; 0 = G_ema is a copy of G each step"
    )
    spectral_norm: bool = Field(False, description="spectral norm on every D layer (Miyato et al. 2018); drops D's BN")
    # arch=r3gan only (Huang et al. 2024): residual blocks per stage, inverted-bottleneck widening, 3x3 group width.
    blocks_per_stage: int = Field(1, ge=1, le=16, description="r3gan: residual blocks per resolution stage")
    expansion: int = Field(2, ge=1, le=8, description="r3gan: inverted-bottleneck widening of each block")
    group_size: int = Field(16, ge=1, description="r3gan: channels per group of the grouped 3x3 convolutions")
    r1_gamma: float = Field(0.0, ge=0, allow_inf_nan=False, description="R1 weight (Mescheder et al. 2018); 0 = off")
    r2_gamma: float = Field(0.0, ge=0, allow_inf_nan=False,
                            description="R2 weight: R1 on generated images (R3GAN, Huang et al. 2024); 0 = off")
    r1_interval: int = Field(16, ge=1, description="lazy R1/R2: every N D steps, weighted gamma * N")
    # Cosine schedules (R3GAN): each *_end value is reached at schedule_kimg and kept after; None = constant.
    schedule_kimg: float = Field(0.0, ge=0, allow_inf_nan=False,
                                 description="horizon of the cosine schedules in kimg; 0 = every schedule off")
    lr_g_end: float | None = Field(None, gt=0, allow_inf_nan=False)
    lr_d_end: float | None = Field(None, gt=0, allow_inf_nan=False)
    beta2_end: float | None = Field(None, ge=0, lt=1, description="Adam beta2 of G and D at schedule_kimg")
    r1_gamma_end: float | None = Field(None, ge=0, allow_inf_nan=False)
    r2_gamma_end: float | None = Field(None, ge=0, allow_inf_nan=False)
    ema_halflife_kimg_end: float | None = Field(None, ge=0, allow_inf_nan=False)
    ema_rampup: float | None = Field(
        0.05, gt=0, allow_inf_nan=False,
        description="G_ema half-life <= ema_rampup * images seen (StyleGAN2-ADA, 0.05 there); None = no ramp-up")
    # Adaptive discriminator augmentation (Karras et al. 2020): ops applied with probability p, p steered by r_t.
    ada_target: float = Field(0.0, ge=0, lt=1, description="ADA r_t target (0.6 in the paper); 0 = ADA off")
    ada_policy: str = Field("translation,cutout", description="ADA ops (comma list of translation,cutout,color)")
    ada_kimg: float = Field(100.0, gt=0, allow_inf_nan=False, description="ADA: kimg for p to move from 0 to 1")
    ada_interval: int = Field(4, ge=1, description="ADA: D steps between p updates")
    gp_lambda: float = Field(10.0, ge=0, allow_inf_nan=False, description="gradient-penalty weight for loss=wgan_gp")
    diffaugment: str = Field("", description="comma list of translation,cutout,color; empty = off")
    precision: Literal["fp32", "bf16", "fp16", "auto"] = "fp32"
    channels_last: bool = Field(True, description="NHWC memory format for G and D (1.3x faster on the 2-core CPU)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    cuda_graph: bool = Field(True, description="on CUDA, replay the training step as one captured CUDA graph "
                             "(not with DDP, R1, GP, DiffAugment or fp16, which train eagerly)")
    num_threads: int = Field(0, ge=0, description="torch intra-op CPU threads; 0 = torch default (all cores)")
    resident_data_mb: float = Field(
        1024.0, ge=0, allow_inf_nan=False,
        description="train split up to this many MB (10^6 bytes) is copied to the device (fast, CUDA graph); a "
                    "larger one is read from disk batch by batch (memory flat in its size, same numerics, no CUDA "
                    "graph); 0 = always stream")
    log_every_steps: int = Field(10, ge=1, description="stats.jsonl / logger interval, in G steps")
    sample_every_kimg: float = Field(10.0, gt=0)
    checkpoint_every_kimg: float = Field(10.0, gt=0)
    eval_every_kimg: float = Field(0.0, ge=0, description="in-training FID/KID interval; 0 = off")
    eval_num_samples: int = Field(
        500, ge=2, description="generated and real test images per in-training FID (protocol etc. from evaluate)"
    )
    mode_collapse_threshold: float = Field(
        0.5, ge=0, description="warn when the G_ema/real mean pairwise-distance ratio drops below this"
    )
    mode_collapse_num_images: int = Field(64, ge=2, description="fixed images per side for the diversity ratio")
    grad_norm_limit: float = Field(1e4, gt=0, description="stop when a gradient norm exceeds this")
    grid_size: int = Field(8, ge=1, le=32, description="sample grid is grid_size x grid_size")
    run_dir: str = "runs/train"
    # What to do when run_dir holds a training state made with another architecture config (arch, widths, loss,
    # spectral norm, conditioning, dataset): "refuse" raises ResumeMismatchError; "restart" deletes that run's
    # training outputs and trains from scratch (for DVC experiments, whose previous outputs stay in the DVC cache);
    # "restart" also retrains when a training hyper-parameter changed (lr, betas, EMA, R1, augmentation, batch size:
    # anything but total_kimg, the intervals, device/threads/precision), "refuse" resumes with it and warns.
    on_config_change: Literal["refuse", "restart"] = "restart"

    @model_validator(mode="after")
    def _schedules_and_ada_complete(self) -> "TrainConfig":
        ends = {k: getattr(self, k) for k in SCHEDULE_END_KEYS if getattr(self, k) is not None}
        if ends and self.schedule_kimg == 0:
            raise ValueError(f"{', '.join(f'train.{k}' for k in ends)} set but train.schedule_kimg is 0, so the "
                             "schedule would never run: set schedule_kimg > 0 (the kimg at which the end values are "
                             "reached) or remove the *_end values")
        # An ema_rampup written next to a zero half-life is a contradiction; the default one just caps nothing.
        if ("ema_rampup" in self.model_fields_set and self.ema_rampup is not None and self.ema_halflife_kimg == 0
                and not self.ema_halflife_kimg_end):
            raise ValueError("train.ema_rampup caps a G_ema half-life, but train.ema_halflife_kimg is 0 (G_ema = G): "
                             "set ema_halflife_kimg > 0 or ema_rampup: null")
        if self.ada_target > 0 and not self.ada_policy:
            raise ValueError("train.ada_target > 0 turns ADA on, but train.ada_policy is empty: name the ops "
                             "(translation,cutout,color) or set ada_target: 0")
        return self

    @field_validator("betas_g", "betas_d")
    @classmethod
    def _betas_in_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in v):
            raise ValueError(f"Adam betas must lie in [0, 1), got {v}")
        return v

    @field_validator("diffaugment", "ada_policy")
    @classmethod
    def _known_augments(cls, v: str) -> str:
        valid = ("translation", "cutout", "color")
        names = [n.strip() for n in v.split(",") if n.strip()]
        bad = [n for n in names if n not in valid]
        if bad:
            raise ValueError(f"unknown DiffAugment policy {bad}; valid: {', '.join(valid)} (comma separated)")
        return ",".join(names)


class EvaluateConfig(_Strict):
    """``evaluate``: FID/KID of G_ema samples against the prepared test split."""

    num_samples: int = Field(2000, ge=2, description="generated samples (and real test images, at most)")
    protocol: Literal["legacy_tensorflow", "clean"] = "legacy_tensorflow"
    batch_size: int = Field(100, ge=1)
    kid_subsets: int = Field(100, ge=1)
    kid_subset_size: int = Field(1000, ge=2)
    inception_path: str | None = Field(None, description="NVIDIA inception-2015-12-05.pt; None = auto")
    precision: Literal["fp32", "bf16"] = "fp32"
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="sampling + Inception; auto = CUDA when available (full fp32, deterministic cuDNN), "
        "else CPU")
    ref_stats_dir: str = "cache/ref_stats"
    out: str = "metrics/eval.json"


class RegisterConfig(_Strict):
    """``register``: log G_ema to the MLflow model registry and set the champion/challenger alias."""

    model_name: str = Field("ganops-fashion-mnist", min_length=1)
    out: str = "reports/registration.json"


# The pipeline's stages in the order they run: one ``ganops <verb>`` (cli.py), one params.yaml section, one dvc.yaml
# stage and one tracking policy each (``ganops.tracking.stages.STAGE_POLICIES``); tests/unit/test_stage_wiring.py
# checks that they all agree.
STAGES = ("prepare", "validate", "train", "evaluate", "register")
# The keys of the evaluate stage's result (``ganops.metrics.api.evaluate_generator``) that it logs to MLflow and that
# the pipeline report shows.
REPORTED_METRICS = ("fid", "kid_mean", "kid_std")


class Params(_Strict):
    """The whole ``params.yaml``."""

    seed: int = Field(0, ge=0)
    experiment: str = Field("ganops", min_length=1, description="MLflow experiment name")
    prepare: PrepareConfig = PrepareConfig()
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate")
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    register_: RegisterConfig = Field(RegisterConfig(), alias="register")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ConfigError(ValueError):
    """``params.yaml`` (or an override) is invalid; the message names every bad field."""


PARAMS_HINT = "Fix these keys in params.yaml (see README, 'Parameters')."


# Params field names that differ from their params.yaml keys (``validate`` would shadow a BaseModel method).
_SECTION_KEYS = {"validate_": "validate", "register_": "register"}


def format_validation_error(err: ValidationError, source: str, hint: str = PARAMS_HINT) -> str:
    """A pydantic error over :class:`Params` (or a model mirroring it) as one line per bad field.

    Args:
        err: the validation error.
        source: what was validated, e.g. a file name or ``"overrides"``; the heading reads
            ``invalid parameters in <source>:``.
        hint: the closing line telling the user where to fix the keys.

    Returns:
        The message, e.g. ``"invalid parameters in params.yaml:\n  - train.total_kimg: Input should be greater
        than 0 (got -1)\n<hint>"``; locations use the params.yaml names (``validate``, not ``validate_``).
    """
    lines = [f"invalid parameters in {source}:"]
    for e in err.errors():
        # only the section (the first part) has a field name other than its params.yaml key
        parts = [str(p) for p in e["loc"]]
        if parts and parts[0] in _SECTION_KEYS:
            parts[0] = _SECTION_KEYS[parts[0]]
        loc = ".".join(parts)
        got = e.get("input")
        got_s = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  - {loc}: {e['msg']}{got_s}")
    lines.append(hint)
    return "\n".join(lines)


def parse_params(raw: dict[str, Any] | None, source: str = "<dict>") -> Params:
    """Validate a raw mapping into :class:`Params`.

    Raises:
        ConfigError: unknown keys, wrong types or out-of-range values; the message lists each field.
    """
    try:
        return Params.model_validate(raw or {})
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate ``params.yaml``.

    Raises:
        ConfigError: the file is missing or a directory, is not a YAML mapping, or fails validation.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path.resolve()} is a directory, not a parameter file; pass the YAML file itself "
                          f"(e.g. --params {path / 'params.yaml'})")
    if not path.is_file():
        raise ConfigError(f"parameter file not found: {path.resolve()} (run from the project root or pass --params)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, got {type(raw).__name__}")
    return parse_params(raw, str(path))


def flatten(params: Params) -> dict[str, Any]:
    """Flatten to ``{"train.lr_g": 0.0002, ...}`` for experiment trackers."""
    out: dict[str, Any] = {}

    def walk(prefix: str, obj: Any) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = obj

    walk("", params.model_dump(by_alias=True, mode="json"))
    return out
