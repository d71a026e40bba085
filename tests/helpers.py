"""Tiny random-weight Stable Diffusion components for fast CPU tests (no downloads).

``tiny_sd_components("sd1")`` is SD 1.x-shaped (CLIP quick_gelu text encoder,
epsilon); ``"sd2v"`` is SD 2.x-shaped (OpenCLIP-style gelu encoder, linear
projections, v-prediction). Both mirror Tiny World's layout: 64x64 images, a 4x
VAE (16x16x4 latents), 77-token CLIP tokenizer.
"""

from __future__ import annotations

import torch

FAMILIES = ("sd1", "sd2v")


def tiny_tokenizer(max_length: int = 77):
    """A byte-level CLIP tokenizer built in memory (one token per character, no merges)."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    specials = ["<|startoftext|>", "<|endoftext|>"]
    chars = sorted(ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(specials + chars + [c + "</w>" for c in chars])}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def tiny_sd_components(family: str = "sd1", seed: int | None = None) -> dict:
    """Components for ``StableDiffusionPipeline(**components)`` with random weights
    (``seed`` defaults to 0 for sd1 and 1 for sd2v, so the two differ)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    sd2 = family == "sd2v"
    tokenizer = tiny_tokenizer()
    torch.manual_seed(FAMILIES.index(family) if seed is None else seed)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(16, 32), norm_num_groups=8, cross_attention_dim=32,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4) if sd2 else 4, use_linear_projection=sd2,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
        block_out_channels=(8, 16, 16), sample_size=64,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, hidden_act="gelu" if sd2 else "quick_gelu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))
    scheduler = DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="v_prediction" if sd2 else "epsilon", clip_sample=False,
        steps_offset=1, timestep_spacing="leading",
    )
    for module in (unet, vae, text_encoder):
        module.eval().requires_grad_(False)
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
                safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def tiny_pipeline(family: str = "sd1", seed: int | None = None):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**tiny_sd_components(family, seed))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def fingerprint(module: torch.nn.Module) -> str:
    """sha256 over a module's state (names and bytes): equal fingerprints mean bit-identical weights."""
    import hashlib

    digest = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
