"""The one training loop: every method, every family.

Frozen parts are used once, up front, to cache what they would compute every step (VAE
latents, prompt embeddings), so a step runs only the denoiser and what is trained.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

import imprint
from imprint.config import TrainConfig
from imprint.data.images import images_to_tensor, load_image_file, load_subject_images
from imprint.data.prior import ensure_class_images
from imprint.errors import ImprintError
from imprint.families import load_family
from imprint.methods import METHODS
from imprint.train import checkpoint as ckpt
from imprint.train.sampling import sample, save_grid
from imprint.train.selection import CheckpointSelector

log = logging.getLogger("imprint")

DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# keys that may change when a run is resumed; any other change is a different run
RESUMABLE_CHANGES = {"resume", "steps", "checkpoint_every", "keep_checkpoints", "sample_every",
                     "sample_prompt", "sample_inference_steps", "final_samples"}


def step_generator(seed: int, stream: int, index: int) -> torch.Generator:
    """Every random draw comes from (seed, stream, index): resuming at a step needs no RNG state."""
    return torch.Generator("cpu").manual_seed((seed * 1_000_003 + stream * 7_919 + index) % 2**63)


def batch_indices(seed: int, stream: int, step: int, batch_size: int, n: int) -> list[int]:
    """The items of `step`: epochs walk seeded permutations of the n items."""
    out = []
    for position in range(step * batch_size, (step + 1) * batch_size):
        epoch, offset = divmod(position, n)
        order = torch.randperm(n, generator=step_generator(seed, stream, epoch))
        out.append(int(order[offset]))
    return out


def _test_kill(where: str, step: int) -> None:
    # IMPRINT_TEST_KILL="step:5" or "checkpoint:4" SIGKILLs the process there (resume tests)
    if os.environ.get("IMPRINT_TEST_KILL") == f"{where}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


def make_accelerator(mixed_precision: str):
    from accelerate import Accelerator

    if mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ImprintError("--mixed-precision fp16 needs a CUDA GPU (the CPU lacks fp16 kernels); "
                           "use bf16 or no")
    from accelerate.state import AcceleratorState

    try:
        return Accelerator(mixed_precision=mixed_precision)
    except ValueError as e:
        if "already been initialized" in str(e):
            # a second run in one process (a notebook, the tests) with another precision:
            # accelerate keeps one global state, so start it afresh
            AcceleratorState._reset_state(reset_partial_state=True)
            return Accelerator(mixed_precision=mixed_precision)
        raise ImprintError(
            f"--mixed-precision {mixed_precision}: not available on this machine ({e}); "
            "use bf16 or no"
        ) from e
    except RuntimeError as e:
        raise ImprintError(
            f"--mixed-precision {mixed_precision}: not available on this machine ({e}); "
            "use bf16 or no"
        ) from e


def check_output(cfg: TrainConfig, output: Path) -> None:
    """Never overwrite a run: a folder with a run in it needs --resume."""
    saved = output / "config.json"
    if cfg.resume is None:
        if (output / "metadata.json").exists():
            raise ImprintError(f"--output {output}: already holds a finished run; choose another folder")
        if saved.exists() or ckpt.list_checkpoints(output):
            raise ImprintError(
                f"--output {output}: holds an unfinished run; pass --resume to continue it "
                "or choose another folder"
            )
        return
    if saved.exists():
        with open(saved) as f:
            before = json.load(f)
        now = cfg.to_dict()
        defaults = TrainConfig().to_dict()  # a key added since the run started had its default
        changed = sorted(k for k in now if k not in RESUMABLE_CHANGES and before.get(k, defaults[k]) != now[k])
        if changed:
            raise ImprintError(
                f"--resume: this run was started with other settings ({', '.join(changed)}); "
                f"use the same settings as {saved} or a new --output"
            )


def batch_conditioning(family, prompts: list[str], cache: bool):
    """The prompt of every batch row, the same every step: token ids (encoded each step when
    the text encoder trains) or, when it is frozen, its embeddings, computed once."""
    ids = family.tokenize(prompts)
    if not cache:
        return ids, None
    with torch.no_grad():
        return ids, family.encode_prompts(ids)


def make_selector(cfg: TrainConfig, family, pipe_prompt, subject_images, cache_text: bool, scorer=None):
    """The checkpoint selector of --select-best, scoring on the backend's first prompts."""
    if cfg.select_best is None:
        return None
    if scorer is None:
        from imprint.evaluate.prompts import remove_identifier
        from imprint.evaluate.run import make_backend
        from imprint.train.selection import backend_scorer

        backend = make_backend(cfg.metrics, dino_model=cfg.dino_model, clip_model=cfg.clip_model,
                               device=str(family.unet.device))
        prompts = backend.default_prompts(cfg.token, cfg.class_name)[:cfg.select_prompts]
        pipe_prompts = [pipe_prompt(p) for p in prompts]
        embeds = None
        if cache_text:
            with torch.no_grad():
                embeds = family.encode_for_sampling(pipe_prompts)
        scorer = backend_scorer(backend, subject_images, pipe_prompts,
                                [remove_identifier(p, cfg.token) for p in prompts], cfg.resolution,
                                cfg.sample_inference_steps, cfg.seed, prompt_embeds=embeds)
    return CheckpointSelector(cfg.select_best, scorer)


def train(cfg: TrainConfig, scorer=None) -> Path:
    """Train a run; `scorer` (pipeline -> (I, T)) replaces --select-best's DreamBench scorer."""
    output = Path(cfg.output)
    check_output(cfg, output)
    if cfg.resume is not None and (output / "metadata.json").exists():
        log.info("%s: the run already finished; nothing to resume", output)
        return output
    subject = load_subject_images(cfg.images, cfg.resolution)
    log.info("%d subject images from %s", len(subject.images), cfg.images)
    accelerator = make_accelerator(cfg.mixed_precision)
    device, frozen_dtype = accelerator.device, DTYPES[cfg.mixed_precision]

    family = load_family(cfg.model)
    method = METHODS[cfg.method](cfg)
    trained = method.trained_parts()
    family.to(device, frozen_dtype, method.float32_parts())

    output.mkdir(parents=True, exist_ok=True)
    if not (output / "config.json").exists():
        ckpt.write_json_atomic(output / "config.json", cfg.to_dict())

    # --- caches: everything the frozen parts compute, once -------------------------------
    instance_mean, instance_std = family.encode_images(images_to_tensor(subject.images))
    class_mean = class_std = None
    if cfg.prior_preservation:
        class_prompt = cfg.fill(cfg.class_prompt)
        with accelerator.autocast():
            class_paths = ensure_class_images(
                cfg.class_images, cfg.num_class_images, family.model, class_prompt, cfg.resolution,
                cfg.seed, cfg.class_inference_steps, family.pipeline)
        class_pixels = images_to_tensor([load_image_file(p, cfg.resolution) for p in class_paths])
        class_mean, class_std = family.encode_images(class_pixels)

    torch.manual_seed(cfg.seed)  # adapter initialisation draws from the global generator
    params = method.prepare(family)
    token_text = method.prompt_token()
    instance_prompt = cfg.instance_prompt.format(token=token_text, class_name=cfg.class_name)
    cache_text = "text_encoder" not in trained
    # instance rows first, class rows after them: the loss splits the batch in these halves
    row_prompts = [instance_prompt] * cfg.batch_size
    if cfg.prior_preservation:
        row_prompts += [class_prompt] * cfg.batch_size
    batch_ids, batch_embeds = batch_conditioning(family, row_prompts, cache_text)
    if batch_embeds is not None:
        batch_embeds = batch_embeds.to(device, frozen_dtype)
    prompt_metadata = {"token": cfg.token, **method.metadata()}

    def pipe_prompt(text: str) -> str:
        return method.rewrite_prompt(text, prompt_metadata)

    sample_prompts = [pipe_prompt(cfg.fill(p)) for p in (cfg.sample_prompt or [cfg.instance_prompt])]
    sample_embeds = None
    if cache_text:
        with torch.no_grad():
            sample_embeds = family.encode_for_sampling(sample_prompts)
    selector = make_selector(cfg, family, pipe_prompt, subject.images, cache_text, scorer)
    family.release_encoders(keep_text_encoder=not cache_text)
    if cfg.gradient_checkpointing:
        family.enable_gradient_checkpointing(trained)

    # --- optimiser, schedule, resume ------------------------------------------------------
    from diffusers.optimization import get_scheduler

    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8,
                                  weight_decay=cfg.weight_decay)
    lr_scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps,
                                 num_training_steps=cfg.steps)
    optimizer = accelerator.prepare_optimizer(optimizer)
    start_step = 0
    if cfg.resume is not None:
        found = ckpt.find_resume_checkpoint(output, cfg.resume)
        if found is None:
            log.info("no checkpoint in %s yet; starting from step 0", output)
        else:
            state, trainable, optimizer_state = ckpt.load_checkpoint(found)
            method.load_trainable_state_dict(family, trainable)
            optimizer.load_state_dict(optimizer_state)
            lr_scheduler.load_state_dict(state["lr_scheduler"])
            start_step = state["step"]
            log.info("resumed from %s (step %d)", found, start_step)
    if selector and (output / "selection.json").exists():
        with open(output / "selection.json") as f:
            scores = json.load(f)["scores"]
        selector.restore({k: v for k, v in scores.items() if int(k) <= start_step})

    def write_samples(step: int) -> None:
        with accelerator.autocast():  # parts in mixed dtypes (bf16 base, float32 adapters)
            images = sample(family.pipeline(), sample_prompts, cfg.resolution, cfg.seed,
                            cfg.sample_inference_steps, images_per_prompt=2, prompt_embeds=sample_embeds)
        save_grid(images, output / "samples" / f"step-{step:06d}.png", cols=2)

    def score_checkpoint(step: int) -> None:
        if selector:
            with accelerator.autocast():
                selector.score(step, family.pipeline())
            ckpt.write_json_atomic(output / "selection.json", selector.summary())

    def write_checkpoint(step: int) -> None:
        score_checkpoint(step)
        protect = {selector.best_step()} if selector else set()
        ckpt.save_checkpoint(
            output, step, method.trainable_state_dict(family), optimizer.state_dict(),
            lr_scheduler.state_dict(), {"imprint_version": imprint.__version__},
            cfg.keep_checkpoints, before_rename=lambda: _test_kill("checkpoint", step),
            protect=protect)

    # --- the loop ------------------------------------------------------------------------
    n_instance = instance_mean.shape[0]
    bar = tqdm(total=cfg.steps, initial=start_step, desc=f"train {cfg.method}", unit="step",
               dynamic_ncols=True, disable=None)
    log_file = open(output / "log.jsonl", "a")
    started = time.time()
    for step in range(start_step, cfg.steps):
        generator = step_generator(cfg.seed, 0, step)
        idx = batch_indices(cfg.seed, 1, step, cfg.batch_size, n_instance)
        latents = family.sample_latents(instance_mean[idx], instance_std[idx], generator)
        if cfg.prior_preservation:
            cidx = batch_indices(cfg.seed, 2, step, cfg.batch_size, class_mean.shape[0])
            latents = torch.cat([latents, family.sample_latents(class_mean[cidx], class_std[cidx], generator)])
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = family.sample_timesteps(latents.shape[0], generator)
        noisy, target = family.noisy_input_and_target(latents, noise, timesteps)

        with accelerator.autocast():
            embeds = batch_embeds if cache_text else family.encode_prompts(batch_ids).to(frozen_dtype)
            prediction = family.predict(noisy.to(device, frozen_dtype), timesteps.to(device), embeds)
        errors = F.mse_loss(prediction.float(), target.to(device).float(), reduction="none")
        errors = errors.mean(dim=list(range(1, errors.ndim)))
        if cfg.prior_preservation:
            instance_loss, prior_loss = errors.chunk(2)
            loss = instance_loss.mean() + cfg.prior_loss_weight * prior_loss.mean()
        else:
            loss = errors.mean()
        accelerator.backward(loss)
        if cfg.max_grad_norm > 0:
            accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        method.after_optimizer_step(family)

        done = step + 1
        loss_value = loss.item()
        if loss_value != loss_value:
            raise ImprintError(
                f"loss became NaN at step {done}; lower --lr or use --mixed-precision bf16/no "
                f"(checkpoints so far are kept in {output / 'checkpoints'})"
            )
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr_scheduler.get_last_lr()[0]:.2e}")
        log_file.write(json.dumps({"step": done, "loss": loss_value,
                                   "lr": lr_scheduler.get_last_lr()[0], "time": time.time()}) + "\n")
        log_file.flush()
        if bar.disable and (done % max(1, cfg.steps // 10) == 0 or done == cfg.steps):
            elapsed = time.time() - started  # no terminal, no bar: a log line per 10%
            rate = (done - start_step) / max(elapsed, 1e-9)
            log.info("step %d/%d  loss %.4f  %.2f it/s  ETA %.0f s", done, cfg.steps, loss_value,
                     rate, (cfg.steps - done) / max(rate, 1e-9))
        _test_kill("step", done)
        if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.steps:
            write_checkpoint(done)
        if cfg.sample_every and done % cfg.sample_every == 0 and done < cfg.steps:
            write_samples(done)
    bar.close()
    log_file.close()

    # --- result ---------------------------------------------------------------------------
    selection = None
    if selector:
        score_checkpoint(cfg.steps)
        best = selector.best_step()
        if best != cfg.steps:
            _, trainable, _ = ckpt.load_checkpoint(output / "checkpoints" / f"{ckpt.PREFIX}{best}")
            method.load_trainable_state_dict(family, trainable)
            log.info("best checkpoint: step %d (reward %.4f); it is the run's result",
                     best, selector.scores[best]["reward"])
        selection = selector.summary()
    files = method.save_result(family, output)
    if cfg.final_samples:
        write_samples(cfg.steps)
    metadata = {
        "imprint_version": imprint.__version__,
        "family": family.name,
        "base_model": family.model,
        "base_model_fingerprint": family.fingerprint,
        "method": cfg.method,
        "token": cfg.token,
        "class_name": cfg.class_name,
        "instance_prompt": instance_prompt,
        "steps": cfg.steps,
        "files": files,
        "hyperparameters": {**cfg.to_dict(), "alpha": cfg.resolved_alpha()},
        "result_step": selection["best_step"] if selection else cfg.steps,
        "selection": selection,
        "trainable_parameters": sum(t.numel() for t in method.trainable_state_dict(family).values()),
        **method.metadata(),
    }
    ckpt.write_json_atomic(output / "metadata.json", metadata)
    log.info("run finished: %s", output)
    return output
