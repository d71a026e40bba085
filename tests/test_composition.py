"""Composition: region masks and guidance, per-stage prompts, blending, the controller and the tab's handlers."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from studio.composition import (
    BLEND_MODES, BlendEdit, Region, RegionalGuidance, StagePrompt, StagePrompts, check_regions, check_stages,
    load_regions, load_stages, region_masks, stages_of_steps, timeline,
)
from studio.composition.stages import stage_of_timestep
from studio.controllers.compose import (
    BlendRequest, CompositionController, CompositionRequest, PromptPart, compose_prompt, monolithic_prompt,
)
from studio.engine import Engine, GenerationRequest, InvalidRequest
from studio.engine.hooks import StepContext
from studio.ui.composition_tab import CompositionHandlers, CompositionSession, box_from_drawing, parse_box
from tests.test_engine import unet_calls

pytestmark = pytest.mark.usefixtures("torch_single_thread")

BASE = GenerationRequest(prompt="a red circle", negative_prompt="", steps=4, cfg=5.0, seed=2)
HALVES = (Region("a red circle", 0, 0, 0.5, 1), Region("a blue square", 0.5, 0, 1, 1))


# ------------------------------------------------------------------------------ regions


def test_region_masks_hard_and_feathered():
    hard = region_masks(HALVES, 8, 8)
    assert hard.shape == (2, 1, 8, 8)
    assert torch.equal(hard[0, 0, :, :4], torch.ones(8, 4)) and torch.equal(hard[0, 0, :, 4:], torch.zeros(8, 4))
    assert torch.equal(hard.sum(0), torch.ones(1, 8, 8))  # the halves tile the image
    soft = region_masks(HALVES, 8, 8, feather=0.5)  # a ramp 4 px wide inside each half, 0 at the shared edge
    row = soft[0, 0, 0]
    assert torch.allclose(row[:4], torch.tensor([0.875, 0.625, 0.375, 0.125])) and torch.all(row[4:] == 0)
    assert torch.equal(soft[1, 0, 0], row.flip(0)) and torch.all(soft.sum(0) <= 1)
    narrow = region_masks(HALVES, 8, 8, feather=0.125)  # 1 px: only the pixels at the shared edge fade
    assert torch.allclose(narrow[0, 0, 0, :4], torch.tensor([1.0, 1.0, 1.0, 0.5]))
    assert torch.equal(region_masks((Region("a", 0, 0, 1, 1),), 4, 4, 0.5), torch.ones(1, 1, 4, 4))  # borders


def test_region_validation_messages():
    with pytest.raises(InvalidRequest, match="0 <= x0 < x1 <= 1"):
        check_regions([Region("a", 0.6, 0, 0.5, 1)], 0.0)
    with pytest.raises(InvalidRequest, match="prompt is empty"):
        check_regions([Region(" ", 0, 0, 1, 1)], 0.0)
    with pytest.raises(InvalidRequest, match="feather"):
        check_regions(HALVES, 0.9)


@pytest.mark.parametrize("mode", ["average", "add"])
def test_regional_guidance_arithmetic_and_crops(mode):
    """Hand computation. average: global CFG prediction weighted 1, each region's crop prediction weighted by its
    mask. add: the global CFG prediction plus each region's guidance (cfg * (cond - uncond)) inside its mask."""
    guidance = RegionalGuidance(HALVES, torch.stack([torch.full((3, 2), 1.0), torch.full((3, 2), 2.0)]),
                                feather=0.0, multiple=2, mode=mode)
    assert guidance.crop(HALVES[0], 4, 4) == (0, 4, 0, 2) and guidance.crop(HALVES[1], 4, 4) == (0, 4, 2, 4)
    feathered = RegionalGuidance(HALVES, torch.zeros(2, 3, 2), feather=0.2, multiple=8)
    assert feathered.crop(HALVES[0], 16, 16) == (0, 16, 0, 8)  # the feather does not grow the crop to the image
    u, c = torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 4, 4)
    calls = []

    def denoise(x, embeds):  # "UNet": the region prompt's id (from its embedding) times 10, 0 for uncond
        calls.append(tuple(x.shape))
        return embeds[:, :1, :1].reshape(-1, 1, 1, 1).expand_as(x) * 10

    ctx = StepContext(step=0, num_steps=1, timestep=0, model_input=torch.zeros(1, 1, 4, 4),
                      eps={"uncond": u, "cond": c}, cfg=2.0,
                      embeds={"uncond": torch.zeros(1, 3, 2), "cond": torch.ones(1, 3, 2)}, denoise=denoise)
    out = guidance.combine_step(ctx)
    assert calls == [(4, 1, 4, 2)]  # both half crops in one call: [uncond x2, region x2]
    # global CFG: 0 + 2 * (1 - 0) = 2; region uncond 0, region cond 10 (left) and 20 (right)
    left, right = (11.0, 21.0) if mode == "average" else (22.0, 42.0)  # average: (2 + 2 * 10) / 2; add: 2 + 2 * 10
    assert torch.allclose(out[..., :2], torch.full((1, 1, 4, 2), left))
    assert torch.allclose(out[..., 2:], torch.full((1, 1, 4, 2), right))
    with pytest.raises(InvalidRequest, match="region mode must be one of"):
        RegionalGuidance(HALVES, torch.zeros(2, 3, 2), mode="max")


def test_regions_file_schema(tmp_path):
    path = tmp_path / "regions.json"
    path.write_text(json.dumps({"feather": 0.1, "regions": [{"prompt": "a red circle", "box": [0, 0, 0.5, 1]},
                                                            {"prompt": "a blue square", "box": [0.5, 0, 1, 1],
                                                             "weight": 2}]}))
    regions, feather, prompt, mode = load_regions(path)
    assert regions[1] == Region("a blue square", 0.5, 0, 1, 1, weight=2) and feather == 0.1 and prompt is None
    assert mode == "add"  # the default
    path.write_text(json.dumps({"mode": "median", "regions": [{"prompt": "x", "box": [0, 0, 1, 1]}]}))
    with pytest.raises(InvalidRequest, match="region mode must be one of add, average"):
        load_regions(path)
    path.write_text(json.dumps({"regions": [{"prompt": "x", "box": [0, 0, 1]}]}))
    with pytest.raises(InvalidRequest, match=r"box must be \[x0, y0, x1, y1\]"):
        load_regions(path)
    path.write_text("{not json")
    with pytest.raises(InvalidRequest, match="not valid JSON"):
        load_regions(path)


# ------------------------------------------------------------------------------ stages and blending


def test_stage_numbers_follow_sampling_order():
    assert stage_of_timestep(999) == 1 and stage_of_timestep(900) == 1 and stage_of_timestep(899) == 2
    assert stage_of_timestep(0) == 10 and stages_of_steps([999, 500, 10]) == [1, 5, 10]
    rows = timeline((StagePrompt("layout", 1, 3),), "base", [1, 1, 2, 4, 10])
    assert [r["prompt"] for r in rows[:4]] == ["layout", "layout", "layout", "base"]
    assert rows[0]["steps"] == [0, 1] and rows[3]["steps"] == [3] and rows[4]["steps"] == []


def test_stage_validation():
    with pytest.raises(InvalidRequest, match="stage 3 has two prompts"):
        check_stages((StagePrompt("a", 1, 3), StagePrompt("b", 3, 5)))
    with pytest.raises(InvalidRequest, match="1 <= from <= to <= 10"):
        check_stages((StagePrompt("a", 4, 2),))


def test_stages_file_schema(tmp_path):
    path = tmp_path / "stages.json"
    path.write_text(json.dumps({"prompt": "a blue circle", "stages": [{"from": 1, "to": 3, "prompt": "a circle"}]}))
    assert load_stages(path) == ((StagePrompt("a circle", 1, 3),), "a blue circle")
    path.write_text(json.dumps({"stages": [{"from": 1, "prompt": "a circle"}]}))
    with pytest.raises(InvalidRequest, match="exactly from, to and prompt"):
        load_stages(path)


def test_stage_prompts_edit_replaces_cond_only_at_its_stages():
    edit = StagePrompts([1, 1, 5], {1: torch.ones(1, 2, 3)})
    e = torch.zeros(2, 2, 3)
    assert torch.equal(edit.apply(0, 3, e, "cond"), torch.ones(2, 2, 3))
    assert torch.equal(edit.apply(2, 3, e, "cond"), e) and torch.equal(edit.apply(0, 3, e, "uncond"), e)


def test_blend_rows_per_mode():
    a, b = torch.zeros(1, 2, 3), torch.ones(1, 2, 3)
    edit = BlendEdit(a, b, mix=0.25, switch_step=2)
    at = {step: dict(zip(BLEND_MODES, edit.rows(step)[:, 0, 0].tolist())) for step in range(3)}
    assert at[0] == {"a": 0, "interpolate": 0.25, "alternate": 0, "switch": 0, "b": 1}
    assert at[1]["alternate"] == 1 and at[1]["switch"] == 0 and at[2]["switch"] == 1


# ------------------------------------------------------------------------------ controller


def test_compose_prompt_and_monolithic():
    parts = (PromptPart("a red circle", 1.2), PromptPart("a blue square"), PromptPart("green", -1))
    assert compose_prompt(parts) == "a red circle :1.2 AND a blue square AND NOT green"
    assert monolithic_prompt(compose_prompt(parts)) == "a red circle and a blue square"
    assert monolithic_prompt("", HALVES) == "a red circle and a blue square"


def test_parts_run_in_one_call_and_compare_is_the_plain_monolithic_run(tiny_model):
    ctl = CompositionController(tiny_model)
    with unet_calls(tiny_model.unet) as calls:
        out = ctl.compose(CompositionRequest(BASE, parts=(PromptPart("a red circle"), PromptPart("a blue square")),
                                             compare=True))
    assert calls == [3] * BASE.steps + [2] * BASE.steps  # composed: uncond + 2 parts; then the monolithic run
    assert out.prompt == "a red circle AND a blue square" and out.monolithic == "a red circle and a blue square"
    plain = Engine(tiny_model).generate(replace(BASE, prompt=out.monolithic)).images[0]
    assert np.array_equal(np.asarray(plain), np.asarray(out.comparison[0]))


def test_regions_cost_one_extra_call_per_crop_size(tiny_model):
    ctl = CompositionController(tiny_model)
    with unet_calls(tiny_model.unet) as calls:
        out = ctl.compose(CompositionRequest(replace(BASE, prompt=""), regions=HALVES))
    assert calls == [2, 4] * BASE.steps  # global [uncond, cond]; both half crops [uncond x2, region x2]
    plain = Engine(tiny_model).generate(replace(BASE, prompt="")).images[0]
    assert not np.array_equal(np.asarray(plain), np.asarray(out.images[0]))


def test_stage_prompt_equal_to_the_prompt_changes_nothing(tiny_model):
    ctl = CompositionController(tiny_model)
    plain = ctl.compose(CompositionRequest(BASE)).images[0]
    same = ctl.compose(CompositionRequest(BASE, stages=(StagePrompt(BASE.prompt, 1, 10),))).images[0]
    other = ctl.compose(CompositionRequest(BASE, stages=(StagePrompt("a blue square", 1, 5),)))
    assert np.array_equal(np.asarray(plain), np.asarray(same))
    assert not np.array_equal(np.asarray(plain), np.asarray(other.images[0]))
    assert len(other.timeline) == 10 and other.timeline[0]["prompt"] == "a blue square"


def test_composition_rejects_clashing_techniques(tiny_model):
    ctl = CompositionController(tiny_model)
    with pytest.raises(InvalidRequest, match="regions are guided"):
        ctl.prepare(CompositionRequest(replace(BASE, prompt="a AND b"), regions=HALVES))
    with pytest.raises(InvalidRequest, match="per-stage prompts"):
        ctl.prepare(CompositionRequest(BASE, parts=(PromptPart("a"), PromptPart("b")),
                                       stages=(StagePrompt("c", 1, 2),)))
    with pytest.raises(InvalidRequest, match="part 2: 'x AND y' contains AND"):
        ctl.prepare(CompositionRequest(BASE, parts=(PromptPart("a"), PromptPart("x AND y"))))
    with pytest.raises(InvalidRequest, match="not 0"):
        ctl.prepare(CompositionRequest(BASE, parts=(PromptPart("a", 0.0),)))


def test_blend_is_one_batched_run_and_its_ends_are_the_plain_prompts(tiny_model):
    ctl = CompositionController(tiny_model)
    with unet_calls(tiny_model.unet) as calls:
        out = ctl.blend(BlendRequest(BASE, "a red circle", "a blue square", mix=0.5, switch_at=0.5))
    assert calls == [2 * len(BLEND_MODES)] * BASE.steps and list(out.images) == list(BLEND_MODES)
    for mode, prompt in (("a", "a red circle"), ("b", "a blue square")):
        plain = Engine(tiny_model).generate(replace(BASE, prompt=prompt)).images[0]
        assert np.abs(np.asarray(plain, dtype=int) - np.asarray(out.images[mode], dtype=int)).max() <= 1


def test_saved_images_carry_the_composition(tiny_model, tmp_path):
    from studio.controllers import FileSaver
    from studio.outputs import read_image_settings

    ctl = CompositionController(tiny_model, FileSaver(lambda s: tmp_path / "composed.png"))
    out = ctl.compose(CompositionRequest(replace(BASE, prompt=""), regions=HALVES, feather=0.1), save=True)
    settings = read_image_settings(out.saved[0])
    assert settings.workbench == "composition"
    saved = settings.controls["composition"]
    assert dict(saved["regions"][1]) == {"prompt": "a blue square", "box": (0.5, 0, 1, 1), "weight": 1.0}
    assert saved["feather"] == 0.1 and saved["monolithic"] == "a red circle and a blue square"


# ------------------------------------------------------------------------------ tab handlers


def form(**change):
    values = dict(negative="", seed=3, steps=4, cfg=5.0, sampler="DPM++ 2M", compare=False, use_regions=False,
                  feather=0.05, region_mode="add", region_weight=1.0,
                  parts=["a red circle", 1.0, "a blue square", 1.0, "", 1.0, "", 1.0],
                  stages=["", 1, 3, "", 4, 6], regions=["", "0, 0, 0.5, 1", "", "0.5, 0, 1, 1", "", "0, 0, 1, 0.5"])
    values.update(change)
    return [values[k] for k in ("negative", "seed", "steps", "cfg", "sampler", "compare", "use_regions", "feather",
                                "region_mode", "region_weight")] + \
        values["parts"] + values["stages"] + values["regions"]


def test_handlers_build_requests_and_report_errors(tiny_model):
    h = CompositionHandlers(CompositionController(tiny_model))
    req = h.request_from_form(*form())
    assert [p.text for p in req.parts] == ["a red circle", "a blue square"] and not req.regions
    regions = ["a red circle", "0, 0, 0.5, 1", "a blue square", "0.5,0,1,1", "", ""]
    req = h.request_from_form(*form(use_regions=True, parts=["a gray background", 1.0] + ["", 1.0] * 3,
                                    regions=regions))
    assert req.base.prompt == "a gray background" and req.regions[1] == Region("a blue square", 0.5, 0, 1, 1)
    req = h.request_from_form(*form(use_regions=True, regions=regions, region_weight=2.5))
    assert [r.weight for r in req.regions] == [2.5, 2.5]
    assert h.region_weight == 1.0 if h.defaults.cfg >= 7.5 else h.region_weight > 1  # weight x CFG >= 7.5
    bad = list(h.compose(CompositionSession(), *form(use_regions=True, regions=["a", "0, 0, x", "", "", "", ""])))
    assert "box must be four fractions" in bad[-1][4]
    done = list(h.compose(CompositionSession(), *form()))
    assert "composed: a red circle AND a blue square" in done[-1][4] and done[-1][0] is not None
    assert "steps 1-" in h.timeline("a red circle", 20, "DPM++ 2M", "a circle at the top left", 1, 3, "", 4, 6)
    assert h.request_from_form(*form(sampler="Euler a")).base.sampler == "Euler a"
    bad = list(h.compose(CompositionSession(), *form(sampler="Euler b")))
    assert "unknown sampler" in bad[-1][4] and "allowed: DPM++ 2M" in bad[-1][4]
    assert "unknown sampler" in h.timeline("a red circle", 20, "Euler b", "", 1, 3, "", 4, 6)


def test_box_from_drawing_and_parse_box():
    layer = np.zeros((100, 200, 4), dtype=np.uint8)
    layer[10:50, 100:200, 3] = 255
    assert box_from_drawing({"background": None, "layers": [layer], "composite": None}) == (0.5, 0.1, 1.0, 0.5)
    assert box_from_drawing({"layers": [np.zeros((4, 4, 4), dtype=np.uint8)]}) is None
    assert parse_box("0, 0.5; 1, 1", "region 1") == (0.0, 0.5, 1.0, 1.0)
    with pytest.raises(ValueError, match="four fractions"):
        parse_box("1, 2", "region 1")


def test_shipped_composition_presets_validate():
    from studio.models import repo_root

    regions, feather, prompt, _ = load_regions(repo_root() / "presets/composition/regions-left-right.json")
    assert len(regions) == 2 and feather == 0.05 and prompt == ""
    stages, prompt = load_stages(repo_root() / "presets/composition/stages-layout-colour.json")
    assert stages == (StagePrompt("a circle at the top left", 1, 4),) and prompt == "a blue circle"
