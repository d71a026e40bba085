"""Attribute sliders: token targeting, deltas, the embedding edit, stacking, delay, caches, learning, presets."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from studio.attributes.definitions import AttributeDefinition, definitions_for, load_definitions, model_kind
from studio.attributes.directions import (
    SubjectDirections, SubjectShift, emphasis_embeddings, encode_cond, naive_direction, subject_token_indices,
)
from studio.attributes.examples import ExampleSpec, TinyWorldExamples
from studio.attributes.learning import DirectionLearner, ImageLearnSettings, LearnSettings
from studio.attributes.store import DirectionStore
from studio.controllers.attributes import (
    AttributeRequest, AttributesController, SliderSession, SliderSetting, SweepRequest, animate,
)
from studio.engine import Engine, GenerationRequest, InvalidRequest, RunHooks
from studio.presets import PresetError

pytestmark = pytest.mark.usefixtures("torch_single_thread")

SIZE = AttributeDefinition("size", "circle", "a huge {subject}", "a tiny {subject}", 2.0,
                           ("{phrase}", "a small blue square and {phrase}"))


@pytest.fixture(scope="module")
def tinyworld(tiny_models, torch_single_thread_module):
    return tiny_models("tinyworld")


@pytest.fixture(scope="module")
def sd1(tiny_models, torch_single_thread_module):
    return tiny_models("sd1")


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


# ----------------------------------------------------------------------------- token targeting


def test_subject_tokens_single_token_word(tinyworld):
    tok = tinyworld.tokenizer
    prompt = "a medium red circle and a blue square"
    ids = tok(prompt).input_ids
    (i,) = subject_token_indices(tok, prompt, "circle")
    assert tok.convert_ids_to_tokens(ids[i]).startswith("circle")
    (j,) = subject_token_indices(tok, prompt, "square")
    assert tok.convert_ids_to_tokens(ids[j]).startswith("square") and j > i
    assert subject_token_indices(tok, prompt, "CIRCLE") == (i,)  # case-insensitive, like the tokenizer


def test_subject_tokens_multi_token_word_and_repeats(sd1):
    tok = sd1.tokenizer  # one token per character
    prompt = "a person and another person"
    idx = subject_token_indices(tok, prompt, "person")
    ids = tok(prompt).input_ids
    assert len(idx) == 12  # both occurrences, six characters each
    assert "".join(tok.convert_ids_to_tokens([ids[i] for i in idx[:6]])).replace("</w>", "") == "person"
    assert 0 not in idx and len(ids) - 1 not in idx  # never the start or end token


def test_subject_tokens_errors(tinyworld):
    with pytest.raises(InvalidRequest, match="does not occur"):
        subject_token_indices(tinyworld.tokenizer, "a red circle", "square")
    with pytest.raises(InvalidRequest, match="does not occur"):
        subject_token_indices(tinyworld.tokenizer, "a red circles", "circle")  # whole words only
    with pytest.raises(InvalidRequest, match="empty"):
        subject_token_indices(tinyworld.tokenizer, "a red circle", " ")
    long_prompt = " and ".join(["a red square"] * 40) + " and a circle"
    with pytest.raises(InvalidRequest, match="token limit"):
        subject_token_indices(tinyworld.tokenizer, long_prompt, "circle")


# ----------------------------------------------------------------------------- deltas and the edit


def test_naive_direction_is_mean_difference_at_subject(tinyworld):
    delta = naive_direction(tinyworld, "circle", SIZE.positive, SIZE.negative, SIZE.templates)
    manual = []
    for t in SIZE.templates:
        pos, neg = t.replace("{phrase}", "a huge circle"), t.replace("{phrase}", "a tiny circle")
        e = encode_cond(tinyworld, [pos, neg])
        ip, ineg = subject_token_indices(tinyworld.tokenizer, pos, "circle"), \
            subject_token_indices(tinyworld.tokenizer, neg, "circle")
        manual.append(e[0, list(ip)].mean(0) - e[1, list(ineg)].mean(0))
    assert torch.allclose(delta, torch.stack(manual).mean(0), atol=1e-5)
    swapped = naive_direction(tinyworld, "circle", SIZE.negative, SIZE.positive, SIZE.templates)
    assert torch.allclose(swapped, -delta, atol=1e-5)
    assert delta.norm() > 0.1


def test_edit_changes_only_subject_tokens_of_cond():
    embeds = torch.randn(2, 10, 8)
    delta = torch.ones(8)
    edit = SubjectDirections([SubjectShift((3, 4), delta, (1.0, -2.0))], start_step=2)
    out = edit.apply(2, 10, embeds.clone(), "cond")
    changed = (out - embeds).abs().sum(-1) > 0
    assert changed[:, [3, 4]].all() and not changed[:, [0, 1, 2, 5, 6, 7, 8, 9]].any()
    assert torch.allclose(out[0, 3] - embeds[0, 3], delta) and torch.allclose(out[1, 4] - embeds[1, 4], -2 * delta)
    assert torch.equal(edit.apply(2, 10, embeds, "uncond"), embeds)  # the negative prompt is never edited
    assert torch.equal(edit.apply(1, 10, embeds, "cond"), embeds)  # delay: not before start_step


def test_edits_stack():
    embeds = torch.zeros(1, 6, 4)
    a = SubjectShift((1,), torch.tensor([1.0, 0, 0, 0]), (2.0,))
    b = SubjectShift((1, 3), torch.tensor([0, 1.0, 0, 0]), (0.5,))
    out = SubjectDirections([a, b]).apply(0, 1, embeds, "cond")
    assert out[0, 1].tolist() == [2.0, 0.5, 0, 0] and out[0, 3].tolist() == [0, 0.5, 0, 0]


# ----------------------------------------------------------------------------- controller


@pytest.fixture(scope="module")
def controller(tinyworld, tmp_path_factory):
    return AttributesController(tinyworld, directions_root=tmp_path_factory.mktemp("directions"))


BASE = GenerationRequest(prompt="a medium red circle and a medium blue square on a black background", seed=3,
                         cfg=3.0, steps=8)


def test_value_zero_is_the_plain_image(controller):
    plain = controller.generator.with_store(None).run(BASE).images[0]
    zero = controller.render(AttributeRequest(BASE, (SliderSetting("size", "circle", 0.0),))).images[0]
    moved = controller.render(AttributeRequest(BASE, (SliderSetting("size", "circle", 1.5),))).images[0]
    assert np.array_equal(pixels(plain), pixels(zero))
    assert np.abs(pixels(moved) - pixels(plain)).mean() > 1.0


def test_delay_keeps_the_first_steps(tinyworld):
    engine = Engine(tinyworld)
    req = replace(BASE, steps=10)
    delta = torch.randn(tinyworld.text_encoder.config.hidden_size) * 5
    idx = subject_token_indices(tinyworld.tokenizer, req.prompt, "circle")

    def trajectory(edits):
        seen = []
        engine.generate(req, hooks=RunHooks(embedding_edits=edits, step_callbacks=[lambda e: seen.append(e.x0_pred)]))
        return seen

    plain = trajectory([])
    delayed = trajectory([SubjectDirections([SubjectShift(idx, delta, (1.0,))], start_step=4)])
    assert all(torch.equal(a, b) for a, b in zip(plain[:4], delayed[:4]))
    assert not torch.equal(plain[4], delayed[4])


def test_session_caches_encoding_and_resumes_after_delay(controller, tinyworld):
    calls = []
    handle = tinyworld.text_encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        session = SliderSession()
        first = controller.render(AttributeRequest(BASE, (SliderSetting("size", "circle", 0.5),), delay=0.25),
                                  session=session)
        n_first = len(calls)
        second = controller.render(AttributeRequest(BASE, (SliderSetting("size", "circle", 1.5),), delay=0.25),
                                   session=session)
        assert len(calls) == n_first  # the prompt was not encoded again; only the delta moved
    finally:
        handle.remove()
    assert first.resumed_from is None and second.resumed_from == 2  # 0.25 x 8 steps reused
    fresh = controller.render(AttributeRequest(BASE, (SliderSetting("size", "circle", 1.5),), delay=0.25))
    assert np.array_equal(pixels(second.images[0]), pixels(fresh.images[0]))


def test_sweep_matches_single_renders(controller):
    values = (-1.5, 0.0, 1.5)
    sweep = controller.sweep(SweepRequest(BASE, SliderSetting("size", "circle", 0.0), values))
    assert len(sweep.frames) == 3 and sweep.request.base.shared_seed
    for v, frame in zip(values, sweep.frames):
        single = controller.render(AttributeRequest(BASE, (SliderSetting("size", "circle", v),))).images[0]
        assert np.abs(pixels(frame) - pixels(single)).max() <= 3  # batched vs single: float rounding only
    webp, gif = sweep.animation("webp"), sweep.animation("gif")
    assert webp[:4] == b"RIFF" and gif[:6] == b"GIF89a"


def test_stacked_sliders_on_two_subjects(controller):
    one = controller.render(AttributeRequest(BASE, (SliderSetting("size", "circle", 1.5),))).images[0]
    two = controller.render(AttributeRequest(BASE, (SliderSetting("size", "circle", 1.5),
                                                    SliderSetting("hue red-yellow", "square", 2.0)))).images[0]
    assert np.abs(pixels(one) - pixels(two)).mean() > 0.5


def test_sliders_read_the_prompt_language(controller):
    """Emphasis keeps the subject's tokens where they were; AND and prompt editing are refused clearly."""
    emphasised = replace(BASE, prompt="a medium red (circle:1.1) and a medium blue square on a black background")
    out = controller.render(AttributeRequest(emphasised, (SliderSetting("size", "circle", 1.5),))).images[0]
    plain = controller.render(AttributeRequest(emphasised, (SliderSetting("size", "circle", 0.0),))).images[0]
    assert np.abs(pixels(out) - pixels(plain)).mean() > 1.0
    for prompt in ("a circle AND a square", "a [red:blue:0.5] circle"):
        with pytest.raises(InvalidRequest, match="sliders edit one prompt"):
            controller.render(AttributeRequest(replace(BASE, prompt=prompt), (SliderSetting("size", "circle", 1),)))


def test_weight_baseline(controller, tinyworld):
    plain = controller.generator.with_store(None).run(BASE).images[0]
    zero = controller.render(AttributeRequest(BASE, (SliderSetting("size", "circle", 0.0, "weight"),))).images[0]
    assert np.array_equal(pixels(plain), pixels(zero))
    e = emphasis_embeddings(tinyworld, BASE.prompt, "circle", "a huge {subject}", "a tiny {subject}", 1.0, 2.0)
    assert e.shape == encode_cond(tinyworld, [BASE.prompt]).shape
    with pytest.raises(InvalidRequest, match="runs alone"):
        controller.render(AttributeRequest(BASE, (SliderSetting("size", "circle", 1.0, "weight"),
                                                  SliderSetting("size", "square", 1.0))))


@pytest.mark.parametrize("slider, match", [
    (SliderSetting("size", "triangle", 1.0), "does not occur"),
    (SliderSetting("size", "circle", 9.0), r"in \[-1.5, 1.5\]"),
    (SliderSetting("nope", "circle", 1.0), "unknown attribute"),
    (SliderSetting("size", "circle", 1.0, "magic"), "unknown method"),
    (SliderSetting("size", "circle", 1.0, "learned"), "no learned direction"),
    (SliderSetting("size", "circle", 1.0, "learned-images"), "no learned-images direction"),
])
def test_bad_sliders_are_rejected_clearly(controller, slider, match):
    with pytest.raises(InvalidRequest, match=match):
        controller.render(AttributeRequest(BASE, (slider,)))
    with pytest.raises(InvalidRequest, match="delay"):
        controller.render(AttributeRequest(BASE, (), delay=1.0))


def test_saved_image_carries_slider_settings(tinyworld, tmp_path):
    from studio.controllers import FileSaver
    from studio.outputs import read_image_settings

    controller = AttributesController(tinyworld, FileSaver(lambda s: tmp_path / f"{s.batch_index}.png"))
    out = controller.sweep(SweepRequest(BASE, SliderSetting("size", "circle", 0.0), (-1.0, 1.0)), save=True)
    settings = read_image_settings(out.saved[1])
    assert settings.workbench == "attributes"
    sliders = settings.controls["attributes"]["sliders"]
    assert sliders[0]["value"] == 1.0 and sliders[0]["subject"] == "circle"


def test_custom_definition_and_disk_cache(tinyworld, tmp_path):
    custom = AttributeDefinition("greenness", "circle", "a green {subject}", "a red {subject}", 3.0)
    c1 = AttributesController(tinyworld, directions_root=tmp_path)
    d1 = c1.direction(custom, "circle")
    files = list(tmp_path.rglob("*.safetensors"))
    assert len(files) == 1 and tinyworld.weights_hash[:16] in str(files[0])
    c2 = AttributesController(tinyworld, directions_root=tmp_path)
    assert torch.equal(c2.direction(custom, "circle"), d1)  # read back from disk
    files[0].write_bytes(b"garbage")
    assert DirectionStore(tmp_path).load(tinyworld.weights_hash, custom, "circle", "naive") is None


# ----------------------------------------------------------------------------- learning


def cancel_then_resume(model, definition, subject, settings, ckpt):
    """Learn 4 steps as a user would: cancel at step 2 (checkpoint written), start again (resumes); returns the
    delta. The UNet must come out unchanged."""
    unet_before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    first = DirectionLearner(model, definition, subject, settings, checkpoint=str(ckpt))
    first.on_step = lambda progress: first.cancel() if progress.step == 2 else None
    assert first.run() is None and first.progress.state == "cancelled" and ckpt.is_file()
    second = DirectionLearner(model, definition, subject, settings, checkpoint=str(ckpt))
    delta = second.run()
    assert "resumed at step 2" in second.progress.message and second.progress.step == 4
    assert delta.shape == (model.text_encoder.config.hidden_size,) and torch.isfinite(delta).all()
    assert delta.norm() > 0 and not ckpt.exists()
    assert all(torch.equal(v, unet_before[k]) for k, v in model.unet.state_dict().items())
    return delta


def test_learner_trains_delta_cancels_and_resumes(sd1, tmp_path):
    definition = AttributeDefinition("age", "person", "an old {subject}", "a young {subject}", 2.0)
    settings = LearnSettings(steps=4, batch=2, pool_seeds=2, pool_steps=3, checkpoint_every=2)
    cancel_then_resume(sd1, definition, "person", settings, tmp_path / "partial.pt")


def test_learner_scale_range(sd1, monkeypatch):
    """The scales s trained on reach the attribute's range by default, ``scale_max`` when set; bad values refused."""
    import random

    definition = AttributeDefinition("age", "person", "an old {subject}", "a young {subject}", 2.0)
    with pytest.raises(InvalidRequest, match="scale_max"):
        LearnSettings(scale_max=0.05)
    with pytest.raises(InvalidRequest, match="scale_max"):
        LearnSettings(scale_max=True)
    upper = []
    original = random.Random.uniform
    monkeypatch.setattr(random.Random, "uniform", lambda self, a, b: upper.append(b) or original(self, a, b))
    for top in (None, 5.0):
        upper.clear()
        DirectionLearner(sd1, definition, "person",
                         LearnSettings(steps=2, batch=2, pool_seeds=1, pool_steps=2, scale_max=top)).run()
        assert upper and set(upper) == {2.0 if top is None else 5.0}


def test_example_spec_interpolates_and_validates():
    size = ExampleSpec.from_json({"scene": "radius", "points": [[-1.5, 5], [0, 11], [1.5, 19]]})
    assert size.parameter(-1.5) == 5 and size.parameter(0.0) == 11 and size.parameter(0.75) == pytest.approx(15)
    assert size.parameter(-0.75) == pytest.approx(8) and size.parameter(9.0) == 19  # clamped at the ends
    hue = ExampleSpec.from_json({"scene": "colour", "points": [[-2, [220, 40, 40]], [2, [236, 210, 40]]]})
    assert hue.parameter(0.0) == (228, 125, 40)
    assert ExampleSpec.from_json(size.to_json()) == size
    for bad, match in [({"scene": "age", "points": [[0, 1], [1, 2]]}, "scene"),
                       ({"scene": "radius", "points": [[0, 5]]}, "at least two"),
                       ({"scene": "radius", "points": [[1, 5], [0, 9]]}, "increasing"),
                       ({"scene": "radius", "points": [[0, 5], [1, 90]]}, "radius"),
                       ({"scene": "colour", "points": [[0, [1, 2]], [1, [3, 4, 5]]]}, "colour"),
                       ({"scene": "radius", "points": [[0, 5], [1, 9]], "extra": 1}, "exactly")]:
        with pytest.raises(ValueError, match=match):
            ExampleSpec.from_json(bad)
    with pytest.raises(ValueError, match="cover the slider's range"):
        AttributeDefinition("size", "circle", "a huge {subject}", "a tiny {subject}", 2.0, examples=size)


def test_example_images_follow_the_slider_value():
    """The pictures drawn for a value show the subject at the spec's radius (the analyzer measures it) and the
    caption names the subject; a colour spec paints the subject its interpolated colour."""
    import random

    from studio.tinyworld.analyzer import analyze

    spec = ExampleSpec.from_json({"scene": "radius", "points": [[-1.5, 5], [0, 11], [1.5, 19]]})
    source = TinyWorldExamples(spec, "square", value_range=1.5)
    rng = random.Random(3)
    wanted, measured = [], []
    for _ in range(24):
        example = source.draw(rng)
        assert -1.5 <= example.value <= 1.5 and "square" in example.caption
        squares = [o for o in analyze(example.image).objects if o.shape == "square"]
        if squares:
            wanted.append(spec.parameter(example.value))
            measured.append(max(o.radius for o in squares))
    assert len(measured) >= 20
    assert np.corrcoef(wanted, measured)[0, 1] > 0.95
    colour = ExampleSpec.from_json({"scene": "colour",
                                    "points": [[-2, [40, 120, 230]], [0, [40, 80, 220]], [2, [140, 60, 190]]]})
    source = TinyWorldExamples(colour, "circle", value_range=2.0)
    example = source.draw(random.Random(1))
    assert tuple(np.asarray(example.image).reshape(-1, 3).tolist()).count(list(colour.parameter(example.value))) \
        > 20
    # the caption says the colour at slider zero (as a hue slider's prompt does) or no colour; never the target's
    subject_phrases = [next(p for p in source.draw(random.Random(k)).caption.split(" and ") if "circle" in p)
                       for k in range(60)]
    assert not any("purple" in p for p in subject_phrases)
    assert 0.5 < sum("blue" in p for p in subject_phrases) / 60 < 0.9
    with pytest.raises(ValueError, match="Tiny World shapes"):
        TinyWorldExamples(spec, "person", value_range=1.5)


def test_image_learner_trains_cancels_and_resumes(tinyworld, tmp_path):
    definition = next(d for d in definitions_for(tinyworld) if d.name == "size")
    settings = ImageLearnSettings(steps=4, batch=2, checkpoint_every=2)
    cancel_then_resume(tinyworld, definition, "circle", settings, tmp_path / "partial.pt")
    with pytest.raises(InvalidRequest, match="no example images"):
        DirectionLearner(tinyworld, SIZE, "circle", settings).run()


def test_image_learner_needs_a_tiny_world_model(sd1, tinyworld):
    definition = next(d for d in definitions_for(tinyworld) if d.name == "size")
    with pytest.raises(InvalidRequest, match="need a Tiny World model"):
        DirectionLearner(sd1, definition, "circle", ImageLearnSettings(steps=1)).run()


def test_image_learner_noisy_share(tinyworld, monkeypatch):
    """With noisy_share 1 every picture is noised at a timestep of the noisier half; bad shares are refused."""
    with pytest.raises(InvalidRequest, match="noisy_share"):
        ImageLearnSettings(noisy_share=1.5)
    seen = []
    forward = type(tinyworld.unet).forward

    def spy(self, sample, timestep, *args, **kwargs):
        seen.append(torch.as_tensor(timestep).clone())
        return forward(self, sample, timestep, *args, **kwargs)

    monkeypatch.setattr(type(tinyworld.unet), "forward", spy)
    definition = next(d for d in definitions_for(tinyworld) if d.name == "size")
    DirectionLearner(tinyworld, definition, "circle", ImageLearnSettings(steps=3, batch=4, noisy_share=1.0)).run()
    timesteps = torch.cat(seen)
    assert len(timesteps) == 12 and (timesteps >= 500).all()


def test_learned_images_method_through_controller(tinyworld, tmp_path):
    controller = AttributesController(tinyworld, directions_root=tmp_path)
    with pytest.raises(InvalidRequest, match="no example images"):
        controller.learner("warmth", "circle", ImageLearnSettings(steps=2))
    controller.learner("size", "circle", ImageLearnSettings(steps=2, batch=2)).run()
    assert controller.has_learned("size", "circle", "learned-images")
    assert not controller.has_learned("size", "circle")  # the guidance-matched one is a different direction
    files = list(tmp_path.rglob("*.safetensors"))
    assert len(files) == 1 and "learned-images" in str(files[0])
    again = AttributesController(tinyworld, directions_root=tmp_path)
    out = again.render(AttributeRequest(BASE, (SliderSetting("size", "circle", 1.0, "learned-images"),)))
    assert len(out.images) == 1


def test_learned_method_through_controller(tinyworld, tmp_path):
    controller = AttributesController(tinyworld, directions_root=tmp_path)
    job = controller.learner("size", "circle", LearnSettings(steps=2, batch=2, pool_seeds=1, pool_steps=2))
    job.start()
    job.join(120)
    assert job.progress.state == "done", job.progress.message
    assert controller.has_learned("size", "circle")
    again = AttributesController(tinyworld, directions_root=tmp_path)  # saved: a new controller finds it
    out = again.render(AttributeRequest(BASE, (SliderSetting("size", "circle", 1.0, "learned"),)))
    assert len(out.images) == 1


# ----------------------------------------------------------------------------- presets


def test_shipped_presets_validate_and_match_models(tinyworld, sd1):
    assert model_kind(tinyworld) == "tinyworld" and model_kind(sd1) == "sd1"
    tw = {d.name for d in definitions_for(tinyworld)}
    assert {"size", "hue red-yellow", "hue blue-purple"} <= tw and len(tw) >= 4
    sd = {d.name for d in definitions_for(sd1)}
    assert {"age", "smile", "hair length", "weight"} <= sd and any(n.startswith("style") for n in sd)


def test_sd1_presets_compute_on_random_weights(sd1, tmp_path):
    """The SD 1.x directions are computed on first use; their path runs on a random-weight pipeline here."""
    controller = AttributesController(sd1, directions_root=tmp_path)
    for definition in controller.definitions():
        delta = controller.direction(definition.name, definition.subject)
        assert delta.shape == (sd1.text_encoder.config.hidden_size,) and torch.isfinite(delta).all()
    base = GenerationRequest(prompt="a photo of a person", seed=1, cfg=5.0, steps=4)
    out = controller.render(AttributeRequest(base, (SliderSetting("age", "person", 1.0),
                                                    SliderSetting("smile", "person", -1.0))))
    assert out.images[0].size == (64, 64)


@pytest.mark.parametrize("patch, field", [
    ({"version": 2}, "version"),
    ({"model": "sdxl9"}, "model"),
    ({"attributes": [{"name": "a", "subject": "x", "positive": "big", "negative": "a small {subject}"}]},
     "attributes[0]"),
    ({"attributes": [{"name": "a", "subject": "x", "positive": "a {subject}", "negative": "b {subject}",
                      "range": -1}]}, "attributes[0]"),
    ({"attributes": [{"name": "a", "subject": "x", "positive": "a {subject}", "negative": "b {subject}",
                      "colour": 1}]}, "attributes[0].colour"),
    ({"attributes": [{"name": "a", "subject": "x", "positive": "a {subject}", "negative": "b {subject}",
                      "examples": {"scene": "radius", "points": [[-2, 5]]}}]}, "attributes[0]"),
])
def test_bad_definition_files_name_the_field(tmp_path, patch, field):
    good = json.loads((load_definitions.__globals__["presets_dir"]() / "tinyworld.json").read_text())
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({**good, **patch}))
    with pytest.raises(PresetError) as err:
        load_definitions(path)
    assert err.value.field == field and "bad.json" in str(err.value)


def test_animation_rejects_bad_format():
    from PIL import Image

    with pytest.raises(InvalidRequest, match="webp or gif"):
        animate([Image.new("RGB", (8, 8))], fmt="mp4")


# ----------------------------------------------------------------------------- local blending


def test_local_blend_masks_and_arithmetic():
    from studio.attributes.locality import SubjectLocalBlend

    blend = SubjectLocalBlend((4,), reference=1, cond_rows=slice(3, 6), threshold=0.5)
    store = torch.zeros(3, 1, 8, 8)
    store[:, :, :, :] = 1.0  # the background level
    store[1, 0, 1:3, 1:3] = 5.0  # the subject at zero: top left
    store[0, 0, 5:7, 5:7] = 5.0  # row 0: the subject moved / grew to the bottom right
    store[2, 0] += 0.2 * torch.rand(8, 8)  # row 2: the subject vanished, a flat low map (must add nothing)
    blend.store = store
    masks = blend.masks()
    reference_region = masks[1, 0].bool()
    assert reference_region[0:4, 0:4].all() and reference_region.sum() == 16  # dilated by one latent pixel
    assert torch.equal(masks[2, 0].bool(), reference_region)  # a vanished subject adds nothing
    assert masks[0, 0, 4:8, 4:8].all() and (masks[0, 0].bool() & ~reference_region).sum() == 16
    # after blend_start, each row is the reference where its weight is 0, itself where it is 1, a mix between
    weights = blend.blend_weights()
    assert torch.allclose(weights, torch.nn.functional.avg_pool2d(masks, 3, 1, 1, count_include_pad=False))
    latents = torch.randn(3, 4, 8, 8)
    blend.blend_start = 0.0
    out = blend.apply(5, 10, latents.clone(), scheduler=None)
    w = weights[0, 0]
    assert torch.equal(out[0][:, w == 0], latents[1][:, w == 0]) and (w == 0).any()
    assert torch.equal(out[0][:, w == 1], latents[0][:, w == 1]) and (w == 1).any()
    between = (w > 0) & (w < 1)
    assert torch.allclose(out[0][:, between], (latents[1] + w * (latents[0] - latents[1]))[:, between])
    assert torch.equal(out[1], latents[1])


def test_local_blend_records_against_the_reference_keys(tinyworld):
    """The maps score every row's queries against the reference row's keys, so a slider's longer key can't spread
    the subject's map; the recording and the blend leave the reference row as a plain render."""
    from studio.attributes.locality import SubjectLocalBlend

    engine = Engine(tinyworld)
    req = replace(BASE, batch_size=2, shared_seed=True, steps=6)
    idx = subject_token_indices(tinyworld.tokenizer, req.prompt, "circle")
    blend = SubjectLocalBlend(idx, reference=1, cond_rows=slice(2, 4))
    delta = torch.randn(tinyworld.text_encoder.config.hidden_size) * 20
    edits = [SubjectDirections([SubjectShift(idx, delta, (1.0, 0.0))])]
    recorded = engine.generate(req, hooks=RunHooks(embedding_edits=edits, attention_processors=blend.processors,
                                                   latent_edits=[blend]))
    plain = engine.generate(req, hooks=RunHooks(embedding_edits=edits))
    # explicit vs fused attention: rounding only
    assert np.abs(pixels(recorded.images[1]) - pixels(plain.images[1])).max() <= 2
    assert blend.store.shape == (2, 1, 16, 16)  # the latent grid
    own = blend.store[0].flatten()
    ref = blend.store[1].flatten()
    assert own.amax() < 3 * ref.amax()  # the same scale for both rows, despite the huge delta


def test_local_render_keeps_the_rest(controller):
    zero = controller.render(AttributeRequest(BASE, (SliderSetting("size", "circle", 0.0),))).images[0]
    local_zero = controller.render(AttributeRequest(BASE, (SliderSetting("size", "circle", 0.0),),
                                                    local=True)).images[0]
    assert np.abs(pixels(local_zero) - pixels(zero)).max() <= 3  # a reference beside it changes nothing
    free = controller.render(AttributeRequest(BASE, (SliderSetting("size", "circle", 1.5),))).images[0]
    local = controller.render(AttributeRequest(BASE, (SliderSetting("size", "circle", 1.5),), local=True))
    assert local.request.local and len(local.images) == 1
    change_free = np.abs(pixels(free) - pixels(zero)).sum(-1) > 30
    change_local = np.abs(pixels(local.images[0]) - pixels(zero)).sum(-1) > 30
    assert change_local.any()  # the subject still changes
    assert change_local.sum() < change_free.sum()  # and less of the picture changes with it


def test_local_sweep_hidden_reference_and_single_renders(controller, tinyworld, tmp_path):
    from studio.controllers import FileSaver
    from studio.outputs import read_image_settings

    saving = AttributesController(tinyworld, FileSaver(lambda s: tmp_path / f"{s.batch_index}.png"),
                                  directions_root=tmp_path / "directions")
    values = (-1.5, 1.5)  # no zero: the sweep adds a hidden reference row and returns only these frames
    sweep = saving.sweep(SweepRequest(BASE, SliderSetting("size", "circle", 0.0), values, local=True), save=True)
    assert len(sweep.frames) == 2 and len(sweep.saved) == 2
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["0.png", "1.png"]
    assert read_image_settings(sweep.saved[1]).controls["attributes"]["local"] is True
    for v, frame in zip(values, sweep.frames):
        single = controller.render(AttributeRequest(BASE, (SliderSetting("size", "circle", v),), local=True))
        assert np.abs(pixels(frame) - pixels(single.images[0])).max() <= 3


def test_local_render_reuses_the_sessions_reference(controller, monkeypatch):
    """A session's first local render records its reference (slider at zero); later renders of the same base run
    one image against it and give what the two-image render gives; another base records its own."""
    from studio.attributes import locality

    rows = []
    original = locality.SubjectLocalBlend.apply

    def counting(self, step, num_steps, latents, scheduler):
        rows.append(latents.shape[0])
        return original(self, step, num_steps, latents, scheduler)

    monkeypatch.setattr(locality.SubjectLocalBlend, "apply", counting)
    session = SliderSession()
    first = controller.render(AttributeRequest(BASE, (SliderSetting("size", "circle", 1.0),), local=True),
                              session=session)
    recorded = session.local_reference
    assert recorded is not None and len(recorded.latents) == BASE.steps == len(recorded.stores)
    assert recorded.keys and all(k.dim() == 3 for k in recorded.keys.values())
    assert set(rows) == {2}
    rows.clear()
    for v in (1.0, -1.5):
        again = controller.render(AttributeRequest(BASE, (SliderSetting("size", "circle", v),), local=True),
                                  session=session)
        fresh = controller.render(AttributeRequest(BASE, (SliderSetting("size", "circle", v),), local=True))
        assert np.abs(pixels(again.images[0]) - pixels(fresh.images[0])).max() <= 3
    assert np.abs(pixels(again.images[0]) - pixels(first.images[0])).max() > 3  # the slider still moves it
    assert rows[:BASE.steps] == [1] * BASE.steps  # the session's renders carry no reference row
    assert session.local_reference is recorded
    other = replace(BASE, seed=BASE.seed + 1)
    controller.render(AttributeRequest(other, (SliderSetting("size", "circle", 1.0),), local=True), session=session)
    assert session.local_reference is not recorded and session.local_reference.key[1] == controller.validate(
        AttributeRequest(other))


def test_local_blend_refuses_two_references():
    from studio.attributes.locality import LocalReference, SubjectLocalBlend

    ref = LocalReference(key=(), latents=(), stores=(), keys={})
    with pytest.raises(InvalidRequest, match="not both"):
        SubjectLocalBlend((4,), reference=1, cond_rows=slice(2, 4), cached=ref)
    with pytest.raises(InvalidRequest, match="not both"):
        SubjectLocalBlend((4,), reference=None, cond_rows=slice(2, 4))


def test_local_rejects_what_it_cannot_blend(controller):
    with pytest.raises(InvalidRequest, match="prompt-weight"):
        controller.render(AttributeRequest(BASE, (SliderSetting("size", "circle", 1.0, "weight"),), local=True))
    with pytest.raises(InvalidRequest, match="batch size 1"):
        controller.render(AttributeRequest(replace(BASE, batch_size=2), (SliderSetting("size", "circle", 1.0),),
                                           local=True))
    with pytest.raises(InvalidRequest, match="at least one slider"):
        controller.render(AttributeRequest(BASE, (), local=True))
