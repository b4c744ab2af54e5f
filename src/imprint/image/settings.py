"""The settings of an image-personalisation run, by theme, and the run config built from them."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

from imprint.config import Group, all_fields, check_values, chosen_method, flag, instantiate, method_groups
from imprint.core.optim import default_lr
from imprint.core.precision import GENERATION_PRECISIONS
from imprint.core.settings import TrainerSettings
from imprint.families.flow import FlowMatchingSettings
from imprint.methods import METHODS
from imprint.objectives import TERMS
from imprint.util.errors import ImprintError
from imprint.util.settings import setting

log = logging.getLogger("imprint")


@dataclass
class RunSettings:
    model: str | None = setting(None, "hub id or local diffusers folder of the base model", shown_default="required")
    output: str | None = setting(None, "run folder", shown_default="required")
    method: str = setting("lora", "what is trained; `imprint methods` lists them with their settings")
    resume: str | None = setting(None, "continue the run in --output from its latest checkpoint "
                                 "(or from the checkpoint folder given)", shown_default="off")


@dataclass
class DataSettings:
    images: str | None = setting(None, "folder of subject photos, jpg/png/webp", shown_default="required")
    class_name: str | None = setting(None, "the subject's class noun, e.g. dog", shown_default="required")
    token: str = setting("sks", "rare identifier that stands for the subject in prompts")
    instance_prompt: str = setting("a photo of {token} {class_name}", "training caption; {token} and "
                                   "{class_name} are filled in")
    captions: bool = setting(True, "a caption file NAME.txt beside photo NAME.jpg is that photo's training "
                             "prompt ({token} and {class_name} filled in); photos without one use "
                             "--instance-prompt; --no-captions: the instance prompt for every photo")
    resolution: int | None = setting(None, "training size in pixels (square, a multiple of 8)", positive=True,
                                     shown_default="the model family's: 512 for SD 1.x/2.x, 1024 for SDXL, SD3 and FLUX")
    buckets: bool = setting(False, "aspect-ratio buckets (as kohya's): each photo keeps its shape, resized "
                            "and centre-cropped to the bucket of nearest aspect (about resolution^2 pixels, "
                            "sides multiples of resolution/8 up to 64, from resolution/2 to 2x resolution); "
                            "each batch from one bucket; class images stay square")
    batch_size: int = setting(1, "subject images per step (as many class images are added with prior "
                              "preservation)", positive=True)
    repeats: int = setting(1, "each subject photo counts N times in an epoch (kohya's repeats): an epoch "
                           "walks N shuffled copies of the photo list; the rows of a step (batch-size "
                           "subject rows, as many class rows) stay the same, so it changes the order and, "
                           "with --buckets, how evenly each bucket's batches fill", positive=True)
    flip: bool = setting(False, "random horizontal flip of the subject photos (p 0.5 per row, seeded; the "
                         "latents of both orientations are cached; masks flip with their photo; class "
                         "images are not flipped)")
    masks: str | None = setting(None, "folder of subject masks, one per photo with the photo's file stem "
                                "(any image mode; non-zero = subject; a cut-out's alpha); used by "
                                "--mask-loss-weight and the mask methods", shown_default="none")
    auto_masks: bool = setting(False, "make the subject masks with a text-prompted segmentation model "
                               "(--auto-mask-model), once; they are saved in the run folder's masks/ to "
                               "inspect, fix and pass as --masks to a later run")
    auto_mask_model: str = setting("CIDAS/clipseg-rd64-refined", "CLIPSeg model of --auto-masks (hub id or folder)")
    auto_mask_prompt: str = setting("{class_name}", "text prompt of --auto-masks ({token} and {class_name} "
                                    "filled in)")
    auto_mask_threshold: float = setting(0.4, "--auto-masks: a pixel is subject where CLIPSeg's probability "
                                         "is above this")
    noise_offset: float = setting(0.0, "offset noise (Guttenberg 2023): a per-channel constant of this "
                                  "scale added to the training noise, so the model can move an image's "
                                  "mean brightness; 0: off, e.g. 0.05")
    gradient_checkpointing: bool = setting(False, "recompute activations in the backward pass: less "
                                           "memory, more compute")
    compile: str = setting("off", "torch.compile the denoiser: regional compiles each repeated block once "
                           "(short start), full the whole model (long start)", choices=("off", "regional", "full"))


@dataclass
class PriorDataSettings:
    prior_preservation: bool = setting(False, "add DreamBooth's prior-preservation loss on class images")
    class_prompt: str = setting("a photo of {class_name}", "prompt of the class images")
    num_class_images: int = setting(100, "class images to generate / use", positive=True)
    class_images: str | None = setting(None, "folder of class images", shown_default="a cache generated "
                                       "once per model, prompt, size and seed ($IMPRINT_CACHE)")
    # 15: class images at 15 DPM-Solver++ steps are the 50-step ones' distribution within seed noise
    # (benchmarks/class_image_steps.py), at half the time of 30
    class_inference_steps: int = setting(15, "denoising steps of each generated class image (DPM-Solver++)",
                                         positive=True)
    # auto renders in bf16 where the device computes it natively: on the toy world a bf16 class image
    # moves an eighth as far from its float32 50-step version as 15 steps do, and renders 1.8x faster
    # on an AMX CPU (benchmarks/class_image_steps.py)
    class_precision: str = setting("auto", "precision of generated class images: auto is the run's "
                                   "--mixed-precision, or without one bf16 where the device computes it "
                                   "natively (a CUDA GPU that supports it, a CPU with AMX), else fp32",
                                   choices=GENERATION_PRECISIONS)


@dataclass
class SampleSettings:
    sample_every: int = setting(0, "write a sample grid every N steps (0: only at the end)", non_negative=True)
    final_samples: bool = setting(True, "write a sample grid when training ends")
    sample_prompt: list[str] = setting(help="prompt of the sample grids (repeatable); {token} and "
                                       "{class_name} are filled in", factory=list,
                                       shown_default="the instance prompt")
    sample_inference_steps: int = setting(25, "denoising steps of each sample image", positive=True)


@dataclass
class SelectionSettings:
    select_best: float | None = setting(None, "score every checkpoint with the lambda-harmonic reward (from RPO) "
                                        "and make the best one the result; the value is lambda, e.g. 0.5")
    select_prompts: int = setting(4, "validation prompts of --select-best", positive=True)
    early_stop_patience: int = setting(0, "with --select-best: stop training once N scored checkpoints in a "
                                       "row have not beaten the best reward (RPO's early stopping); 0: "
                                       "train all --steps", non_negative=True)
    metrics: str = setting("dreambench", "metric backend of --select-best")
    dino_model: str = setting("facebook/dino-vits16", "DINO model of the metrics (hub id or folder)")
    clip_model: str = setting("openai/clip-vit-base-patch32", "CLIP model of the metrics (hub id or folder)")


def term_settings_classes(group: str) -> list[type]:
    return [t.Settings for t in TERMS.values() if t.Settings and getattr(t, "group", "objective") == group]


def groups() -> list[Group]:
    """Every section of an image run, in --help order; one table per method at the end."""
    out = [
        Group("run", "run", [RunSettings]),
        Group("data", "subject data", [DataSettings]),
        Group("prior", "prior preservation", [PriorDataSettings, *term_settings_classes("prior")]),
        Group("trainer", "optimizer, precision, checkpoints", [TrainerSettings]),
        Group("family", "flow-matching models (SD3, FLUX)", [FlowMatchingSettings]),
        Group("objective", "loss terms", term_settings_classes("objective")),
        Group("samples", "sample images", [SampleSettings]),
        Group("selection", "best-checkpoint selection", [SelectionSettings]),
    ]
    # lora first: the flags several methods share (--rank, --alpha, ...) are listed under it
    return out + method_groups(METHODS, "lora")


@dataclass
class ImageRunConfig:
    run: RunSettings
    data: DataSettings
    prior: PriorDataSettings
    trainer: TrainerSettings
    family: FlowMatchingSettings
    samples: SampleSettings
    selection: SelectionSettings
    terms: dict[str, Any]        # term name -> its settings
    method: Any                  # the chosen method's settings

    def fill(self, text: str) -> str:
        return text.format(token=self.data.token, class_name=self.data.class_name)

    def to_dict(self) -> dict[str, Any]:
        """Flat {key: value} of every setting the run uses: config.json, and the flags of a resume."""
        out = {}
        for section in (self.run, self.data, self.prior, self.trainer, self.family, self.samples, self.selection,
                        *self.terms.values(), self.method):
            if section is not None:
                out.update(dataclasses.asdict(section))
        return out


SECTIONS = {"run": RunSettings, "data": DataSettings, "prior": PriorDataSettings, "trainer": TrainerSettings,
            "family": FlowMatchingSettings, "samples": SampleSettings, "selection": SelectionSettings}


def build_config(toml_values: dict[str, Any], flag_values: dict[str, Any], check_required: bool = True) -> ImageRunConfig:
    """Defaults < TOML file < flags given on the command line (flags win)."""
    values = {**toml_values, **{k: v for k, v in flag_values.items() if v is not None}}
    every = all_fields(groups())
    unknown = sorted(set(values) - set(every))
    if unknown:
        raise ImprintError(f"unknown setting(s) {', '.join(unknown)}; see `imprint train --help`")
    if isinstance(values.get("sample_prompt"), str):
        values["sample_prompt"] = [values["sample_prompt"]]
    method_cls = chosen_method(values, METHODS, RunSettings.method, "imprint train")
    check_values(values, every)
    cfg = ImageRunConfig(
        **{name: instantiate(cls, values) for name, cls in SECTIONS.items()},
        terms={name: instantiate(t.Settings, values) for name, t in TERMS.items() if t.Settings},
        method=instantiate(method_cls.Settings, values),
    )
    if hasattr(cfg.method, "resolve"):
        cfg.method.resolve()
    if hasattr(cfg.method, "resolve_steps"):  # settings whose default depends on --steps
        cfg.method.resolve_steps(cfg.trainer.steps)
    if cfg.trainer.lr is None:
        cfg.trainer.lr = default_lr(cfg.trainer.optimizer, method_cls.default_lr)
    validate(cfg, check_required)
    return cfg


def validate(cfg: ImageRunConfig, check_required: bool = True) -> None:
    if check_required:
        for name, section in (("model", cfg.run), ("images", cfg.data), ("class_name", cfg.data), ("output", cfg.run)):
            if not getattr(section, name):
                raise ImprintError(f"{flag(name)} is required (flag or key in --config)")
    if cfg.data.resolution is not None and cfg.data.resolution % 8:
        raise ImprintError(f"--resolution {cfg.data.resolution}: must be a multiple of 8")
    if cfg.data.buckets and cfg.data.resolution is not None and cfg.data.resolution % 64:
        raise ImprintError(f"--resolution {cfg.data.resolution}: with --buckets it must be a multiple of 64 "
                           "(the bucket sides step by resolution/8)")
    trained = METHODS[cfg.run.method](cfg.method).trained_parts()
    for name, term in TERMS.items():
        settings = cfg.terms.get(name)
        if term.needs_trained_text_encoder and term(settings).enabled() and "text_encoder" not in trained:
            switch = flag(dataclasses.fields(term.Settings)[0].name)  # a term's first setting switches it on
            raise ImprintError(f"{switch}: its loss reaches only the text encoder, which --method {cfg.run.method} "
                               "does not train; add --train-text-encoder, or use --method textual_inversion / pivotal")
    if cfg.terms.get("rpo") and cfg.terms["rpo"].rpo_weight > 0:
        if cfg.data.buckets:
            raise ImprintError("--rpo-weight pairs each subject row with a square negative: drop --buckets")
        if not METHODS[cfg.run.method].adapters_off_is_base:
            raise ImprintError(f"--rpo-weight compares the model with the frozen base, which an adapter method "
                               f"gives by switching its adapters off; --method {cfg.run.method} cannot: use lora, "
                               "dora, loha, lokr, krona or tlora")
        if not 0 <= cfg.terms["rpo"].rpo_lambda <= 1:
            raise ImprintError(f"--rpo-lambda {cfg.terms['rpo'].rpo_lambda:g}: must be within [0, 1]")
    if cfg.terms.get("domainstudio") and cfg.terms["domainstudio"].domainstudio_weight > 0:
        if not cfg.prior.prior_preservation or cfg.data.buckets:
            raise ImprintError("--domainstudio-weight compares the subject rows with the class rows of the same "
                               "step: add --prior-preservation (and drop --buckets)")
        if cfg.data.batch_size < 3:
            raise ImprintError(f"--domainstudio-weight needs --batch-size 3 or more (a row's distances are to the "
                               f"other rows); got {cfg.data.batch_size}")
    if cfg.data.masks and cfg.data.auto_masks:
        raise ImprintError("--masks and --auto-masks: give one (a folder of masks, or masks made by the model)")
    if cfg.terms.get("mask") and cfg.terms["mask"].mask_loss_weight != 1 and not (cfg.data.masks or cfg.data.auto_masks):
        raise ImprintError(f"--mask-loss-weight {cfg.terms['mask'].mask_loss_weight:g} needs subject masks: "
                           "add --masks DIR or --auto-masks")
    if not 0 < cfg.data.auto_mask_threshold < 1:
        raise ImprintError(f"--auto-mask-threshold {cfg.data.auto_mask_threshold:g}: must be within (0, 1)")
    if cfg.trainer.lr <= 0:
        raise ImprintError(f"--lr must be > 0, got {cfg.trainer.lr}")
    if cfg.trainer.ema_decay and not 0 < cfg.trainer.ema_decay < 1:
        raise ImprintError(f"--ema-decay {cfg.trainer.ema_decay}: must be within (0, 1), or 0 for off")
    if cfg.selection.select_best is not None:
        if cfg.trainer.ema_decay:
            raise ImprintError("--select-best scores the live weights of each checkpoint; with --ema-decay "
                               "the result would be the average instead: use one of the two")
        if not 0 <= cfg.selection.select_best <= 1:
            raise ImprintError(f"--select-best {cfg.selection.select_best}: lambda must be within [0, 1]")
        if not cfg.trainer.checkpoint_every:
            raise ImprintError("--select-best scores checkpoints: set --checkpoint-every > 0")
    elif cfg.selection.early_stop_patience:
        raise ImprintError("--early-stop-patience stops on the checkpoints' reward: add --select-best LAMBDA")
    prompts = [("instance_prompt", cfg.data), ("class_prompt", cfg.prior), ("auto_mask_prompt", cfg.data)]
    prompts += [(f.name, section) for section in cfg.terms.values() if section is not None
                for f in dataclasses.fields(section)
                if f.name.endswith("_prompt") and isinstance(getattr(section, f.name), str)]  # the terms' prompts
    for name, section in prompts:
        try:
            cfg.fill(getattr(section, name))
        except (KeyError, IndexError, ValueError) as e:
            raise ImprintError(f"{flag(name)}: bad placeholder {e}; only {{token}} and {{class_name}} are filled in") from e
    for prompt in cfg.samples.sample_prompt:
        try:
            cfg.fill(prompt)
        except (KeyError, IndexError, ValueError) as e:
            raise ImprintError(f"--sample-prompt {prompt!r}: bad placeholder {e}; only {{token}} and "
                               "{class_name} are filled in") from e
