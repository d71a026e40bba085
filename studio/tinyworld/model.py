"""Tiny World model shapes: a small Stable-Diffusion-1.x-style pipeline (VAE, CLIP text encoder, UNet, scheduler).

Everything is a stock diffusers / transformers class so that `StableDiffusionPipeline.from_pretrained` loads the
result with no custom code, and the studio drives it exactly as it drives a real checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

LATENT_SIZE = 16  # 64x64 images, 4x downsampling


@dataclass(frozen=True)
class TinyWorldShapes:
    vae_channels: tuple[int, ...] = (32, 64, 64)  # 3 blocks -> 2 downsamplings -> 4x
    text_hidden: int = 128
    text_layers: int = 4
    text_heads: int = 4
    unet_channels: tuple[int, ...] = (64, 128, 128)
    unet_layers_per_block: int = 2
    unet_heads: int = 4


def build_vae(shapes: TinyWorldShapes = TinyWorldShapes()):
    from diffusers import AutoencoderKL

    n = len(shapes.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=shapes.vae_channels,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=64,
    )


def build_text_encoder(vocab_size: int, max_length: int, bos_id: int, eos_id: int, shapes=TinyWorldShapes()):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=shapes.text_hidden,
        intermediate_size=shapes.text_hidden * 4,
        num_hidden_layers=shapes.text_layers,
        num_attention_heads=shapes.text_heads,
        max_position_embeddings=max_length,
        hidden_act="quick_gelu",
        projection_dim=shapes.text_hidden,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    return CLIPTextModel(config)


def build_unet(shapes: TinyWorldShapes = TinyWorldShapes()):
    """Cross-attention at 16x16 and 8x8 (and the 4x4 middle), so attention maps exist at two resolutions."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=shapes.unet_channels,
        layers_per_block=shapes.unet_layers_per_block,
        cross_attention_dim=shapes.text_hidden,
        attention_head_dim=shapes.unet_heads,
        norm_num_groups=32,
    )


PREDICTION_TYPES = ("v_prediction", "epsilon")


def noise_scheduler_config(prediction_type: str = "v_prediction") -> dict:
    """DDPM's linear betas: at 16x16 latents SD's scaled_linear leaves too much signal at t=T, so the model would
    read the background from the starting noise instead of the prompt. This keeps terminal SNR ~4e-5.

    v-prediction (Salimans & Ho 2022, as in SD 2.x): with these betas half of all timesteps have SNR < 0.1, where
    the layout of the picture is decided. An epsilon loss weighs the x0 error there by SNR (~0.01), so an
    epsilon model never learned where to put things (position at chance); the v loss weighs it by SNR + 1."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, not {prediction_type!r}")
    return dict(
        num_train_timesteps=1000,
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="linear",
        prediction_type=prediction_type,
        steps_offset=1,
        clip_sample=False,
        timestep_spacing="leading",
    )


def sampling_scheduler(prediction_type: str = "v_prediction"):
    """Default sampler shipped with the model: DPM-Solver++ (2M)."""
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(
        **{k: v for k, v in noise_scheduler_config(prediction_type).items() if k != "clip_sample"},
        algorithm_type="dpmsolver++",
        solver_order=2,
    )


def count_parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())
