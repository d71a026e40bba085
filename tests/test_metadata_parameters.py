"""A1111 ``parameters`` text: building, parsing, real-looking A1111 strings."""

from __future__ import annotations

import json

import pytest

from studio.outputs import (
    GenerationSettings, MetadataError, ParsedSettings, build_parameters, normalize_sampler,
    parse_parameters, sampler_from_scheduler,
)


def make_settings(**changes) -> GenerationSettings:
    values = dict(
        prompt="a red fox in the snow, (masterpiece:1.2)",
        negative_prompt="blurry, lowres",
        sampler="DPM++ 2M",
        steps=20,
        cfg=7.5,
        seed=42,
        width=64,
        height=64,
        model_name="tinyworld",
        model_hash="abcd1234",
    )
    values.update(changes)
    return GenerationSettings(**values)


# --- building ----------------------------------------------------------------

def test_build_matches_a1111_layout():
    text = build_parameters(make_settings())
    assert text == (
        "a red fox in the snow, (masterpiece:1.2)\n"
        "Negative prompt: blurry, lowres\n"
        "Steps: 20, Sampler: DPM++ 2M, CFG scale: 7.5, Seed: 42, Size: 64x64, "
        "Model hash: abcd1234, Model: tinyworld, Workbench: txt2img"
    )


def test_build_omits_empty_negative_and_writes_integral_cfg_like_a1111():
    text = build_parameters(make_settings(negative_prompt="", cfg=7.0))
    assert "Negative prompt" not in text
    assert "CFG scale: 7," in text


def test_build_quotes_values_with_commas_and_colons():
    settings = make_settings(
        model_name="sd15:custom, v2",
        extra={"Lora hashes": "add_detail: 7c6bad76eb54, noise: d1131f7207d6", "Clip skip": "2"},
    )
    line = build_parameters(settings).splitlines()[-1]
    assert 'Model: "sd15:custom, v2"' in line
    assert 'Lora hashes: "add_detail: 7c6bad76eb54, noise: d1131f7207d6"' in line
    assert line.endswith("Clip skip: 2")


def test_build_batch_position_and_controls():
    controls = {"canny": {"weight": 0.8, "low": 100, "high": 200}, "pose": None}
    line = build_parameters(make_settings(batch_size=4, batch_index=2, controls=controls)).splitlines()[-1]
    assert "Batch size: 4, Batch pos: 2" in line
    assert "Controls: " in line


@pytest.mark.parametrize("settings", [
    make_settings(),
    make_settings(negative_prompt=""),
    make_settings(model_hash="", sampler="LCM", steps=4, cfg=1.0),
    make_settings(prompt="line one,\nline two: with colon\n(third:0.9)", negative_prompt="bad\nworse"),
    make_settings(prompt="", negative_prompt="only negative"),
    make_settings(prompt="ünïcødé 猫, émoji 🦊", cfg=3.25, seed=2**64 - 1, width=768, height=512),
    make_settings(sampler="DPM++ 2M Karras", batch_size=3, batch_index=1, workbench="controlnet",
                  controls={"canny": {"weight": 0.8, "image": "inputs/edge.png"}, "order": [1, 2]},
                  extra={"Clip skip": "2", "Template": 'a "quoted", multi\nline value'}),
])
def test_text_round_trip(settings):
    parsed = parse_parameters(build_parameters(settings))
    assert parsed.to_generation_settings() == settings
    assert parsed == ParsedSettings.from_settings(settings)


# --- parsing real-looking A1111 strings ----------------------------------------

A1111_HIRES_LORA = (
    "masterpiece, best quality, 1girl, (portrait:1.2), looking at viewer, <lora:add_detail:0.5>\n"
    "Negative prompt: lowres, bad anatomy, (worst quality:1.4), easynegative\n"
    "Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234567890, "
    "Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.7, "
    "Clip skip: 2, Hires upscale: 2, Hires steps: 10, Hires upscaler: Latent, "
    'Lora hashes: "add_detail: 7c6bad76eb54", Version: v1.9.4'
)


def test_a1111_schedule_type_karras_is_folded_into_sampler():
    parsed = parse_parameters(A1111_HIRES_LORA)
    assert parsed.prompt.endswith("<lora:add_detail:0.5>")
    assert parsed.negative_prompt == "lowres, bad anatomy, (worst quality:1.4), easynegative"
    assert parsed.sampler == "DPM++ 2M Karras"
    assert (parsed.steps, parsed.cfg, parsed.seed) == (28, 7.0, 1234567890)
    assert (parsed.width, parsed.height) == (512, 768)
    assert (parsed.model_name, parsed.model_hash) == ("v1-5-pruned-emaonly", "6ce0161689")
    assert "Schedule type" not in parsed.extra
    assert parsed.extra["Lora hashes"] == "add_detail: 7c6bad76eb54"
    assert parsed.extra["Clip skip"] == "2"
    assert parsed.extra["Version"] == "v1.9.4"
    assert parsed.extra["Hires upscaler"] == "Latent"
    assert parsed.source == "parameters"


def test_a1111_multiline_prompt_without_negative_and_batch():
    text = (
        "a cozy cabin in the woods,\n"
        "snow, evening light\n"
        "(cinematic:1.1)\n"
        "Steps: 20, Sampler: Euler a, CFG scale: 6.5, Seed: 42, Size: 768x512, "
        "Model hash: e6bb9ea85b, Model: dreamshaper_8, Batch size: 4, Batch pos: 2, Version: v1.6.0"
    )
    parsed = parse_parameters(text)
    assert parsed.prompt == "a cozy cabin in the woods,\nsnow, evening light\n(cinematic:1.1)"
    assert parsed.negative_prompt == ""
    assert parsed.sampler == "Euler a"
    assert parsed.extra["Batch size"] == "4" and parsed.extra["Batch pos"] == "2"
    settings = parsed.to_generation_settings()
    assert (settings.batch_size, settings.batch_index) == (4, 2)
    assert settings.extra == {"Version": "v1.6.0"}
    assert parsed.request_fields() == {
        "prompt": parsed.prompt, "negative_prompt": "", "sampler": "Euler a", "steps": 20,
        "cfg": 6.5, "seed": 42, "width": 768, "height": 512,
    }


def test_a1111_old_style_karras_sampler_and_multiline_negative_with_crlf():
    text = (
        "portrait of an old sailor\r\n"
        "Negative prompt: cartoon,\r\n"
        "3d render\r\n"
        "Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 5.5, Seed: 3917256043, Face restoration: CodeFormer, "
        "Size: 640x640, Model hash: 4199bcdd14, Model: revAnimated_v122, ENSD: 31337\r\n"
    )
    parsed = parse_parameters(text)
    assert parsed.prompt == "portrait of an old sailor"
    assert parsed.negative_prompt == "cartoon,\n3d render"
    assert parsed.sampler == "DPM++ 2M Karras"
    assert parsed.extra == {"Face restoration": "CodeFormer", "ENSD": "31337"}


def test_a1111_quoted_values_controlnet_and_template_with_newline():
    text = (
        "a house, sketch\n"
        "Steps: 25, Sampler: UniPC, Schedule type: Automatic, CFG scale: 7, Seed: 7, Size: 512x512, "
        "Model: anything-v5, "
        'ControlNet 0: "Module: canny, Model: control_v11p_sd15_canny [d14c016b], Weight: 1, '
        'Resize Mode: Crop and Resize, Processor Res: 512, Threshold A: 100, Threshold B: 200, '
        'Guidance Start: 0, Guidance End: 1, Pixel Perfect: False, Control Mode: Balanced", '
        'Template: "a house,\\nsketch", TI hashes: "easynegative: c74b4e810b03"'
    )
    parsed = parse_parameters(text)
    assert parsed.sampler == "UniPC"
    assert parsed.model_hash is None
    assert parsed.extra["Schedule type"] == "Automatic"  # not foldable: kept
    assert parsed.extra["ControlNet 0"].startswith("Module: canny, Model: control_v11p_sd15_canny [d14c016b]")
    assert parsed.extra["Template"] == "a house,\nsketch"
    assert parsed.extra["TI hashes"] == "easynegative: c74b4e810b03"
    rebuilt = parse_parameters(build_parameters(parsed.to_generation_settings()))
    assert rebuilt.extra["ControlNet 0"] == parsed.extra["ControlNet 0"]


def test_odd_but_readable_values_are_kept_in_extra():
    text = "a cat\nSteps: many, Sampler: euler_a, CFG scale: high, Seed: 12, Size: big, Weird key/with-dash: x"
    parsed = parse_parameters(text)
    assert parsed.steps is None and parsed.cfg is None and parsed.width is None
    assert parsed.seed == 12 and parsed.sampler == "Euler a"
    assert parsed.extra == {"Steps": "many", "CFG scale": "high", "Size": "big", "Weird key/with-dash": "x"}
    assert parsed.missing_request_fields == ("steps", "cfg", "width", "height")
    with pytest.raises(MetadataError, match="missing cfg, height, model_name, steps, width"):
        parsed.to_generation_settings()
    filled = parsed.to_generation_settings(steps=10, cfg=5.0, width=64, height=64, model_name="tinyworld")
    assert filled.seed == 12
    assert filled.extra == {"Weird key/with-dash": "x"}


def test_minimal_parameters_line_is_enough():
    parsed = parse_parameters("Steps: 12")
    assert parsed.prompt == "" and parsed.steps == 12 and parsed.sampler is None


@pytest.mark.parametrize("text, fragment", [
    ("", "empty"),
    ("   \n  ", "empty"),
    ("just a prompt, nothing else", "not a generation parameters text"),
    ("a prompt\nStyle: anime, Mood: calm", "not a generation parameters text"),
    ('{"prompt": "a cat", "steps": 20}', "not a generation parameters text"),
    ("\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary"),
])
def test_not_parameters_text_raises_metadata_error(text, fragment):
    with pytest.raises(MetadataError, match=fragment):
        parse_parameters(text)


def test_parse_rejects_non_str():
    with pytest.raises(TypeError, match="must be a str"):
        parse_parameters(b"Steps: 20")  # type: ignore[arg-type]


# --- settings validation and samplers -------------------------------------------

@pytest.mark.parametrize("changes, error, fragment", [
    ({"seed": -1}, ValueError, "resolve a random seed"),
    ({"steps": 0}, ValueError, "steps must be >= 1"),
    ({"cfg": float("nan")}, ValueError, "cfg must be a finite number"),
    ({"width": 64.0}, TypeError, "width must be an int"),
    ({"batch_index": 2, "batch_size": 2}, ValueError, "batch_index"),
    ({"model_name": " "}, ValueError, "model_name must not be empty"),
    ({"controls": {"img": object()}}, ValueError, "controls must be JSON-compatible"),
    ({"extra": {"Steps": "3"}}, ValueError, "reserved"),
    ({"extra": {"bad:key": "3"}}, ValueError, "not a valid A1111 parameter name"),
])
def test_settings_validation(changes, error, fragment):
    with pytest.raises(error, match=fragment):
        make_settings(**changes)


def test_settings_are_deeply_frozen():
    controls = {"canny": {"weight": 1.0}, "layers": [1, 2]}
    settings = make_settings(controls=controls)
    controls["canny"]["weight"] = 0.0  # caller's dict does not leak in
    assert settings.controls["canny"]["weight"] == 1.0
    with pytest.raises(TypeError):
        settings.controls["canny"]["weight"] = 2.0  # type: ignore[index]
    assert settings.controls["layers"] == (1, 2)
    assert json.loads(json.dumps(settings.to_dict()))["controls"] == {"canny": {"weight": 1.0}, "layers": [1, 2]}
    assert GenerationSettings.from_dict(settings.to_dict()) == settings


@pytest.mark.parametrize("alias, name", [
    ("dpmpp_2m", "DPM++ 2M"), ("DPM++ 2M Karras", "DPM++ 2M Karras"), ("dpmpp_2m_karras", "DPM++ 2M Karras"),
    ("euler", "Euler"), ("euler_a", "Euler a"), ("Euler a", "Euler a"), ("ddim", "DDIM"),
    ("unipc", "UniPC"), ("LCM", "LCM"), ("DPM++ 3M SDE", "DPM++ 3M SDE"),
])
def test_sampler_names(alias, name):
    assert normalize_sampler(alias) == name
    assert make_settings(sampler=alias).sampler == name


def test_sampler_from_diffusers_scheduler():
    assert sampler_from_scheduler("DPMSolverMultistepScheduler", karras=True) == "DPM++ 2M Karras"
    assert sampler_from_scheduler("EulerAncestralDiscreteScheduler") == "Euler a"
    assert sampler_from_scheduler("LCMScheduler") == "LCM"


# --- engine request interop -------------------------------------------------------

def test_parsed_settings_fill_an_engine_request_and_back():
    request_module = pytest.importorskip("studio.engine.request")
    from dataclasses import replace

    parsed = parse_parameters(A1111_HIRES_LORA)
    request = replace(request_module.GenerationRequest(), **parsed.request_fields())
    assert (request.sampler, request.steps, request.seed, request.width) == ("DPM++ 2M Karras", 28, 1234567890, 512)

    settings = GenerationSettings.from_request(request, seed=request.seed + 1, width=512, height=768,
                                               batch_index=0, model_name="v1-5", workbench="txt2img")
    assert settings.seed == 1234567891 and settings.cfg == 7.0 and settings.prompt == parsed.prompt
