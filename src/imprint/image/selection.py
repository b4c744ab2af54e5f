"""Best-checkpoint selection, --select-best (the selection and early stopping of RPO, arXiv
2407.12164; the method `rpo` is its preference loss): every checkpoint is scored on a few
validation prompts with the lambda-harmonic reward of image similarity to the subject and text
alignment; the best-scoring one becomes the run's result. With --early-stop-patience N, training
stops once N scored checkpoints in a row have not beaten the best."""

from __future__ import annotations

import logging

from imprint.evaluate.metrics import harmonic_reward

log = logging.getLogger("imprint")


class CheckpointSelector:
    """Holds the scores of a run's checkpoints; a scorer maps (pipeline) -> (I, T)."""

    def __init__(self, lam: float, scorer):
        self.lam = lam
        self.scorer = scorer
        self.scores: dict[int, dict] = {}

    def score(self, step: int, pipe) -> dict:
        image_similarity, text_alignment = self.scorer(pipe)
        entry = {"image_similarity": image_similarity, "text_alignment": text_alignment,
                 "reward": harmonic_reward(image_similarity, text_alignment, self.lam)}
        self.scores[step] = entry
        log.info("step %d: image similarity %.4f, text alignment %.4f, reward %.4f",
                 step, image_similarity, text_alignment, entry["reward"])
        return entry

    def steps_since_best(self) -> int:
        """Scored checkpoints after the best one (0 when the latest is the best)."""
        best = self.best_step()
        return sum(1 for s in self.scores if best is not None and s > best)

    def best_step(self) -> int | None:
        if not self.scores:
            return None
        return max(self.scores, key=lambda s: (self.scores[s]["reward"], s))

    def restore(self, scores: dict) -> None:
        self.scores.update({int(k): v for k, v in scores.items()})

    def summary(self) -> dict:
        return {"lambda": self.lam, "best_step": self.best_step(),
                "scores": {str(k): v for k, v in sorted(self.scores.items())}}


def backend_scorer(backend, real_images, prompts: list[str], text_prompts: list[str],
                      resolution: int, steps: int, seed: int, images_per_prompt: int = 2,
                      prompt_embeds=None):
    """I: the backend's similarity to the subject photos (DINO for DreamBench); T: its text
    alignment (CLIP-T), both averaged over the validation prompts. `prompt_embeds`: the prompts'
    encodings, or a function that makes them at each scoring (a text encoder that trains)."""
    from imprint.image.sampling import sample

    reference = backend.subject_reference(real_images)  # once, not per prompt and checkpoint

    def score(pipe) -> tuple[float, float]:
        from tqdm.auto import tqdm

        image_sims, text_sims = [], []
        encodings = prompt_embeds() if callable(prompt_embeds) else prompt_embeds
        for i, (prompt, text) in enumerate(tqdm(list(zip(prompts, text_prompts)), desc="scoring checkpoint",
                                                unit="prompt", leave=False, disable=None)):
            embeds = [encodings[i]] if encodings else None
            images = sample(pipe, [prompt], resolution, seed + 1000 * i, steps, images_per_prompt,
                            prompt_embeds=embeds)
            image_sim, text_sim = backend.subject_and_text(images, text, reference)
            image_sims.append(image_sim)
            text_sims.append(text_sim)
        return sum(image_sims) / len(image_sims), sum(text_sims) / len(text_sims)

    return score
