"""Live previews of a run from its x0 predictions.

* :class:`LatentPreviewer` turns UNet-space latents into a picture: a cheap
  linear map (``model.latent_rgb``) when the model has one, else a VAE decode.
* :class:`PreviewThrottle` lets at most ``max_fps`` frames through.
* :class:`PreviewStream` is a step callback for live previews. The tensor work
  (latent -> RGB) runs on the denoising thread, where it is cheapest; building
  the PIL image and calling the sink run on a background thread. A frame still
  waiting when a newer one arrives is dropped, so only the freshest is shown.
  Slow previews (VAE decode on CPU) back off so they take at most ``max_busy``
  of the wall time.

Torch ops are deliberately kept off the background thread: on CPU a second
thread calling torch starts its own OpenMP team, and the two teams' spinning
threads slow the UNet down far more than the preview itself costs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from .request import StepEvent


class LatentPreviewer:
    """``to_image(x0)`` -> PIL image of the batch, side by side.

    With ``latent_rgb`` the image has latent resolution (``upscale=True`` resizes
    it to pixel size); the VAE fallback is full size."""

    def __init__(self, model, *, upscale: bool = False):
        self.model = model
        self.upscale = upscale
        self.uses_vae = model.latent_rgb is None
        if not self.uses_vae:
            bias = model.latent_rgb_bias if model.latent_rgb_bias is not None else torch.zeros(3)
            self._matrix = model.latent_rgb.float()
            self._bias = bias.float()

    @torch.no_grad()
    def to_tensor(self, x0: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` latents -> ``(B, 3, H, W)`` float32 CPU in [0, 1]."""
        if self.uses_vae:
            vae = self.model.vae
            image = vae.decode(x0.to(vae.device, vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
            return (image.float().cpu() / 2 + 0.5).clamp(0, 1)
        m = self._matrix.to(x0.device)
        rgb = torch.einsum("bchw,cr->brhw", x0.float(), m) + self._bias.to(x0.device)[None, :, None, None]
        return (rgb.cpu() / 2 + 0.5).clamp(0, 1)

    def to_array(self, x0: torch.Tensor) -> np.ndarray:
        """``(H, B*W, 3)`` uint8, the batch side by side (all torch work happens here)."""
        rgb = self.to_tensor(x0)
        strip = torch.cat(list(rgb), dim=2)  # (3, H, B*W)
        return (strip.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)

    def array_to_image(self, array: np.ndarray) -> Image.Image:
        """PIL image from :meth:`to_array` output (no torch; safe on any thread)."""
        image = Image.fromarray(array)
        if self.upscale and not self.uses_vae:
            f = self.model.vae_scale_factor
            image = image.resize((image.width * f, image.height * f), Image.BILINEAR)
        return image

    def to_image(self, x0: torch.Tensor) -> Image.Image:
        return self.array_to_image(self.to_array(x0))


class PreviewThrottle:
    """``ready()`` is true at most ``max_fps`` times per second."""

    def __init__(self, max_fps: float = 10.0, clock: Callable[[], float] = time.monotonic):
        if not max_fps > 0:
            raise ValueError(f"max_fps must be > 0, got {max_fps!r}")
        self.interval = 1.0 / max_fps
        self._clock = clock
        self._last: float | None = None

    def ready(self) -> bool:
        now = self._clock()
        if self._last is not None and now - self._last < self.interval - 1e-9:
            return False
        self._last = now
        return True


class PreviewStream:
    """Step callback producing throttled live previews.

    ``sink(image, event)`` (optional) receives each rendered frame on the
    background thread; ``latest()`` returns the newest. Use as a context manager
    (or call ``close()``) so the thread ends. Counters: ``offered`` (steps seen),
    ``queued`` (converted and handed over), ``dropped`` (replaced before the
    thread got to them), ``rendered``. ``error`` holds the first sink/render error
    (previews never stop a run).
    """

    def __init__(self, previewer: LatentPreviewer, sink: Callable | None = None, max_fps: float = 10.0,
                 max_busy: float = 0.25, clock: Callable[[], float] = time.monotonic):
        if not 0 < max_busy <= 1:
            raise ValueError(f"max_busy must be in (0, 1], got {max_busy!r}")
        self.previewer = previewer
        self.sink = sink
        self.throttle = PreviewThrottle(max_fps, clock)
        self.max_busy = max_busy
        self._clock = clock
        self._not_before = 0.0  # back-off after a slow conversion
        self.offered = self.queued = self.dropped = self.rendered = 0
        self.error: BaseException | None = None
        self._latest: Image.Image | None = None
        self._pending: tuple | None = None
        self._cond = threading.Condition()
        self._closed = False
        self._worker = threading.Thread(target=self._run, name="preview-stream", daemon=True)
        self._worker.start()

    def __call__(self, event: StepEvent) -> None:
        self.offered += 1
        if self._clock() < self._not_before or not self.throttle.ready():
            return
        started = self._clock()
        try:
            array = self.previewer.to_array(event.x0_pred)
        except Exception as e:  # noqa: BLE001 - a broken preview must not stop generation
            self.error = self.error or e
            return
        finished = self._clock()
        self._not_before = finished + (finished - started) * (1 / self.max_busy - 1)
        with self._cond:
            if self._pending is not None:
                self.dropped += 1
            self._pending = (array, event)
            self.queued += 1
            self._cond.notify()

    def latest(self) -> Image.Image | None:
        return self._latest

    def close(self) -> None:
        """Render what is pending, then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._worker.join()

    def __enter__(self) -> PreviewStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                if self._pending is None:
                    return
                array, event = self._pending
                self._pending = None
            try:
                image = self.previewer.array_to_image(array)
                self._latest = image
                self.rendered += 1
                if self.sink is not None:
                    self.sink(image, event)
            except Exception as e:  # noqa: BLE001 - a broken sink must not stop generation
                self.error = self.error or e
