"""HiFi Tuner (Wang et al., arXiv 2312.00079), its textual-inversion-based training: n learned
vectors c_s in the text encoder's output space stand for the subject, written over the last n
(padding) vectors of every encoded subject prompt.

Taken from the paper: n = 5; c_s starts as the last n vectors of the encoded null text (phi_s)
and is pulled back to them by w_s ||c_s - phi_s||^2 (its parameter regularisation); the
mask-guided loss is --masks with --mask-loss-weight 0 (objectives/mask.py); lr 5e-3 with Adam
(our AdamW with the run's weight decay); the step-wise representations: after training, for
each of the 50 sampling timesteps from the highest down, the vectors start from the previous
timestep's and take 10 more steps of the same loss (masks and regulariser included) with every
row noised at that timestep; sampling step t uses its own.
Chosen here: w_s (the paper gives no value) 1e-2 on the squared error averaged over the n x d
elements (not summed); c_s applies to the subject's rows only (class rows with prior
preservation keep their plain prompt); the text encoder and UNet stay frozen; the refined
timesteps are those of the sampler generate uses (DPM-Solver, not the paper's DDIM) at 50
steps, and a sampler with other steps uses the nearest one's vectors; the refinement is not
checkpointed (a run killed during it redoes it on resume). The paper also puts the vectors on
top of LoRA and of full fine-tuning: --hifi-base lora / full trains that method's weights beside
them (its own lr, --hifi-base-lr, defaulting to that method's; the vectors keep --lr), its files
saved beside the vectors; the step-wise refinement then refines the vectors only, the weights
fixed (chosen: the paper refines c_s^t alone). Its reference-guided generation is
image/reference_guidance.py (`generate --reference-guidance`), its subject substitution
image/substitution.py (`imprint edit`).
The result is hifi_vectors.safetensors; a pipeline gets it by a wrapper of its encode_prompt
that writes c_s over the prompt's last n vectors (the negative prompt's stay) and, step-wise, a
step callback (image/sampling.py passes it to the pipeline)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from imprint.methods.adapter import AdapterSettings
from imprint.methods.base import METHODS, Method, register
from imprint.methods.full import FullSettings
from imprint.util.errors import ImprintError
from imprint.util.settings import setting

WEIGHT_NAME = "hifi_vectors.safetensors"


@dataclass
class HiFiSettings(AdapterSettings):
    hifi_base: str = setting("none", "what trains beside the subject vectors: none (the paper's TI-based variant), "
                             "lora (a LoRA as --method lora: --rank, --alpha, --lora-targets, --train-text-encoder) or "
                             "full (every UNet weight, as --method full)", choices=("none", "lora", "full"))
    hifi_base_lr: float | None = setting(None, "learning rate of --hifi-base's weights (the vectors use --lr)",
                                         positive=True, shown_default="that method's default lr")
    hifi_vectors: int = setting(5, "learned vectors written over the last ones of the encoded prompt (the paper's 5)",
                                positive=True)
    hifi_reg_weight: float = setting(1e-2, "weight w_s of the pull back to the null text's vectors (mean squared; "
                                     "the paper gives no value)", non_negative=True)
    hifi_stepwise_steps: int = setting(50, "step-wise subject representations: after training, one set of vectors "
                                       "per timestep of this many sampling steps (the paper's 50 DDIM steps), used "
                                       "at that step when sampling; 0: one set for every step", non_negative=True)
    hifi_stepwise_iterations: int = setting(10, "steps of refinement per timestep, each from the previous "
                                            "timestep's vectors (the paper's 10)", positive=True)


    def resolve(self) -> None:
        super().resolve()
        if self.hifi_base == "none" and self.train_text_encoder:
            raise ImprintError("--train-text-encoder: with --method hifi it needs --hifi-base lora or full "
                               "(the TI-based variant trains the vectors only)")
        if self.hifi_base != "none" and self.hifi_base_lr is None:
            self.hifi_base_lr = METHODS[self.hifi_base].default_lr


def base_method(settings: HiFiSettings) -> Method | None:
    """The method whose weights train beside the vectors (--hifi-base), or None."""
    if settings.hifi_base == "lora":
        return METHODS["lora"](AdapterSettings(settings.rank, settings.alpha, settings.lora_targets,
                                               settings.train_text_encoder))
    if settings.hifi_base == "full":
        return METHODS["full"](FullSettings(settings.train_text_encoder))
    return None


def with_subject_vectors(embeds: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """(B, L, D) prompt encodings with their last n vectors replaced by `vectors` (n, D)."""
    n = vectors.shape[0]
    return torch.cat([embeds[:, :-n], vectors.to(embeds).expand(embeds.shape[0], n, -1)], dim=1)


@register
class HiFi(Method):
    name = "hifi"
    summary = "HiFi Tuner: learned vectors over the encoded prompt's last ones, pulled to the null text's"
    Settings = HiFiSettings
    default_lr = 5e-3

    def __init__(self, settings=None):
        super().__init__(settings)
        self.base = base_method(self.settings)

    def trained_parts(self) -> set[str]:
        return self.base.trained_parts() if self.base else set()  # c_s: no part of the model holds it

    def float32_parts(self) -> set[str]:
        return self.base.float32_parts() if self.base else set()

    def add_trainables(self, family) -> list[torch.nn.Parameter]:
        if not family.ddim_editing:  # its vectors, step-wise states and sampling wrap SD's pipeline
            raise ImprintError(f"--method hifi: written for SD 1.x / 2.x's prompt embeddings and pipeline; this is a "
                               f"{family.name} model: use lora, or another method")
        self.base_params = self.base.prepare(family, self.subject) if self.base else []
        n = self.settings.hifi_vectors
        with torch.no_grad():
            null = family.encode_prompts(family.tokenize([""]))["prompt_embeds"][0, -n:].float()
        self.null_vectors = null.detach().clone()
        self.vectors = torch.nn.Parameter(null.clone())
        return [*self.base_params, self.vectors]

    def parameter_groups(self, params):
        if not self.base:
            return [{"params": params}]
        return [{"params": [p for p in params if p is not self.vectors], "lr": self.settings.hifi_base_lr},
                {"params": [self.vectors]}]

    def after_optimizer_step(self, family, step: int) -> None:
        if self.base:
            self.base.after_optimizer_step(family, step)

    def condition_subject_rows(self, conditioning: dict, rows: torch.Tensor, batch=None) -> dict:
        embeds = conditioning["prompt_embeds"]
        replaced = with_subject_vectors(embeds, self.vectors)
        rows = rows.to(embeds.device).reshape(-1, 1, 1)
        return {**conditioning, "prompt_embeds": torch.where(rows, replaced, embeds)}

    def regularization(self) -> torch.Tensor:
        return self.settings.hifi_reg_weight * ((self.vectors - self.null_vectors.to(self.vectors)) ** 2).mean()

    def refinement_plan(self, family):
        if not self.settings.hifi_stepwise_steps:
            return None
        self.trained_vectors = self.vectors.detach().clone()
        scheduler = family.pipeline().scheduler  # the sampler generate uses
        scheduler.set_timesteps(self.settings.hifi_stepwise_steps)
        return [int(t) for t in scheduler.timesteps], self.settings.hifi_stepwise_iterations

    def refinable_parameters(self) -> list[torch.nn.Parameter]:
        return [self.vectors]  # the base's weights stay as trained

    def refinable_state(self):
        return self.vectors.detach().clone()

    def set_refined(self, timesteps, states) -> None:
        self.stepwise = (torch.tensor(timesteps), torch.stack(states))

    def wrap_pipeline(self, pipe) -> None:
        install(pipe, self.vectors.detach())

    def trainable_state_dict(self, family) -> dict[str, torch.Tensor]:
        state = self.base.trainable_state_dict(family) if self.base else {}
        return {**state, "subject_vectors": self.vectors.detach().float().cpu().contiguous()}

    def load_trainable_state_dict(self, family, state: dict[str, torch.Tensor]) -> None:
        if self.base:
            self.base.load_trainable_state_dict(family, state)
        with torch.no_grad():
            self.vectors.copy_(state["subject_vectors"].to(self.vectors))

    def save_result(self, family, folder: Path) -> list[str]:
        files = self.base.save_result(family, folder) if self.base else []
        tensors = {"subject_vectors": self.vectors.detach().float().cpu().contiguous()}
        stepwise = getattr(self, "stepwise", None)
        if stepwise is not None:  # the trained vectors, and one set per sampling timestep
            tensors = {"subject_vectors": self.trained_vectors.float().cpu().contiguous(),
                       "stepwise_timesteps": stepwise[0].contiguous(),
                       "stepwise_vectors": stepwise[1].float().cpu().contiguous()}
        save_file(tensors, str(folder / WEIGHT_NAME))
        return files + [WEIGHT_NAME]

    @classmethod
    def load_into_pipeline(cls, pipe, folder: Path, metadata: dict) -> None:
        base = (metadata.get("hyperparameters") or {}).get("hifi_base", "none")
        if base != "none":
            METHODS[base].load_into_pipeline(pipe, folder, metadata)
        tensors = load_file(str(folder / WEIGHT_NAME))
        stepwise = (tensors["stepwise_timesteps"], tensors["stepwise_vectors"]) if "stepwise_vectors" in tensors else None
        install(pipe, tensors["subject_vectors"], stepwise)


def nearest(timesteps: torch.Tensor, t) -> int:
    """The index of the refined timestep nearest to the sampler's `t`."""
    return int((timesteps.float() - float(t)).abs().argmin())


def install(pipe, vectors: torch.Tensor, stepwise: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
    """The pipeline's prompt encodings get the subject vectors (every prompt, not the negative);
    with step-wise ones, each sampling step gets those of the nearest refined timestep (the
    first step those of the highest, then a step callback swaps them in for the next step)."""
    original = getattr(pipe, "_imprint_encode_prompt", pipe.encode_prompt)
    first = vectors if stepwise is None else stepwise[1][nearest(stepwise[0], stepwise[0].max())]

    def encode_prompt(*args, **kwargs):
        positive, negative = original(*args, **kwargs)
        return with_subject_vectors(positive, first), negative

    def step_callback(pipe, i, t, kwargs):
        timesteps = pipe.scheduler.timesteps
        if i + 1 >= len(timesteps):
            return {}
        embeds = kwargs["prompt_embeds"]
        half = embeds.shape[0] // 2 if pipe.do_classifier_free_guidance else 0  # [negative, positive]
        step_vectors = stepwise[1][nearest(stepwise[0], timesteps[i + 1])]
        return {"prompt_embeds": torch.cat([embeds[:half], with_subject_vectors(embeds[half:], step_vectors)])}

    def prompt_at(positive: torch.Tensor, t) -> torch.Tensor:  # for samplers of imprint's own
        return with_subject_vectors(positive, vectors if stepwise is None else stepwise[1][nearest(stepwise[0], t)])

    pipe._imprint_encode_prompt = original
    pipe.encode_prompt = encode_prompt
    pipe.imprint_step_callback = step_callback if stepwise is not None else None
    pipe.imprint_prompt_at = prompt_at
    pipe.imprint_subject_vectors = vectors.shape[0]  # the encoding's last positions that are the subject's
