"""`imprint evaluate`: generate the protocol's images with the run and with the base model,
score both and the real images with one backend, write metrics.json and report.html."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from tqdm.auto import tqdm

from imprint.evaluate.backends import make_backend
from imprint.evaluate.prompts import load_prompt_file, remove_identifier
from imprint.evaluate.report import write_report
from imprint.image.data import load_subject_images
from imprint.image.generate import load_base_pipeline, load_run_pipeline, read_metadata
from imprint.image.sampling import images_per_call, sample
from imprint.util.files import write_json_atomic

log = logging.getLogger("imprint")


def _generate_all(pipe, prompts, n, seed, inference_steps, resolution, label, guidance_scale):
    """-> {prompt: its n images}; image j of prompt i starts from seed + 1000 * i + j."""
    out = {}
    per_bar_step = max(1, images_per_call(resolution) // n)  # prompts per progress-bar step
    bar = tqdm(total=len(prompts), desc=f"generate ({label})", unit="prompt")
    for start in range(0, len(prompts), per_bar_step):
        chunk = prompts[start:start + per_bar_step]
        images = sample(pipe, chunk, resolution, seed + 1000 * start, inference_steps, n, guidance_scale)
        for k, prompt in enumerate(chunk):
            out[prompt] = images[k * n:(k + 1) * n]
        bar.update(len(chunk))
    bar.close()
    return out


def _save_images(generated: dict, folder: Path, eval_dir: Path) -> dict[str, list[str]]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for i, (prompt, images) in enumerate(generated.items()):
        paths[prompt] = []
        for j, image in enumerate(images):
            path = folder / f"p{i:02d}-{j:02d}.png"
            image.save(path)
            paths[prompt].append(path.relative_to(eval_dir).as_posix())
    return paths


def evaluate_run(run: str | Path, model: str | None = None, images: str | None = None,
                 images_per_prompt: int = 4, seed: int = 0, prompts_file: str | None = None,
                 metrics: str = "dreambench", inference_steps: int = 30, resolution: int | None = None,
                 backend_options: dict | None = None, backend=None, guidance_scale: float = 7.5,
                 eval_dir: str | Path | None = None, baseline_cache: dict | None = None) -> dict:
    """Generate, score and report a run (see the module docstring). `baseline_cache`: a dict
    shared by several calls in one process (a benchmark) to generate the base model's images
    once per base model, prompts and settings."""
    run = Path(run)
    metadata = read_metadata(run)
    token, class_name = metadata["token"], metadata["class_name"]
    images_dir = images or metadata["hyperparameters"]["images"]
    real = load_subject_images(images_dir, 512 if resolution is None else max(resolution, 224)).images
    backend = backend or make_backend(metrics, **(backend_options or {}))
    prompts = (load_prompt_file(prompts_file, token, class_name) if prompts_file
               else backend.default_prompts(token, class_name))
    resolution = resolution or metadata["hyperparameters"]["resolution"]
    text_prompts = {p: remove_identifier(p, token) for p in prompts}
    class_prompt = f"a {class_name}"

    pipe, method, metadata = load_run_pipeline(run, model)
    run_prompts = {p: method.rewrite_prompt(p, metadata) for p in prompts}
    personalised = _generate_all(pipe, list(run_prompts.values()), images_per_prompt, seed, inference_steps,
                                 resolution, "run", guidance_scale)
    personalised = {p: personalised[run_prompts[p]] for p in prompts}
    class_images = sample(pipe, [class_prompt], resolution, seed + 99_991, inference_steps, images_per_prompt,
                          guidance_scale)
    del pipe
    key = (str(model or metadata["base_model"]), tuple(prompts), images_per_prompt, seed, inference_steps, resolution,
           guidance_scale, class_prompt)
    if baseline_cache is not None and key in baseline_cache:
        baseline, base_class = baseline_cache[key]
    else:
        base_pipe, _ = load_base_pipeline(metadata, model)
        # the base model has no subject token: it gets the prompt without it ("a dog on the beach")
        baseline = _generate_all(base_pipe, [text_prompts[p] for p in prompts], images_per_prompt, seed,
                                 inference_steps, resolution, "base model", guidance_scale)
        baseline = {p: baseline[text_prompts[p]] for p in prompts}
        base_class = sample(base_pipe, [class_prompt], resolution, seed + 99_991, inference_steps, images_per_prompt,
                            guidance_scale)
        del base_pipe
        if baseline_cache is not None:
            baseline_cache[key] = (baseline, base_class)

    scores = backend.score(personalised, text_prompts, real, class_images)
    base_scores = backend.score(baseline, text_prompts, real, base_class)
    real_scores = backend.score_real(real)

    eval_dir = Path(eval_dir) if eval_dir else run / "eval"
    if eval_dir.exists():
        shutil.rmtree(eval_dir)
    run_paths = _save_images(personalised, eval_dir / "images" / "run", eval_dir)
    base_paths = _save_images(baseline, eval_dir / "images" / "base", eval_dir)
    class_paths = _save_images({class_prompt: class_images}, eval_dir / "images" / "class", eval_dir)
    real_dir = eval_dir / "images" / "real"
    real_dir.mkdir(parents=True)
    real_paths = []
    for i, image in enumerate(real):
        image.resize((256, 256)).save(real_dir / f"real-{i:02d}.png")
        real_paths.append(f"images/real/real-{i:02d}.png")

    for record in scores.images:
        record["path"] = run_paths[record["prompt"]][record["index"]]
    for row in scores.prompts:
        row["images"] = run_paths[row["prompt"]]
    base_rows = {r["prompt"]: r for r in base_scores.prompts}
    for row in scores.prompts:
        base_rows[row["prompt"]]["images"] = base_paths[row["prompt"]]

    result = {
        "run": str(run), "method": metadata["method"], "base_model": metadata["base_model"],
        "backend": backend.name, "protocol": backend.protocol,
        "settings": {"images_per_prompt": images_per_prompt, "seed": seed, "inference_steps": inference_steps,
                     "guidance_scale": guidance_scale,
                     "resolution": resolution, "prompts": len(prompts), "class_prompt": class_prompt},
        "metrics": list(backend.metrics),
        # the run's metrics, and the base model's beside them under "base" (before / after)
        "summary": {**scores.summary, "base": base_scores.summary},
        "baseline": {"summary": base_scores.summary, "prompts": list(base_rows.values())},
        "real_images": {"summary": real_scores, "images": real_paths},
        "prompts": scores.prompts,
        "images": scores.images,
        "class_images": class_paths[class_prompt],
    }
    write_json_atomic(eval_dir / "metrics.json", result)
    write_report(result, eval_dir / "report.html")
    log.info("evaluation written to %s", eval_dir)
    return result
