"""Image personalisation on the trainer core: the subject's photos (and class images) in,
a method's result files out.

Frozen parts are used once, up front, to cache what they would compute every step (VAE
latents per photo, an encoding per distinct prompt), so a step runs only the denoiser and what
is trained.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from dataclasses import dataclass, field
import logging
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

import imprint
from imprint.core import checkpoint as ckpt
from imprint.core.loop import Callback, Task, check_can_run, fit
from imprint.core.precision import DTYPES, generation_autocast, generation_precision, make_accelerator
from imprint.util.rng import batch_indices, step_generator
from imprint.core.run_folder import RunFolder
from imprint.config import check_resume_settings, flag
from imprint.families import family_class, load_family
from imprint.families.flow import FlowMatchingFamily, FlowMatchingSettings
from imprint.image.buckets import Bucket, bucket_for, subject_rows
from imprint.image.data import (SubjectImages, caption_path, fit_to_size, images_to_tensor, list_image_files,
                                load_image_file, load_subject_images, read_captions)
from imprint.image.masks import fit_mask, load_masks, to_latent_size
from imprint.image.prior import ensure_class_images
from imprint.image.sampling import sample, save_grid
from imprint.image.settings import ImageRunConfig, build_config
from imprint.methods import METHODS, Subject
from imprint.objectives import Batch, Objective
from imprint.objectives.base import CLASS, INSTANCE, NEGATIVE
from imprint.util.errors import ImprintError
from imprint.util.files import write_json_atomic

log = logging.getLogger("imprint")

# settings that may change when a run is resumed; any other change is a different run
FLIP_STREAM = 3  # the random stream of --flip's coins (0: noise, 1: subject rows, 2: class rows)
PREFERENCE_STREAM = 4  # RPO's negatives and labels
TERMS_STREAM = 5  # the loss terms' own draws (Batch.draws)
RESUMABLE_CHANGES = {"resume", "steps", "checkpoint_every", "keep_checkpoints", "sample_every",
                     "sample_prompt", "sample_inference_steps", "final_samples", "log_with"}


@dataclass
class Rows:
    """Rows of a batch before noise: latents, roles, prompts, masks; `ties[i]`, a row whose noise
    and timestep row i shares (or None); `extras`, per-row tensors for the terms."""
    latents: torch.Tensor
    roles: list[str]
    prompts: list[str]
    masks: torch.Tensor | None = None
    ties: list[int | None] = field(default_factory=list)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self):
        self.ties = self.ties or [None] * len(self.roles)

    def cat(self, other: "Rows") -> "Rows":
        """These rows, then `other`'s; other's ties and *_pair extras index the joined rows (so
        they may name rows of self); an extra one side lacks is -1 there (no pair, no label)."""
        n, m = len(self.roles), len(other.roles)
        extras = {}
        for key in {*self.extras, *other.extras}:
            like = self.extras.get(key, other.extras.get(key))
            mine = self.extras.get(key, torch.full((n,), -1, dtype=like.dtype))
            theirs = other.extras.get(key, torch.full((m,), -1, dtype=like.dtype))
            extras[key] = torch.cat([mine, theirs])
        return Rows(torch.cat([self.latents, other.latents]), self.roles + other.roles, self.prompts + other.prompts,
                    torch.cat([self.masks, other.masks]) if self.masks is not None else None,
                    self.ties + other.ties, extras)


class SubjectTask(Task):
    """One subject (and its class images), one method, one family: batches and their loss."""

    name = "image"

    def __init__(self, cfg: ImageRunConfig, accelerator, subject: SubjectImages,
                 captions: list[str | None] | None = None, masks: list | None = None):
        self.cfg, self.accelerator = cfg, accelerator
        self.device, self.frozen_dtype = accelerator.device, DTYPES[cfg.trainer.mixed_precision]
        self.family = family = load_family(cfg.run.model)
        family.configure(cfg.family)
        self.method = METHODS[cfg.run.method](cfg.method)
        self.objective = Objective.from_settings(cfg.terms)
        trained = self.method.trained_parts()
        family.to(self.device, self.frozen_dtype, self.method.float32_parts())

        # --- caches: everything the frozen parts compute, once ---------------------------
        self.buckets = self.encode_subject(subject, masks)
        self.class_mean = self.class_std = self.class_prompt = None
        if cfg.prior.prior_preservation:
            self.class_prompt = class_prompt = cfg.fill(cfg.prior.class_prompt)
            precision = generation_precision(cfg.prior.class_precision, cfg.trainer.mixed_precision,
                                             self.device, "--class-precision")
            with generation_autocast(self.device, precision):
                class_paths = ensure_class_images(
                    cfg.prior.class_images, cfg.prior.num_class_images, family.model, class_prompt,
                    cfg.data.resolution, cfg.trainer.seed, cfg.prior.class_inference_steps, family.pipeline,
                    precision)
            class_pixels = images_to_tensor([load_image_file(p, cfg.data.resolution) for p in class_paths])
            self.class_mean, self.class_std = family.encode_images(class_pixels)
        self.negatives = None
        if self.objective.has("rpo"):  # made by the base model, before the method changes it
            from imprint.evaluate.backends import make_backend
            from imprint.image.preference import make_negatives

            backend = make_backend(cfg.selection.metrics, dino_model=cfg.selection.dino_model,
                                   clip_model=cfg.selection.clip_model, device=str(self.device))
            with accelerator.autocast():
                self.negatives = make_negatives(cfg, family, subject.images, backend)
            del backend

        self.photo_features = self.encode_photos(subject)
        torch.manual_seed(cfg.trainer.seed)  # adapter initialisation draws from the global generator
        self.params = self.method.prepare(family, Subject(cfg.data.token, cfg.data.class_name, self.photo_features))
        self.instance_prompt = self.fill_prompt(cfg.data.instance_prompt)
        # each photo's prompt: its caption, or the instance prompt; each distinct prompt is
        # tokenized (and, with a frozen text encoder, encoded) once
        self.image_prompts = [self.fill_prompt(c) if c else self.instance_prompt
                              for c in captions or [None] * len(subject.paths)]
        if self.negatives is not None:
            self.negatives.prompts = [self.fill_prompt(self.negatives.templates[int(t)])
                                      for t in self.negatives.prompt_of]
        self.prompts = list(dict.fromkeys([self.instance_prompt, *self.image_prompts]
                                          + ([self.class_prompt] if self.class_prompt is not None else [])
                                          + (self.negatives.prompts if self.negatives is not None else [])))
        self.prompt_ids = {p: i for i, p in enumerate(self.prompts)}
        self.cache_text = "text_encoder" not in trained
        self.prompt_tokens = family.tokenize(self.prompts)
        self.prompt_encodings = None
        with torch.no_grad():  # every prompt once, also where the text encoder trains: a family keeps what
            encodings = family.encode_prompts(self.prompt_tokens)  # its frozen encoders give (FLUX's T5)
        if self.cache_text:
            self.prompt_encodings = {k: v.to(self.device, self.frozen_dtype) for k, v in encodings.items()}
        self.prompt_metadata = {"token": cfg.data.token, **self.method.metadata()}
        with accelerator.autocast():
            self.objective.setup(family, self.fill_prompt)

    def fill_prompt(self, text: str) -> str:
        return text.format(token=self.method.prompt_token(), class_name=self.cfg.data.class_name)

    def encode_subject(self, subject: SubjectImages, masks: list | None = None) -> list[Bucket]:
        """The photos' latent posteriors (and, with --flip, the mirrored photos'; with masks, the
        masks at latent size, through the same resize and crop), by bucket: one square bucket
        without --buckets."""
        cfg = self.cfg
        if not cfg.data.buckets:
            resolution = cfg.data.resolution
            return [self.make_bucket((resolution, resolution), list(range(len(subject.images))), subject.images, masks)]
        by_size: dict[tuple[int, int], list[tuple[int, object]]] = {}
        for index, path in enumerate(subject.paths):
            image = load_image_file(path)
            size = bucket_for(*image.size, cfg.data.resolution)
            by_size.setdefault(size, []).append((index, fit_to_size(image, *size)))
        buckets = [self.make_bucket(size, [index for index, _ in members], [image for _, image in members], masks)
                   for size, members in sorted(by_size.items())]
        log.info("aspect-ratio buckets: %s", ", ".join(f"{b.size[0]}x{b.size[1]} ({len(b.images)} photos)"
                                                       for b in buckets))
        return buckets

    def encode_photos(self, subject: SubjectImages) -> torch.Tensor | None:
        """The method's image encoder's features of each photo as trained (square; with --flip the
        mirrored photos' after them), once; None for methods that read none."""
        name = self.method.photo_encoder(self.family)
        if name is None:
            return None
        from imprint.image.image_encoder import ImageEncoder

        images = list(subject.images)
        if self.cfg.data.flip:
            images += [image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for image in subject.images]
        encoder = ImageEncoder(name, self.method.photo_encoder_flag, self.device)
        features = encoder.encode(images)
        log.info("photo features: %d from %s (%d wide)", len(images), name, features.shape[-1])
        return features

    def make_bucket(self, size: tuple[int, int], members: list[int], images: list, masks: list | None) -> Bucket:
        family = self.family
        bucket = Bucket(size, members, *family.encode_images(images_to_tensor(images)))
        if self.cfg.data.flip:
            mirrored = [image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for image in images]
            bucket.flipped = family.encode_images(images_to_tensor(mirrored))
        if masks is not None:
            pixels = torch.stack([fit_mask(masks[i], *size) for i in members])
            bucket.masks = to_latent_size(pixels, tuple(bucket.mean.shape[-2:]))
        return bucket

    def pipe_prompt(self, text: str) -> str:
        return self.method.rewrite_prompt(text, self.prompt_metadata)

    def encode_for_sampling(self, prompts: list[str]):
        """Prompt encodings for sampling, so the pipeline needs no text encoder. Made before the
        frozen parts are released (a family keeps what its frozen encoders give, FLUX's T5); where
        the text encoder trains, this is a function that makes them anew at each use."""
        def fresh():
            with torch.no_grad():
                return self.family.encode_for_sampling(prompts)
        encodings = fresh()
        return encodings if self.cache_text else fresh

    def release_frozen_parts(self) -> None:
        self.family.release_encoders(keep_text_encoder=not self.cache_text or self.objective.needs_text_encoder)
        if self.cfg.data.gradient_checkpointing:
            self.family.enable_gradient_checkpointing(self.method.trained_parts())
        if self.cfg.data.compile != "off":
            self.family.compile_denoiser(self.cfg.data.compile)

    # --- what the core calls ---------------------------------------------------------------
    def parameters(self) -> list[torch.nn.Parameter]:
        return self.params

    def batches(self, step: int, micro: int, timestep: int | None = None) -> list[Batch]:
        """The rows of a step: one batch, or two (subject rows, then class rows) where a bucket's
        shape is not the class images' square. With --rpo-weight, each subject row brings a
        negative that shares its noise and timestep."""
        cfg, family = self.cfg, self.family
        index = step * cfg.trainer.gradient_accumulation_steps + micro
        generator = step_generator(cfg.trainer.seed, 0, index)
        number, rows = subject_rows(cfg.trainer.seed, index, cfg.data.batch_size, self.buckets, cfg.data.repeats,
                                    by_bucket=cfg.data.buckets)
        bucket = self.buckets[number]
        mean, std = bucket.mean[rows], bucket.std[rows]
        masks = bucket.masks[rows] if bucket.masks is not None else None
        if bucket.flipped is not None:  # a coin per row, from a stream of its own
            flips = torch.rand(len(rows), generator=step_generator(cfg.trainer.seed, FLIP_STREAM, index)) < 0.5
            where = flips.reshape(-1, 1, 1, 1)
            mean = torch.where(where, bucket.flipped[0][rows], mean)
            std = torch.where(where, bucket.flipped[1][rows], std)
            if masks is not None:
                masks = torch.where(where, masks.flip(-1), masks)
        latents = family.sample_latents(mean, std, generator)
        extras = {}
        if self.photo_features is not None:  # each row's photo (a mirrored one counts after the photos)
            photos = torch.tensor([bucket.images[r] for r in rows])
            n_photos = len(self.image_prompts)  # one prompt per photo
            extras["photo"] = photos + n_photos * flips.long() if bucket.flipped is not None else photos
        groups = [Rows(latents, [INSTANCE] * len(rows), [self.image_prompts[bucket.images[r]] for r in rows], masks,
                       extras=extras)]
        if self.negatives is not None:
            groups[0] = groups[0].cat(self.negative_rows(index, [bucket.images[r] for r in rows], generator, masks))
        if self.class_mean is not None:
            rows = batch_indices(cfg.trainer.seed, 2, index, cfg.data.batch_size, self.class_mean.shape[0])
            latents = family.sample_latents(self.class_mean[rows], self.class_std[rows], generator)
            class_rows = Rows(latents, [CLASS] * len(rows), [self.class_prompt] * len(rows),
                              torch.ones(len(rows), 1, *latents.shape[-2:]) if masks is not None else None)
            if latents.shape[1:] == groups[0].latents.shape[1:]:
                groups[0] = groups[0].cat(class_rows)
            else:
                groups.append(class_rows)
        return [self.noised(group, generator, index, timestep) for group in groups]

    def negative_rows(self, index: int, photos: list[int], generator, masks) -> "Rows":
        """A negative per subject row (drawn uniformly), its label ~ Bernoulli(sigmoid(R_w - R_l)),
        from a stream of their own; tied to their subject rows' noise and timestep."""
        neg = self.negatives
        draws = step_generator(self.cfg.trainer.seed, PREFERENCE_STREAM, index)
        picks = torch.randint(len(neg.prompts), (len(photos),), generator=draws)
        labels = (torch.rand(len(photos), generator=draws)
                  < neg.label_probability(torch.tensor(photos), picks)).float()
        latents = self.family.sample_latents(neg.mean[picks], neg.std[picks], generator)
        n = len(photos)
        return Rows(latents, [NEGATIVE] * n, [neg.prompts[int(j)] for j in picks],
                    torch.ones(n, 1, *latents.shape[-2:]) if masks is not None else None,
                    ties=list(range(n)), extras={"preference_pair": torch.arange(n), "preference_label": labels})

    def noised(self, rows: "Rows", generator, index: int, timestep: int | None = None) -> Batch:
        cfg, family = self.cfg, self.family
        latents = rows.latents
        noise = torch.randn(latents.shape, generator=generator)
        if cfg.data.noise_offset:
            noise += cfg.data.noise_offset * torch.randn((*latents.shape[:2], 1, 1), generator=generator)
        timesteps = family.sample_timesteps(latents.shape[0], generator, latents.shape)
        if timestep is not None:  # every row at one timestep (a method's per-step refinement)
            timesteps = torch.full_like(timesteps, timestep)
        tied = [(i, t) for i, t in enumerate(rows.ties) if t is not None]
        if tied:  # a row that shares another's noise and timestep (a negative and its subject row)
            rows_, sources = torch.tensor([i for i, _ in tied]), torch.tensor([t for _, t in tied])
            noise[rows_], timesteps[rows_] = noise[sources], timesteps[sources]
        noisy, target = family.noisy_input_and_target(latents, noise, timesteps)
        conditioning = None
        if self.prompt_encodings is not None:
            ids = torch.tensor([self.prompt_ids[p] for p in rows.prompts], device=self.device)
            conditioning = {k: v[ids] for k, v in self.prompt_encodings.items()}
        return Batch(latents=latents, noise=noise, timesteps=timesteps.to(self.device),
                     noisy=noisy.to(self.device, self.frozen_dtype), target=target, conditioning=conditioning,
                     roles=rows.roles, captions=rows.prompts, masks=rows.masks, extras=rows.extras,
                     draws=step_generator(cfg.trainer.seed, TERMS_STREAM, index))

    def loss(self, step: int, micro: int, timestep: int | None = None):
        parts: dict[str, torch.Tensor] = {}
        for batch in self.batches(step, micro, timestep):
            with self.accelerator.autocast():
                if not self.cache_text:  # the text encoder trains: its encodings change every step
                    tokens = self.prompt_tokens[[self.prompt_ids[p] for p in batch.captions]]
                    batch.conditioning = {k: v.to(self.frozen_dtype)
                                          for k, v in self.family.encode_prompts(tokens).items()}
                plain, rows = batch.conditioning, batch.rows(INSTANCE)
                batch.conditioning = self.method.condition_subject_rows(plain, rows, batch)
                prediction = self.family.predict(batch.noisy, batch.timesteps, batch.conditioning)
                own = self.method.losses(batch, rows, self.family, plain)
            terms = self.objective.losses(batch, self.family, prediction, self.accelerator.autocast)
            for name, value in {**terms, **own}.items():
                parts[name] = parts[name] + value if name in parts else value
        regularization = self.method.regularization()
        if regularization is not None:
            parts[f"{self.method.name}_regularization"] = regularization
        return self.objective.total(parts)

    def refine_per_timestep(self) -> None:
        """After training, for methods that keep one state per sampling timestep (HiFi Tuner's
        step-wise representations): from the highest timestep down, each state starts from the
        previous one and takes `iterations` more steps of the run's loss at that timestep alone."""
        plan = self.method.refinement_plan(self.family)
        if plan is None:
            return
        timesteps, iterations = plan
        refined = self.method.refinable_parameters()
        fixed = [p for p in self.params if all(p is not q for q in refined)]  # no gradient: the weights stay
        for p in fixed:
            p.requires_grad_(False)
        optimizer = torch.optim.AdamW(refined, lr=self.cfg.trainer.lr, weight_decay=self.cfg.trainer.weight_decay)
        states, first = [], self.cfg.trainer.steps * self.cfg.trainer.gradient_accumulation_steps
        for k, t in enumerate(tqdm(timesteps, desc="per-timestep refinement", unit="timestep", disable=None)):
            for i in range(iterations):  # batches numbered after the training's: their own draws
                loss, _ = self.loss(first + k * iterations + i, 0, timestep=int(t))
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            states.append(self.method.refinable_state())
        for p in fixed:
            p.requires_grad_(True)
        self.method.set_refined(timesteps, states)

    def pipeline(self):
        """A pipeline over the live parts, sampling with what is being trained."""
        pipe = self.family.pipeline()
        self.method.wrap_pipeline(pipe)
        return pipe

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return self.method.trainable_state_dict(self.family)

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        self.method.load_trainable_state_dict(self.family, state)

    def parameter_groups(self) -> list[dict]:
        return self.method.parameter_groups(self.params)

    def after_optimizer_step(self, step: int) -> None:
        self.method.after_optimizer_step(self.family, step)


class Samples(Callback):
    """Sample grids every --sample-every steps (and at the end, by the caller)."""

    def __init__(self, task: SubjectTask, run: RunFolder):
        cfg = task.cfg
        self.task, self.run, self.cfg = task, run, cfg
        self.prompts = [task.pipe_prompt(cfg.fill(p)) for p in (cfg.samples.sample_prompt or [cfg.data.instance_prompt])]
        self.encodings = task.encode_for_sampling(self.prompts)

    def write(self, step: int) -> None:
        # with --ema-decay the samples show the average, the weights the run will ship
        with self.ema.applied() if self.ema else contextlib.nullcontext(), \
                self.task.accelerator.autocast():  # parts in mixed dtypes (bf16 base, float32 adapters)
            encodings = self.encodings() if callable(self.encodings) else self.encodings
            images = sample(self.task.pipeline(), self.prompts, self.cfg.data.resolution,
                            self.cfg.trainer.seed, self.cfg.samples.sample_inference_steps, images_per_prompt=2,
                            prompt_embeds=encodings)
        save_grid(images, self.run.path / "samples" / f"step-{step:06d}.png", cols=2)

    def on_step_end(self, step: int) -> None:
        every = self.cfg.samples.sample_every
        if every and step % every == 0 and step < self.cfg.trainer.steps:
            self.write(step)


class Selection(Callback):
    """--select-best: every checkpoint (and the last step) scored; the best is kept from pruning."""

    def __init__(self, task: SubjectTask, run: RunFolder, subject_images, scorer=None):
        from imprint.image.selection import CheckpointSelector

        self.task, self.run = task, run
        self.selector = CheckpointSelector(task.cfg.selection.select_best, scorer or self.dreambench_scorer(subject_images))
        self.patience = task.cfg.selection.early_stop_patience
        self.stopped_at: int | None = None

    def dreambench_scorer(self, subject_images):
        from imprint.evaluate.backends import make_backend
        from imprint.evaluate.prompts import remove_identifier
        from imprint.image.selection import backend_scorer

        cfg, task = self.task.cfg, self.task
        backend = make_backend(cfg.selection.metrics, dino_model=cfg.selection.dino_model,
                               clip_model=cfg.selection.clip_model, device=str(task.device))
        prompts = backend.default_prompts(cfg.data.token, cfg.data.class_name)[:cfg.selection.select_prompts]
        pipe_prompts = [task.pipe_prompt(p) for p in prompts]
        return backend_scorer(backend, subject_images, pipe_prompts, [remove_identifier(p, cfg.data.token) for p in prompts],
                              cfg.data.resolution, cfg.samples.sample_inference_steps, cfg.trainer.seed,
                              prompt_embeds=task.encode_for_sampling(pipe_prompts))

    @property
    def path(self) -> Path:
        return self.run.path / "selection.json"

    def on_resume(self, step: int) -> None:
        if self.path.exists():
            scores = json.loads(self.path.read_text())["scores"]
            self.selector.restore({k: v for k, v in scores.items() if int(k) <= step})

    def on_checkpoint(self, step: int) -> set[int]:
        with self.task.accelerator.autocast():
            self.selector.score(step, self.task.pipeline())
        write_json_atomic(self.path, self.selector.summary())
        return {self.selector.best_step()}

    def should_stop(self, step: int) -> bool:
        if self.patience and step in self.selector.scores and self.selector.steps_since_best() >= self.patience:
            self.stopped_at = step
            return True
        return False

    def on_train_end(self, step: int) -> None:
        if step not in self.selector.scores:
            self.on_checkpoint(step)
        best = self.selector.best_step()
        if best != step:
            _, trainable, _ = ckpt.load_checkpoint(self.run.path / "checkpoints" / f"{ckpt.PREFIX}{best}")
            self.task.load_trainable_state(trainable)
            log.info("best checkpoint: step %d (reward %.4f); it is the run's result",
                     best, self.selector.scores[best]["reward"])


def checked_captions(cfg: ImageRunConfig, subject: SubjectImages) -> list[str | None]:
    """The photos' caption files, read and their placeholders checked before the model loads."""
    captions = read_captions(subject.paths)
    for path, caption in zip(subject.paths, captions):
        if caption is not None:
            try:
                cfg.fill(caption)
            except (KeyError, IndexError, ValueError) as e:
                raise ImprintError(f"{caption_path(path)}: bad placeholder {e}; only {{token}} and {{class_name}} "
                                   "are filled in (write {{ and }} for a literal brace)") from e
    with_caption = sum(c is not None for c in captions)
    log.info("captions: %d of %d subject images have a caption file (NAME.txt); %s", with_caption, len(captions),
             "the others use the instance prompt" if with_caption < len(captions) else "every image uses its own")
    return captions


def subject_masks(cfg: ImageRunConfig, subject: SubjectImages, run: RunFolder, device) -> list | None:
    """The photos' masks at their size: read from --masks, or made by --auto-masks into the run folder."""
    folder = cfg.data.masks
    if cfg.data.auto_masks:
        from imprint.image.auto_masks import make_masks

        folder = make_masks(subject.paths, run.path / "masks", cfg.data.auto_mask_model,
                            cfg.fill(cfg.data.auto_mask_prompt), cfg.data.auto_mask_threshold, str(device))
    if folder is None:
        return None
    masks = load_masks(subject.paths, folder, "--masks" if cfg.data.masks else "--auto-masks")
    log.info("masks: %d from %s", len(masks), folder)
    return masks


def train(cfg: ImageRunConfig, scorer=None) -> Path:
    """Train a run; `scorer` (pipeline -> (I, T)) replaces --select-best's DreamBench scorer."""
    list_image_files(cfg.data.images)  # a missing photo folder is said before the model is looked up
    family = family_class(cfg.run.model)
    changed = [f.name for f in dataclasses.fields(cfg.family)
               if getattr(cfg.family, f.name) != getattr(FlowMatchingSettings(), f.name)]
    if changed and not issubclass(family, FlowMatchingFamily):
        raise ImprintError(f"{flag(changed[0])}: a setting of flow-matching models (SD3, FLUX); --model {cfg.run.model} "
                           f"is a {family.name} model: drop the flag")
    if cfg.data.resolution is None:
        cfg.data.resolution = family.default_resolution
        if cfg.data.buckets and cfg.data.resolution % 64:
            raise ImprintError(f"--buckets: the model's default resolution {cfg.data.resolution} is not a multiple "
                               "of 64; pass --resolution")
    run = RunFolder(cfg.run.output)
    if cfg.run.resume is None:
        run.check_new_output()
    elif run.is_finished():
        log.info("%s: the run already finished; nothing to resume", run.path)
        return run.path
    else:
        check_resume_settings(run.read_config(), cfg.to_dict(), build_config, RESUMABLE_CHANGES, run.config_path)
    subject = load_subject_images(cfg.data.images, cfg.data.resolution)
    log.info("%d subject images from %s", len(subject.images), cfg.data.images)
    captions = checked_captions(cfg, subject) if cfg.data.captions else None
    accelerator = make_accelerator(cfg.trainer.mixed_precision)
    check_can_run(cfg.trainer, accelerator.device)  # a missing package is found before the model loads
    masks = subject_masks(cfg, subject, run, accelerator.device)
    task = SubjectTask(cfg, accelerator, subject, captions, masks)
    run.create()
    run.write_config(cfg.to_dict())
    samples = Samples(task, run)
    selection = Selection(task, run, subject.images, scorer) if cfg.selection.select_best is not None else None
    task.release_frozen_parts()

    ema = fit(task, cfg.trainer, run, accelerator, resume=cfg.run.resume, desc=f"train {cfg.run.method}",
              callbacks=[c for c in (selection, samples) if c])
    if ema:
        ema.copy_to_model()
    task.refine_per_timestep()
    files = task.method.save_result(task.family, run.path)
    trained = selection.stopped_at if selection and selection.stopped_at else cfg.trainer.steps
    if cfg.samples.final_samples:
        samples.write(trained)
    summary = selection.selector.summary() if selection else None
    run.write_metadata({
        "imprint_version": imprint.__version__,
        **task.family.describe(),
        "method": cfg.run.method,
        "token": cfg.data.token,
        "class_name": cfg.data.class_name,
        "instance_prompt": task.instance_prompt,
        "steps": trained,
        "stopped_early": trained < cfg.trainer.steps,
        "files": files,
        "hyperparameters": cfg.to_dict(),  # the same values as config.json
        "result_step": summary["best_step"] if summary else trained,
        "selection": summary,
        "trainable_parameters": sum(t.numel() for t in task.trainable_state().values()),
        **task.method.metadata(),
    })
    log.info("run finished: %s", run.path)
    return run.path
