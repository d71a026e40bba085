"""Preset loader: the shipped examples load; bad files name the file and the field."""

from __future__ import annotations

import json

import pytest

from studio.engine import SAMPLERS
from studio.presets import Preset, PresetError, default_examples_path, load_presets, parse_preset


def write(tmp_path, document, name="presets.json"):
    path = tmp_path / name
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return path


def good(**overrides):
    item = {"name": "circle", "prompt": "a red circle", "steps": 20, "cfg": 3.0, "seed": 1}
    item.update(overrides)
    return item


def test_prompts_must_parse_in_the_prompt_language(tmp_path):
    bad = {**good(), "prompt": "a (red circle"}
    with pytest.raises(PresetError, match="column 3") as info:
        load_presets(write(tmp_path, {"version": 1, "examples": [bad]}))
    assert info.value.field == "examples[0].prompt"


def test_shipped_examples_load_and_are_tiny_world_prompts():
    presets = load_presets()
    assert default_examples_path().is_file()
    assert len(presets) >= 3
    assert all(isinstance(p, Preset) for p in presets)
    assert any(p.prompt == "a large red circle at the top left on a black background" for p in presets)
    assert len({p.name for p in presets}) == len(presets)
    for p in presets:
        assert p.sampler is None or p.sampler in SAMPLERS


def test_settings_leave_out_name_and_unset_fields(tmp_path):
    [preset] = load_presets(write(tmp_path, {"version": 1, "examples": [good()]}))
    assert preset.settings() == {"prompt": "a red circle", "steps": 20, "cfg": 3.0, "seed": 1}
    assert isinstance(preset.cfg, float)


@pytest.mark.parametrize("key, value, words", [
    ("steps", "20", "integer in 1..150"),
    ("steps", 0, "integer in 1..150"),
    ("steps", 2.5, "integer"),
    ("steps", True, "integer"),
    ("cfg", "high", "number in 0..30"),
    ("cfg", 31, "number in 0..30"),
    ("cfg", float("nan"), "number"),
    ("seed", -2, "-1 = random"),
    ("seed", 2**32, "integer"),
    ("width", 60, "multiple of 8"),
    ("height", 4096, "multiple of 8"),
    ("batch_size", 17, "1..16"),
    ("sampler", "Heun", "allowed: " + ", ".join(SAMPLERS)),
    ("prompt", 3, "must be a string"),
    ("name", "  ", "must not be empty"),
    ("negative_prompt", None, "must be a string"),
])
def test_bad_field_names_file_and_field(tmp_path, key, value, words):
    second = good(name="second")
    second[key] = value
    path = write(tmp_path, {"version": 1, "examples": [good(), second]})
    with pytest.raises(PresetError) as info:
        load_presets(path)
    message = str(info.value)
    assert str(path) in message
    assert f"examples[1].{key}" in message
    assert words in message
    assert info.value.field == f"examples[1].{key}"
    assert info.value.path == path


def test_unknown_key_lists_allowed_keys(tmp_path):
    path = write(tmp_path, {"version": 1, "examples": [good(guidance=3)]})
    with pytest.raises(PresetError, match=r"examples\[0\]\.guidance: unknown key; allowed keys: name, prompt"):
        load_presets(path)


def test_unknown_top_level_key(tmp_path):
    with pytest.raises(PresetError, match="presets.json: extras: unknown key"):
        load_presets(write(tmp_path, {"version": 1, "examples": [], "extras": 1}))


def test_missing_required_field(tmp_path):
    item = good()
    del item["prompt"]
    with pytest.raises(PresetError, match=r"examples\[0\]\.prompt: is required"):
        load_presets(write(tmp_path, {"examples": [item]}))


def test_duplicate_names(tmp_path):
    with pytest.raises(PresetError, match=r"examples\[1\]\.name: duplicate name 'circle'"):
        load_presets(write(tmp_path, {"examples": [good(), good()]}))


@pytest.mark.parametrize("document, words", [
    ("{not json", "not valid JSON"),
    ("[]", "top level must be an object"),
    ({"version": 2, "examples": []}, "unsupported version 2"),
    ({"version": 1}, "examples: must be a list"),
    ({"version": 1, "examples": ["a prompt"]}, "examples[0]: must be an object"),
])
def test_bad_documents(tmp_path, document, words):
    path = write(tmp_path, document)
    with pytest.raises(PresetError) as info:
        load_presets(path)
    assert str(path) in str(info.value) and words in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(PresetError, match="nope.json: file not found"):
        load_presets(tmp_path / "nope.json")


def test_preset_error_is_a_value_error():
    with pytest.raises(ValueError):
        parse_preset({"name": "x"}, path="inline")
