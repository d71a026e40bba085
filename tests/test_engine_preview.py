"""Live preview: latent -> RGB, VAE fallback, throttle and stale-frame dropping."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest
import torch

from studio.engine import Engine, GenerationRequest, StepEvent
from studio.engine.preview import LatentPreviewer, PreviewStream, PreviewThrottle


pytestmark = pytest.mark.usefixtures("torch_single_thread")

@pytest.fixture
def rgb_model(tiny_model):
    matrix = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [0, 0, 0]])
    return dataclasses.replace(tiny_model, latent_rgb=matrix, latent_rgb_bias=torch.tensor([0.0, 0.5, -1.0]))


def event(x0: torch.Tensor, step: int = 0) -> StepEvent:
    return StepEvent(step=step, num_steps=10, timestep=999, latents=x0, x0_pred=x0, eps_uncond=None, eps_cond=None)


def test_latent_rgb_preview(rgb_model):
    previewer = LatentPreviewer(rgb_model)
    assert not previewer.uses_vae
    x0 = torch.zeros(2, 4, 16, 16)
    x0[:, 0] = 1.0  # red channel at the top of the range
    image = previewer.to_image(x0)
    assert image.size == (32, 16)  # batch side by side, latent resolution
    assert tuple(np.asarray(image)[0, 0]) == (255, 191, 0)  # (1, 0.5, -1) -> [0, 1] -> uint8
    assert LatentPreviewer(rgb_model, upscale=True).to_image(x0).size == (128, 64)


def test_vae_fallback_preview(tiny_model):
    previewer = LatentPreviewer(tiny_model)
    assert previewer.uses_vae
    assert previewer.to_image(torch.randn(1, 4, 16, 16)).size == (64, 64)


def test_throttle_limits_rate():
    now = [0.0]
    throttle = PreviewThrottle(max_fps=10, clock=lambda: now[0])
    seen = []
    for i in range(20):  # 20 frames over 1 second at 20 fps
        now[0] = i * 0.05
        seen.append(throttle.ready())
    assert sum(seen) == 10 and seen[0]
    with pytest.raises(ValueError):
        PreviewThrottle(max_fps=0)


def test_stream_drops_stale_frames(rgb_model):
    gate = threading.Event()
    rendered_steps = []

    def slow_sink(image, ev):
        gate.wait(5)
        rendered_steps.append(ev.step)

    with PreviewStream(LatentPreviewer(rgb_model), sink=slow_sink, max_fps=1e9, max_busy=1.0) as stream:
        for i in range(6):
            stream(event(torch.zeros(1, 4, 16, 16), step=i))
        gate.set()
    assert stream.offered == 6 and stream.queued == 6
    assert stream.dropped >= 1 and stream.rendered == len(rendered_steps) == 6 - stream.dropped
    assert rendered_steps[-1] == 5  # the freshest frame always gets rendered
    assert stream.latest() is not None and stream.error is None


def test_stream_backs_off_after_slow_conversions(rgb_model):
    now = [0.0]

    class SlowPreviewer(LatentPreviewer):
        def to_array(self, x0):
            now[0] += 0.1  # every conversion "takes" 100 ms
            return super().to_array(x0)

    with PreviewStream(SlowPreviewer(rgb_model), max_fps=100, max_busy=0.25, clock=lambda: now[0]) as stream:
        for _ in range(20):  # a step every 50 ms of (fake) time, for 1 s
            stream(event(torch.zeros(1, 4, 16, 16)))
            now[0] += 0.05
    # each 100 ms conversion buys a 300 ms pause (25% busy): accepted at t = 0, 0.4, 0.8, 1.2
    assert stream.offered == 20 and stream.queued == 4


def test_stream_as_engine_callback(rgb_model):
    frames = []
    with PreviewStream(LatentPreviewer(rgb_model), sink=lambda im, ev: frames.append(ev.step), max_fps=10) as stream:
        Engine(rgb_model).generate(GenerationRequest(prompt="a cat", steps=3), on_step=stream)
    assert stream.offered == 3 and frames and frames[0] == 0
