"""The editing workbench: img2img, inpainting (mask blending arithmetic, the known region kept), outpainting, the
``edit`` CLI. Structure on the tiny random SD model; behaviour on Tiny World."""

from __future__ import annotations

import io
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from studio.cli import main
from studio.controllers.edit import (
    EditingController, Img2ImgRequest, InpaintRequest, OutpaintRequest, PromptToPromptRequest,
)
from studio.editing import (
    KnownRegionBlend, composite, extend_canvas, feathered, latent_mask, mask_array, seeded_noise, start_step,
)
from studio.engine import Engine, GenerationRequest, InvalidRequest, RunHooks, make_scheduler
from studio.outputs import read_image_settings
from studio.tinyworld.analyzer import analyze
from studio.tinyworld.scenes import SceneObject, scene_from_objects

pytestmark = pytest.mark.usefixtures("torch_single_thread")

BASE = GenerationRequest(prompt="a blue square", steps=4, cfg=5.0, seed=3)


def source_image() -> Image.Image:
    image = Image.new("RGB", (64, 64), (20, 20, 20))
    image.paste((220, 40, 40), (8, 8, 30, 30))
    return image


def right_half() -> np.ndarray:
    mask = np.zeros((64, 64), np.float32)
    mask[:, 32:] = 1.0
    return mask


# ----------------------------------------------------------------------------- arithmetic


def test_mask_helpers():
    rgba = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    rgba.paste((255, 0, 0, 255), (0, 0, 16, 32))
    m = mask_array(rgba, (32, 32))
    assert m[:, :16].min() == 1.0 and m[:, 16:].max() == 0.0  # alpha is the mask for RGBA
    assert mask_array(Image.new("L", (16, 16), 255), (32, 32)).shape == (32, 32)
    soft = feathered(right_half(), 4)
    assert soft[:, :24].max() < 0.05 and soft[:, 40:].min() > 0.95 and 0.2 < soft[0, 32] < 0.8
    lat = latent_mask(right_half(), 8)
    assert lat.shape == (1, 1, 8, 8) and lat[0, 0, :, :4].max() == 0 and lat[0, 0, :, 4:].min() == 1
    a, b = Image.new("RGB", (4, 4), (200, 0, 0)), Image.new("RGB", (4, 4), (0, 0, 100))
    half = np.full((4, 4), 0.5, np.float32)
    assert np.asarray(composite(a, b, half))[0, 0].tolist() == [100, 0, 50]
    wide, new_area = extend_canvas(source_image(), "left", 10, 16)
    assert wide.size == (80, 64) and new_area[:, :16].min() == 1 and new_area[:, 16:].max() == 0
    assert np.array_equal(np.asarray(wide)[:, 16:], np.asarray(source_image()))
    assert start_step(20, 0.6) == 8 and start_step(20, 1.0) == 0
    with pytest.raises(InvalidRequest, match="strength must be in"):
        start_step(20, 0.0)


@pytest.mark.parametrize("sampler", ["DDIM", "Euler", "DPM++ 2M"])
def test_known_region_blend_keeps_the_noised_original(tiny_model, sampler):
    scheduler = make_scheduler(tiny_model.scheduler_config, sampler)
    scheduler.set_timesteps(4)
    x0 = torch.randn(1, 4, 8, 8)
    noise = torch.randn(1, 4, 8, 8)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 4:] = 1
    blend = KnownRegionBlend(x0, mask, noise)
    latents = torch.full((1, 4, 8, 8), 7.0)
    # the sampler's scale at the next level: scale_model_input maps it back to sqrt(a) x0 + sqrt(1 - a) noise
    scheduler.step(torch.zeros_like(x0), scheduler.timesteps[0], torch.randn(1, 4, 8, 8))
    out = blend.apply(0, 4, latents, scheduler)
    assert torch.equal(out[..., 4:], latents[..., 4:])
    from studio.engine.samplers import alpha_bar

    a = alpha_bar(scheduler, 1, scheduler.timesteps[1])
    vp = scheduler.scale_model_input(out, scheduler.timesteps[1])
    assert torch.allclose(vp[..., :4], (a ** 0.5 * x0 + (1 - a) ** 0.5 * noise)[..., :4], atol=1e-4)
    assert torch.equal(blend.apply(3, 4, latents, scheduler)[..., :4], x0[..., :4])  # clean after the last step


# ----------------------------------------------------------------------------- controller


def test_inpaint_keeps_pixels_outside_the_mask(tiny_model, tmp_path):
    controller = EditingController(tiny_model)
    out = controller.inpaint(InpaintRequest(BASE, source_image(), right_half(), feather=2), save=False)
    result, source = np.asarray(out.images[0], int), np.asarray(source_image(), int)
    outside = out.mask == 0
    assert outside.sum() > 1000 and np.array_equal(result[outside], source[outside])
    assert np.abs(result[:, 40:] - source[:, 40:]).mean() > 5  # the masked half was repainted


def test_img2img_runs_the_last_steps_only(tiny_model):
    controller = EditingController(tiny_model)
    seen = []
    controller.img2img(Img2ImgRequest(replace(BASE, steps=8), source_image(), 0.25), save=False,
                       on_progress=lambda step, total: seen.append(step))
    assert len(seen) == 2  # round(0.25 * 8) steps were run
    # strength 1 starts from the engine's own noise for the seed: the picture of a plain run (up to the tiny signal
    # the first timestep still holds)
    strong = controller.img2img(Img2ImgRequest(BASE, source_image(), 1.0), save=False).images[0]
    plain = Engine(tiny_model).generate(replace(BASE, width=64, height=64)).images[0]
    assert np.abs(np.asarray(plain, int) - np.asarray(strong, int)).mean() < 3


@pytest.mark.slow
def test_img2img_strength_on_tinyworld(tiny_models):
    controller = EditingController(tiny_models("tinyworld"))
    scene = scene_from_objects("black", [SceneObject("circle", "red", "large", 15.0, 32.0, 32.0)])
    base = replace(controller.defaults(), prompt="a large blue circle on a black background", seed=2)
    diff = {s: np.abs(np.asarray(controller.img2img(Img2ImgRequest(base, scene.image, s), save=False).images[0],
                                 int) - np.asarray(scene.image, int)).mean() for s in (0.2, 0.9)}
    assert diff[0.2] < diff[0.9]
    recoloured = controller.img2img(Img2ImgRequest(base, scene.image, 0.9), save=False).images[0]
    assert [o.colour for o in analyze(recoloured).objects] == ["blue"]


def test_outpaint_extends_the_canvas(tiny_model):
    out = EditingController(tiny_model).outpaint(OutpaintRequest(BASE, source_image(), "bottom", 8), save=False)
    assert out.images[0].size == (64, 72) and out.request.height == 72  # 8 px rounded up to the size rule's multiple
    assert np.array_equal(np.asarray(out.images[0])[:52], np.asarray(source_image())[:52])  # kept above the seam


def test_bad_edit_requests(tiny_model):
    controller = EditingController(tiny_model)
    with pytest.raises(InvalidRequest, match="mask is empty"):
        controller.inpaint(InpaintRequest(BASE, source_image(), np.zeros((64, 64))), save=False)
    with pytest.raises(InvalidRequest, match="the image is 60x64"):
        controller.img2img(Img2ImgRequest(BASE, Image.new("RGB", (60, 64)), 0.5), save=False)
    with pytest.raises(InvalidRequest, match="side must be one of"):
        controller.outpaint(OutpaintRequest(BASE, source_image(), "diagonal", 8), save=False)
    with pytest.raises(InvalidRequest, match="batch size must be 1"):
        controller.img2img(Img2ImgRequest(replace(BASE, batch_size=2), source_image()), save=False)


def test_latent_edit_hooks_are_validated(tiny_model):
    with pytest.raises(InvalidRequest, match="latent edit"):
        Engine(tiny_model).generate(BASE, hooks=RunHooks(latent_edits=[object()]))


@pytest.mark.slow
def test_inpainting_paints_the_prompted_object_on_tinyworld(tiny_models):
    controller = EditingController(tiny_models("tinyworld"))
    scene = scene_from_objects("black", [SceneObject("circle", "red", "large", 15.0, 17.0, 32.0)])
    hits = 0
    for seed in range(4):
        base = replace(controller.defaults(), prompt="a large blue square on a black background", seed=seed)
        out = controller.inpaint(InpaintRequest(base, scene.image, right_half()), save=False)
        objects = analyze(out.images[0]).objects
        hits += any(o.colour == "blue" and o.cx > 32 for o in objects)
        assert any(o.colour == "red" and o.shape == "circle" for o in objects)  # the known circle is kept
    assert hits >= 3


# ----------------------------------------------------------------------------- CLI


def run_cli(model, *argv):
    out, err = io.StringIO(), io.StringIO()
    code = main(["edit", *map(str, argv)], load_model=lambda spec, **kw: model, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_cli_inpaint_writes_an_image_with_its_settings(tiny_model, tmp_path):
    source_image().save(tmp_path / "in.png")
    Image.fromarray((right_half() * 255).astype(np.uint8)).save(tmp_path / "mask.png")
    code, out, err = run_cli(tiny_model, "inpaint", "--image", tmp_path / "in.png", "--mask", tmp_path / "mask.png",
                             "--prompt", "a blue square", "--steps", 3, "--out", tmp_path / "out.png", "--json")
    assert code == 0, err
    assert json.loads(out)["size"] == [64, 64]
    settings = read_image_settings(tmp_path / "out.png")
    assert settings.workbench == "editing" and settings.controls["editing"]["mode"] == "inpaint"


@pytest.mark.parametrize("argv, words", [
    (["inpaint", "--image", "{img}", "--prompt", "x", "--out", "o.png"], "needs --mask"),
    (["img2img", "--image", "missing.png", "--prompt", "x", "--out", "o.png"], "no such file"),
    (["img2img", "--image", "{img}", "--prompt", "x", "--out", "o.jpg"], "must be a .png"),
    (["img2img", "--image", "{img}", "--prompt", "x", "--out", "o.png", "--strength", "2"], "strength must be in"),
    (["outpaint", "--image", "{img}", "--prompt", "x", "--out", "o.png", "--pixels", "0"], "whole number of pixels"),
])
def test_cli_bad_input_is_one_clear_line(tiny_model, tmp_path, monkeypatch, argv, words):
    monkeypatch.chdir(tmp_path)
    source_image().save(tmp_path / "in.png")
    code, out, err = run_cli(tiny_model, *[a.replace("{img}", str(tmp_path / "in.png")) for a in argv])
    assert code == 2 and words in err and err.count("\n") == 1


# ----------------------------------------------------------------------------- prompt-to-prompt


def test_token_mapping_for_swaps_and_refinements(tiny_model):
    from studio.editing.p2p import token_mapping

    tok = tiny_model.tokenizer
    swap = token_mapping(tok, "a red circle", "a blue circle")
    n_red, n_blue = (len(tok(w, add_special_tokens=False).input_ids) for w in ("red", "blue"))
    assert len(swap) == tok.model_max_length and None not in swap and swap[:2] == [0, 1]
    assert set(swap[2:2 + n_blue]) <= set(range(2, 2 + n_red)) and swap[2 + n_blue] == 2 + n_red  # "circle"
    n_big = len(tok("big", add_special_tokens=False).input_ids)
    refine = token_mapping(tok, "a red circle", "a big red circle")
    assert refine[:2] == [0, 1] and refine[2:2 + n_big] == [None] * n_big and refine[2 + n_big] == 2


def test_prompt_to_prompt_attention_control(tiny_model, tmp_path):
    controller = EditingController(tiny_model)
    before = {name: type(p) for name, p in tiny_model.unet.attn_processors.items()}
    same = controller.prompt_to_prompt(PromptToPromptRequest(BASE, BASE.prompt, 1.0, 1.0), save=False)
    assert np.array_equal(np.asarray(same.source), np.asarray(same.edited))  # an identical edit changes nothing
    edited = controller.prompt_to_prompt(PromptToPromptRequest(BASE, "a green square", 0.8, 0.4), save=False)
    plain = Engine(tiny_model).generate(replace(BASE, width=64, height=64)).images[0]
    assert np.abs(np.asarray(edited.source, int) - np.asarray(plain, int)).max() <= 1  # the source is a plain run
    assert not np.array_equal(np.asarray(edited.source), np.asarray(edited.edited))
    assert edited.blend_words == (("blue",), ("green",))
    free = Engine(tiny_model).generate(replace(BASE, prompt="a green square", width=64, height=64)).images[0]
    assert not np.array_equal(np.asarray(free), np.asarray(edited.edited))  # the control acted
    assert {name: type(p) for name, p in tiny_model.unet.attn_processors.items()} == before
    with pytest.raises(InvalidRequest, match="cross_fraction must be in 0..1"):
        controller.prompt_to_prompt(PromptToPromptRequest(BASE, "a green square", 1.5), save=False)
    with pytest.raises(InvalidRequest, match="write the edited prompt"):
        controller.prompt_to_prompt(PromptToPromptRequest(BASE, " "), save=False)


def test_prompt_to_prompt_control_arithmetic():
    from studio.editing.p2p import PromptToPromptControl

    heads, queries, keys = 2, 16, 5
    control = PromptToPromptControl(cond_rows=slice(2, 4), mapping=[0, 1, 1, 3, 4], num_steps=10, cross_fraction=0.5,
                                    self_fraction=0.2, reweight={3: 2.0})
    probs = torch.rand(4 * heads, queries, keys)
    out = control._on_probs("up.0.attn2", probs, heads).view(4, heads, queries, keys)
    view = probs.view(4, heads, queries, keys)
    assert torch.equal(out[:3], view[:3])  # uncond rows and the source untouched
    expected = view[2][..., [0, 1, 1, 3, 4]].clone()
    expected[..., 3] *= 2.0
    assert torch.allclose(out[3], expected)
    self_probs = torch.rand(4 * heads, queries, queries)
    assert torch.equal(control._on_probs("up.0.attn1", self_probs, heads).view(4, heads, queries, queries)[3],
                       self_probs.view(4, heads, queries, queries)[2])
    control.step = 5  # past both fractions: only the reweighting is left
    late = control._on_probs("up.0.attn2", probs, heads).view(4, heads, queries, keys)
    assert torch.allclose(late[3][..., 3], view[3][..., 3] * 2.0) and torch.equal(late[3][..., 0], view[3][..., 0])
    assert torch.equal(control._on_probs("up.0.attn1", self_probs, heads), self_probs)



def test_local_blend_uses_the_words_attention_summed_over_steps():
    from studio.editing.p2p import PromptToPromptControl

    control = PromptToPromptControl(cond_rows=slice(0, 2), mapping=[0, 1, 2], num_steps=4, blend_tokens=((1,), (1,)),
                                    blend_start=0.5, blend_threshold=0.5)
    latents = torch.stack([torch.zeros(4, 8, 8), torch.ones(4, 8, 8)])
    hot = torch.full((2, 64, 3), 0.1)  # (source, edited) x 1 head, 8x8 queries, 3 tokens
    hot[:, 8 * 3 + 3, 1] = 0.9  # the word attends to one latent pixel
    control._on_probs("up.0.attn2", hot, 1)
    assert torch.equal(control.apply(0, 4, latents, None), latents)  # before blend_start: maps stored, no blending
    control.step = 2
    control._on_probs("up.0.attn2", torch.full((2, 64, 3), 0.1), 1)  # a flat step adds nothing to the shape
    out = control.apply(2, 4, latents, None)
    assert torch.equal(out[0], latents[0])
    kept = out[1, 0] == 1
    # the pixel, dilated by one (3x3), is the edit's; everything else is the source's
    assert kept.sum() == 9 and kept[2:5, 2:5].all()


def test_prompt_to_prompt_blend_words(tiny_model):
    controller = EditingController(tiny_model)
    out = controller.prompt_to_prompt(PromptToPromptRequest(BASE, "a green square", 0.8, 0.4,
                                                            blend_words=("square", "green")), save=False)
    assert out.blend_words == (("square",), ("square", "green"))
    with pytest.raises(InvalidRequest, match="occur in neither prompt"):
        controller.prompt_to_prompt(PromptToPromptRequest(BASE, "a green square", blend_words=("circle",)),
                                    save=False)

def test_fixed_blend_mask_replaces_the_attention_mask():
    from studio.editing.p2p import PromptToPromptControl

    mask = torch.zeros(8, 8)
    mask[2:4, 5:7] = 1.0
    control = PromptToPromptControl(cond_rows=slice(0, 2), mapping=[0, 1, 2], num_steps=4, blend_start=0.5,
                                    fixed_mask=mask)
    latents = torch.stack([torch.zeros(4, 8, 8), torch.ones(4, 8, 8)])
    assert torch.equal(control.apply(1, 4, latents, None), latents)  # before blend_start
    out = control.apply(2, 4, latents, None)
    assert torch.equal(out[0], latents[0]) and torch.equal(out[1], mask.expand(4, 8, 8))


def test_contrast_mask_falls_on_the_swapped_object_on_tinyworld(tiny_models):
    from studio.editing.contrast import contrast_map, contrast_mask

    model = tiny_models("tinyworld")
    circle = SceneObject("circle", "red", "large", 12.0, 16.0, 32.0)
    square = SceneObject("square", "green", "large", 12.0, 48.0, 32.0)
    scene = scene_from_objects("black", [circle, square])
    pixels = torch.from_numpy(np.asarray(scene.image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    x0 = Engine(model).encode(pixels[None]).float().cpu()[0]
    source = "a large red circle on the left and a large green square on the right on a black background"
    target = source.replace("red circle", "blue circle")
    mask = contrast_mask(model, x0, source, target, samples=4)
    assert mask.shape == x0.shape[1:] and set(mask.unique().tolist()) <= {0.0, 1.0}
    factor = scene.image.width // x0.shape[-1]
    on_circle = torch.from_numpy(scene.masks[0][::factor, ::factor].copy())
    on_square = torch.from_numpy(scene.masks[1][::factor, ::factor].copy())
    assert mask[on_circle].mean() > 0.5 > mask[on_square].mean() + 0.3  # the circle is edited, the square kept
    with pytest.raises(InvalidRequest, match="they are the same"):
        contrast_map(model, x0, source, source)


def test_prompt_to_prompt_with_the_contrast_mask(tiny_model, tmp_path):
    controller = EditingController(tiny_model)
    out = controller.prompt_to_prompt(PromptToPromptRequest(BASE, "a green square", blend_mask="contrast"),
                                      save=False)
    assert out.blend_mask is not None and out.blend_mask.shape == (16, 16) and out.blend_words == ((), ())
    plain = Engine(tiny_model).generate(replace(BASE, width=64, height=64)).images[0]
    assert np.abs(np.asarray(out.source, int) - np.asarray(plain, int)).max() <= 1
    with pytest.raises(InvalidRequest, match="blend_mask must be one of attention, contrast, auto"):
        controller.prompt_to_prompt(PromptToPromptRequest(BASE, "a green square", blend_mask="words"), save=False)
    with pytest.raises(InvalidRequest, match="for a reweighting edit use the attention mask"):
        controller.prompt_to_prompt(PromptToPromptRequest(BASE, BASE.prompt, reweight=(("square", 2.0),),
                                                          blend_mask="contrast"), save=False)
    code, printed, err = run_cli(tiny_model, "p2p", "--prompt", "a blue square", "--target", "a green square",
                                 "--steps", 3, "--blend-mask", "contrast", "--out", tmp_path / "c.png", "--json")
    assert code == 0, err
    editing = read_image_settings(tmp_path / "c-edit.png").controls["editing"]
    assert editing["blend_mask"] == "contrast" and 0 <= editing["contrast_mask"]["share_of_image"] <= 1
    assert editing["contrast_mask"]["source_latents"] == "the source's x0 estimate at the mask's noise level"
    assert editing["contrast_mask"]["grow"] == 0  # a generated source's mask is used as thresholded
    # auto: the contrast mask for a swap, the attention mask for a reweighting or hand-picked blend words
    auto = controller.prompt_to_prompt(PromptToPromptRequest(BASE, "a green square", blend_mask="auto"), save=False)
    assert auto.blend_mask is not None and torch.equal(auto.blend_mask, out.blend_mask)
    for request in (PromptToPromptRequest(BASE, BASE.prompt, reweight=(("square", 2.0),), blend_mask="auto"),
                    PromptToPromptRequest(BASE, "a green square", blend_words=("square",), blend_mask="auto")):
        assert controller.prompt_to_prompt(request, save=False).blend_mask is None
    code, printed, err = run_cli(tiny_model, "p2p", "--prompt", "a blue square", "--target", "a green square",
                                 "--steps", 3, "--out", tmp_path / "d.png")
    assert code == 0, err
    editing = read_image_settings(tmp_path / "d-edit.png").controls["editing"]
    assert editing["blend_mask"] == "contrast" and editing["blend_mask_asked"] == "auto"


def test_contrast_mask_grows_by_latent_pixels(tiny_model):
    """``mask_grow`` widens the contrast mask (a max-pool); by default only an inverted image's mask is widened."""
    from studio.controllers.edit import InversionRequest
    from studio.editing.contrast import grown

    dot = torch.zeros(8, 8)
    dot[4, 4] = 1
    assert grown(dot, 0) is dot
    assert grown(dot, 1).sum() == 9 and grown(dot, 1)[3:6, 3:6].all()
    assert grown(dot, 2).sum() == 25
    controller = EditingController(tiny_model)
    for bad in (-1, 5, 1.5, True):
        with pytest.raises(InvalidRequest, match="mask_grow widens the contrast mask by 0..4"):
            controller.prompt_to_prompt(PromptToPromptRequest(BASE, "a green square", blend_mask="contrast",
                                                              mask_grow=bad), save=False)
    plain = controller.prompt_to_prompt(PromptToPromptRequest(BASE, "a green square", blend_mask="contrast",
                                                              mask_grow=0), save=False).blend_mask
    wide = controller.prompt_to_prompt(PromptToPromptRequest(BASE, "a green square", blend_mask="contrast",
                                                             mask_grow=2), save=False).blend_mask
    assert torch.equal(wide, grown(plain, 2)) and wide.sum() >= plain.sum()
    inverted = controller.invert(InversionRequest(replace(BASE, steps=3), source_image()))
    out = controller.prompt_to_prompt(PromptToPromptRequest(BASE, "a green square", blend_mask="contrast",
                                                            inverted=inverted), save=False)
    unwidened = controller.prompt_to_prompt(PromptToPromptRequest(BASE, "a green square", blend_mask="contrast",
                                                                  inverted=inverted, mask_grow=0), save=False)
    assert torch.equal(out.blend_mask, grown(unwidened.blend_mask, 1))


def test_source_estimate_stops_at_the_mask_noise_level(tiny_model):
    """The contrast mask's source estimate is the full render's own x0 prediction at the step nearest the mask's
    noise level, and the render stops there; the user's cancel still cancels it."""
    from studio.editing.contrast import source_x0_at_strength
    from studio.engine import Cancelled, CancelToken

    engine = Engine(tiny_model)
    request = replace(BASE, steps=10, width=64, height=64)
    scheduler = make_scheduler(tiny_model.scheduler_config, request.sampler)
    scheduler.set_timesteps(request.steps)
    table_end = tiny_model.scheduler_config["num_train_timesteps"] - 1
    wanted = min(range(10), key=lambda i: abs(int(scheduler.timesteps[i]) - 0.5 * table_end))
    assert 0 < wanted < 9
    full: dict[int, torch.Tensor] = {}
    engine.generate(request, on_step=lambda e: full.setdefault(e.step, e.x0_pred[0].float().cpu()))
    progress: list[tuple[int, int]] = []
    x0 = source_x0_at_strength(engine, request, on_progress=lambda done, total: progress.append((done, total)))
    assert torch.allclose(x0, full[wanted], atol=1e-5)
    assert progress == [(k + 1, wanted + 1) for k in range(wanted + 1)]  # no step after the one it needs
    cancelled = CancelToken()
    cancelled.cancel()
    with pytest.raises(Cancelled):
        source_x0_at_strength(engine, request, cancel=cancelled)
    with pytest.raises(InvalidRequest, match="strength must be in"):
        source_x0_at_strength(engine, request, strength=1.0)


def test_cli_prompt_to_prompt_writes_both_images(tiny_model, tmp_path):
    code, out, err = run_cli(tiny_model, "p2p", "--prompt", "a blue square", "--target", "a green square", "--steps", 3,
                             "--reweight", "square:2", "--out", tmp_path / "swap.png", "--json")
    assert code == 0, err
    paths = json.loads(out)["paths"]
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["swap.png", "swap-edit.png"]
    settings = read_image_settings(tmp_path / "swap-edit.png")
    assert settings.controls["editing"]["target"] == "a green square"
    code, out, err = run_cli(tiny_model, "p2p", "--prompt", "x", "--out", tmp_path / "o.png")
    assert code == 2 and "needs --target" in err
    code, out, err = run_cli(tiny_model, "p2p", "--prompt", "x", "--target", "y", "--reweight", "x", "--out",
                             tmp_path / "o.png")
    assert code == 2 and "word:factor" in err


# ----------------------------------------------------------------------------- inversion


def test_inversion_reconstructs_through_the_engine(tiny_model):
    from studio.controllers.edit import InversionRequest

    out = EditingController(tiny_model).invert(InversionRequest(replace(BASE, steps=4), source_image()))
    f = tiny_model.vae_scale_factor
    assert out.latents.shape == (1, 4, 64 // f, 64 // f) and out.request.sampler == "DDIM" and out.request.cfg == 1.0
    assert out.reconstruction.size == (64, 64) and np.isfinite(out.psnr_db)


@pytest.mark.slow
def test_inversion_psnr_on_tinyworld(tiny_models):
    from studio.controllers.edit import InversionRequest
    from studio.tinyworld.captions import full_caption
    from studio.tinyworld.scenes import SceneSpec, generate_scene

    controller = EditingController(tiny_models("tinyworld"))
    scene = generate_scene(90_001, SceneSpec(n_objects=1))
    base = replace(controller.defaults(), prompt=full_caption(scene.background, scene.objects), steps=25)
    out = controller.invert(InversionRequest(base, scene.image))
    assert out.psnr_db > 25


def test_cli_invert_prints_the_psnr(tiny_model, tmp_path):
    source_image().save(tmp_path / "in.png")
    code, out, err = run_cli(tiny_model, "invert", "--image", tmp_path / "in.png", "--prompt", "a red square",
                             "--steps", 3, "--out", tmp_path / "recon.png", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["steps"] == 3 and (tmp_path / "recon.png").is_file() and "psnr_db" in report


# ----------------------------------------------------------------------------- null-text inversion, p2p on real images


def test_null_text_optimisation_touches_only_the_embeddings(tiny_model):
    from studio.editing.inversion import NullTextEmbeddings, ddim_invert, null_text_optimize

    params = dict(tiny_model.unet.named_parameters())
    before = {k: v.detach().clone() for k, v in params.items()}
    controller = EditingController(tiny_model)
    _, x0, _ = controller._prepare(BASE, source_image())
    path = ddim_invert(tiny_model, x0, BASE.prompt, 3, trajectory=True)
    assert len(path) == 4 and torch.equal(path[-1], x0.to(path[-1].dtype))
    seen = []
    learned = null_text_optimize(tiny_model, path, BASE.prompt, "", 3, 5.0, inner_steps=2,
                                 on_progress=lambda i, n: seen.append((i, n)))
    assert learned.shape[0] == 3 and seen == [(1, 3), (2, 3), (3, 3)]
    assert all(p.grad is None and torch.equal(p, before[k]) for k, p in params.items())
    edit = NullTextEmbeddings(learned)
    embeds = torch.zeros(2, *learned.shape[1:])
    assert torch.equal(edit.apply(1, 3, embeds, "cond"), embeds)
    assert torch.equal(edit.apply(1, 3, embeds, "uncond")[1], learned[1])
    with pytest.raises(ValueError, match="optimised for 3 steps"):
        edit.apply(0, 4, embeds, "uncond")


def test_null_text_inversion_and_prompt_to_prompt_on_the_real_image(tiny_model):
    from studio.controllers.edit import InversionRequest

    controller = EditingController(tiny_model)
    with pytest.raises(InvalidRequest, match="CFG above 1"):
        controller.invert(InversionRequest(replace(BASE, cfg=1.0), source_image(), null_text=True))
    inverted = controller.invert(InversionRequest(replace(BASE, steps=3), source_image(), null_text=True,
                                                  inner_steps=2))
    assert inverted.request.cfg == 5.0 and inverted.null_embeddings.shape[0] == 3
    out = controller.prompt_to_prompt(PromptToPromptRequest(replace(BASE, prompt="ignored"), "a red circle",
                                                            inverted=inverted), save=False)
    assert out.request.prompt == BASE.prompt and out.request.sampler == "DDIM"
    a = np.asarray(out.source, dtype=np.float64)
    b = np.asarray(inverted.reconstruction, dtype=np.float64)
    assert 10 * np.log10(255 ** 2 / max(((a - b) ** 2).mean(), 1e-10)) > 35  # the source is the reconstruction


def test_null_text_holds_a_guided_reconstruction_on_tinyworld(tiny_models):
    from studio.controllers.edit import InversionRequest
    from studio.engine import StartLatents
    from studio.tinyworld.captions import full_caption
    from studio.tinyworld.scenes import SceneSpec, generate_scene

    controller = EditingController(tiny_models("tinyworld"))
    scene = generate_scene(90_002, SceneSpec(n_objects=1))
    base = replace(controller.defaults(), prompt=full_caption(scene.background, scene.objects), steps=10, cfg=3.0,
                   seed=0)
    fitted = controller.invert(InversionRequest(base, scene.image, null_text=True, inner_steps=5))
    plain = controller.invert(InversionRequest(base, scene.image))
    guided = controller.engine.generate(replace(base, sampler="DDIM"), start=StartLatents(plain.latents, 0))
    a, b = np.asarray(guided.images[0], dtype=np.float64), np.asarray(scene.image, dtype=np.float64)
    without = 10 * np.log10(255 ** 2 / ((a - b) ** 2).mean())
    assert fitted.psnr_db > without + 1, (fitted.psnr_db, without)  # Tiny World drifts little at CFG 3


def test_cli_null_text_invert_and_p2p_on_an_image(tiny_model, tmp_path):
    source_image().save(tmp_path / "in.png")
    code, out, err = run_cli(tiny_model, "invert", "--image", tmp_path / "in.png", "--prompt", "a red square",
                             "--steps", 2, "--null-text", "--inner-steps", 2, "--out", tmp_path / "recon.png",
                             "--json")
    assert code == 0, err
    assert json.loads(out)["null_text"] is True
    assert read_image_settings(tmp_path / "recon.png").controls["editing"]["mode"] == "inversion"
    code, out, err = run_cli(tiny_model, "p2p", "--image", tmp_path / "in.png", "--prompt", "a red square",
                             "--target", "a blue square", "--steps", 2, "--out", tmp_path / "real.png", "--json")
    assert code == 0, err
    edited = read_image_settings(tmp_path / "real-edit.png").controls["editing"]
    assert edited["inverted"]["null_text"] is False and edited["target"] == "a blue square"
