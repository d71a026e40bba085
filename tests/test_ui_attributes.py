"""Attributes tab handlers, called directly (no browser): renders, sweeps, errors, user attributes, sessions."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from studio.controllers.attributes import AttributesController
from studio.ui.attributes_tab import NONE, AttributesHandlers, AttributesSession

pytestmark = pytest.mark.usefixtures("torch_single_thread")

PROMPT = "a medium red circle and a medium blue square on a black background"


@pytest.fixture(scope="module")
def handlers(tiny_models, torch_single_thread_module, tmp_path_factory):
    model = tiny_models("tinyworld")
    return AttributesHandlers(AttributesController(model, directions_root=tmp_path_factory.mktemp("dirs")))


def form(value=1.0, subject="circle", attr="size", method="naive", delay=0.0):
    return [PROMPT, 3, 8, 3.0, delay, attr, subject, method, value, NONE, "square", 0.0]


def test_render_and_draft(handlers):
    session = AttributesSession()
    image, zero, status = handlers.render(session, *form(1.5))
    assert "done" in status and "size on &#x27;circle&#x27; = +1.50" in status
    assert image.size == (64, 64) and zero.size == (64, 64)
    assert np.abs(np.asarray(image, float) - np.asarray(zero, float)).mean() > 1
    draft, _, status = handlers.render_draft(session, *form(1.0))
    assert "draft" in status and session.last[0].sliders[0].value == 1.5  # drafts are not what Save saves


def test_errors_are_messages_not_tracebacks(handlers):
    session = AttributesSession()
    image, zero, status = handlers.render(session, *form(subject="triangle"))
    assert "studio-error" in status and "does not occur" in status and "Traceback" not in status
    assert handlers.render(session, *form(value=5.0))[2].count("must be a number in [-1.5, 1.5]") == 1
    _, _, status = handlers.sweep(session, PROMPT, 3, 8, 3.0, 0.0, "size", "circle", "naive", NONE, "", 0, 40)
    assert "frames must be in 2..16" in status


def test_sweep_gives_filmstrip_and_animation(handlers):
    session = AttributesSession()
    gallery, path, status = handlers.sweep(session, PROMPT, 3, 8, 3.0, 0.0, "size", "circle", "naive", NONE, "",
                                           0.0, 5)
    assert len(gallery) == 5 and [c for _, c in gallery] == ["-1.50", "-0.75", "+0.00", "+0.75", "+1.50"]
    assert open(path, "rb").read(4) == b"RIFF" and "one batched run" in status


def test_user_defined_attribute_is_per_session(handlers):
    mine, other = AttributesSession(), copy.deepcopy(AttributesSession())
    mine, dd1, dd2, status = handlers.define(mine, "greenness", "circle", "a green {subject}", "a red {subject}", 2)
    assert "added" in status and "greenness" in dd1["choices"]
    image, _, status = handlers.render(mine, *form(1.0, attr="greenness"))
    assert "done" in status
    _, _, status = handlers.render(other, *form(1.0, attr="greenness"))
    assert "unknown attribute" in status  # another browser session does not see it
    _, _, _, status = handlers.define(mine, "greenness", "circle", "a green {subject}", "a red {subject}", 2)
    assert "exists already" in status
    _, _, _, status = handlers.define(mine, "bad", "circle", "green", "a red {subject}", 2)
    assert "{subject}" in status and "not added" in status


def test_session_state_copies_start_empty():
    s = AttributesSession()
    s.custom.append("x")
    assert copy.deepcopy(s).custom == []


def test_learn_streams_progress_and_saves(handlers):
    session = AttributesSession()
    lines = list(handlers.learn(session, "hue red-yellow", "circle", 3, 3.0))
    assert any("learning" in line for line in lines) and "learning done" in lines[-1]
    assert handlers.controller.has_learned("hue red-yellow", "circle")
    assert "nothing is being learned" in handlers.cancel_learning(session)


def test_learn_from_example_images_when_that_direction_is_chosen(handlers):
    session = AttributesSession()
    lines = list(handlers.learn(session, "size", "circle", 2, 3.0, "learned-images"))
    assert any("from example images" in line for line in lines) and "learning done" in lines[-1]
    assert handlers.controller.has_learned("size", "circle", "learned-images")
    lines = list(handlers.learn(session, "warmth", "circle", 2, 3.0, "learned-images"))
    assert "no example images" in lines[-1]  # a clear message, not a traceback


def test_local_render_and_sweep(handlers):
    """The "keep the rest" checkbox reaches the controller for renders and sweeps."""
    session = AttributesSession()
    image, zero, status = handlers.render(session, *form(1.5), True)
    assert "done" in status and session.last[0].local is True and image.size == (64, 64)
    gallery, path, status = handlers.sweep(session, PROMPT, 3, 8, 3.0, 0.0, "size", "circle", "naive", NONE, "",
                                           0.0, 2, True)
    assert len(gallery) == 2 and "one batched run" in status  # the hidden reference row is not shown
    _, _, status = handlers.render(session, *form(1.0, method="weight"), True)
    assert "studio-error" in status and "prompt-weight" in status
