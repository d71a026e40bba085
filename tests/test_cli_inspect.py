"""``python -m studio inspect attention|trajectory|classify|information``."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from studio.cli import main

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def run(model, *argv):
    out, err = io.StringIO(), io.StringIO()
    code = main(["inspect", *map(str, argv)], load_model=lambda spec, **kw: model, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def scene_png(tmp_path):
    image = Image.new("RGB", (64, 64), (20, 20, 20))
    image.paste((220, 40, 40), (16, 16, 48, 48))
    path = tmp_path / "scene.png"
    image.save(path)
    return path


def test_attention_writes_one_map_per_word(tiny_model, tmp_path):
    code, out, err = run(tiny_model, "attention", "--prompt", "a red circle", "--seed", 2, "--steps", 2,
                         "--out-dir", tmp_path / "maps", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert set(report["words"]) == {"a", "red", "circle"}
    m = np.load(tmp_path / "maps" / "circle.npy")
    assert m.shape == (64, 64) and m.dtype == np.float32 and m.min() >= 0
    assert (tmp_path / "maps" / "circle.png").is_file() and (tmp_path / "maps" / "image.png").is_file()


def test_trajectory_writes_the_filmstrip_and_guidance(tiny_model, tmp_path):
    code, out, err = run(tiny_model, "trajectory", "--prompt", "a blue square", "--steps", 3, "--sampler", "euler_a",
                         "--out-dir", tmp_path / "t")
    assert code == 0, err
    names = {line.rsplit("/", 1)[-1] for line in out.split()}
    assert {"trajectory.npz", "x0.webp", "filmstrip.png", "guidance_cosine.png", "guidance.json"} <= names


def test_classify_prints_a_ranking(tiny_model, scene_png, tmp_path):
    code, out, err = run(tiny_model, "classify", "--image", scene_png, "--candidates", "red|blue|green",
                         "--stages", "3:2,5:1", "--json", "--out-dir", tmp_path / "c")
    assert code == 0, err
    report = json.loads(out)
    assert sorted(report["ranking"]) == ["blue", "green", "red"] and report["unet_evaluations"] == 3 * 3 + 2 * 2
    assert (tmp_path / "c" / "classification.png").is_file()
    code, out, err = run(tiny_model, "classify", "--image", scene_png, "--candidates", "red|blue", "--stages", "2:1")
    assert code == 0, err
    assert out.strip().splitlines()[-1].startswith("best: ")


def test_information_writes_maps(tiny_model, scene_png, tmp_path):
    code, out, err = run(tiny_model, "information", "--image", scene_png, "--prompt", "a red square", "--tokens",
                         "red,square", "--levels", 2, "--samples", 1, "--out-dir", tmp_path / "i")
    assert code == 0, err
    assert np.load(tmp_path / "i" / "synergy.npy").shape == (64, 64)
    assert (tmp_path / "i" / "information_i1.png").is_file()
    assert (tmp_path / "i" / "information_levels.png").is_file()
    assert set(np.load(tmp_path / "i" / "information_levels.npz")) == {"log_snrs", "i1", "i2", "i12"}
    code, out, err = run(tiny_model, "information", "--image", scene_png, "--prompt", "a red square", "--tokens",
                         "square", "--levels", 2, "--samples", 1, "--space", "latent", "--json", "--out-dir",
                         tmp_path / "j")
    assert code == 0, err
    assert json.loads(out)["space"] == "latent"


@pytest.mark.parametrize("argv, words", [
    (["classify", "--image", "x.png"], "needs --candidates"),
    (["classify", "--image", "missing.png", "--candidates", "a|b"], "no such file"),
    (["attention", "--prompt", "a circle"], "needs --out-dir"),
    (["information", "--image", "{scene}", "--prompt", "a red square", "--tokens", "blue", "--out-dir", "o"],
     "not a word of the prompt"),
    (["classify", "--image", "{scene}", "--candidates", "a|b", "--stages", "12-2"], "--stages must look like"),
    (["classify", "--image", "{scene}", "--candidates", "only one"], "2 to 32 candidate prompts"),
    (["trajectory", "--prompt", "x", "--out-dir", "o", "--sampler", "Heun 9"], "unknown sampler"),
])
def test_bad_input_is_one_clear_line(tiny_model, scene_png, tmp_path, monkeypatch, argv, words):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(tiny_model, *[a.replace("{scene}", str(scene_png)) for a in argv])
    assert code == 2 and words in err and err.count("\n") == 1 and "Traceback" not in err
