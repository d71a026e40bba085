"""GenerateController: metadata round trips, live previews, cancel, validation, seeds, defaults."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import studio.controllers.generate as generate_module
from studio.controllers import (
    RANDOM_SEED, GenerateController, PreviewConfig, model_defaults, resolve_seed, settings_from_image,
)
from studio.engine import Cancelled, CancelToken, GenerationRequest, InvalidRequest
from studio.outputs import MetadataError, OutputStore, read_image_settings



@pytest.fixture(scope="module", autouse=True)
def model(default_model):
    """Tiny World (else the tiny random SD model), run with one torch thread (conftest: default_model)."""
    return default_model


@pytest.fixture
def store(tmp_path):
    with OutputStore(tmp_path / "outputs") as s:
        yield s


def request(model, **fields) -> GenerationRequest:
    return dataclasses.replace(model_defaults(model), prompt="a red house by a lake", **fields)


class StepClock:
    """A fake clock that advances ``dt`` every time it is read."""

    def __init__(self, dt: float):
        self.dt, self.calls = dt, 0

    def __call__(self) -> float:
        self.calls += 1
        return self.calls * self.dt


def test_run_saves_pngs_whose_metadata_round_trips(model, store):
    controller = GenerateController(model, store)
    req = request(model, negative_prompt="blurry, dark", sampler="Euler", steps=3, cfg=4.5, seed=1234, batch_size=2)
    outcome = controller.run(req, controls={"note": "round trip"})

    size = model.default_size
    assert outcome.seeds == (1234, 1235) and outcome.seed == outcome.last_seed == 1234
    assert outcome.request == dataclasses.replace(req, width=size, height=size)
    assert len(outcome.images) == len(outcome.saved) == 2 and all(p.is_file() for p in outcome.paths)
    assert {"encode", "denoise", "decode", "save", "total"} <= set(outcome.timings)
    for i, path in enumerate(outcome.paths):
        parsed = read_image_settings(path)
        assert parsed.request_fields() == {
            "prompt": "a red house by a lake", "negative_prompt": "blurry, dark", "sampler": "Euler", "steps": 3,
            "cfg": 4.5, "seed": 1234 + i, "width": size, "height": size}
        assert parsed.source == "studio" and parsed.workbench == "generate"
        assert dict(parsed.controls) == {"note": "round trip"} and parsed.model_hash == model.weights_hash
        prov = parsed.provenance
        assert prov["model"] == {"id": model.name, "weights_hash": model.weights_hash}
        assert prov["scheduler"] == "EulerDiscreteScheduler" and prov["device"] == "cpu"
        assert prov["dtype"] == "float32" and prov["duration_s"] > 0 and "torch" in prov["versions"]
        assert list(prov["extra"]["batch_seeds"]) == [1234, 1235]
        with Image.open(path) as im:  # the A1111 text is there too
            assert f"Seed: {1234 + i}, Size: {size}x{size}" in im.text["parameters"]
            assert np.array_equal(np.asarray(im.convert("RGB")), np.asarray(outcome.images[i]))
    rows = store.list()
    assert sorted(int(r.seed) for r in rows) == [1234, 1235] and {r.workbench for r in rows} == {"generate"}

    # "load settings from image" (bytes work too) reproduces the second image of the batch on its own
    fields = settings_from_image(outcome.paths[1].read_bytes())
    again = controller.with_store(None).run(dataclasses.replace(controller.defaults(), **fields))
    assert again.saved == () and again.seeds == (1235,) and again.request == dataclasses.replace(
        outcome.request, seed=1235, batch_size=1)
    # same noise and settings; batched convolutions may differ in the last bit of a pixel
    diff = np.abs(np.asarray(again.images[0], dtype=int) - np.asarray(outcome.images[1], dtype=int))
    assert diff.max() <= 2


def test_previews_for_every_step_the_throttle_allows(model):
    # inline previews and a clock moving 50 ms per read: a 10 fps throttle lets every other step through
    frames, progress = [], []
    config = PreviewConfig(max_fps=10, clock=StepClock(0.05), threaded=False)
    controller = GenerateController(model, None, preview=config)
    outcome = controller.run(request(model, steps=10, seed=3),
                             on_preview=lambda im, done, total: frames.append((im, done, total)),
                             on_progress=lambda done, total: progress.append((done, total)))
    assert [done for _, done, _ in frames] == [1, 3, 5, 7, 9] and outcome.previews == 5
    assert all(isinstance(im, Image.Image) and im.size == (model.default_size,) * 2 for im, _, _ in frames)
    assert all(total == 10 for _, _, total in frames)
    assert progress == [(i, 10) for i in range(1, 11)] and outcome.warnings == ()


def test_background_previews_random_seed_and_reuse(model):
    frames = []
    controller = GenerateController(model, None, preview=PreviewConfig(max_fps=1e9, max_busy=1.0),
                                    rng=random.Random(7))
    outcome = controller.run(request(model, steps=3, seed=RANDOM_SEED),
                             on_preview=lambda im, done, total: frames.append((im.copy(), done)))
    # rendered on the preview thread; stale frames may be dropped but the freshest always arrives
    assert 1 <= len(frames) == outcome.previews <= 3 and frames[-1][1] == 3
    assert all(isinstance(im, Image.Image) for im, _ in frames)
    assert outcome.seed == resolve_seed(-1, random.Random(7)) == controller.last_seed
    assert outcome.request.seed == outcome.seeds[0] == outcome.seed


def test_broken_callbacks_do_not_stop_the_run(model):
    def boom(*args):
        raise RuntimeError("widget gone")

    config = PreviewConfig(max_fps=1e9, threaded=False)
    outcome = GenerateController(model, None, preview=config).run(request(model, steps=2, seed=1),
                                                                  on_preview=boom, on_progress=boom)
    assert len(outcome.images) == 1 and len(outcome.warnings) == 2
    assert all("widget gone" in w for w in outcome.warnings)


def test_cancel_mid_run_raises_and_saves_nothing(model, store):
    token = CancelToken()

    def progress(done, total):
        if done == 2:
            token.cancel()

    controller = GenerateController(model, store)
    with pytest.raises(Cancelled):
        controller.run(request(model, steps=10, seed=5), cancel=token, on_progress=progress,
                       on_preview=lambda *a: None)
    assert store.list() == [] and not list(store.root.rglob("*.png")) and not list(store.root.rglob("*.tmp"))


@pytest.mark.parametrize("fields, field_name, message", [
    ({"steps": 0}, "steps", r"steps must be an integer in 1\.\.\d+"),
    ({"width": 63}, "width", r"width must be a multiple of \d+"),
    ({"sampler": "Heun++"}, "sampler", r"unknown sampler 'Heun\+\+'; allowed: DPM\+\+ 2M"),
    ({"cfg": float("nan")}, "cfg", r"cfg must be a finite number"),
    ({"seed": -5}, "seed", r"seed must be -1 \(random\) or an integer in 0\.\.4294967295"),
])
def test_invalid_request_raises_with_message_and_saves_nothing(model, store, fields, field_name, message):
    controller = GenerateController(model, store)
    with pytest.raises(InvalidRequest, match=message) as info:
        controller.run(request(model, **fields))
    assert info.value.field == field_name
    with pytest.raises(InvalidRequest, match=message):
        controller.validate(request(model, **fields))
    assert store.list() == [] and not list(store.root.rglob("*.png"))


def test_invalid_controls_and_non_requests(model):
    controller = GenerateController(model, None)
    with pytest.raises(InvalidRequest, match="controls must be JSON-compatible"):
        controller.run(request(model, steps=1), controls={"image": object()})
    with pytest.raises(InvalidRequest, match="expected a GenerationRequest"):
        controller.run({"prompt": "a cat"})
    assert controller.validate(request(model, seed=RANDOM_SEED)) == []  # a random seed is valid


def test_resolve_seed():
    assert resolve_seed(42) == 42 and resolve_seed(0) == 0 and resolve_seed(2**32 - 1) == 2**32 - 1
    drawn = [resolve_seed(s, random.Random(1)) for s in (None, -1)]
    assert drawn[0] == drawn[1] and 0 <= drawn[0] <= 2**32 - 1
    for bad in (-2, 2**32, 1.5, "7", True):
        with pytest.raises(InvalidRequest, match="seed must be -1"):
            resolve_seed(bad)


def test_defaults_come_from_the_model_folder(model, tmp_path):
    size = model.default_size
    defaults = GenerateController(model, None).defaults()
    assert defaults.seed == RANDOM_SEED and defaults.width == defaults.height == size
    shipped = Path(model.source_path or "") / "studio_defaults.json"
    if shipped.is_file():
        data = json.loads(shipped.read_text())
        assert {k: getattr(defaults, k) for k in data} == data
    # no file: the usual SD defaults at the model's size
    bare = dataclasses.replace(model, source_path=None)
    assert model_defaults(bare) == GenerationRequest(sampler="DPM++ 2M", steps=20, cfg=7.5, seed=RANDOM_SEED,
                                                     width=size, height=size)
    # a model's own file wins; a broken one is ignored
    (tmp_path / "studio_defaults.json").write_text('{"sampler": "Euler a", "steps": 12, "cfg": 5, "unknown": 1}')
    own = model_defaults(dataclasses.replace(model, source_path=str(tmp_path)))
    assert (own.sampler, own.steps, own.cfg, own.width) == ("Euler a", 12, 5, size)
    (tmp_path / "studio_defaults.json").write_text("{not json")
    assert model_defaults(dataclasses.replace(model, source_path=str(tmp_path))) == model_defaults(bare)


def test_settings_from_image_errors(tmp_path):
    with pytest.raises(MetadataError, match="image file not found"):
        settings_from_image(tmp_path / "missing.png")
    with pytest.raises(MetadataError, match="not an image file"):
        settings_from_image(b"definitely not a png")
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    with pytest.raises(MetadataError, match="no generation metadata"):
        settings_from_image(plain)
    with pytest.raises(MetadataError, match="expected an image path or PNG bytes"):
        settings_from_image(12)


def test_controller_module_is_ui_free():
    tree = ast.parse(inspect.getsource(generate_module))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert "gradio" not in imported


def test_docstring_example_runs(model, tmp_path, monkeypatch):
    doc = generate_module.__doc__
    code = inspect.cleandoc(re.search(r"Notebook example.*?::\n\n(.*?)\n\n[A-Z]", doc, re.S).group(1))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("studio.models.load_model", lambda spec, **kw: model)
    monkeypatch.setattr(GenerateController, "defaults", lambda self: request(model, steps=2))
    namespace: dict = {}
    exec(compile(code, "<generate docstring>", "exec"), namespace)
    outcome, again = namespace["outcome"], namespace["again"]
    assert len(outcome.paths) == 2 and all(p.is_file() for p in outcome.paths)
    assert all((tmp_path / "outputs").resolve() in p.resolve().parents for p in outcome.paths)
    assert again.seeds == outcome.seeds
