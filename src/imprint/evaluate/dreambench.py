"""DreamBench metrics (Ruiz et al. 2023): DINO, CLIP-I, CLIP-T, PRES, DIV.

DINO and CLIP-I: mean pairwise cosine between the CLS / image embeddings of every generated
image and every real subject image. CLIP-T: cosine between the CLIP text embedding of the
prompt with the identifier removed (class word kept) and the image embedding. PRES: DINO
similarity of plain class-prompt images to the real images (lower: prior better kept).
DIV: mean pairwise 1 - DINO cosine between images of the same prompt (the paper uses LPIPS;
DINO keeps the metric models to two).
BLIP-T (optional, --blip-model): ClassDiffusion's text-alignment metric, the cosine of BLIP's
image-text contrastive (ITC) embeddings of the prompt (identifier removed) and the image, as its
code (utils/blip2t.py) computes it with Salesforce/blip-itm-large-coco and use_itm_head=False.
"""

from __future__ import annotations

import torch
from PIL import Image

from imprint.util.errors import ImprintError
from imprint.evaluate.backends import MetricBackend, Scores, register_backend
from imprint.evaluate.metrics import (diversity, leave_one_out, mean_interval,
                                      similarity_to_reference)


def _load(kind: str, name: str, loader):
    try:
        return loader()
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ImprintError(
            f"--{kind}-model {name}: could not load ({first}); pass a hub id or a local folder "
            "saved with save_pretrained"
        ) from e


@register_backend
class DreamBenchBackend(MetricBackend):
    name = "dreambench"
    metrics = ("dino", "clip_i", "clip_t", "pres", "div")

    def __init__(self, dino_model: str = "facebook/dino-vits16",
                 clip_model: str = "openai/clip-vit-base-patch32", device: str = "cpu",
                 blip_model: str | None = None, **_):
        from transformers import AutoImageProcessor, CLIPModel, CLIPProcessor, ViTModel

        self.device = torch.device(device)
        self.dino = _load("dino", dino_model, lambda: ViTModel.from_pretrained(
            dino_model, add_pooling_layer=False)).to(self.device).eval()
        self.dino_processor = _load("dino", dino_model, lambda: AutoImageProcessor.from_pretrained(dino_model))
        self.clip = _load("clip", clip_model, lambda: CLIPModel.from_pretrained(clip_model)).to(self.device).eval()
        self.clip_processor = _load("clip", clip_model, lambda: CLIPProcessor.from_pretrained(clip_model))
        self.protocol = {
            "dino": f"mean pairwise cosine of {dino_model} CLS embeddings, generated x real",
            "clip_i": f"mean pairwise cosine of {clip_model} image embeddings, generated x real",
            "clip_t": f"cosine of {clip_model} text (identifier removed, class kept) and image embeddings",
            "pres": "DINO similarity of 'a {class_name}' images from the personalised model to the real images (lower: prior kept)",
            "div": "mean pairwise 1 - DINO cosine between images of the same prompt",
            "interval": "95% normal-approximation interval over prompts (PRES: over images)",
        }
        self.blip = None
        if blip_model:
            from transformers import BlipForImageTextRetrieval, BlipProcessor

            self.blip = _load("blip", blip_model, lambda: BlipForImageTextRetrieval.from_pretrained(
                blip_model, use_safetensors=True)).to(self.device).eval()
            self.blip_processor = _load("blip", blip_model, lambda: BlipProcessor.from_pretrained(blip_model))
            self.metrics = (*self.metrics, "blip_t")
            self.protocol = {**self.protocol, "blip_t": f"cosine of {blip_model} ITC image and text embeddings "
                             "(identifier removed, class kept), ClassDiffusion's BLIP-T"}

    # --- embeddings ---------------------------------------------------------------------
    @torch.no_grad()
    def dino_embeddings(self, images: list[Image.Image]) -> torch.Tensor:
        inputs = self.dino_processor(images=images, return_tensors="pt").to(self.device)
        return self.dino(**inputs).last_hidden_state[:, 0].float().cpu()

    @torch.no_grad()
    def clip_image_embeddings(self, images: list[Image.Image]) -> torch.Tensor:
        inputs = self.clip_processor(images=images, return_tensors="pt").to(self.device)
        return _features(self.clip.get_image_features(**inputs))

    @torch.no_grad()
    def clip_text_embeddings(self, texts: list[str]) -> torch.Tensor:
        inputs = self.clip_processor(text=texts, return_tensors="pt", padding=True,
                                     truncation=True).to(self.device)
        return _features(self.clip.get_text_features(**inputs))

    @torch.no_grad()
    def blip_text_alignment(self, images: list[Image.Image], text: str) -> torch.Tensor:
        """Per image: the ITC cosine of BLIP's image and text embeddings."""
        inputs = self.blip_processor(images=images, text=[text] * len(images), return_tensors="pt",
                                     padding=True).to(self.device)
        scores = self.blip(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                           pixel_values=inputs["pixel_values"], use_itm_head=False).itm_score
        return scores[:, 0].float().cpu()  # (images, texts): every text is the same prompt

    # --- scores -------------------------------------------------------------------------
    def score(self, generated, text_prompts, real, class_images) -> Scores:
        real_dino, real_clip = self.dino_embeddings(real), self.clip_image_embeddings(real)
        rows, records = [], []
        for prompt, images in generated.items():
            dino = self.dino_embeddings(images)
            clip = self.clip_image_embeddings(images)
            text = self.clip_text_embeddings([text_prompts[prompt]])
            per_image = {
                "dino": similarity_to_reference(dino, real_dino),
                "clip_i": similarity_to_reference(clip, real_clip),
                "clip_t": similarity_to_reference(clip, text),
            }
            if self.blip is not None:
                per_image["blip_t"] = self.blip_text_alignment(images, text_prompts[prompt])
            for j in range(len(images)):
                records.append({"prompt": prompt, "index": j,
                                **{k: float(v[j]) for k, v in per_image.items()}})
            rows.append({"prompt": prompt, "text_prompt": text_prompts[prompt],
                         **{k: float(v.mean()) for k, v in per_image.items()},
                         "div": diversity(dino)})
        pres = (similarity_to_reference(self.dino_embeddings(class_images), real_dino).tolist()
                if class_images else [])
        summary = {k: mean_interval(r[k] for r in rows) for k in self.metrics if k != "pres"}
        summary["pres"] = mean_interval(pres)
        return Scores(summary=summary, prompts=rows, images=records)

    def score_real(self, real) -> dict:
        return {"dino": mean_interval(leave_one_out(self.dino_embeddings(real)).tolist()),
                "clip_i": mean_interval(leave_one_out(self.clip_image_embeddings(real)).tolist())}

    def subject_reference(self, real) -> torch.Tensor:
        return self.dino_embeddings(real)

    def subject_and_text(self, images, text, reference) -> tuple[float, float]:
        image_sim = similarity_to_reference(self.dino_embeddings(images), reference)
        text_sim = similarity_to_reference(self.clip_image_embeddings(images), self.clip_text_embeddings([text]))
        return float(image_sim.mean()), float(text_sim.mean())


def _features(output) -> torch.Tensor:
    # transformers 5 may return a model output rather than a tensor from get_*_features
    if not torch.is_tensor(output):
        pooled = getattr(output, "pooler_output", None)
        output = pooled if pooled is not None else output[0]
    return output.float().cpu()
