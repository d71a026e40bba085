"""Editing techniques (no UI): img2img (SDEdit), inpainting by latent blending, outpainting; see
:mod:`studio.editing.masked`."""

from .masked import (
    SIDES, KnownRegionBlend, composite, extend_canvas, feathered, img2img_start, latent_mask, mask_array,
    seeded_noise, start_step,
)

__all__ = ["SIDES", "KnownRegionBlend", "composite", "extend_canvas", "feathered", "img2img_start", "latent_mask",
           "mask_array", "seeded_noise", "start_step"]
