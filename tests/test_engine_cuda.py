"""GPU checks (skipped without CUDA): device placement, fp16, CPU-seeded noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from studio.engine import Engine, GenerationRequest, RunHooks, make_scheduler
from studio.engine.preview import LatentPreviewer, PreviewStream
from studio.models import as_pipeline, from_pipeline
from tests.helpers import tiny_pipeline

pytestmark = [pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
              pytest.mark.usefixtures("torch_single_thread")]

REQ = GenerationRequest(prompt="a red house by a lake", negative_prompt="blurry", steps=4, seed=3, batch_size=2)


def cuda_model(family: str, dtype=torch.float32):
    pipe = tiny_pipeline(family)
    pipe.to("cuda", dtype)
    return from_pipeline(pipe, name=f"tiny-{family}-cuda")


@pytest.mark.parametrize("family", ["sd1", "sd2v"])
@pytest.mark.parametrize("sampler", ["DPM++ 2M", "Euler a"])
def test_cuda_matches_pipeline_and_cpu(tiny_models, family, sampler):
    model = cuda_model(family)
    req = GenerationRequest(**{**REQ.__dict__, "sampler": sampler})
    engine = Engine(model)
    result = engine.generate(req)
    assert result.latents.device.type == "cuda"
    ours = engine.decode(result.latents).numpy()
    pipe = as_pipeline(model, make_scheduler(model.scheduler_config, sampler))
    gens = [torch.Generator("cpu").manual_seed(s) for s in result.seeds]
    theirs = pipe(prompt=req.prompt, negative_prompt=req.negative_prompt, num_inference_steps=req.steps,
                  guidance_scale=req.cfg, num_images_per_prompt=2, generator=gens, output_type="np").images
    assert np.abs(ours - theirs.transpose(0, 3, 1, 2)).max() <= 1e-3
    # a seed means the same image on any device (noise is drawn on CPU); TF32 convs allow small drift
    cpu = Engine(tiny_models(family))
    on_cpu = cpu.decode(cpu.generate(req).latents).numpy()
    assert np.abs(ours - on_cpu).max() <= 2e-2


def test_cuda_fp16_every_sampler_and_hooks_restored():
    model = cuda_model("sd1", torch.float16)
    engine = Engine(model)
    before = model.unet.attn_processors
    for sampler in engine.SAMPLERS:
        result = engine.generate(GenerationRequest(prompt="a cat", sampler=sampler, steps=3),
                                 hooks=RunHooks(attention_processors=lambda orig: dict(orig)))
        assert torch.isfinite(result.latents.float()).all(), sampler
        assert result.latents.dtype == torch.float16
    assert model.unet.attn_processors == before


def test_cuda_preview_stream():
    model = cuda_model("sd1", torch.float16)
    frames = []
    with PreviewStream(LatentPreviewer(model), sink=lambda im, ev: frames.append(im.size), max_fps=100) as stream:
        Engine(model).generate(GenerationRequest(prompt="a cat", steps=3), on_step=stream)
    assert frames and frames[0] == (64, 64) and stream.error is None
