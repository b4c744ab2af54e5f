"""Generate images with a finished run: the base model, the run's result applied, prompts in."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch
from tqdm.auto import tqdm

from imprint.core.run_folder import RunFolder
from imprint.families import family_class, resolve_model
from imprint.image.reference_guidance import reference_guided, run_references
from imprint.image.sampling import default_guidance, native_resolution, sample, save_grid
from imprint.methods import METHODS
from imprint.util.errors import ImprintError
from imprint.util.files import make_folder, write_json_atomic

log = logging.getLogger("imprint")


def read_metadata(run: str | Path) -> dict:
    return RunFolder(run).read_metadata()


def load_base_pipeline(run_metadata: dict, model: str | None = None, dtype=torch.float32):
    """The base model of a run (or `model`) as its family's pipeline."""
    # a run names its family (runs from before families were recorded are SD's); a bare model is detected
    name = run_metadata.get("family", "sd") if run_metadata else None
    family = family_class(model or run_metadata["base_model"], name)
    return family.load_pipeline(model or run_metadata["base_model"], dtype), family


def load_run_pipeline(run: str | Path, model: str | None = None, dtype=torch.float32):
    """The base model with the run applied; refuses a base model of another architecture."""
    run = Path(run)
    metadata = read_metadata(run)
    method = METHODS.get(metadata.get("method"))
    if method is None:
        raise ImprintError(f"{run / 'metadata.json'}: unknown method {metadata.get('method')!r}; "
                           "upgrade imprint to load it")
    pipe, family = load_base_pipeline(metadata, model, dtype)
    if family.pipeline_fingerprint(pipe) != metadata.get("base_model_fingerprint"):
        raise ImprintError(
            f"--model {model}: not the base model of run {run} (trained on "
            f"{metadata['base_model']}, another architecture); pass --model {metadata['base_model']}"
        )
    if model and resolve_model(model) != metadata["base_model"]:
        log.warning("run %s was trained on %s; applying it to %s (same architecture)",
                    run, metadata["base_model"], model)
    method.load_into_pipeline(pipe, run, metadata)
    return pipe, method, metadata


def generate(run: str | Path | None, prompts: list[str], output: str | Path, model: str | None = None,
             num_images: int = 4, seed: int = 0, inference_steps: int = 30, guidance_scale: float | None = None,
             resolution: int | None = None, keep_appearance: str | Path | None = None,
             appearance_weight: float = 1.0, reference_guidance: bool = False, reference_masks: str | None = None,
             reference_segmenter: str = "CIDAS/clipseg-rd64-refined",
             reference_features: str = "facebook/dino-vits16", with_method: str | None = None,
             subject: str | None = None, subject_masks: str | None = None, subject_photo: int = 0,
             method_weight: float | None = None, subject_name: str | None = None,
             description: str | None = None) -> list[Path]:
    """Images of a finished run (or, without one, of the base model `model`), optionally with a
    generation-time subject method (`with_method` over the photos in `subject`)."""
    if with_method is not None and subject is None:
        raise ImprintError(f"--with {with_method}: needs --subject DIR, the subject's photos")
    if run is None and (keep_appearance or reference_guidance):
        raise ImprintError("--keep-appearance / --reference-guidance apply a run's own files: pass --run")
    output = make_folder(output, "--output")
    own = None
    if with_method is not None:
        from imprint.image.training_free import install, own_pipeline

        own = own_pipeline(with_method, model, run)
    if own is not None:
        pipe, method, metadata = own, None, {"hyperparameters": {"resolution": 768}}  # diptych's panel (the paper's)
    elif run is None:
        if model is None:
            raise ImprintError("generate needs --run RUN, or --model MODEL for the base model (with --with METHOD "
                               "--subject DIR for a generation-time subject method)")
        pipe, _ = load_base_pipeline({}, model)
        method, metadata = None, {"hyperparameters": {"resolution": native_resolution(pipe)}}
    else:
        pipe, method, metadata = load_run_pipeline(run, model)
    if reference_guidance:
        unet_only(metadata, "--reference-guidance")
    guidance_scale = default_guidance(pipe) if guidance_scale is None else guidance_scale
    if keep_appearance is not None:
        add_appearance(pipe, method, Path(run), metadata, Path(keep_appearance), appearance_weight)
    resolution = resolution or metadata["hyperparameters"]["resolution"]
    references = (run_references(run, metadata, resolution, reference_masks, reference_segmenter, reference_features)
                  if reference_guidance else None)
    written, all_images, chosen = [], [], []
    subject_method = None
    if with_method is not None:
        subject_method = install(with_method, pipe, subject, subject_masks, subject_photo, resolution, method_weight,
                                 seed, subject_name)
    sampling = subject_method if hasattr(subject_method, "__enter__") else contextlib.nullcontext()
    with sampling:
        for i, prompt in enumerate(tqdm(prompts, desc="generate", unit="prompt", disable=None)):
            text = method.rewrite_prompt(prompt, metadata) if method is not None else prompt
            if description:  # FreeCus: the subject's description after the prompt, as the authors append it
                text = f"{text}. {description}"
            if hasattr(subject_method, "images"):  # a method that generates its own way (diptych)
                generators = [torch.Generator().manual_seed(seed + 1000 * i + j) for j in range(num_images)]
                images = subject_method.images(text, resolution, generators, inference_steps, guidance_scale)
            else:
                images = generate_one(pipe, text, prompt, i, references, metadata, resolution, seed, inference_steps,
                                      num_images, guidance_scale, chosen)
            for j, image in enumerate(images):
                path = output / f"{i:02d}-{j:02d}.png"
                image.save(path)
                written.append(path)
            all_images += images
    save_grid(all_images, output / "grid.png", cols=num_images)
    if chosen:
        write_json_atomic(output / "reference_guidance.json", chosen)
    return written


def generate_one(pipe, text: str, prompt: str, i: int, references, metadata: dict, resolution: int, seed: int,
                 inference_steps: int, num_images: int, guidance_scale: float, chosen: list) -> list:
    """Prompt i's images: sampled, or through HiFi Tuner's reference guidance image by image."""
    if references is None:
        return sample(pipe, [text], resolution, seed + 1000 * i, inference_steps, num_images, guidance_scale)
    images = []
    for j in range(num_images):
        image, info = reference_guided(pipe, text, *references, metadata.get("class_name", ""), resolution,
                                       seed + 1000 * i + j, inference_steps, guidance_scale)
        images.append(image)
        chosen.append({"prompt": prompt, "image": f"{i:02d}-{j:02d}.png", **info})
    return images


def unet_only(metadata: dict, what: str) -> None:
    """HiFi Tuner's DDIM inversion and cross-attention steering are written for SD's UNet."""
    family = family_class(metadata["base_model"], metadata.get("family", "sd"))
    if not family.ddim_editing:
        raise ImprintError(f"{what}: written for SD 1.x / 2.x's UNet and DDIM sampler; this run's model is "
                           f"{family.name}")


def add_appearance(pipe, method, run: Path, metadata: dict, image_path: Path, weight: float) -> None:
    """--keep-appearance: the run's method makes the images keep that image's pose and background
    (DisenBooth adds the image's identity-irrelevant embedding to the prompt's)."""
    from imprint.image.data import load_image_file
    from imprint.image.image_encoder import ImageEncoder

    encoder = method.appearance_encoder(run, metadata)
    if encoder is None:
        raise ImprintError(f"--keep-appearance: run {run} was trained with method {method.name}, which takes no "
                           "appearance image; train with --method disenbooth, or leave the flag out")
    if not image_path.is_file():
        raise ImprintError(f"--keep-appearance {image_path}: no such image file; pass the path of a photo")
    try:
        image = load_image_file(image_path)
    except ImprintError as e:
        raise ImprintError(f"--keep-appearance: {e}") from e
    features = ImageEncoder(encoder, "--keep-appearance").encode([image])
    method.add_appearance(pipe, run, metadata, features, weight)
    log.info("appearance of %s added (weight %g)", image_path, weight)


def edit(run: str | Path, image: str | Path, source_prompt: str, replace: str, output: str | Path,
         model: str | None = None, inference_steps: int = 50, guidance_scale: float = 7.5, null_steps: int = 10,
         resolution: int | None = None) -> Path:
    """HiFi Tuner's subject substitution: `replace` (a word of the photo's caption) becomes the
    run's subject (its token and class), the rest of the photo kept."""
    from imprint.image.data import load_image_file
    from imprint.image.substitution import substitute
    from imprint.methods.base import replace_word

    output = Path(output)
    if output.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
        raise ImprintError(f"--output {output}: give an image file name (.png, .jpg or .webp)")
    if not Path(image).is_file():
        raise ImprintError(f"--image {image}: no such file; pass the photo to edit")
    if replace_word(source_prompt, replace, "\0") == source_prompt:
        raise ImprintError(f"--replace {replace!r}: not a word of --source-prompt {source_prompt!r}; name the word "
                           "that says what the photo's object is")
    photo = load_image_file(Path(image))
    unet_only(read_metadata(run), "imprint edit")
    pipe, method, metadata = load_run_pipeline(run, model)
    resolution = resolution or metadata["hyperparameters"]["resolution"]
    subject_words = f"{metadata['token']} {metadata['class_name']}"
    target = method.rewrite_prompt(replace_word(source_prompt, replace, subject_words), metadata)
    subject_words = method.rewrite_prompt(subject_words, metadata)
    own_tail = getattr(pipe, "imprint_subject_vectors", 0)  # a method's vectors over the prompt's last ones (HiFi)
    log.info("editing %s: %r -> %r", image, source_prompt, target)
    result = substitute(pipe, photo, source_prompt, replace, subject_words, target, resolution, inference_steps,
                        guidance_scale, null_steps, own_tail)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.stem}.partial{output.suffix}")
    result.save(partial)
    partial.replace(output)
    return output
