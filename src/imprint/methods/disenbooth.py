"""DisenBooth (Chen et al., ICLR 2024, arXiv 2305.03374): the subject's identity in the text
embedding f_s (its prompt with the identifier), what each photo has besides the subject (pose,
background) in an image embedding f_i of that photo, so the LoRA learns the identity, not the
photos' backgrounds; generation uses f_s alone.

Taken from the paper's code (github.com/forchchch/DisenBooth, train_disenbooth.py, disen_net.py):
f_i = MLP(sigmoid(m) * e) + sigmoid(m) * e, with e the frozen image encoder's projected image
embedding of the photo, the MLP Linear-ReLU-Linear at the text width, m a learnable per-channel
mask initialised to 0; f_i is added to every token vector of f_s; the loss is the denoising loss
with f_s + f_i, plus 0.01 times the denoising loss with f_s alone on the same noisy latents (its
"weak denoising"), plus 0.001 times cos(mean over tokens of f_s, f_i) (its contrastive term,
minimised as written); LoRA rank 4 on the UNet's attention projections, lr 1e-4, the adapter
trained with the LoRA at one lr; `--keep-appearance IMAGE` adds that image's f_i (weight
--appearance-weight) to the prompt's encoding, not the negative prompt's, as the code's
inference notebook does.
Chosen here: the image encoder is a transformers CLIP vision model by id (`auto`: the paper's
OpenCLIP ViT-H/14 where the text encoder is 1024 wide, SD 2.x; CLIP ViT-L/14, 768, otherwise)
or `toyworld`; its own processor prepares the photo, in training and generation alike (the
paper's code feeds the training tensor in [-1, 1] resized to 224 but uses CLIP's preprocessing
at inference); where the encoder's width is not the text width (tiny and toy models), the
residual sigmoid(m) * e goes through a learned linear map to it; e is computed once per photo and
per mirrored photo (--flip); class rows of prior preservation keep their plain prompt (the code
has no prior preservation); the contrastive term uses each row's own cosine, averaged (the
code's squeeze(0) is right for its batch of 1 only); the run's clipping covers the adapter too.
The result is the diffusers LoRA file (what generation needs) and disenbooth_adapter.safetensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from imprint.methods.adapter import AdapterSettings
from imprint.methods.base import register
from imprint.methods.lora import LoRA
from imprint.util.settings import setting

ADAPTER_NAME = "disenbooth_adapter.safetensors"
# the paper's encoder (OpenCLIP ViT-H/14, 1024-d: SD 2.x's text width) and, for SD 1.x's 768-wide
# text encoder, the CLIP whose projection is that wide
PAPER_ENCODER = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
SD1_ENCODER = "openai/clip-vit-large-patch14"


@dataclass
class DisenBoothSettings(AdapterSettings):
    disenbooth_image_encoder: str = setting(
        "auto", "frozen image encoder of the identity-irrelevant embedding: a transformers CLIP vision model "
        "(hub id or folder) or 'toyworld' (the toy evaluator); auto: laion/CLIP-ViT-H-14-laion2B-s32B-b79K (the "
        "paper's) for a 1024-wide text encoder, openai/clip-vit-large-patch14 otherwise")
    disenbooth_weak_weight: float = setting(0.01, "weight of the denoising loss with the text embedding alone "
                                            "(the paper's weak denoising, 0.01)", non_negative=True)
    disenbooth_contrastive_weight: float = setting(0.001, "weight of cos(mean text embedding, image embedding) "
                                                   "(the paper's 0.001)", non_negative=True)


class ImageAdapter(torch.nn.Module):
    """f_i = MLP(sigmoid(m) * e) + P(sigmoid(m) * e); P is the identity where e is text-wide."""

    def __init__(self, image_width: int, text_width: int):
        super().__init__()
        self.mask = torch.nn.Parameter(torch.zeros(image_width))
        self.mlp = torch.nn.Sequential(torch.nn.Linear(image_width, text_width), torch.nn.ReLU(),
                                       torch.nn.Linear(text_width, text_width))
        self.residual = (torch.nn.Identity() if image_width == text_width
                         else torch.nn.Linear(image_width, text_width, bias=False))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        masked = torch.sigmoid(self.mask) * features
        return self.mlp(masked) + self.residual(masked)


def text_width(family) -> int:
    """The width of the family's encoded prompt vectors (f_s's)."""
    with torch.no_grad():
        return family.encode_prompts(family.tokenize([""]))["prompt_embeds"].shape[-1]


def contrastive(text_embeds: torch.Tensor, appearance: torch.Tensor) -> torch.Tensor:
    """cos(mean over tokens of f_s, f_i), per row, averaged: (B, L, D), (B, D) -> ()."""
    return F.cosine_similarity(text_embeds.float().mean(dim=1), appearance.float(), dim=-1, eps=1e-6).mean()


@register
class DisenBooth(LoRA):
    name = "disenbooth"
    summary = "DisenBooth: LoRA on the identity, an image adapter absorbs each photo's pose and background"
    Settings = DisenBoothSettings
    default_lr = 1e-4
    adapters_off_is_base = False  # the subject rows' conditioning carries f_i with the LoRA off too

    photo_encoder_flag = "--disenbooth-image-encoder"

    def photo_encoder(self, family) -> str:
        chosen = self.settings.disenbooth_image_encoder
        if chosen != "auto":
            return chosen
        return PAPER_ENCODER if text_width(family) == 1024 else SD1_ENCODER

    def add_trainables(self, family) -> list[torch.nn.Parameter]:
        params = super().add_trainables(family)
        features = self.subject.photo_features  # (N, D) or, with --flip, (2 N, D): then the mirrored photos
        if features is None:
            raise ValueError("disenbooth needs the subject's photo features (Subject.photo_features)")
        self.encoder_name = self.photo_encoder(family)
        self.features = features.float()
        self.adapter = ImageAdapter(features.shape[-1], text_width(family)).to(features.device)
        return params + list(self.adapter.parameters())

    def appearance(self, photos: torch.Tensor) -> torch.Tensor:
        """f_i of each row's photo index (-1: a row with no photo, whose f_i is 0)."""
        photos = photos.to(self.features.device)
        out = self.adapter(self.features[photos.clamp(min=0)])
        return out * (photos >= 0).unsqueeze(-1).to(out)

    def condition_subject_rows(self, conditioning: dict, rows: torch.Tensor, batch=None) -> dict:
        embeds = conditioning["prompt_embeds"]
        f_i = self.appearance(batch.extras["photo"]).to(embeds)
        rows = rows.to(embeds.device).reshape(-1, 1, 1)
        return {**conditioning, "prompt_embeds": torch.where(rows, embeds + f_i.unsqueeze(1), embeds)}

    def losses(self, batch, rows: torch.Tensor, family, plain: dict) -> dict[str, torch.Tensor]:
        if not bool(rows.any()):
            return {}
        s = self.settings
        out = {}
        index = rows.nonzero().flatten()
        if s.disenbooth_weak_weight:  # the same noisy latents, timesteps and noise, f_s alone
            on_device = index.to(batch.noisy.device)
            prediction = family.predict(batch.noisy[on_device], batch.timesteps[on_device],
                                        {k: v[on_device] for k, v in plain.items()})
            target = batch.target[index.to(batch.target.device)].to(prediction.device)
            out["disenbooth_weak"] = s.disenbooth_weak_weight * F.mse_loss(prediction.float(), target.float())
        if s.disenbooth_contrastive_weight:
            text = plain["prompt_embeds"][index.to(plain["prompt_embeds"].device)]
            f_i = self.appearance(batch.extras["photo"][index.to(batch.extras["photo"].device)])
            out["disenbooth_contrastive"] = s.disenbooth_contrastive_weight * contrastive(text, f_i.to(text.device))
        return out

    def trainable_state_dict(self, family) -> dict[str, torch.Tensor]:
        state = super().trainable_state_dict(family)
        state.update({f"disenbooth_adapter.{k}": v.detach().float().cpu().contiguous()
                      for k, v in self.adapter.state_dict().items()})
        return state

    def load_trainable_state_dict(self, family, state: dict[str, torch.Tensor]) -> None:
        super().load_trainable_state_dict(family, state)
        prefix = "disenbooth_adapter."
        self.adapter.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})

    def metadata(self) -> dict:
        return {**super().metadata(), "image_encoder": self.encoder_name}

    def save_result(self, family, folder: Path) -> list[str]:
        names = super().save_result(family, folder)
        state = {k: v.detach().float().cpu().contiguous() for k, v in self.adapter.state_dict().items()}
        save_file(state, str(Path(folder) / ADAPTER_NAME),
                  metadata={"image_encoder": self.encoder_name})
        return names + [ADAPTER_NAME]

    @classmethod
    def appearance_encoder(cls, folder: Path, metadata: dict) -> str:
        return metadata["image_encoder"]

    @classmethod
    def add_appearance(cls, pipe, folder: Path, metadata: dict, features: torch.Tensor, weight: float) -> None:
        """The prompt's encoding (not the negative prompt's) gets weight * f_i of the image."""
        state = load_file(str(Path(folder) / ADAPTER_NAME))
        adapter = ImageAdapter(state["mask"].shape[0], state["mlp.2.weight"].shape[0])
        adapter.load_state_dict(state)
        with torch.no_grad():
            f_i = adapter(features.float().cpu()).reshape(1, 1, -1)
        original = pipe.encode_prompt

        def encode_prompt(*args, **kwargs):
            positive, negative = original(*args, **kwargs)
            return positive + weight * f_i.to(positive), negative

        pipe.encode_prompt = encode_prompt
