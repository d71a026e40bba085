"""Edit masks from noise-prediction contrast (Couairon et al., "DiffEdit: Diffusion-based Semantic Image Editing
with Mask Guidance", 2022).

The clean latents of the source image are noised to one level (``strength`` of the training schedule, 0.5 in the
paper) with several seeded noises; the UNet predicts the noise under the source prompt and under the edited prompt
(no guidance), and the mask is where the two predictions differ: the absolute difference averaged over channels and
noises, rescaled between its minimum and maximum and thresholded (0.5). Where the prompts agree about the image the
predictions agree, so the mask falls on what the edit changes, e.g. the object whose colour word was swapped.

Prompt-to-prompt uses it as an alternative to the paper's attention mask for local blending: on Tiny World a word's
cross-attention spreads over every object, so the attention mask covered most of the image (see the README).

For a generated source, :func:`source_x0_at_strength` supplies the clean latents without a full render: the mask
only sees the image through noise of level ``strength``, so the source's own x0 prediction at that level is all it
needs, and the render stops there (about half the source's steps at the default strength).
"""

from __future__ import annotations

import torch

from studio.engine import CancelToken, InvalidRequest
from studio.engine.conditioning import encode_texts
from studio.inspection.denoising import alphas_cumprod, predict_epsilon

DEFAULT_STRENGTH = 0.5
DEFAULT_SAMPLES = 10
DEFAULT_THRESHOLD = 0.5


def contrast_map(model, x0: torch.Tensor, source_prompt: str, target_prompt: str, *,
                 strength: float = DEFAULT_STRENGTH, samples: int = DEFAULT_SAMPLES, seed: int = 0,
                 cancel: CancelToken | None = None) -> torch.Tensor:
    """``(h, w)`` mean absolute difference of the two prompts' noise predictions on ``x0`` ``(C, h, w)``, rescaled to
    0..1 between its minimum and maximum."""
    # 1. validate
    if not 0.0 < strength < 1.0:
        raise InvalidRequest(f"the contrast mask's strength must be in (0, 1) (a fraction of the noise schedule), "
                             f"got {strength!r}", "strength")
    if not (isinstance(samples, int) and 1 <= samples <= 64):
        raise InvalidRequest(f"the contrast mask takes 1..64 noise samples, got {samples!r}", "samples")
    if source_prompt.strip() == target_prompt.strip():
        raise InvalidRequest("the noise-contrast mask compares the two prompts, and they are the same; for a "
                             "reweighting edit use the attention mask", "blend_mask")
    # 2. one seeded noise bank at one level, both prompts on the same noised latents
    table = alphas_cumprod(model)
    timestep = int(round(strength * (len(table) - 1)))
    noises = torch.randn((samples, *x0.shape), generator=torch.Generator("cpu").manual_seed(int(seed)))
    embeds = encode_texts(model, [source_prompt, target_prompt]).cpu()
    rows = torch.cat([embeds[0:1].expand(samples, -1, -1), embeds[1:2].expand(samples, -1, -1)])
    eps = predict_epsilon(model, x0, [timestep] * (2 * samples), torch.cat([noises, noises]), rows, table,
                          cancel=cancel)
    # 3. where the predictions differ, rescaled
    diff = (eps[samples:] - eps[:samples]).abs().mean(1).mean(0)
    lo, hi = diff.min(), diff.max()
    return (diff - lo) / (hi - lo).clamp(min=1e-12)


def contrast_mask(model, x0: torch.Tensor, source_prompt: str, target_prompt: str, *,
                  threshold: float = DEFAULT_THRESHOLD, **kwargs) -> torch.Tensor:
    """``(h, w)`` 0/1 float mask on the latent grid: :func:`contrast_map` above ``threshold``."""
    if not 0.0 <= threshold < 1.0:
        raise InvalidRequest(f"the contrast mask's threshold must be in 0..1, got {threshold!r}", "threshold")
    return (contrast_map(model, x0, source_prompt, target_prompt, **kwargs) > threshold).float()


def grown(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """``mask`` ``(h, w)`` widened by ``pixels`` latent pixels in every direction (a square max-pool)."""
    if pixels == 0:
        return mask
    size = 2 * pixels + 1
    return torch.nn.functional.max_pool2d(mask[None, None], size, stride=1, padding=pixels)[0, 0]


def source_x0_at_strength(engine, request, *, strength: float = DEFAULT_STRENGTH, cancel: CancelToken | None = None,
                          on_progress=None) -> torch.Tensor:
    """The source's clean latents ``(C, h, w)`` as its own render estimates them at noise level ``strength``: the
    render of ``request`` (one image) runs only until the step whose timestep is nearest ``strength`` of the
    training schedule, and that step's x0 prediction is returned. ``on_progress(done, total)`` counts those steps."""
    # 1. validate
    if not 0.0 < strength < 1.0:
        raise InvalidRequest(f"the contrast mask's strength must be in (0, 1) (a fraction of the noise schedule), "
                             f"got {strength!r}", "strength")
    if request.batch_size != 1:
        raise InvalidRequest(f"the source estimate renders one image, got batch size {request.batch_size}",
                             "batch_size")
    wanted = _nearest_step(engine, request, strength * (len(alphas_cumprod(engine.model)) - 1))
    seen: dict[str, torch.Tensor] = {}

    # 2. render until that step; keep its x0 prediction
    def on_step(event) -> None:
        if on_progress is not None:
            on_progress(event.step + 1, wanted + 1)
        if event.step == wanted:
            seen["x0"] = event.x0_pred[0].detach().float().cpu()

    engine.generate(request, cancel=cancel, on_step=on_step, stop_after_step=wanted)
    return seen["x0"]


def _nearest_step(engine, request, target: float) -> int:
    """Index of the request's timestep nearest ``target`` (the sampler's own schedule)."""
    steps = engine.timesteps(request.sampler, request.steps)
    return min(range(len(steps)), key=lambda i: abs(steps[i] - target))
