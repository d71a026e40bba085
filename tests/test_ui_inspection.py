"""The Inspection tab's handlers, without a browser: a run streams, views follow the scrubber, bad input is a
message, sessions don't share runs."""

from __future__ import annotations

import copy

import pytest
from PIL import Image

from studio.controllers.inspect import InspectionController
from studio.ui.inspection_tab import InspectionHandlers, InspectionSession

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture
def handlers(tiny_model, tmp_path):
    return InspectionHandlers(InspectionController(tiny_model), tmp_path / "outputs")


def run_to_end(handlers, session, **form):
    values = dict(prompt="a red circle", negative="", seed=3, steps=3, cfg=5.0, sampler="DPM++ 2M", attention=True,
                  word="circle", opacity=0.5)
    values.update(form)
    return list(handlers.run(session, *values.values()))


def test_a_run_streams_then_every_view_works(handlers, tmp_path):
    session = InspectionSession()
    frames = run_to_end(handlers, session)
    assert len(frames) >= 2 and "recorded 3 steps" in frames[-1][3]
    assert isinstance(frames[-1][0], Image.Image) and isinstance(frames[-1][1], Image.Image)
    scrub, word, resolution, layer = handlers.after_run(session, "circle")
    assert scrub["maximum"] == 2 and word["value"] == "circle" and "all" in resolution["choices"]
    x_t, x0, panels, caption = handlers.show_step(session, 1)
    assert x_t.size == x0.size and len(panels) == 4 and "step 2 / 3" in caption  # uncond, cond, guided, |diff|
    image, status = handlers.attention_view(session, "red", 0.7, "all", "all", True, 1)
    assert isinstance(image, Image.Image) and "steps 1" in status
    norm, cosine, notes = handlers.plots(session, 0.99)
    assert norm.size[0] > 300 and ("adaptive guidance" in notes or "never reaches" in notes)
    gallery, status = handlers.branch(session, 1, "", 5.0, "DPM++ 2M")
    assert len(gallery) == 2 and "resumed exactly" in status
    files, status = handlers.export(session, "trajectory", 0.99)
    assert any(f.endswith("x0.webp") for f in files) and "exported" in status


def test_tools_on_an_image_and_their_errors(handlers):
    session = InspectionSession()
    image = Image.new("RGB", (64, 64), (220, 40, 40))
    table, plot, status = handlers.classify(session, image, "red\nblue", "2:1", 0)
    assert "<table" in table and "best:" in status
    gallery, status = handlers.information(session, image, "a red circle", "red", 2, 1)
    assert [c for _, c in gallery] == ["red on the image", "i1", "per noise level"] and "UNet evaluations" in status
    assert gallery[0][0].size == image.size
    assert "(pixel space)" in status and session.information.space == "pixel"
    _, status = handlers.information(session, image, "a red circle", "red", 2, 1, "latent")
    assert "(latent space)" in status and session.information.space == "latent"
    _, status = handlers.information(session, image, "a red circle", "red", 2, 1, "voxel")
    assert "unknown map space" in status and session.information.space == "latent"
    _, _, status = handlers.classify(session, None, "red\nblue", "2:1", 0)
    assert "upload an image" in status
    _, _, status = handlers.classify(session, image, "red", "2:1", 0)
    assert "2 to 32 candidate prompts" in status
    _, _, status = handlers.classify(session, image, "red\nblue", "two:one", 0)
    assert "stages must look like" in status
    _, status = handlers.information(session, image, "a red circle", "square", 2, 1)
    assert "not a word of the prompt" in status


def test_bad_form_and_empty_sessions_give_messages(handlers):
    session = InspectionSession()
    frames = run_to_end(handlers, session, seed=-1)
    assert "seed must be a fixed number" in frames[-1][3]
    frames = run_to_end(handlers, session, prompt="a (red circle")
    assert "prompt syntax error" in frames[-1][3]
    assert handlers.show_step(session, 0)[3] == "run an inspection first"
    assert "run an inspection first" in handlers.branch(session, 0, "", 5.0, "DPM++ 2M")[1]
    assert "run an inspection first" in handlers.export(session, "attention", 0.99)[1]
    assert "classify an image first" in handlers.export(session, "classifier", 0.99)[1]


def test_sessions_do_not_share_runs(handlers):
    first = copy.deepcopy(InspectionSession())
    run_to_end(handlers, first)
    second = copy.deepcopy(InspectionSession())
    assert first.run is not None and second.run is None


def test_branch_with_an_attribute_slider(tiny_model, tmp_path):
    import numpy as np

    from studio.controllers.attributes import AttributesController

    attributes = AttributesController(tiny_model, directions_root=tmp_path / "directions")
    handlers = InspectionHandlers(InspectionController(tiny_model), tmp_path / "outputs", attributes=attributes)
    session = InspectionSession()
    run_to_end(handlers, session)
    name = handlers.attribute_names()[0]
    gallery, status = handlers.branch(session, 1, "", 5.0, "DPM++ 2M", name, "circle", 1.0)
    assert f"{name} +1 on circle" in gallery[1][1]
    original, branched = (np.asarray(im, dtype=np.int16) for im, _ in gallery)
    assert np.abs(original - branched).mean() > 0  # the slider acted from the branch step on
    _, status = handlers.branch(session, 1, "", 5.0, "DPM++ 2M", name, "hexagon", 1.0)
    assert "does not occur" in status
