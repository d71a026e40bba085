"""``python -m studio attributes``: one image per value in order, slider metadata, JSON, one-line errors."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from studio.cli import main
from studio.outputs import read_image_settings

PROMPT = "a medium red circle and a medium blue square on a black background"


@pytest.fixture(scope="module")
def model(tiny_models, torch_single_thread_module):
    return tiny_models("tinyworld")


def run(model, *argv):
    out, err = io.StringIO(), io.StringIO()
    code = main(["attributes", *map(str, argv)], load_model=lambda spec, **kw: model, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_values_in_order_with_metadata(model, tmp_path):
    code, out, err = run(model, "--prompt", PROMPT, "--subject", "circle", "--attribute", "size",
                         "--values", "1.5,-1.5,0", "--seed", 3, "--steps", 8, "--out-dir", tmp_path / "sweep",
                         "--directions", tmp_path / "dirs", "--json")
    assert code == 0, err
    report = json.loads(out)
    paths = report["paths"]
    assert [p.rsplit("/", 1)[1] for p in paths] == ["000-size-+1.500.png", "001-size--1.500.png",
                                                    "002-size-+0.000.png"]
    values = [read_image_settings(p).controls["attributes"]["sliders"][0]["value"] for p in paths]
    assert values == [1.5, -1.5, 0.0]
    settings = read_image_settings(paths[0])
    assert settings.prompt == PROMPT and settings.seed == 3 and settings.workbench == "attributes"
    images = [np.asarray(Image.open(p).convert("RGB"), dtype=np.int16) for p in paths]
    assert np.abs(images[0] - images[1]).mean() > 1  # the slider changed the picture
    assert list((tmp_path / "dirs").rglob("*.safetensors"))  # the direction was cached


def test_learn_then_slide_with_a_direction_from_example_images(model, tmp_path):
    code, out, err = run(model, "--prompt", PROMPT, "--subject", "circle", "--attribute", "size", "--values", "1",
                         "--method", "learned-images", "--learn", "--learn-steps", 2, "--steps", 4,
                         "--out-dir", tmp_path / "o", "--directions", tmp_path / "dirs", "--json")
    assert code == 0, err
    assert read_image_settings(json.loads(out)["paths"][0]).controls["attributes"]["sliders"][0]["method"] \
        == "learned-images"
    assert list((tmp_path / "dirs").rglob("learned-images/*.safetensors"))


def test_list_shows_the_models_attributes(model):
    code, out, _ = run(model, "--list")
    assert code == 0 and "size" in out and "hue red-yellow" in out and "a huge {subject}" in out


@pytest.mark.parametrize("argv, expected", [
    (["--subject", "circle", "--attribute", "size", "--values", "1"], "missing --prompt"),
    (["--prompt", PROMPT, "--subject", "hexagon", "--attribute", "size", "--values", "1"], "does not occur"),
    (["--prompt", PROMPT, "--subject", "circle", "--attribute", "size", "--values", "1,x"], "comma-separated"),
    (["--prompt", PROMPT, "--subject", "circle", "--attribute", "size", "--values", "9"], "[-1.5, 1.5]"),
    (["--prompt", PROMPT, "--subject", "circle", "--attribute", "age", "--values", "1"], "unknown attribute"),
    (["--prompt", PROMPT, "--subject", "circle", "--attribute", "size", "--values", "1", "--method", "learned"],
     "--learn"),
    (["--prompt", PROMPT, "--subject", "circle", "--attribute", "size", "--values", "1", "--method",
      "learned-images"], "no learned-images direction"),
])
def test_bad_input_exits_2_with_one_line(model, tmp_path, argv, expected):
    code, out, err = run(model, *argv, "--out-dir", tmp_path / "o", "--directions", tmp_path / "d")
    assert code == 2 and err.startswith("error: ") and expected in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()  # nothing written for bad input


def test_local_flag_is_saved_and_reported(model, tmp_path):
    code, out, err = run(model, "--prompt", PROMPT, "--subject", "circle", "--attribute", "size",
                         "--values=-1.5,1.5", "--seed", 3, "--steps", 8, "--out-dir", tmp_path / "sweep",
                         "--directions", tmp_path / "dirs", "--local", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["local"] is True and len(report["paths"]) == 2  # no file for the hidden reference
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir()) == ["000-size--1.500.png", "001-size-+1.500.png"]
    assert read_image_settings(report["paths"][0]).controls["attributes"]["local"] is True
    code, out, err = run(model, "--prompt", PROMPT, "--subject", "circle", "--attribute", "size", "--values", "1",
                         "--method", "weight", "--local", "--out-dir", tmp_path / "w")
    assert code == 2 and "prompt-weight" in err and not (tmp_path / "w").exists()


def test_values_may_start_negative_as_the_readme_writes_them(model, tmp_path):
    """argparse takes "-1.5,0,1.5" for an option; the CLI attaches such a list to --values itself."""
    code, out, err = run(model, "--prompt", PROMPT, "--subject", "circle", "--attribute", "size",
                         "--values", "-1.5,0,1.5", "--seed", 3, "--steps", 4, "--out-dir", tmp_path / "neg",
                         "--directions", tmp_path / "dirs", "--json")
    assert code == 0, err
    assert [im["value"] for im in json.loads(out)["images"]] == [-1.5, 0.0, 1.5]
    code, _, err = run(model, "--prompt", PROMPT, "--subject", "circle", "--attribute", "size",
                       "--values", "-2,0,2", "--out-dir", tmp_path / "too-far")
    assert code == 2 and "value must be a number in [-1.5, 1.5], got -2.0" in err
