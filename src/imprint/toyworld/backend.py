"""`--metrics toyworld`: the toy world's evaluator as a metric backend.

fidelity (the DINO analogue): mean cosine of the evaluator's identity embedding between each
generated image and each subject photo; alignment (the CLIP-T analogue): the share of the
attributes a prompt names (shape, colour, pattern, background, position) that the evaluator
reads back from the image; PRES: fidelity of plain class-prompt images; DIV: mean pairwise
1 - identity cosine between images of one prompt.
"""

from __future__ import annotations

import re

import torch

from imprint.evaluate.backends import MetricBackend, Scores, register_backend
from imprint.evaluate.metrics import diversity, leave_one_out, mean_interval, similarity_to_reference
from imprint.toyworld.render import BACKGROUNDS, COLOURS, PATTERNS, POSITIONS, SHAPES


def parse_prompt(text: str) -> dict[str, str]:
    """The attributes a prompt names, in the renderer's vocabulary."""
    text = text.lower()
    main, _, where = text.partition(",")
    words = set(re.findall(r"[a-z]+", main))
    named = {}
    for name, vocabulary in (("shape", SHAPES), ("colour", list(COLOURS)),
                             ("pattern", [p for p in PATTERNS if p != "plain"])):
        found = [v for v in vocabulary if v in words]
        if len(found) == 1:
            named[name] = found[0]
    for key, (phrase, _, _) in BACKGROUNDS.items():
        if phrase in main:
            named["background"] = key
    position = where.strip()
    if position in POSITIONS:
        named["position"] = position
    return named


def alignment(attributes: dict[str, list[str]], index: int, named: dict[str, str]) -> float:
    """The share of the prompt's named attributes that image `index` was read as."""
    if not named:
        return float("nan")
    return sum(attributes[k][index] == v for k, v in named.items()) / len(named)


def toyworld_prompts(token: str, class_name: str) -> list[str]:
    """25 prompts, DreamBench's shape: 16 recontextualisations, 9 property changes."""
    positions = list(POSITIONS)
    prompts = []
    for i, (phrase, _, _) in enumerate(BACKGROUNDS.values()):
        prompts.append(f"a {token} {class_name} {phrase}")
        prompts.append(f"a {token} {class_name} {phrase}, {positions[(2 * i + 1) % len(positions)]}")
    for colour in ("red", "blue", "yellow", "green", "purple"):
        prompts.append(f"a {colour} {token} {class_name}")
    for pattern in ("striped", "dotted", "checkered"):
        prompts.append(f"a {pattern} {token} {class_name}")
    prompts.append(f"a {token} {class_name}, top right")
    return prompts


@register_backend
class ToyWorldBackend(MetricBackend):
    name = "toyworld"
    metrics = ("fidelity", "alignment", "pres", "div")

    def __init__(self, evaluator: str | None = None, **_):
        from imprint.toyworld.evaluator import WEIGHTS, load_evaluator

        self.model = load_evaluator(evaluator or WEIGHTS)
        self.protocol = {
            "fidelity": "mean cosine of the toy-world evaluator's identity embedding, generated x subject photos",
            "alignment": "share of the prompt's named attributes (shape, colour, pattern, background, position) read back",
            "pres": "fidelity of 'a {class_name}' images from the personalised model (lower: prior kept)",
            "div": "mean pairwise 1 - identity cosine between images of the same prompt",
            "interval": "95% normal-approximation interval over prompts (PRES: over images)",
        }

    image_feature_dim = 64  # the evaluator's pooled trunk (4 x its width 16)

    @torch.no_grad()
    def image_features(self, images):
        """The evaluator's pooled trunk: what it reads every attribute from (background and
        position too), before the identity head."""
        from imprint.toyworld.evaluator import to_tensor

        return self.model.features(to_tensor(images)).mean(dim=(2, 3))

    def default_prompts(self, token: str, class_name: str) -> list[str]:
        return toyworld_prompts(token, class_name)

    def training_prompts(self, token: str, class_name: str) -> list[str]:
        """8 toy prompts none of toyworld_prompts holds: other positions, colours it never names."""
        positions = list(POSITIONS)
        backgrounds = [phrase for phrase, _, _ in BACKGROUNDS.values()]
        prompts = [f"a {token} {class_name} {backgrounds[i]}, {positions[(2 * i + 4) % len(positions)]}" for i in range(6)]
        return prompts + [f"a {colour} {token} {class_name}" for colour in ("pink", "white")]

    def _read(self, images):
        from imprint.toyworld.evaluator import read_images

        return read_images(self.model, images)

    def score(self, generated, text_prompts, real, class_images) -> Scores:
        real_id = self._read(real)["identity"]
        rows, records = [], []
        for prompt, images in generated.items():
            read = self._read(images)
            named = parse_prompt(text_prompts[prompt])
            fidelity = similarity_to_reference(read["identity"], real_id)
            shares = [alignment(read["attributes"], j, named) for j in range(len(images))]
            for j in range(len(images)):
                records.append({"prompt": prompt, "index": j, "fidelity": float(fidelity[j]),
                                "alignment": shares[j],
                                "read": {k: v[j] for k, v in read["attributes"].items()}})
            rows.append({"prompt": prompt, "text_prompt": text_prompts[prompt],
                         "fidelity": float(fidelity.mean()),
                         "alignment": float(torch.tensor(shares).nanmean()),
                         "div": diversity(read["identity"])})
        pres = (similarity_to_reference(self._read(class_images)["identity"], real_id).tolist()
                if class_images else [])
        summary = {k: mean_interval(r[k] for r in rows) for k in ("fidelity", "alignment", "div")}
        summary["pres"] = mean_interval(pres)
        return Scores(summary=summary, prompts=rows, images=records)

    def score_real(self, real) -> dict:
        return {"fidelity": mean_interval(leave_one_out(self._read(real)["identity"]).tolist())}

    def subject_reference(self, real) -> torch.Tensor:
        return self._read(real)["identity"]

    def subject_and_text(self, images, text, reference) -> tuple[float, float]:
        read = self._read(images)
        fidelity = similarity_to_reference(read["identity"], reference).mean()
        named = parse_prompt(text)
        shares = [alignment(read["attributes"], j, named) for j in range(len(images))]
        # alignment in [0, 1] is mapped to [-1, 1] so the reward's (s + 1) / 2 returns it
        return float(fidelity), 2 * float(torch.tensor(shares).nanmean()) - 1
