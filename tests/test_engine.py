"""Engine tests on tiny random SD 1.x / 2.x-v models (CPU, a few steps each)."""

from __future__ import annotations

import threading
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor

from studio.engine import (
    SAMPLERS, Cancelled, CancelToken, Engine, GenerationRequest, InvalidRequest, LatentCache, RunHooks, extra_role,
    make_scheduler,
)
from studio.engine.engine import to_uint8
from studio.models import as_pipeline

pytestmark = pytest.mark.usefixtures("torch_single_thread")

REQ = GenerationRequest(prompt="a red house by a lake", negative_prompt="blurry", steps=4, cfg=7.5, seed=3)


@contextmanager
def unet_calls(unet):
    """Record the batch size of every UNet forward call."""
    calls: list[int] = []
    handle = unet.register_forward_pre_hook(lambda mod, args: calls.append(args[0].shape[0]))
    try:
        yield calls
    finally:
        handle.remove()


def pipeline_pixels(model, req: GenerationRequest, seeds: list[int]) -> np.ndarray:
    """What StableDiffusionPipeline gives for ``req``: (B, 3, H, W) floats in [0, 1]."""
    pipe = as_pipeline(model, make_scheduler(model.scheduler_config, req.sampler))
    gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    out = pipe(prompt=req.prompt, negative_prompt=req.negative_prompt, num_inference_steps=req.steps,
               guidance_scale=req.cfg, num_images_per_prompt=req.batch_size, generator=gens,
               height=req.height, width=req.width, output_type="np").images
    return out.transpose(0, 3, 1, 2)


@pytest.fixture(params=["sd1", "sd2v", "tinyworld"])
def any_model(request, tiny_models):
    """Each model family; Tiny World is skipped (with the reason) when assets/tinyworld is absent."""
    return tiny_models(request.param)


# ------------------------------------------------------------------------------ equivalence


@pytest.mark.parametrize("sampler", ["DPM++ 2M", "Euler a", "DPM++ 2M SDE"])
def test_matches_stable_diffusion_pipeline(any_model, sampler):
    req = GenerationRequest(**{**REQ.__dict__, "sampler": sampler, "batch_size": 2})
    engine = Engine(any_model)
    result = engine.generate(req)
    ours = engine.decode(result.latents).numpy()
    theirs = pipeline_pixels(any_model, req, result.seeds)
    assert np.abs(ours - theirs).max() <= 1e-3
    assert np.array_equal(np.stack([np.asarray(im) for im in result.images]), to_uint8(torch.from_numpy(ours)))
    assert result.seeds == [3, 4]


def test_cfg_one_skips_uncond_and_still_matches_pipeline(tiny_model):
    req = GenerationRequest(**{**REQ.__dict__, "cfg": 1.0})
    engine = Engine(tiny_model)
    events = []
    with unet_calls(tiny_model.unet) as calls:
        result = engine.generate(req, on_step=events.append)
    assert calls == [1] * req.steps
    assert events[0].eps_uncond is None and events[0].eps_cond is not None
    theirs = pipeline_pixels(tiny_model, req, result.seeds)
    assert np.abs(engine.decode(result.latents).numpy() - theirs).max() <= 1e-3


# ------------------------------------------------------------------------------ samplers, seeds, events


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_gives_finite_images(tiny_model, sampler):
    result = Engine(tiny_model).generate(GenerationRequest(prompt="a cat", sampler=sampler, steps=2))
    assert torch.isfinite(result.latents).all()
    assert result.images[0].size == (64, 64)
    assert set(result.timings) >= {"encode", "denoise", "decode", "total", "per_step"}


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M SDE"])  # the stochastic ones: fresh noise every step
def test_seeds_reproducible_and_per_image(tiny_model, sampler):
    engine = Engine(tiny_model)
    req = GenerationRequest(prompt="a cat", steps=2, seed=10, batch_size=2, sampler=sampler)
    a, b = engine.generate(req), engine.generate(req)
    assert torch.equal(a.latents, b.latents)
    single = engine.generate(GenerationRequest(prompt="a cat", steps=2, seed=11, sampler=sampler))
    assert torch.allclose(a.latents[1], single.latents[0], atol=1e-4)  # batch vs single: float noise only
    assert not torch.allclose(a.latents[0], a.latents[1])
    wrap = engine.generate(GenerationRequest(prompt="a cat", steps=1, seed=2**32 - 1, batch_size=2))
    assert wrap.seeds == [2**32 - 1, 0]


@pytest.mark.parametrize("family", ["sd1", "sd2v"])
def test_step_events_carry_x0_that_ends_at_the_result(tiny_models, family):
    model = tiny_models(family)
    events = []
    result = Engine(model).generate(REQ, on_step=events.append)
    assert [e.step for e in events] == list(range(REQ.steps))
    last = events[-1]
    assert last.num_steps == REQ.steps and last.eps_uncond.shape == last.eps_cond.shape == result.latents.shape
    # DPM++ 2M's final step (to sigma 0) returns its x0 prediction, so ours must agree.
    assert torch.allclose(last.x0_pred, result.latents, atol=1e-4)
    assert not torch.equal(events[0].latents, events[1].latents)


# ------------------------------------------------------------------------------ hooks


class CountingProcessor(AttnProcessor):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return super().__call__(*args, **kwargs)


class Boom(RuntimeError):
    pass


class ExplodingEdit:
    """Raises inside the loop at a given step."""

    def __init__(self, at_step: int):
        self.at_step = at_step

    def apply(self, step, num_steps, embeds, role):
        if step == self.at_step:
            raise Boom("edit failed")
        return embeds


def test_attention_processors_installed_for_the_run_only(tiny_model):
    unet = tiny_model.unet
    before = unet.attn_processors
    proc = CountingProcessor()
    Engine(tiny_model).generate(REQ, hooks=RunHooks(attention_processors=lambda orig: {k: proc for k in orig}))
    assert proc.calls > 0
    assert unet.attn_processors == before


def test_hooks_removed_after_exception_inside_loop(tiny_model):
    unet = tiny_model.unet
    before = unet.attn_processors
    proc = CountingProcessor()
    hooks = RunHooks(embedding_edits=[ExplodingEdit(at_step=2)],
                     attention_processors={name: proc for name in before})
    with pytest.raises(Boom):
        Engine(tiny_model).generate(REQ, hooks=hooks)
    assert proc.calls > 0
    after = unet.attn_processors
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    assert not unet._forward_hooks and not unet._forward_pre_hooks
    acquired = []

    def try_lock():
        ok = tiny_model.run_lock.acquire(timeout=1)
        acquired.append(ok)
        if ok:
            tiny_model.run_lock.release()

    t = threading.Thread(target=try_lock)
    t.start()
    t.join()
    assert acquired == [True]  # the run lock was released too


def test_unknown_attention_processor_name_rejected_and_nothing_left(tiny_model):
    before = tiny_model.unet.attn_processors
    with pytest.raises(InvalidRequest, match="unknown attention processor"):
        Engine(tiny_model).generate(REQ, hooks=RunHooks(attention_processors={"nope.processor": AttnProcessor()}))
    assert tiny_model.unet.attn_processors == before


def test_cancel_stops_within_one_step(tiny_model):
    token = CancelToken()

    def cancel_at_1(event):
        if event.step == 1:
            token.cancel()

    with unet_calls(tiny_model.unet) as calls, pytest.raises(Cancelled):
        Engine(tiny_model).generate(REQ, cancel=token, on_step=cancel_at_1)
    assert len(calls) == 2
    token2 = CancelToken()
    token2.cancel()
    with unet_calls(tiny_model.unet) as calls, pytest.raises(Cancelled):
        Engine(tiny_model).generate(REQ, cancel=token2)
    assert calls == []


def test_stop_after_step_runs_the_first_steps_only_and_matches_the_full_run(tiny_model):
    engine = Engine(tiny_model)
    full: list = []
    engine.generate(REQ, on_step=full.append)
    early: list = []
    with unet_calls(tiny_model.unet) as calls:
        result = engine.generate(REQ, on_step=early.append, stop_after_step=1)
    assert len(calls) == 2 and [e.step for e in early] == [0, 1]
    assert result.images == []  # not decoded: its latents are still noisy
    for a, b in zip(early, full):
        assert torch.allclose(a.x0_pred, b.x0_pred, atol=1e-6)
    assert engine.timesteps(REQ.sampler, REQ.steps) == [e.timestep for e in full]
    for bad in (-1, REQ.steps):
        with pytest.raises(InvalidRequest, match="stop_after_step must be a step"):
            engine.generate(REQ, stop_after_step=bad)


class ScaleEdit:
    """Scales the cond embeddings from ``from_step`` on (1.0 = identity)."""

    def __init__(self, factor: float, from_step: int = 0):
        self.factor, self.from_step = factor, from_step
        self.seen = []

    def apply(self, step, num_steps, embeds, role):
        self.seen.append((step, role))
        if role == "cond" and step >= self.from_step:
            return embeds * self.factor
        return embeds


def test_embedding_edits(tiny_model):
    engine = Engine(tiny_model)
    plain = engine.generate(REQ).latents
    identity = ScaleEdit(1.0)
    with unet_calls(tiny_model.unet) as calls:
        same = engine.generate(REQ, hooks=RunHooks(embedding_edits=[identity])).latents
    assert torch.equal(plain, same)
    assert len(calls) == REQ.steps  # edits never re-run the text encoder or add UNet calls
    assert sorted(set(identity.seen)) == [(s, r) for s in range(REQ.steps) for r in ("cond", "uncond")]
    changed = engine.generate(REQ, hooks=RunHooks(embedding_edits=[ScaleEdit(0.0, from_step=2)])).latents
    assert (changed - plain).abs().max() > 1e-3


class ThreeWayGuidance:
    """Needs two extra prompts; pushes toward extra:0 and away from extra:1."""

    def __init__(self):
        self.keys = None

    def extra_prompts(self):
        return ["a sunny day", "rain"]

    def combine(self, step, eps, cfg):
        self.keys = sorted(eps)
        u = eps["uncond"]
        return u + cfg * (eps["cond"] - u) + 2.0 * (eps[extra_role(0)] - u) - 1.0 * (eps[extra_role(1)] - u)


def test_batched_guidance_is_one_unet_call_per_step(tiny_model):
    guidance = ThreeWayGuidance()
    req = GenerationRequest(**{**REQ.__dict__, "batch_size": 2})
    events = []
    with unet_calls(tiny_model.unet) as calls:
        result = Engine(tiny_model).generate(req, hooks=RunHooks(guidance=guidance, step_callbacks=[events.append]))
    assert calls == [4 * 2] * req.steps
    assert guidance.keys == ["cond", "extra:0", "extra:1", "uncond"]
    assert set(events[0].eps) == set(guidance.keys)
    assert torch.isfinite(result.latents).all()


# ------------------------------------------------------------------------------ latent cache


@pytest.mark.parametrize("sampler", ["DPM++ 2M", "Euler a", "UniPC", "DPM++ 2M SDE"])
def test_cache_resume_with_same_settings_reproduces_full_run(tiny_model, sampler):
    engine = Engine(tiny_model)
    req = GenerationRequest(**{**REQ.__dict__, "sampler": sampler, "steps": 5})
    cache = LatentCache()
    full = engine.generate(req, cache=cache)
    assert cache.steps_recorded == 5
    with unet_calls(tiny_model.unet) as calls:
        resumed = engine.generate(req, cache=cache, resume_from_step=3)
    assert len(calls) == 2
    assert torch.allclose(full.latents, resumed.latents, atol=1e-6)


class SwitchCFG:
    """Classic CFG whose scale switches at a step (the reference for resume-with-new-cfg)."""

    def __init__(self, before: float, after: float, at: int):
        self.before, self.after, self.at = before, after, at

    def extra_prompts(self):
        return []

    def combine(self, step, eps, cfg):
        s = self.before if step < self.at else self.after
        return eps["uncond"] + s * (eps["cond"] - eps["uncond"])


def test_cache_resume_with_new_cfg_continues_the_same_trajectory(tiny_model):
    engine = Engine(tiny_model)
    req = GenerationRequest(**{**REQ.__dict__, "steps": 5})
    cache = LatentCache()
    engine.generate(req, cache=cache)
    resumed = engine.generate(GenerationRequest(**{**req.__dict__, "cfg": 2.0}), cache=cache, resume_from_step=2)
    reference = engine.generate(req, hooks=RunHooks(guidance=SwitchCFG(7.5, 2.0, at=2)))
    assert torch.allclose(resumed.latents, reference.latents, atol=1e-5)
    assert cache.request.cfg == 2.0


def test_cache_resume_rejects_trajectory_changes(tiny_model):
    engine = Engine(tiny_model)
    cache = LatentCache()
    with pytest.raises(InvalidRequest, match="empty"):
        engine.generate(REQ, cache=cache, resume_from_step=1)
    engine.generate(REQ, cache=cache)
    with pytest.raises(InvalidRequest, match="seed changed"):
        engine.generate(GenerationRequest(**{**REQ.__dict__, "seed": 4}), cache=cache, resume_from_step=1)
    with pytest.raises(InvalidRequest, match="0..3"):
        engine.generate(REQ, cache=cache, resume_from_step=4)
    with pytest.raises(InvalidRequest, match="LatentCache"):
        engine.generate(REQ, resume_from_step=1)


def test_cancelled_run_can_resume_from_recorded_steps(tiny_model):
    engine = Engine(tiny_model)
    full = engine.generate(REQ)
    cache, token = LatentCache(), CancelToken()
    with pytest.raises(Cancelled):
        engine.generate(REQ, cache=cache, cancel=token, on_step=lambda e: e.step == 1 and token.cancel())
    assert cache.steps_recorded == 2
    resumed = engine.generate(REQ, cache=cache, resume_from_step=1)
    assert torch.allclose(resumed.latents, full.latents, atol=1e-6)


# ------------------------------------------------------------------------------ validation


@pytest.mark.parametrize("change, field, text", [
    ({"steps": 0}, "steps", "1..150"),
    ({"steps": 151}, "steps", "1..150"),
    ({"steps": 2.5}, "steps", "integer"),
    ({"sampler": "LCM", "steps": 60}, "steps", "1..50 for sampler LCM"),
    ({"cfg": float("nan")}, "cfg", "finite number in 0..30"),
    ({"cfg": float("inf")}, "cfg", "finite"),
    ({"cfg": -1}, "cfg", "0..30"),
    ({"cfg": 31}, "cfg", "0..30"),
    ({"width": 60}, "width", "multiple of 8 in 32..256"),
    ({"height": 16}, "height", "32..256"),
    ({"height": 512}, "height", "32..256"),
    ({"batch_size": 0}, "batch_size", "1..16"),
    ({"batch_size": 17}, "batch_size", "1..16"),
    ({"seed": -1}, "seed", "0..4294967295"),
    ({"seed": 2**32}, "seed", "0..4294967295"),
    ({"seed": True}, "seed", "integer"),
    ({"sampler": "Heun"}, "sampler",
     "allowed: DPM++ 2M, DPM++ 2M Karras, DPM++ 2M SDE, Euler, Euler a, DDIM, UniPC, LCM"),
    ({"prompt": None}, "prompt", "string"),
])
def test_validation_messages(tiny_model, change, field, text):
    req = GenerationRequest(**{**REQ.__dict__, **change})
    with pytest.raises(InvalidRequest) as info:
        Engine(tiny_model).validate(req)
    assert text in str(info.value) and info.value.field == field


def test_valid_edge_requests_and_empty_prompt(tiny_model):
    engine = Engine(tiny_model)
    assert engine.validate(GenerationRequest(prompt="", steps=150, cfg=0, width=32, height=256, seed=2**32 - 1)) == []
    result = engine.generate(GenerationRequest(prompt="", negative_prompt="", steps=1, width=32, height=48))
    assert result.images[0].size == (32, 48)


def test_overlong_prompt_truncated_with_warning(tiny_model):
    long_prompt = "x " * 100  # one token per character of "x": 100 words -> 102 tokens with start/end
    warnings = Engine(tiny_model).validate(GenerationRequest(prompt=long_prompt))
    assert len(warnings) == 1 and "25 tokens dropped" in warnings[0] and "77" in warnings[0]
    result = Engine(tiny_model).generate(GenerationRequest(prompt=long_prompt, steps=1))
    assert result.warnings == warnings
