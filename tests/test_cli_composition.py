"""``python -m studio generate`` with the prompt language, --regions and --stages files."""

from __future__ import annotations

import io
import json

import pytest

from studio.cli import main
from studio.outputs import read_image_settings

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def run(model, *argv):
    out, err = io.StringIO(), io.StringIO()
    code = main(["generate", *map(str, argv)], load_model=lambda spec, **kw: model, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_regions_file_with_its_global_prompt(tiny_model, tmp_path):
    regions = tmp_path / "regions.json"
    regions.write_text(json.dumps({"prompt": "a gray background", "feather": 0.1, "regions": [
        {"prompt": "a red circle", "box": [0, 0, 0.5, 1]}, {"prompt": "a blue square", "box": [0.5, 0, 1, 1]}]}))
    code, out, err = run(tiny_model, "--regions", regions, "--seed", 4, "--steps", 2, "--out", tmp_path / "r.png",
                         "--json")
    assert code == 0, err
    assert json.loads(out)["images"][0]["prompt"] == "a gray background"
    settings = read_image_settings(tmp_path / "r.png")
    assert settings.workbench == "composition" and len(settings.controls["composition"]["regions"]) == 2


def test_stages_file_and_a_composed_prompt(tiny_model, tmp_path):
    stages = tmp_path / "stages.json"
    stages.write_text(json.dumps({"stages": [{"from": 1, "to": 3, "prompt": "a circle at the top left"}]}))
    code, out, err = run(tiny_model, "--prompt", "a blue circle", "--stages", stages, "--seeds", "1-2", "--steps", 2,
                         "--out-dir", tmp_path / "st")
    assert code == 0, err and len(out.split()) == 2
    stage = read_image_settings(out.split()[0]).controls["composition"]["stages"][0]
    assert dict(stage) == {"prompt": "a circle at the top left", "from": 1, "to": 3}
    code, out, err = run(tiny_model, "--prompt", "a circle AND NOT red :0.5", "--seed", 1, "--steps", 2,
                         "--out", tmp_path / "and.png")
    assert code == 0, err and read_image_settings(tmp_path / "and.png").prompt == "a circle AND NOT red :0.5"


@pytest.mark.parametrize("argv, words", [
    (["--prompt", "a (red circle"], "prompt syntax error at column 3"),
    (["--prompt", "x", "--negative", "a AND b"], "AND is not allowed here"),
    (["--prompt", "x", "--regions", "missing.json"], "regions file not found"),
])
def test_one_line_errors(tiny_model, tmp_path, argv, words):
    code, out, err = run(tiny_model, *argv, "--seed", 1, "--out", tmp_path / "x.png")
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "x.png").exists()


def test_bad_region_box_and_clashing_prompt(tiny_model, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"regions": [{"prompt": "x", "box": [0, 0, 2, 1]}]}))
    code, _, err = run(tiny_model, "--prompt", "x", "--regions", bad, "--seed", 1, "--out", tmp_path / "x.png")
    assert code == 2 and "0 <= x0 < x1 <= 1" in err
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"regions": [{"prompt": "x", "box": [0, 0, 1, 1]}]}))
    code, _, err = run(tiny_model, "--prompt", "a AND b", "--regions", good, "--seed", 1, "--out", tmp_path / "x.png")
    assert code == 2 and "remove AND" in err
