"""img2img and inpainting with any SD-family model (no inpainting-specific weights needed).

* **img2img** (SDEdit: Meng et al., "SDEdit: Guided Image Synthesis and Editing with Stochastic Differential
  Equations", 2022): the image's latents are forward-noised to the level of step ``j`` of the schedule, where
  ``strength`` = the fraction of steps run (``j = steps - round(strength * steps)``), and denoised from there under
  the prompt (:func:`img2img_start`).
* **inpainting** (latent blending, as in Avrahami et al., "Blended Latent Diffusion", 2023): after every sampler step
  the latents outside the mask are replaced by the original's latents forward-noised to the level the sampler is now
  at, with the same noise (:class:`KnownRegionBlend`), so only the masked region is generated and it fits its
  surroundings; the decoded result is composited over the original pixels with the feathered mask, so outside the
  mask the image is the input itself.
* **outpainting**: the canvas is extended (the new area filled from the border pixels) and the new area inpainted.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image, ImageFilter

from studio.engine import InvalidRequest, StartLatents, make_scheduler
from studio.engine.samplers import alpha_bar

SIDES = ("left", "right", "top", "bottom")


def seeded_noise(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The engine's initial noise for a batch of one at ``seed`` (CPU generator), so img2img at strength 1 starts
    from the same noise as a plain run."""
    generator = torch.Generator("cpu").manual_seed(int(seed))
    return randn_tensor(shape, generator=[generator], device=torch.device("cpu"), dtype=torch.float32)


def start_step(steps: int, strength: float) -> int:
    """First step of an img2img run: the last ``round(strength * steps)`` steps are run."""
    if not (isinstance(strength, (int, float)) and math.isfinite(strength) and 0.0 < strength <= 1.0):
        raise InvalidRequest(f"strength must be in (0, 1] (the fraction of steps to run), got {strength!r}",
                             "strength")
    run = max(1, round(strength * steps))
    return steps - run


def img2img_start(model, sampler: str, steps: int, x0: torch.Tensor, noise: torch.Tensor,
                  strength: float) -> StartLatents:
    """Clean latents ``x0`` ``(1, C, h, w)`` noised to the level where ``strength`` of the steps remain."""
    j = start_step(steps, strength)
    scheduler = make_scheduler(model.scheduler_config, sampler)
    scheduler.set_timesteps(steps)
    a = alpha_bar(scheduler, j, scheduler.timesteps[j])
    x_t = math.sqrt(a) * x0.float().cpu() + math.sqrt(1.0 - a) * noise
    return StartLatents(x_t.to(model.device, model.dtype), j)


class KnownRegionBlend:
    """:class:`~studio.engine.LatentEdit` for inpainting: outside ``mask`` (``(1, 1, h, w)``, 1 = generate), the
    latents are the original ``x0`` forward-noised with ``noise`` to the sampler's current level (the clean ``x0``
    after the last step)."""

    def __init__(self, x0: torch.Tensor, mask: torch.Tensor, noise: torch.Tensor):
        self.x0, self.mask, self.noise = x0, mask, noise

    def apply(self, step: int, num_steps: int, latents: torch.Tensor, scheduler) -> torch.Tensor:
        x0 = self.x0.to(latents.device, latents.dtype)
        if step + 1 >= len(scheduler.timesteps):
            known = x0
        else:
            t_next = scheduler.timesteps[step + 1]
            a = alpha_bar(scheduler, step + 1, t_next)
            known_vp = math.sqrt(a) * x0 + math.sqrt(1.0 - a) * self.noise.to(latents.device, latents.dtype)
            # the sampler's storage scale at this level (sigma-space samplers keep x0 + sigma * noise)
            ones = torch.ones(1, device=latents.device, dtype=latents.dtype)
            scale = float(scheduler.scale_model_input(ones, t_next).flatten()[0])
            known = known_vp / scale
        mask = self.mask.to(latents.device, latents.dtype)
        return mask * latents + (1 - mask) * known


def mask_array(mask: Image.Image | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A mask image (white or opaque = repaint) as floats in [0, 1] at ``size`` (width, height)."""
    if isinstance(mask, np.ndarray):
        image = Image.fromarray((np.clip(mask, 0, 1) * 255).astype(np.uint8) if mask.dtype != np.uint8 else mask)
    elif isinstance(mask, Image.Image):
        image = mask
    else:
        raise InvalidRequest("give the mask as an image (white = repaint)", "mask")
    if image.mode in ("RGBA", "LA"):
        values = image.getchannel("A")
    else:
        values = image.convert("L")
    if values.size != size:
        values = values.resize(size, Image.BILINEAR)
    return np.asarray(values, dtype=np.float32) / 255.0


def feathered(mask: np.ndarray, feather_px: float) -> np.ndarray:
    """The mask with a soft edge of about ``feather_px`` pixels (Gaussian blur), values in [0, 1]."""
    if feather_px < 0:
        raise InvalidRequest(f"feather must be >= 0 pixels, got {feather_px}", "feather")
    if feather_px == 0:
        return mask
    image = Image.fromarray((mask * 255).round().astype(np.uint8)).filter(ImageFilter.GaussianBlur(feather_px / 2))
    return np.asarray(image, dtype=np.float32) / 255.0


def latent_mask(mask: np.ndarray, factor: int) -> torch.Tensor:
    """Pixel mask ``(H, W)`` -> latent mask ``(1, 1, H/f, W/f)`` (area average: a latent cell is repainted in
    proportion to how much of it the mask covers)."""
    t = torch.from_numpy(mask).float()[None, None]
    return F.avg_pool2d(t, factor)


def composite(generated: Image.Image, original: Image.Image, mask: np.ndarray) -> Image.Image:
    """``mask * generated + (1 - mask) * original`` in pixel space."""
    g = np.asarray(generated.convert("RGB"), dtype=np.float32)
    o = np.asarray(original.convert("RGB"), dtype=np.float32)
    m = mask[..., None]
    return Image.fromarray((m * g + (1 - m) * o).round().clip(0, 255).astype(np.uint8))


def extend_canvas(image: Image.Image, side: str, pixels: int, multiple: int) -> tuple[Image.Image, np.ndarray]:
    """The image extended by ``pixels`` on ``side`` (rounded up to keep the size a multiple of ``multiple``), the new
    area filled by repeating the border pixels, and the mask of the new area (1 = to paint)."""
    if side not in SIDES:
        raise InvalidRequest(f"side must be one of {', '.join(SIDES)}, got {side!r}", "side")
    if not isinstance(pixels, int) or pixels < 1:
        raise InvalidRequest(f"extend by a whole number of pixels >= 1, got {pixels!r}", "pixels")
    pixels = -(-pixels // multiple) * multiple
    rgb = np.asarray(image.convert("RGB"))
    h, w = rgb.shape[:2]
    pad = {"left": ((0, 0), (pixels, 0)), "right": ((0, 0), (0, pixels)), "top": ((pixels, 0), (0, 0)),
           "bottom": ((0, pixels), (0, 0))}[side]
    extended = np.pad(rgb, (*pad, (0, 0)), mode="edge")
    mask = np.pad(np.zeros((h, w), np.float32), pad, constant_values=1.0)
    return Image.fromarray(extended), mask
