"""The Composition tab's compose handler, without a browser: previews and progress stream, Stop ends the run with a
warning, a second run in the same session is refused, bad input is a message."""

from __future__ import annotations

import re

import pytest

from studio.controllers.compose import CompositionController
from studio.engine import CancelToken
from studio.ui.composition_tab import N_PARTS, N_REGIONS, N_STAGE_ROWS, CompositionHandlers, CompositionSession

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture
def handlers(tiny_model):
    return CompositionHandlers(CompositionController(tiny_model))


def plain(html) -> str:
    return re.sub(r"<[^>]+>", "", str(html))


def form(parts=(("a red circle", 1.0), ("a blue square", 1.0)), steps=4):
    values = ["", 1, steps, 5.0, "DPM++ 2M", False, False, 0.05, "add", 1.0]
    for i in range(N_PARTS):
        values += list(parts[i]) if i < len(parts) else ["", 1.0]
    values += ["", 0, 0] * N_STAGE_ROWS + ["", ""] * N_REGIONS
    return values


def test_compose_streams_progress_then_the_image(handlers):
    frames = list(handlers.compose(CompositionSession(), *form()))
    steps = [int(m.group(1)) for f in frames[:-1] if (m := re.search(r'data-step="(\d+)"', str(f[3])))]
    assert steps and steps == sorted(steps) and max(steps) <= 4
    image, _, _, progress, status = frames[-1]
    assert image.size == (64, 64) and "composed: a red circle AND a blue square" in plain(status)


def test_compose_stops_and_refuses_a_second_run(handlers):
    session = CompositionSession()
    frames = []
    for frame in handlers.compose(session, *form(steps=30)):
        frames.append(frame)
        if re.search(r'data-step="2"', str(frame[3])):
            handlers.stop(session)
    assert plain(frames[-1][4]).endswith("stopped") and "stopped" in str(frames[-1][3])
    assert session.cancel is None  # idle again
    busy = CompositionSession()
    busy.cancel = CancelToken()  # as while another run of this session goes
    refused = list(handlers.compose(busy, *form()))
    assert len(refused) == 1 and "a run is in progress" in plain(refused[0][4])


def test_compose_bad_input_is_a_message(handlers):
    frames = list(handlers.compose(CompositionSession(), *form(parts=())))
    assert len(frames) == 1 and "write at least one part" in plain(frames[0][4])
