"""The run config: one typed schema, filled from defaults, then a TOML file, then flags.

Every field's name is also its TOML key and, with '-' for '_', its CLI flag
(`prior_loss_weight` / `--prior-loss-weight`).
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imprint.errors import ImprintError

# Per-method defaults, from the diffusers examples (REFERENCE.md): a field left unset by the
# TOML file and the flags takes its method's value here.
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "lora": {"lr": 1e-4},
    "full": {"lr": 5e-6},
    "textual_inversion": {"lr": 5e-4},
}


@dataclass
class TrainConfig:
    model: str | None = None
    images: str | None = None
    class_name: str | None = None
    token: str = "sks"
    instance_prompt: str = "a photo of {token} {class_name}"
    class_prompt: str = "a photo of {class_name}"
    method: str = "lora"
    rank: int = 4
    alpha: float | None = None  # None: alpha = rank, as the diffusers example does
    lora_targets: str = "attention"  # or "attention+conv": also the UNet's ResNet convolutions
    num_vectors: int = 1  # textual inversion: embedding vectors per token
    train_text_encoder: bool = False
    steps: int = 500
    lr: float | None = None  # None: the method's default (METHOD_DEFAULTS)
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    batch_size: int = 1
    resolution: int = 512
    prior_preservation: bool = False
    num_class_images: int = 100
    prior_loss_weight: float = 1.0
    class_images: str | None = None  # None: a cache folder keyed by model, prompt, size, seed
    class_inference_steps: int = 30
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    seed: int = 0
    checkpoint_every: int = 250
    keep_checkpoints: int = 3
    sample_every: int = 0  # 0: only at the end
    final_samples: bool = True
    sample_prompt: list[str] = field(default_factory=list)
    sample_inference_steps: int = 25
    output: str | None = None
    resume: str | None = None  # "latest" or a checkpoint folder
    select_best: float | None = None  # lambda of the harmonic reward; None: the last step wins
    select_prompts: int = 4
    metrics: str = "dreambench"
    dino_model: str = "facebook/dino-vits16"
    clip_model: str = "openai/clip-vit-base-patch32"

    def resolved_alpha(self) -> float:
        return float(self.rank if self.alpha is None else self.alpha)

    def fill(self, text: str) -> str:
        return text.format(token=self.token, class_name=self.class_name)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
CHOICES = {
    "method": None,  # checked against the method registry, which owns the names
    "mixed_precision": ("no", "fp16", "bf16"),
    "lr_scheduler": ("constant", "constant_with_warmup", "linear", "cosine"),
    "lora_targets": ("attention", "attention+conv"),
}


def load_toml(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ImprintError(f"--config {path}: file not found; pass the path of a TOML run file")
    try:
        with p.open("rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ImprintError(f"--config {path}: not valid TOML ({e}); fix the file") from e
    data = {k.replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise ImprintError(
            f"--config {path}: unknown key(s) {', '.join(unknown)}; "
            f"see `imprint train --help` for the keys"
        )
    return data


def build_config(toml_values: dict[str, Any], flag_values: dict[str, Any]) -> TrainConfig:
    """Defaults < TOML file < flags given on the command line (flags win)."""
    values: dict[str, Any] = {}
    values.update(toml_values)
    values.update({k: v for k, v in flag_values.items() if v is not None})
    cfg = TrainConfig(**values)
    if cfg.lr is None:
        cfg.lr = METHOD_DEFAULTS.get(cfg.method, {}).get("lr", 1e-4)
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    from imprint.methods import METHODS  # the registry owns the method names

    for name, f in FIELDS.items():
        value = getattr(cfg, name)
        if value is None:
            continue
        if f.type in ("int", "float") and isinstance(value, bool):
            raise ImprintError(f"--{name.replace('_', '-')}: expected a number, got {value!r}")
        if f.type == "int" and not isinstance(value, int):
            raise ImprintError(f"--{name.replace('_', '-')}: expected an integer, got {value!r}")
    if isinstance(cfg.sample_prompt, str):
        cfg.sample_prompt = [cfg.sample_prompt]
    if cfg.method not in METHODS:
        raise ImprintError(
            f"--method {cfg.method}: unknown method; choose one of {', '.join(sorted(METHODS))}"
        )
    for name, allowed in CHOICES.items():
        if allowed and getattr(cfg, name) not in allowed:
            raise ImprintError(
                f"--{name.replace('_', '-')} {getattr(cfg, name)}: choose one of {', '.join(allowed)}"
            )
    for name in ("model", "images", "class_name", "output"):
        if not getattr(cfg, name):
            raise ImprintError(f"--{name.replace('_', '-')} is required (flag or key in --config)")
    positive = ("rank", "steps", "batch_size", "resolution", "num_vectors", "keep_checkpoints",
                "class_inference_steps", "sample_inference_steps")
    for name in positive:
        if getattr(cfg, name) <= 0:
            raise ImprintError(f"--{name.replace('_', '-')} must be > 0, got {getattr(cfg, name)}")
    if cfg.resolution % 8:
        raise ImprintError(f"--resolution {cfg.resolution}: must be a multiple of 8")
    if cfg.lr <= 0:
        raise ImprintError(f"--lr must be > 0, got {cfg.lr}")
    if cfg.prior_preservation and cfg.num_class_images <= 0:
        raise ImprintError("--num-class-images must be > 0 with --prior-preservation")
    for name in ("checkpoint_every", "sample_every"):
        if getattr(cfg, name) < 0:
            raise ImprintError(f"--{name.replace('_', '-')} must be >= 0 (0 turns it off)")
    if cfg.select_best is not None:
        if not 0 <= cfg.select_best <= 1:
            raise ImprintError(f"--select-best {cfg.select_best}: lambda must be within [0, 1]")
        if not cfg.checkpoint_every:
            raise ImprintError("--select-best scores checkpoints: set --checkpoint-every > 0")
        if cfg.select_prompts <= 0:
            raise ImprintError("--select-prompts must be > 0")
    for text_name in ("instance_prompt", "class_prompt"):
        try:
            cfg.fill(getattr(cfg, text_name))
        except (KeyError, IndexError, ValueError) as e:
            raise ImprintError(
                f"--{text_name.replace('_', '-')}: bad placeholder {e}; "
                "only {token} and {class_name} are filled in"
            ) from e
