"""RPO's negatives (objectives/rpo.py): the frozen base model's images for the metric backend's
training prompts, made once and cached like class images (image/prior.py: a folder per prompt,
reused by later runs with the same model, size, seed and steps), their latents, and the rewards
that draw the preference labels: R = the lambda-harmonic reward of (similarity to the subject
photos, text alignment with the prompt, identifier removed), for each negative under its own
prompt and for each subject photo under every training prompt (its similarity leave-one-out)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from imprint.evaluate.metrics import harmonic_reward
from imprint.evaluate.prompts import remove_identifier
from imprint.image.data import images_to_tensor, load_image_file
from imprint.image.prior import ensure_class_images

log = logging.getLogger("imprint")


@dataclass
class Negatives:
    templates: list[str]             # the training prompts, {token} / {class_name} not filled in
    prompt_of: torch.Tensor          # (N,) the template each negative was made from
    mean: torch.Tensor               # (N, ...) their latent posteriors
    std: torch.Tensor
    rewards: torch.Tensor            # (N,) R(negative, its prompt)
    subject_rewards: torch.Tensor    # (photos, templates) R(photo, prompt)
    prompts: list[str] = field(default_factory=list)  # per negative, its prompt with the method's token

    def label_probability(self, photos: torch.Tensor, picks: torch.Tensor) -> torch.Tensor:
        """P(the photo is preferred over negative `pick`) = sigmoid(R_photo - R_negative), both under its prompt."""
        return torch.sigmoid(self.subject_rewards[photos, self.prompt_of[picks]] - self.rewards[picks])


def make_negatives(cfg, family, photos: list, backend) -> Negatives:
    """Generate (or reuse) the negatives with the base model, score them and the photos, encode them."""
    settings = cfg.terms["rpo"]
    token, class_name = cfg.data.token, cfg.data.class_name
    templates = backend.training_prompts("{token}", "{class_name}")
    paths, prompt_of = [], []
    mixed = cfg.trainer.mixed_precision
    precision = "fp32" if mixed == "no" else mixed  # the caller's autocast: the run's mixed precision
    for t, template in enumerate(templates):
        prompt = template.format(token=token, class_name=class_name)
        found = ensure_class_images(None, settings.rpo_images_per_prompt, family.model, prompt, cfg.data.resolution,
                                    cfg.trainer.seed, settings.rpo_inference_steps, family.pipeline,
                                    precision)
        paths += found
        prompt_of += [t] * len(found)
    images = [load_image_file(p, cfg.data.resolution) for p in paths]
    texts = [remove_identifier(t.format(token=token, class_name=class_name), token) for t in templates]
    lam = settings.rpo_lambda
    reference = backend.subject_reference(photos)

    def reward(image, text, ref) -> float:
        return harmonic_reward(*backend.subject_and_text([image], text, ref), lam)

    rewards = torch.tensor([reward(image, texts[t], reference) for image, t in zip(images, prompt_of)])
    subject_rewards = torch.zeros(len(photos), len(templates))
    for k, photo in enumerate(photos):
        others = photos[:k] + photos[k + 1:] or photos  # leave-one-out: a photo is not its own reference
        own = backend.subject_reference(others)
        for t, text in enumerate(texts):
            subject_rewards[k, t] = reward(photo, text, own)
    mean, std = family.encode_images(images_to_tensor(images))
    log.info("RPO negatives: %d images for %d prompts; reward %.3f (photos %.3f); labels prefer the photo "
             "with probability %.3f on average", len(images), len(templates), float(rewards.mean()),
             float(subject_rewards.mean()),
             float(torch.sigmoid(subject_rewards[:, torch.tensor(prompt_of)] - rewards).mean()))
    return Negatives(templates, torch.tensor(prompt_of), mean, std, rewards, subject_rewards)
