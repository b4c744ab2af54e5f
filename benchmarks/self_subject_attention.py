"""DreamTuner's self-subject-attention on the toy world: fidelity and alignment with it against
plain generation, paired (same subject, prompts and noise), on the base model (no training:
class prompts, the photo alone brings the subject) and on the objectives part's LoRA runs
(`--configs lora` of toyworld_quality.py; identifier prompts).

The noise floor is plain generation against itself with another evaluation seed. The reference
is each subject's photo 00 with its true mask (the subject folder's masks/), w_ref = 3 (the
paper's) unless --weights says otherwise. Writes a table to RESULTS.md.

  python benchmarks/self_subject_attention.py [--subjects 10] [--weights 3] [--lora-seed 0]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from results_file import write_section  # noqa: E402
from toyworld_quality import EVALUATION, GUIDANCE, WORK, _run_name  # noqa: E402

MODEL = Path(__file__).resolve().parents[1] / "src" / "imprint" / "toyworld" / "model"


def mean_ci(values: list[float]) -> str:
    mean = statistics.mean(values)
    half = 1.96 * statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else float("nan")
    return f"{mean:+.3f} [{mean - half:+.3f}, {mean + half:+.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=10)
    parser.add_argument("--weights", default="3", help="w_ref values to measure, comma-separated")
    parser.add_argument("--lora-seed", type=int, default=0, help="the LoRA runs' training seed")
    parser.add_argument("--results", default=str(Path(__file__).with_name("RESULTS.md")))
    args = parser.parse_args()

    from imprint.evaluate.backends import make_backend
    from imprint.evaluate.prompts import remove_identifier
    from imprint.families import load_pipeline
    from imprint.image.data import load_subject_images
    from imprint.image.generate import load_run_pipeline
    from imprint.image.sampling import sample
    from imprint.image.training_free import install
    from imprint.toyworld.subjects import SUBJECTS, write_subjects

    subjects_dir = WORK / "subjects"
    if not subjects_dir.is_dir():
        write_subjects(subjects_dir)
    weights = [float(w) for w in args.weights.split(",")]
    backend = make_backend("toyworld")
    n, steps = EVALUATION["images_per_prompt"], EVALUATION["inference_steps"]
    diffs: dict[tuple[str, str], list[float]] = {}
    rows = []

    def score(pipe, prompts, text, real, seed, ssa_weight=None, photos=None):
        context = install("self-subject-attention", pipe, photos, None, 0, 64, ssa_weight, 0) if ssa_weight else None
        if context:
            context.__enter__()
        try:
            images = sample(pipe, prompts, 64, seed, steps, n, GUIDANCE)
        finally:
            if context:
                context.__exit__(None, None, None)
        generated = {p: images[i * n:(i + 1) * n] for i, p in enumerate(prompts)}
        summary = backend.score(generated, {p: text[i] for i, p in enumerate(prompts)}, real, images[:n]).summary
        return {m: summary[m]["mean"] for m in ("fidelity", "alignment")}

    for subject in SUBJECTS[:args.subjects]:
        photos = subjects_dir / subject.name
        real = load_subject_images(photos, 64).images
        prompts = backend.default_prompts("sks", subject.class_name)
        text = [remove_identifier(p, "sks") for p in prompts]
        run = WORK / "runs" / _run_name("lora", args.lora_seed) / subject.name
        for config in ("base", "lora"):
            if config == "base":
                pipe, given = load_pipeline(str(MODEL)), text  # the base model knows no identifier
            elif (run / "metadata.json").is_file():
                pipe, method, metadata = load_run_pipeline(run)
                given = [method.rewrite_prompt(p, metadata) for p in prompts]
            else:
                continue
            pipe.set_progress_bar_config(disable=True)
            plain = score(pipe, given, text, real, 0)
            again = score(pipe, given, text, real, 1)
            for m in plain:
                diffs.setdefault((config, f"floor {m}"), []).append(again[m] - plain[m])
            cells = [f"{plain['fidelity']:.3f}", f"{plain['alignment']:.3f}"]
            for w in weights:
                with_ssa = score(pipe, given, text, real, 0, w, photos)
                for m in plain:
                    diffs.setdefault((config, f"w={w:g} {m}"), []).append(with_ssa[m] - plain[m])
                cells += [f"{with_ssa['fidelity']:.3f}", f"{with_ssa['alignment']:.3f}"]
            rows.append(f"| {subject.name} | {config} | " + " | ".join(cells) + " |")
            print(rows[-1], flush=True)

    def reading(config: str, w: float) -> str:
        values = diffs.get((config, f"w={w:g} fidelity"))
        if not values:
            return ""
        mean, sd = statistics.mean(values), statistics.stdev(values)
        half = 1.96 * sd / len(values) ** 0.5
        if abs(mean) > half:
            return f"{config}, w={w:g}: fidelity {mean_ci(values)}, seen."
        needed = math.ceil((1.96 * sd / mean) ** 2) if mean else float("inf")
        return (f"{config}, w={w:g}: fidelity {mean_ci(values)}, no difference seen; a true difference of this size "
                f"would need about {needed} subjects to be seen at 95%.")

    readings = " ".join(filter(None, (reading(c, w) for c in ("base", "lora") for w in weights)))
    header = "| subject | model | fidelity, plain | alignment, plain | " + " | ".join(
        f"fidelity, SSA w={w:g} | alignment, SSA w={w:g}" for w in weights) + " |"
    summary = "\n".join(f"| {config} | {what} | {mean_ci(values)} | {len(values)} |"
                        for (config, what), values in diffs.items())
    body = f"""{time.strftime('%Y-%m-%d')}; the toy world's base model and its LoRA runs (toyworld_quality.py objectives part,
`lora`, training seed {args.lora_seed}), first {args.subjects} subjects, the 25 toy prompts ({n} images each, {steps} steps,
guidance {GUIDANCE}); self-subject-attention with photo 00 and its true mask as the reference. Plain and SSA share
the evaluation seed (0); the floor is plain at seed 1 minus plain at seed 0.
Command: `python benchmarks/self_subject_attention.py --subjects {args.subjects} --weights {args.weights}`

{header}
| --- | --- |{' ---: |' * (2 + 2 * len(weights))}
{chr(10).join(rows)}

Paired differences (SSA minus plain; mean and 95% interval over subjects):

| model | difference | mean [95% interval] | pairs |
| --- | --- | --- | ---: |
{summary}

DreamTuner's abstract calls self-subject-attention a training-free, plug-and-play way of keeping the subject's
detailed features (there it works beside DreamTuner's subject encoder and fine-tuning). Here: {readings}
"""
    print(write_section(args.results, "## Toy world: DreamTuner's self-subject-attention against plain generation", body))


if __name__ == "__main__":
    main()
