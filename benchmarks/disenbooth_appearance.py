"""Where DisenBooth's identity went: the objectives part's disenbooth runs generated with f_s alone
(as evaluated) and with a subject photo's f_i added (`generate --keep-appearance`), scored alike.

If the image adapter's f_i carries the subject's identity, adding it raises fidelity: the identity
was learnt into the image branch instead of the identifier, the failure DisenBooth's contrastive
term is there to prevent. Reads the runs of `toyworld_quality.py --part objectives --configs
disenbooth`; writes a table to RESULTS.md.

  python benchmarks/disenbooth_appearance.py [--subjects 5] [--seeds 0]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from results_file import write_section  # noqa: E402
from toyworld_quality import EVALUATION, GUIDANCE, WORK, _run_name  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=5)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--results", default=str(Path(__file__).with_name("RESULTS.md")))
    args = parser.parse_args()

    from imprint.evaluate.backends import make_backend
    from imprint.evaluate.prompts import remove_identifier
    from imprint.image.data import load_subject_images
    from imprint.image.generate import add_appearance, load_run_pipeline
    from imprint.image.sampling import sample
    from imprint.toyworld.subjects import SUBJECTS

    backend = make_backend("toyworld")
    rows, differences = [], {"fidelity": [], "alignment": []}
    for seed in [int(s) for s in args.seeds.split(",")]:
        for subject in SUBJECTS[:args.subjects]:
            run = WORK / "runs" / _run_name("disenbooth", seed) / subject.name
            photos = WORK / "subjects" / subject.name
            real = load_subject_images(photos, 64).images
            prompts = backend.default_prompts("sks", subject.class_name)
            text = {p: remove_identifier(p, "sks") for p in prompts}
            scores = {}
            for label, photo in (("f_s", None), ("f_s + f_i", photos / "00.png")):
                pipe, method, metadata = load_run_pipeline(run)
                pipe.set_progress_bar_config(disable=True)
                if photo is not None:
                    add_appearance(pipe, method, run, metadata, photo, 1.0)
                images = sample(pipe, [method.rewrite_prompt(p, metadata) for p in prompts], 64, 0,
                                EVALUATION["inference_steps"], EVALUATION["images_per_prompt"], GUIDANCE)
                n = EVALUATION["images_per_prompt"]
                generated = {p: images[i * n:(i + 1) * n] for i, p in enumerate(prompts)}
                summary = backend.score(generated, text, real, images[:n]).summary
                scores[label] = {m: summary[m]["mean"] for m in ("fidelity", "alignment")}
            for m in differences:
                differences[m].append(scores["f_s + f_i"][m] - scores["f_s"][m])
            rows.append(f"| {subject.name} | {seed} | {scores['f_s']['fidelity']:.3f} | {scores['f_s + f_i']['fidelity']:.3f} | "
                        f"{scores['f_s']['alignment']:.3f} | {scores['f_s + f_i']['alignment']:.3f} |")
            print(rows[-1], flush=True)

    def mean_ci(values):
        mean = statistics.mean(values)
        half = 1.96 * statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else float("nan")
        return f"{mean:+.3f} [{mean - half:+.3f}, {mean + half:+.3f}]"

    body = f"""{time.strftime('%Y-%m-%d')}; the objectives part's disenbooth runs (seed {args.seeds}, first {args.subjects} subjects),
each generated on the 25 toy prompts ({EVALUATION['images_per_prompt']} images each, {EVALUATION['inference_steps']} steps,
guidance {GUIDANCE}, evaluation seed 0) with f_s alone, as evaluated, and with photo 00's f_i added at weight 1
(`generate --keep-appearance`). PRES and DIV are left out (the question is where the identity is).
Command: `python benchmarks/disenbooth_appearance.py --subjects {args.subjects} --seeds {args.seeds}`

| subject | seed | fidelity, f_s | fidelity, f_s + f_i | alignment, f_s | alignment, f_s + f_i |
| --- | ---: | ---: | ---: | ---: | ---: |
{chr(10).join(rows)}

Adding f_i (mean and 95% interval over the runs): fidelity {mean_ci(differences['fidelity'])}, alignment
{mean_ci(differences['alignment'])}.
"""
    print(write_section(args.results, "## Toy world: DisenBooth, where the identity went", body))


if __name__ == "__main__":
    main()
