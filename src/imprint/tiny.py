"""Build Stable Diffusion models from configs alone (random weights), saved as diffusers folders.

Used by the tests and benchmarks, and by `imprint demo` until the toy-world model ships: the
folders load through the same `--model` path as a hub model. The tokenizer is a byte-level
CLIP BPE vocabulary with no merges, so it needs no download and tokenizes any text.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import torch


def _bytes_to_unicode() -> dict[int, str]:
    # the reversible byte -> printable character map of GPT-2 / CLIP BPE
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def _bpe(pieces: list[str], merges: list[tuple[str, str]]) -> list[str]:
    """CLIP's BPE on one word: merge the lowest-ranked adjacent pair until none applies."""
    rank = {pair: i for i, pair in enumerate(merges)}
    while len(pieces) > 1:
        best, i = min((rank.get(pair, math.inf), i) for i, pair in enumerate(zip(pieces, pieces[1:])))
        if best == math.inf:
            break
        pieces = pieces[:i] + [pieces[i] + pieces[i + 1]] + pieces[i + 2:]
    return pieces


def build_tokenizer(folder: Path, max_length: int = 77, words: list[str] = ()):
    """Byte-level CLIP BPE; each of `words` becomes one token (merges spell it left to right)."""
    from transformers import CLIPTokenizer

    symbols = list(_bytes_to_unicode().values())
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols])}
    merges: list[tuple[str, str]] = []
    for word in words:
        # run BPE with the merges so far, then add the merges that finish this word; later
        # merges rank after every earlier word's, so they never change an earlier word
        pieces = _bpe(list(word[:-1]) + [word[-1] + "</w>"], merges)
        while len(pieces) > 1:
            merges.append((pieces[0], pieces[1]))
            vocab.setdefault(pieces[0] + pieces[1], len(vocab))
            pieces = [pieces[0] + pieces[1]] + pieces[2:]
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                         model_max_length=max_length, pad_token="<|endoftext|>")


SIZES = {
    # a UNet/VAE/text encoder of a few hundred thousand parameters: CI-sized
    "tiny": dict(unet_channels=(32, 64), layers_per_block=1, cross_dim=32, heads=2, te_layers=2,
                 te_hidden=32, te_ff=64, vae_channels=(32, 64), vocab=None),
    # the Stable Diffusion 1.5 architecture (860M UNet, 123M text encoder, 84M VAE)
    "sd15": dict(unet_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_dim=768, heads=8,
                 te_layers=12, te_hidden=768, te_ff=3072, vae_channels=(128, 256, 512, 512),
                 vocab=49408),
}


@torch.no_grad()
def _calibrate_vae(vae) -> None:
    """Make the random VAE behave like a trained one: a narrow posterior (a trained SD VAE's
    std is ~1e-2 of its mean's spread) and a scaling factor that gives unit-variance latents,
    so that a latent carries the image rather than noise."""
    channels = vae.config.latent_channels
    vae.quant_conv.bias[channels:] = -10.0  # log-variance: std = exp(-5) ~ 0.007
    g = torch.Generator().manual_seed(0)
    size = min(vae.config.sample_size, 64)
    ramps = torch.linspace(-1, 1, size)
    images = torch.stack([
        torch.stack([ramps.view(1, -1).expand(size, size), ramps.view(-1, 1).expand(size, size),
                     torch.full((size, size), float(c))]) for c in torch.linspace(-1, 1, 8)])
    images = (images + 0.3 * torch.randn(images.shape, generator=g)).clamp(-1, 1)
    spread = vae.encode(images).latent_dist.mean.std().item()
    vae.register_to_config(scaling_factor=1.0 / spread)


def build_sd_pipeline(size: str = "tiny", seed: int = 0, **overrides):
    from diffusers import (AutoencoderKL, PNDMScheduler, StableDiffusionPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel

    s = {**SIZES[size], **overrides}
    torch.manual_seed(seed)
    n = len(s["unet_channels"])
    unet = UNet2DConditionModel(
        block_out_channels=s["unet_channels"], layers_per_block=s["layers_per_block"],
        sample_size=64 if size == "sd15" else 16, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",) if size == "sd15"
        else ("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1) if size == "sd15"
        else ("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=s["cross_dim"], attention_head_dim=s["heads"],
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        block_out_channels=s["vae_channels"], in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * len(s["vae_channels"]),
        up_block_types=("UpDecoderBlock2D",) * len(s["vae_channels"]),
        layers_per_block=2 if size == "sd15" else 1, sample_size=512 if size == "sd15" else 32,
        norm_num_groups=32,
    )
    _calibrate_vae(vae)
    tokenizer = saved_tokenizer()
    text_config = CLIPTextConfig(
        vocab_size=s["vocab"] or len(tokenizer), hidden_size=s["te_hidden"],
        intermediate_size=s["te_ff"], num_hidden_layers=s["te_layers"],
        num_attention_heads=max(1, s["te_hidden"] // 64) if size == "sd15" else 4,
        max_position_embeddings=77, bos_token_id=tokenizer.convert_tokens_to_ids("<|startoftext|>"),
        eos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        projection_dim=s["te_hidden"],
    )
    text_encoder = CLIPTextModel(text_config)
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, skip_prk_steps=True,
                              set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def clip_text_encoder(tokenizer, hidden: int, layers: int, heads: int, ff: int, vocab: int | None = None,
                      with_projection: bool = False, seed: int = 0):
    """A CLIP text encoder over `tokenizer` (random weights); `vocab` larger than the tokenizer's gives
    a real model's embedding table (ids past the tokenizer's are never used)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=vocab or len(tokenizer), hidden_size=hidden, intermediate_size=ff, num_hidden_layers=layers,
        num_attention_heads=heads, max_position_embeddings=77, projection_dim=hidden,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|startoftext|>"),
        eos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"))
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def tiny_clip_text_encoder(tokenizer, hidden: int, with_projection: bool = False, layers: int = 2, seed: int = 0):
    """A CLIP text encoder of a few thousand parameters over `tokenizer` (random weights)."""
    return clip_text_encoder(tokenizer, hidden, layers, 4, 2 * hidden, with_projection=with_projection, seed=seed)


def saved_tokenizer(max_length: int = 77):
    """The byte-level CLIP tokenizer, saved and loaded back (as a pipeline holds it)."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        build_tokenizer(Path(tmp) / "tokenizer", max_length).save_pretrained(Path(tmp) / "saved")
        return CLIPTokenizer.from_pretrained(Path(tmp) / "saved")


def tiny_vae(latent_channels: int = 4, seed: int = 0, **extra):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=latent_channels,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        layers_per_block=1, sample_size=32, norm_num_groups=32, **extra)
    _calibrate_vae(vae)
    return vae


def build_sdxl_pipeline(seed: int = 0, size: str = "tiny"):
    """An SDXL with random weights: "tiny", the architecture of diffusers' own SDXL tests (two CLIP
    text encoders, the second with a projection, text-time added conditioning), or "sdxl", SDXL
    base 1.0's (2.6B UNet, CLIP ViT-L and OpenCLIP ViT-bigG, the SD VAE)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    full = size == "sdxl"
    tokenizer, tokenizer_2 = saved_tokenizer(), saved_tokenizer()
    if full:
        text_encoder = clip_text_encoder(tokenizer, 768, 12, 12, 3072, 49408, seed=seed)
        text_encoder_2 = clip_text_encoder(tokenizer_2, 1280, 32, 20, 5120, 49408, with_projection=True, seed=seed + 1)
    else:
        text_encoder = tiny_clip_text_encoder(tokenizer, 32, seed=seed)
        text_encoder_2 = tiny_clip_text_encoder(tokenizer_2, 32, with_projection=True, seed=seed + 1)
    torch.manual_seed(seed)
    if full:
        unet = UNet2DConditionModel(
            block_out_channels=(320, 640, 1280), layers_per_block=2, sample_size=128, in_channels=4, out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(5, 10, 20),
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
            transformer_layers_per_block=(1, 2, 10), projection_class_embeddings_input_dim=2816,
            cross_attention_dim=2048)
        vae = build_sd_pipeline("sd15", seed).vae
        vae.register_to_config(scaling_factor=0.13025)
    else:
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
            addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
            projection_class_embeddings_input_dim=6 * 8 + 32,  # six time ids of width 8, then the pooled text
            cross_attention_dim=64, norm_num_groups=32)
        vae = tiny_vae(seed=seed)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       num_train_timesteps=1000, steps_offset=1, timestep_spacing="leading")
    return StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler)


def tiny_t5_tokenizer():
    """A T5 tokenizer (Unigram over printable ASCII, one token per character) that needs no download."""
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)] + [(chr(c), -1.0) for c in range(32, 127)]
    with tempfile.TemporaryDirectory() as tmp:
        T5TokenizerFast(vocab=vocab, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                        extra_ids=0).save_pretrained(tmp)
        return T5TokenizerFast.from_pretrained(tmp)


def tiny_t5_encoder(tokenizer, width: int = 32, seed: int = 0):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    return T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=width, d_kv=8, d_ff=2 * width, num_layers=2,
                                   num_heads=4, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))


def build_flux_pipeline(seed: int = 0, guidance_embeds: bool = True, max_sequence_length: int = 16,
                        size: str = "tiny", fill: bool = False):
    """A FLUX.1 with random weights: "tiny", the shape of diffusers' FLUX tests (one double and one
    single block, a 16-channel VAE, CLIP + T5), or "flux-dev", FLUX.1-dev's (12B transformer, T5-XXL,
    CLIP ViT-L; build it under torch.set_default_dtype(torch.bfloat16): 34 GB). The scheduler is
    the FLUX.1-dev config's (dynamic shifting). `fill`: a tiny FLUX.1 Fill (FluxFillPipeline): the
    transformer also takes the masked image's latents and the mask, packed."""
    from diffusers import (AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxFillPipeline, FluxPipeline,
                           FluxTransformer2DModel)
    from transformers import T5Config, T5EncoderModel

    tokenizer, tokenizer_2 = saved_tokenizer(), tiny_t5_tokenizer()
    if size == "flux-dev":
        tokenizer_2.model_max_length = 512
        text_encoder = clip_text_encoder(tokenizer, 768, 12, 12, 3072, 49408, seed=seed)
        torch.manual_seed(seed + 1)
        text_encoder_2 = T5EncoderModel(T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24,
                                                 num_heads=64, feed_forward_proj="gated-gelu", pad_token_id=0,
                                                 eos_token_id=1, decoder_start_token_id=0))
        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(guidance_embeds=True)  # diffusers' defaults are FLUX.1's sizes
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), in_channels=3, out_channels=3, latent_channels=16,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            layers_per_block=2, sample_size=1024, scaling_factor=0.3611, shift_factor=0.1159,
                            use_quant_conv=False, use_post_quant_conv=False)
    else:
        tokenizer_2.model_max_length = max_sequence_length
        text_encoder = tiny_clip_text_encoder(tokenizer, 32, seed=seed)
        text_encoder_2 = tiny_t5_encoder(tokenizer_2, 32, seed=seed + 1)
        torch.manual_seed(seed)
        # Fill: packed latents (16 x 4), the masked image's (16 x 4) and the mask (vae factor 2: 2 x 2 x 4)
        transformer = FluxTransformer2DModel(patch_size=1, in_channels=16 * 4 + (16 * 4 + 4 * 4 if fill else 0),
                                             out_channels=16 * 4, num_layers=1, num_single_layers=1,
                                             attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                             pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
                                             guidance_embeds=guidance_embeds)
        vae = tiny_vae(latent_channels=16, seed=seed, shift_factor=0.1)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                                                base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                                                max_image_seq_len=4096)
    return (FluxFillPipeline if fill else FluxPipeline)(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2, transformer=transformer)


def build_sd3_pipeline(seed: int = 0, max_sequence_length: int = 16):
    """A tiny SD3 (the shape of diffusers' SD3 tests: one joint block; two CLIPs with projections,
    their hidden states 32 + 32 wide, padded to T5's 64)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    tokenizer, tokenizer_2, tokenizer_3 = saved_tokenizer(), saved_tokenizer(), tiny_t5_tokenizer()
    tokenizer_3.model_max_length = max_sequence_length
    text_encoder = tiny_clip_text_encoder(tokenizer, 32, with_projection=True, seed=seed)
    text_encoder_2 = tiny_clip_text_encoder(tokenizer_2, 32, with_projection=True, seed=seed + 1)
    text_encoder_3 = tiny_t5_encoder(tokenizer_3, 64, seed=seed + 2)
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(sample_size=16, patch_size=1, in_channels=16, out_channels=16, num_layers=1,
                                        attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
                                        joint_attention_dim=64, pooled_projection_dim=64)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    return StableDiffusion3Pipeline(scheduler=scheduler, vae=tiny_vae(latent_channels=16, seed=seed, shift_factor=0.1),
                                    text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2,
                                    tokenizer_2=tokenizer_2, text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3,
                                    transformer=transformer)


def save_pipeline(pipe, folder: str | Path) -> Path:
    folder = Path(folder)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def warm_up_denoiser(pipe, steps: int, batch_size: int = 16, seed: int = 0) -> list[float]:
    """Train the UNet briefly to denoise random rectangles on flat backgrounds.

    A UNet with random weights cannot denoise at all, so a personalisation run on it has
    nothing to build on; a few dozen steps of this make it a (poor) generic denoiser, which
    is what tests of learning need. Returns the losses.
    """
    from diffusers import DDPMScheduler

    g = torch.Generator().manual_seed(seed)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    size = pipe.vae.config.sample_size
    ids = pipe.tokenizer(["a photo"], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         return_tensors="pt").input_ids
    with torch.no_grad():
        cond = pipe.text_encoder(ids)[0].expand(batch_size, -1, -1)
    unet = pipe.unet
    unet.train()
    unet.requires_grad_(True)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    losses = []
    for _ in range(steps):
        pixels = (torch.rand(batch_size, 3, 1, 1, generator=g) * 2 - 1).expand(-1, -1, size, size).clone()
        for image in pixels:
            x, y = torch.randint(0, size // 2, (2,), generator=g).tolist()
            image[:, y:y + size // 3, x:x + size // 3] = torch.rand(3, 1, 1, generator=g) * 2 - 1
        with torch.no_grad():
            latents = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=g)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=g)
        prediction = unet(scheduler.add_noise(latents, noise, t), t, cond).sample
        loss = torch.nn.functional.mse_loss(prediction, noise)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    unet.requires_grad_(False)
    unet.eval()
    return losses


def save_sd_model(folder: str | Path, size: str = "tiny", seed: int = 0, warm_up_steps: int = 0,
                  **overrides) -> Path:
    folder = Path(folder)
    pipe = build_sd_pipeline(size, seed, **overrides)
    if warm_up_steps:
        warm_up_denoiser(pipe, warm_up_steps, seed=seed)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def build_clipseg(seed: int = 0, image_size: int = 32, patch_size: int = 8, width: int = 32, vision_layers: int = 2,
                  reduce_dim: int = 16):
    """A CLIPSeg segmenter with random weights and its processor (a byte-level tokenizer that spells
    any prompt): the tests' tiny one, or the toy world's segmenter before its training."""
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation, CLIPSegProcessor, ViTImageProcessor

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = build_tokenizer(Path(scratch), max_length=16)
    config = CLIPSegConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width,
                         num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=16,
                         bos_token_id=len(tokenizer) - 2, eos_token_id=len(tokenizer) - 1,
                         pad_token_id=len(tokenizer) - 1),
        vision_config=dict(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=vision_layers,
                           num_attention_heads=2, image_size=image_size, patch_size=patch_size),
        projection_dim=width, extract_layers=list(range(vision_layers)), reduce_dim=reduce_dim,
        decoder_num_attention_heads=2, decoder_intermediate_size=2 * reduce_dim)
    image_processor = ViTImageProcessor(size={"height": image_size, "width": image_size},
                                        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    return CLIPSegProcessor(image_processor=image_processor, tokenizer=tokenizer), CLIPSegForImageSegmentation(config)


def save_clipseg_model(folder: str | Path, seed: int = 0, image_size: int = 32) -> Path:
    """The tiny CLIPSeg (a few hundred thousand parameters), saved where `--auto-mask-model` loads
    it as it loads CIDAS/clipseg-rd64-refined."""
    folder = Path(folder)
    processor, network = build_clipseg(seed, image_size)
    network.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
    return folder


def save_blip_model(folder: str | Path, seed: int = 0, image_size: int = 32) -> Path:
    """A BLIP image-text retrieval model with random weights and its processor, saved where
    `imprint evaluate --blip-model` loads it as it loads Salesforce/blip-itm-large-coco."""
    from transformers import (BertTokenizer, BlipConfig, BlipForImageTextRetrieval, BlipImageProcessor,
                              BlipProcessor)

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    with tempfile.TemporaryDirectory() as scratch:
        vocab = Path(scratch) / "vocab.txt"
        vocab.write_text("\n".join(words) + "\n")
        tokenizer = BertTokenizer(str(vocab))
    config = BlipConfig(
        text_config=dict(vocab_size=len(words), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=64, encoder_hidden_size=32),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=8),
        projection_dim=16, image_text_hidden_size=16)
    BlipForImageTextRetrieval(config).save_pretrained(folder, safe_serialization=True)
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": image_size, "width": image_size}),
                  tokenizer=tokenizer).save_pretrained(folder)
    return folder


def save_clip_vision_model(folder: str | Path, seed: int = 0, projection_dim: int = 16, image_size: int = 32) -> Path:
    """A CLIP vision tower with its projection (random weights) and image processor, saved where a
    CLIP vision model id (DisenBooth's --disenbooth-image-encoder) loads it as it loads the hub's."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    folder = Path(folder)
    torch.manual_seed(seed)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=image_size, patch_size=8, projection_dim=projection_dim)
    CLIPVisionModelWithProjection(config).save_pretrained(folder, safe_serialization=True)
    CLIPImageProcessor(size={"shortest_edge": image_size},
                       crop_size={"height": image_size, "width": image_size}).save_pretrained(folder)
    return folder


CHATML_TEMPLATE = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
                   "+ '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
                   "{% endif %}")


def tiny_chat_tokenizer():
    """A byte-level tokenizer (one token per byte, no merges) with ChatML's special tokens and
    template, as SmolLM2's: a chat tokenizer that needs no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {char: i for i, char in enumerate(_bytes_to_unicode().values())}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|im_end|>",
                                        bos_token="<|im_start|>", additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def build_tiny_llama(seed: int = 0, hidden: int = 64, layers: int = 4, heads: int = 4, kv_heads: int = 2):
    """A Llama with random weights (4 blocks, 64 wide, grouped-query attention like SmolLM2's) and
    the tiny chat tokenizer: (model, tokenizer)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_chat_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=1024, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(config), tokenizer


def save_tiny_llama(folder: str | Path, seed: int = 0, **shape) -> Path:
    model, tokenizer = build_tiny_llama(seed, **shape)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    return Path(folder)
