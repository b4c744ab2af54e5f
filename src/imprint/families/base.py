"""What a model family is, by role. Training, sampling, evaluation and export talk to a
family only through this interface, so SDXL, SD3 or FLUX is one new file.

Roles: the parts (denoiser, text encoders, VAE) and which of them train; prompt encoding into
a conditioning dict (SD: prompt embeddings; SDXL will add pooled embeddings and time ids,
FLUX its guidance); image encoding into latents; the objective's maths (timesteps, noise,
noisy input and target, SNR for weighting); the frozen reference prediction; the pipeline it
samples with; LoRA target names per part; the export key maps; the architecture fingerprint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from abc import ABC, abstractmethod
from pathlib import Path

import torch

from imprint.util.errors import ImprintError

# config keys that name a file or a version, not the architecture
NON_ARCHITECTURE_KEYS = {"_name_or_path", "_diffusers_version", "_class_name", "transformers_version",
                         "_commit_hash", "torch_dtype", "dtype", "architectures", "_use_default_values"}


FAMILIES: dict[str, type["Family"]] = {}

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_model(model: str, flag: str = "--model", marker: str = "model_index.json",
                  kind: str = "diffusers model folder", example: str = "stable-diffusion-v1-5/stable-diffusion-v1-5",
                  also: str = "") -> str:
    """A local model folder holding `marker` (made absolute) or a hub id; anything else is a clear
    error naming `kind` (and `also`, another accepted value)."""
    path = Path(model).expanduser()
    if path.exists():
        if not (path / marker).is_file():
            raise ImprintError(
                f"{flag} {model}: no {marker} in this folder; pass a {kind} (saved with save_pretrained) "
                f"or a hub id{also}"
            )
        return str(path.resolve())
    if HUB_ID.match(model) and not model.startswith((".", "~")):
        return model
    raise ImprintError(f"{flag} {model}: path not found; pass a local {kind} or a hub id such as {example}{also}")


@contextlib.contextmanager
def loading(model: str, flag: str = "--model"):
    """Loading errors of diffusers / transformers as one line naming the model."""
    try:
        yield
    except ImprintError:
        raise
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ImprintError(
            f"{flag} {model}: could not load the model ({first}); check the path or hub id "
            "and, for a hub id, the network or the HF cache"
        ) from e


def model_index(model: str) -> dict:
    """A model's model_index.json (a resolved local folder's, or a hub id's through the HF cache)."""
    path = Path(model) / "model_index.json"
    if not path.is_file():
        with loading(model):
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(model, "model_index.json"))
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise ImprintError(f"--model {model}: {path} is not valid JSON; not a diffusers pipeline folder") from e


def part_config(module) -> dict:
    """A part's config as a dict: a diffusers model's (a FrozenDict) or a transformers model's."""
    config = module.config
    return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def architecture_fingerprint(configs: dict[str, dict]) -> str:
    """Hash of the parts' architectures (their configs less names, versions and nested configs):
    runs are tied to it, not to a path."""
    clean = {part: {k: v for k, v in sorted(config.items()) if k not in NON_ARCHITECTURE_KEYS
                    and not isinstance(v, dict)} for part, config in configs.items()}
    return hashlib.sha256(json.dumps(clean, sort_keys=True, default=str).encode()).hexdigest()[:16]


def register_family(cls: type["Family"]) -> type["Family"]:
    FAMILIES[cls.name] = cls
    return cls


class Family(ABC):
    name = "base"
    pipeline_class_names: tuple[str, ...] = ()  # model_index.json `_class_name`s this family loads
    diffusers_pipeline = ""                      # the diffusers pipeline class it samples and saves LoRAs with
    denoiser_name = "unet"
    # the text encoders a method may train (SDXL: both CLIPs; SD3 and FLUX leave T5 frozen, as
    # the anchors do); the first one holds the tokenizer `tokenizer`
    text_encoder_names: tuple[str, ...] = ("text_encoder",)
    tokenizer_names = {"text_encoder": "tokenizer"}    # each trainable text encoder's tokenizer attribute
    embedding_file_keys: dict[str, str] | None = None  # textual inversion's file keys per encoder (SDXL)
    lora_targets: dict[str, list[str]] = {}       # PEFT target modules per trainable part
    lora_conv_targets: dict[str, list[str]] = {}  # added by --lora-targets attention+conv
    kohya_prefixes: dict[str, str] = {}           # part -> key prefix of the kohya / A1111 layout
    kohya_model_version: str | None = None        # kohya's ss_base_model_version (SD: told by the config)
    prediction_type = "epsilon"
    default_resolution = 512                      # --resolution when none is given
    ddim_editing = False                          # HiFi Tuner (its training and DDIM tools) applies

    model: str          # resolved path or hub id
    fingerprint: str    # computed once, when the parts are loaded

    def configure(self, settings) -> None:
        """The family's own training settings (flow matching: the timestep density, shift, guidance)."""

    # --- parts ---------------------------------------------------------------------------
    part_names: tuple[str, ...] = ()  # the family's networks, each an attribute of its own name

    def load_parts(self, model: str, classes: dict[str, type]) -> None:
        """Each part from its subfolder of `model` (the noise scheduler's is "scheduler"); the
        networks frozen, in eval mode."""
        self.model = resolve_model(model)
        with loading(self.model):
            for name, cls in classes.items():
                weights = {"use_safetensors": True} if issubclass(cls, torch.nn.Module) else {}
                subfolder = "scheduler" if name == "noise_scheduler" else name
                setattr(self, name, cls.from_pretrained(self.model, subfolder=subfolder, **weights))
        for part in self.modules.values():
            part.requires_grad_(False)
            part.eval()

    @property
    def modules(self) -> dict[str, torch.nn.Module]:
        """The loaded parts by name (released ones left out)."""
        return {name: getattr(self, name) for name in self.part_names if getattr(self, name, None) is not None}

    @property
    def vae_scale_factor(self) -> int:
        """Image pixels per latent pixel."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.modules[self.denoiser_name]

    @classmethod
    def parts(cls, roles: set[str]) -> list[str]:
        """Methods name what they train by role ("denoiser", "text_encoder"); these are the
        family's parts that play those roles, sorted."""
        names = {"denoiser": (cls.denoiser_name,), "text_encoder": cls.text_encoder_names}
        return sorted(part for role in roles for part in names[role])

    def to(self, device, frozen_dtype: torch.dtype, float32_roles: set[str]) -> None:
        """Frozen parts in the compute dtype (saves memory), parts trained in full stay float32."""
        float32 = set(self.parts(float32_roles))
        for name, module in self.modules.items():
            module.to(device, dtype=torch.float32 if name in float32 else frozen_dtype)

    def enable_gradient_checkpointing(self, trained_roles: set[str]) -> None:
        """Recompute activations in the backward pass of the parts that train (diffusers' and
        transformers' own switches)."""
        for part in self.parts(trained_roles):
            module = self.modules[part]
            if hasattr(module, "enable_gradient_checkpointing"):
                module.enable_gradient_checkpointing()
            else:
                module.gradient_checkpointing_enable()

    def compile_denoiser(self, mode: str) -> None:
        """torch.compile of the denoiser: "regional" compiles each repeated block (diffusers'
        compile_repeated_blocks: one compilation reused by every block, so a short start),
        "full" the whole model (the longest start, fewest graph breaks)."""
        import torch

        if mode == "regional" and getattr(self.denoiser, "_repeated_blocks", None):
            self.denoiser.compile_repeated_blocks()
        elif mode in ("regional", "full"):
            self.denoiser.compile()
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)

    cached_text_encoders: tuple[str, ...] = ()  # encoders only ever cached (T5): freed whatever trains

    def release_encoders(self, keep_text_encoder: bool) -> None:
        """Free what the caches made redundant: the VAE encoder always (sampling only decodes), the
        cached-only encoders, and the trainable text encoders when they are frozen (their outputs
        are cached). Saves ~0.6 GB on SD 1.5, T5's 9.5 GB (bf16) on FLUX."""
        import gc

        self.vae.encoder = None
        self.vae.quant_conv = None
        for name in self.cached_text_encoders + (() if keep_text_encoder else self.text_encoder_names):
            setattr(self, name, None)
        gc.collect()

    # --- conditioning --------------------------------------------------------------------
    @abstractmethod
    def tokenize(self, prompts: list[str]):
        """Prompts -> what encode_prompts takes (token ids; a dict for several encoders)."""

    @abstractmethod
    def encode_prompts(self, tokens) -> dict[str, torch.Tensor]:
        """-> the conditioning dict the denoiser takes, batch first."""

    def predicted_x0(self, noisy, prediction, timesteps) -> torch.Tensor:
        """The clean latents the model's prediction implies (for terms that look at images)."""
        raise ImprintError(f"family {self.name}: no predicted-x0 formula, which this loss term needs")

    def decode_latents(self, latents) -> torch.Tensor:
        """Latents as the denoiser sees them -> pixels in [-1, 1], differentiable."""
        raise ImprintError(f"family {self.name}: no latent decoder, which this loss term needs")

    def pooled_text_embeddings(self, tokens) -> torch.Tensor:
        """(N, D): one vector per prompt from the text encoder (CLIP: its pooled EOS output)."""
        raise ImprintError(f"family {self.name}: no pooled text encoding, which this loss term needs; "
                           "drop the term's flag for this model")

    @torch.no_grad()
    def encode_for_sampling(self, prompts: list[str]) -> list[dict[str, torch.Tensor]]:
        """Per prompt, the pipeline's encoding arguments (prompt_embeds, negative_prompt_embeds, and
        the family's others), batch 1, so sampling needs no text encoder."""
        negative = {f"negative_{key}": value for key, value in self.negative_encoding().items()}
        return [{**self.pipeline_encoding(self.tokenize([prompt])), **negative} for prompt in prompts]

    def pipeline_encoding(self, tokens) -> dict[str, torch.Tensor]:
        """Prompts' encodings under the names the family's pipeline takes them (its *_embeds
        arguments); the conditioning dict, where the family names its keys so."""
        return self.encode_prompts(tokens)

    def negative_encoding(self) -> dict[str, torch.Tensor]:
        """The negative prompt's encoding at sampling: the empty prompt's (none where guidance is embedded)."""
        return self.pipeline_encoding(self.tokenize([""]))

    # --- images and the objective ----------------------------------------------------------
    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor, batch_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixels in [-1, 1] -> the VAE posterior (mean, std), unscaled, float32 on the CPU (every family
        so far encodes with a diffusers AutoencoderKL, `self.vae`)."""
        means, stds = [], []
        for chunk in pixels.split(batch_size):
            dist = self.vae.encode(chunk.to(self.vae.device, self.vae.dtype)).latent_dist
            means.append(dist.mean.float().cpu())
            stds.append(dist.std.float().cpu())
        return torch.cat(means), torch.cat(stds)

    @abstractmethod
    def sample_latents(self, mean, std, generator: torch.Generator) -> torch.Tensor: ...

    @abstractmethod
    def sample_timesteps(self, n: int, generator: torch.Generator, latent_shape=None) -> torch.Tensor:
        """n timesteps for latents of `latent_shape` (a resolution-dependent shift reads it)."""

    @abstractmethod
    def noisy_input_and_target(self, latents, noise, timesteps) -> tuple[torch.Tensor, torch.Tensor]: ...

    @abstractmethod
    def snr(self, timesteps: torch.Tensor) -> torch.Tensor:
        """Signal-to-noise ratio per timestep (for loss weighting)."""

    @abstractmethod
    def predict(self, noisy, timesteps, conditioning: dict[str, torch.Tensor]) -> torch.Tensor: ...

    @contextlib.contextmanager
    def adapters_disabled(self):
        """The base model's behaviour: every PEFT adapter of every part switched off."""
        switched = []
        for module in self.modules.values():
            if getattr(module, "peft_config", None):
                module.disable_adapters()
                switched.append(module)
        # imprint's own adapter layers (methods/layers.py) carry this flag; a family imports no method
        own = [m for part in self.modules.values() for m in part.modules()
               if getattr(m, "imprint_adapter", False) and m.adapter_enabled]
        for layer in own:
            layer.adapter_enabled = False
        try:
            yield bool(switched or own)
        finally:
            for module in switched:
                module.enable_adapters()
            for layer in own:
                layer.adapter_enabled = True

    def reference_prediction(self, noisy, timesteps, conditioning) -> torch.Tensor:
        """The frozen model's prediction (adapters off) for the same input."""
        with self.adapters_disabled() as any_adapter:
            if not any_adapter:
                raise ImprintError("this loss term needs the frozen model's prediction, which an adapter "
                                   "method gives (adapters off); use --method lora")
            return self.predict(noisy, timesteps, conditioning)

    # --- sampling, loading, files ------------------------------------------------------------
    fingerprint_parts: tuple[str, ...] = ()     # the parts whose architecture ties a run to a base model
    sampling_scheduler = "DPMSolverMultistepScheduler"  # what samples during training (from the train config)

    def pipeline_options(self) -> dict:
        """Arguments of the pipeline's constructor beyond its parts and scheduler."""
        return {}

    def pipeline(self):
        """A diffusers pipeline over the live parts (sampling with what is being trained)."""
        import inspect

        import diffusers

        cls = self.pipeline_class()
        wanted = inspect.signature(cls.__init__).parameters
        parts = {name: getattr(self, name) for name in wanted if name not in ("self", "scheduler")
                 and hasattr(self, name)}
        scheduler = getattr(diffusers, self.sampling_scheduler).from_config(self.noise_scheduler.config)
        pipe = cls(**parts, scheduler=scheduler, **self.pipeline_options())
        pipe.set_progress_bar_config(disable=True)
        return pipe

    load_options: dict = {}  # from_pretrained arguments of the family's pipeline (SD: no safety checker)

    @classmethod
    def load_pipeline(cls, model: str, dtype: torch.dtype = torch.float32):
        """The base model as the family's diffusers pipeline (generate, evaluate, class images)."""
        model = resolve_model(model)
        with loading(model):
            pipe = cls.pipeline_class().from_pretrained(model, torch_dtype=dtype, use_safetensors=True,
                                                        **cls.load_options)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @classmethod
    def parts_fingerprint(cls, owner) -> str:
        """The architecture fingerprint of `owner`'s parts (a family or a loaded pipeline)."""
        return architecture_fingerprint({name: part_config(getattr(owner, name)) for name in cls.fingerprint_parts})

    @classmethod
    def pipeline_fingerprint(cls, pipe) -> str:
        """The fingerprint of a loaded pipeline's architecture (must equal `fingerprint`)."""
        return cls.parts_fingerprint(pipe)

    @classmethod
    def pipeline_class(cls):
        """The diffusers pipeline class of the family."""
        import diffusers

        return getattr(diffusers, cls.diffusers_pipeline)

    @classmethod
    def save_lora(cls, folder: Path, layers: dict[str, dict], adapter_configs: dict[str, dict]) -> None:
        """The LoRA file the family's diffusers pipeline loads with load_lora_weights: its
        save_lora_weights takes `<part>_lora_layers` and `<part>_lora_adapter_metadata` per part."""
        arguments = {}
        for part, tensors in layers.items():
            arguments[f"{part}_lora_layers"] = tensors
            arguments[f"{part}_lora_adapter_metadata"] = adapter_configs.get(part)
        cls.pipeline_class().save_lora_weights(folder, **arguments)

    @classmethod
    def kohya_module_name(cls, part: str, module_path: str) -> str:
        """A module's name in the kohya / A1111 / ComfyUI layout. Kohya names a (CLIP) text encoder's
        modules from CLIPTextModel's tree, which has a `text_model.` level that transformers 5's LoRA
        keys leave out; ComfyUI / A1111 look for it."""
        if part.startswith("text_encoder") and not module_path.startswith("text_model."):
            module_path = "text_model." + module_path
        return cls.kohya_prefixes[part] + module_path.replace(".", "_")

    def describe(self) -> dict:
        """What metadata.json records about the base model (and the export header reads)."""
        return {"family": self.name, "base_model": self.model, "base_model_fingerprint": self.fingerprint}
