"""The Personalization tab's handlers without a browser: training streams progress and stops with a checkpoint,
what a session learns stays in it until saved, the library lists, renames and deletes."""

from __future__ import annotations

import re
from html import unescape as plain

import pytest
from PIL import Image

from studio.controllers.personalize import PersonalizationController
from studio.personalization.library import ConceptLibrary
from studio.ui.personalization_tab import LORA_SLOTS, NONE, PersonalizationHandlers, PersonalizationSession

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture
def handlers(tiny_model, tmp_path):
    controller = PersonalizationController(tiny_model, checkpoints=tmp_path / "ckpt")
    return PersonalizationHandlers(controller, ConceptLibrary(tmp_path / "library"))


def gallery(n=3):
    out = []
    for i in range(n):
        im = Image.new("RGB", (64, 64), (20, 20, 20))
        im.paste((200, 40 + 40 * i, 40), (16, 16, 40, 40))
        out.append((im, f"{i}"))
    return out


def train(handlers, session, method="textual-inversion", steps=2, **over):
    values = dict(gallery=gallery(), method=method, token="<ring>", init_word="square", steps=steps, lr=1e-3,
                  rank=2, preview_every=0, start_over=False)
    values.update(over)
    return list(handlers.train(session, *values.values()))


def slots(name=NONE, scale=1.0):
    return [name, scale] + [NONE, 1.0] * (LORA_SLOTS - 1)


def test_train_use_save_and_isolation(handlers):
    mine, theirs = PersonalizationSession(), PersonalizationSession()
    frames = train(handlers, mine)
    progress, _, status = frames[-1][:3]
    assert "learned <ring> as 'ring'" in plain(status) and 'data-step="1"' in progress
    assert any('data-step="1" data-total="2"' in str(f[0]) for f in frames[:-1])  # streamed
    assert "ring" in mine.learned and not theirs.learned
    assert handlers.choices(theirs) == [] and handlers.choices(mine) == ["ring"]
    image, status = handlers.render(mine, "a <ring>", 1, 2, 5.0, ["ring"], ["1"], "", *slots())
    assert image.size == (64, 64) and "rendered with <ring>" in plain(status)
    _, status = handlers.render(theirs, "a <ring>", 1, 2, 5.0, ["ring"], [], "", *slots())
    assert "not one of this session's concepts" in plain(status)
    status = handlers.save(mine, "ring", "my-ring")[0]
    assert "saved 'my-ring'" in plain(status) and handlers.table()[0][:2] == ["my-ring", "embedding"]
    assert "library: my-ring" in handlers.choices(theirs)  # saved concepts are listed for everyone
    _, status = handlers.render(theirs, "a <ring>", 1, 2, 5.0, ["library: my-ring"], [], "", *slots())
    assert "rendered with <ring>" in plain(status)
    assert "renamed" in plain(handlers.rename(theirs, "my-ring", "ring-2")[0])
    assert "already saved" in plain(handlers.save(mine, "ring", "ring-2")[0])
    assert "deleted" in plain(handlers.delete(theirs, "ring-2")[0]) and handlers.table() == []
    assert "letters, digits" in plain(handlers.save(mine, "ring", "bad name!")[0])


def test_training_stops_and_resumes(handlers):
    session = PersonalizationSession()
    gen = handlers.train(session, gallery(), "textual-inversion", "<ring>", "square", 40, 1e-3, 2, 0, False)
    frames = []
    for frame in gen:  # checkpoints every 4 steps here; Stop once one is written
        frames.append(frame)
        step = re.search(r'data-step="(\d+)"', str(frame[0]))
        if step and int(step.group(1)) >= 8 and session.cancel is not None:
            session.cancel.cancel()
    assert "stopped; Train again" in plain(frames[-1][2]) and "ring" not in session.learned
    frames = train(handlers, session, steps=40)
    assert "resumed from step" in plain(frames[-1][2])


def test_lora_from_the_tab_and_bad_input(handlers):
    session = PersonalizationSession()
    frames = train(handlers, session, method="lora", steps=2)
    assert "learned <ring> as 'ring-lora'" in plain(frames[-1][2])
    image, status = handlers.render(session, "a <ring>", 1, 2, 5.0, [], [], "", *slots("ring-lora", 0.5))
    assert "ring-lora×0.5" in plain(status)
    assert "3 to 20 images" in plain(train(handlers, session, gallery=gallery(2))[-1][2])
    assert "look like <name>" in plain(train(handlers, session, token="ring")[-1][2])
