"""Fast tests of the UI event handlers, called directly (no server, no browser).

Bad input must end in a user message (gr.Warning via ``notify`` plus the status
line), never an exception; each browser session's state is its own.
"""

from __future__ import annotations

import copy
import io
from dataclasses import replace

import gradio as gr
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from studio.controllers.generate import GenerateController
from studio.engine import SAMPLERS
from studio.outputs import OutputStore, read_image_settings
from studio.presets import Preset
from studio.ui.errors import gradio_warning, status_html, user_message
from studio.ui.generate_tab import FORM_FIELDS, FORM_OUTPUTS, GENERATE_OUTPUTS, GenerateHandlers, settings_dict
from studio.ui.history_tab import REOPEN_OUTPUTS, SEARCH_OUTPUTS, SELECT_OUTPUTS, HistoryHandlers
from studio.ui.session import SessionState

PROMPT = "a large red circle at the top left on a black background"


def is_skip(value) -> bool:
    return isinstance(value, dict) and value.get("__type__") == "update" and set(value) == {"__type__"}


def text(html: str) -> str:
    """The text of a status/info HTML snippet."""
    import html as html_module
    import re

    return html_module.unescape(re.sub(r"<[^>]+>", "", html))


def value_of(update):
    return update["value"] if isinstance(update, dict) else update


class Notes(list):
    """Collects what the handlers would show with gr.Warning."""

    def __call__(self, message: str) -> None:
        self.append(message)


@pytest.fixture
def store(tmp_path):
    with OutputStore(tmp_path / "outputs") as s:
        yield s


@pytest.fixture
def notes():
    return Notes()


@pytest.fixture
def handlers(tiny_model, store, notes):
    controller = GenerateController(tiny_model, store)
    presets = [Preset(name="red", prompt=PROMPT, steps=3, seed=5, sampler="Euler"),
               Preset(name="batch", prompt="a blue square", batch_size=2)]
    return GenerateHandlers(controller, tiny_model, presets=presets, notify=notes, frame_interval=0.0)


@pytest.fixture
def history(store, handlers, notes):
    return HistoryHandlers(store, handlers, notify=notes)


def form(handlers, **changes):
    values = {**handlers.defaults(), "steps": 3, **changes}
    return [values[name] for name in FORM_FIELDS]


def run(handlers, session, **changes):
    """All outputs of one Generate click, as dicts."""
    return [dict(zip(GENERATE_OUTPUTS, out)) for out in handlers.generate(session, *form(handlers, **changes))]


# ----------------------------------------------------------------------------- generate


def test_generate_streams_progress_then_saves_with_metadata(handlers, store, notes):
    session = SessionState()
    outs = run(handlers, session, prompt=PROMPT, steps=6, seed=-1)
    first, last = outs[0], outs[-1]
    assert first["generate"]["interactive"] is False
    assert first["stop"]["interactive"] is True
    assert any("step " in o["progress"] for o in outs[1:-1] if isinstance(o["progress"], str))
    assert "Done: 1 image(s)" in last["status"] and "studio-ok" in last["status"]
    assert last["generate"]["interactive"] is True and last["stop"]["interactive"] is False
    assert isinstance(last["preview"], Image.Image)
    [(path, caption)] = last["gallery"]
    assert session.gallery == last["gallery"]
    assert session.last_seed is not None and caption == f"seed {session.last_seed}"
    assert read_image_settings(path).prompt == PROMPT
    assert read_image_settings(path).seed == session.last_seed
    assert store.history.count() == 1
    assert not session.running and notes == []


def test_previews_are_yielded_while_running(handlers):
    outs = run(handlers, SessionState(), prompt=PROMPT, steps=8)
    frames = [o["preview"] for o in outs[:-1] if isinstance(o["preview"], Image.Image)]
    assert frames, "no x0 preview frame was streamed before the result"


@pytest.mark.parametrize("field, value, words", [
    ("steps", 0, "steps must be a whole number in 1..150"),
    ("steps", 2.5, "steps must be a whole number"),
    ("steps", None, "steps is empty"),
    ("cfg", 99, "cfg must be in 0..30"),
    ("cfg", float("nan"), "cfg must be a finite number"),
    ("seed", -7, "seed must be a whole number in -1..4294967295 (-1 = random)"),
    ("seed", 2**40, "seed must be a whole number"),
    ("width", 60, "width must be a multiple of"),
    ("height", None, "height is empty"),
    ("batch_size", 0, "batch_size must be a whole number in 1..16"),
    ("sampler", "Heun", "unknown sampler 'Heun'; allowed: " + ", ".join(SAMPLERS)),
    ("sampler", None, "unknown sampler None"),
    ("prompt", 12, "prompt must be text"),
])
def test_bad_input_gives_a_message_not_an_exception(handlers, store, notes, field, value, words):
    session = SessionState()
    outs = run(handlers, session, **{field: value})
    assert len(outs) == 1
    [out] = outs
    assert len(notes) == 1 and notes[0].startswith("Cannot generate: ") and words in notes[0]
    assert words in text(out["status"]) and "studio-error" in out["status"]
    assert "Traceback" not in out["status"]
    assert out["generate"]["interactive"] is True and out["stop"]["interactive"] is False
    assert is_skip(out["preview"]) and is_skip(out["gallery"])
    assert store.history.count() == 0 and not session.running


def test_engine_rejection_is_shown_too(handlers, notes, monkeypatch):
    """Requests the form accepts but the engine refuses (here LCM beyond its step limit)."""
    outs = run(handlers, SessionState(), sampler="LCM", steps=120)
    assert len(notes) == 1 and "steps must be an integer in 1..50 for sampler LCM" in notes[0]
    assert "studio-error" in outs[-1]["status"]


def test_over_long_prompt_warning_is_visible(handlers, notes):
    long_prompt = "a red circle and " * 20
    outs = run(handlers, SessionState(), prompt=long_prompt, steps=2)
    assert len(notes) == 1 and notes[0].startswith("Prompt truncated: it is")
    assert "Prompt truncated" in outs[0]["status"] and "studio-warning" in outs[0]["status"]
    assert "Done" in outs[-1]["status"] and "Prompt truncated" in outs[-1]["status"]


def test_stop_cancels_within_a_step_and_returns_to_idle(handlers, store):
    session = SessionState()
    steps = 60
    gen = handlers.generate(session, *form(handlers, prompt=PROMPT, steps=steps))
    outs = [dict(zip(GENERATE_OUTPUTS, next(gen)))]
    assert session.running
    while True:  # wait until the run is under way
        out = dict(zip(GENERATE_OUTPUTS, next(gen)))
        outs.append(out)
        if isinstance(out["progress"], str) and "step " in out["progress"]:
            break
    assert handlers.stop(session) == {"__type__": "update", "interactive": False}
    outs += [dict(zip(GENERATE_OUTPUTS, o)) for o in gen]
    assert any("Stopping at step" in o["status"] for o in outs if isinstance(o["status"], str))
    last = outs[-1]
    assert "Stopped at step" in last["status"]
    stopped_at = int(last["status"].split("step ")[1].split("/")[0])
    assert stopped_at < steps
    assert last["generate"]["interactive"] is True and last["stop"]["interactive"] is False
    assert not session.running and session.gallery == [] and store.history.count() == 0
    assert handlers.stop(session)["interactive"] is False  # nothing to stop: harmless
    # and the tab works again afterwards
    assert "Done" in run(handlers, session, prompt=PROMPT, steps=2)[-1]["status"]


def test_closing_the_page_mid_run_cancels_the_worker(handlers, store):
    session = SessionState()
    gen = handlers.generate(session, *form(handlers, steps=80))
    next(gen)
    token = session.cancel
    next(gen)
    gen.close()  # what gradio does when the client goes away
    assert token.cancelled and not session.running


def test_closing_the_page_before_the_run_starts_leaves_the_session_idle(handlers):
    session = SessionState()
    gen = handlers.generate(session, *form(handlers, steps=5))
    next(gen)
    gen.close()
    assert not session.running


def test_second_click_while_running_is_refused(handlers, notes):
    session = SessionState()
    gen = handlers.generate(session, *form(handlers, steps=40))
    next(gen)
    again = [dict(zip(GENERATE_OUTPUTS, o)) for o in handlers.generate(session, *form(handlers))]
    assert len(again) == 1 and "already going" in again[0]["status"] and "already going" in notes[0]
    handlers.stop(session)
    list(gen)


def test_unexpected_errors_are_one_line(handlers, notes, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("CUDA out of memory\nwith details")

    monkeypatch.setattr(handlers.controller, "run", boom)
    last = run(handlers, SessionState())[-1]
    assert "Generation failed unexpectedly (RuntimeError: CUDA out of memory with details)" in notes[0]
    assert "Traceback" not in last["status"] and last["generate"]["interactive"] is True


# ----------------------------------------------------------------------------- sessions


def test_sessions_are_isolated(handlers, notes):
    a, b = SessionState(), SessionState()
    run(handlers, a, prompt=PROMPT, steps=2, seed=11)
    assert len(a.gallery) == 1 and a.last_seed == 11
    assert b.gallery == [] and b.last_seed is None
    assert handlers.reuse_seed(a) == 11
    assert is_skip(handlers.reuse_seed(b)) and "No finished run in this session" in notes[-1]
    run(handlers, b, prompt=PROMPT, steps=2, seed=12, batch_size=2)
    assert [c for _, c in b.gallery] == ["seed 12", "seed 13"]
    assert [c for _, c in a.gallery] == ["seed 11"]
    assert b.cancel is None and handlers.stop(b)["interactive"] is False


def test_gr_state_gives_every_session_a_fresh_state(tmp_path, tiny_model):
    from studio.ui import build_app

    demo = build_app(tiny_model, tmp_path / "out")
    try:
        states = [blk for blk in demo.blocks.values() if isinstance(blk, gr.State)]
        [state] = [s for s in states if isinstance(s.value, SessionState)]
        one, two = copy.deepcopy(state.value), copy.deepcopy(state.value)
        assert isinstance(one, SessionState) and one is not two and one.gallery is not two.gallery
        one.add_images([("x.png", "seed 1")])
        assert two.gallery == [] and state.value.gallery == []
        from studio.ui.attributes_tab import AttributesSession

        [attributes] = [s for s in states if isinstance(s.value, AttributesSession)]
        mine, theirs = copy.deepcopy(attributes.value), copy.deepcopy(attributes.value)
        mine.custom.append("x")
        assert mine.full is not theirs.full and theirs.custom == [] and attributes.value.custom == []
    finally:
        demo.studio_store.close()


def test_session_state_never_copies_a_cancel_token():
    from studio.engine import CancelToken

    s = SessionState(cancel=CancelToken())
    assert copy.deepcopy(s).cancel is None
    token = s.cancel
    s.close()  # gradio's delete_callback when the session's state is dropped
    assert token.cancelled


# ----------------------------------------------------------------------------- seed, examples, settings


def test_random_seed_button():
    assert GenerateHandlers.random_seed() == -1


def test_apply_example_overlays_model_defaults(handlers):
    out = dict(zip(FORM_OUTPUTS, handlers.apply_example(0)))
    assert value_of(out["prompt"]) == PROMPT
    assert value_of(out["steps"]) == 3 and value_of(out["seed"]) == 5 and value_of(out["sampler"]) == "Euler"
    assert value_of(out["negative_prompt"]) == "" and value_of(out["batch_size"]) == 1
    assert value_of(out["width"]) == handlers.limits.default_width
    assert "Example loaded: red" in out["status"]
    out = dict(zip(FORM_OUTPUTS, handlers.apply_example(1)))
    assert value_of(out["batch_size"]) == 2 and value_of(out["steps"]) == handlers.defaults()["steps"]


def test_bad_example_index(handlers, notes):
    out = dict(zip(FORM_OUTPUTS, handlers.apply_example(9)))
    assert all(is_skip(out[name]) for name in FORM_FIELDS)
    assert "No example 9" in notes[0]


def test_load_settings_from_a_studio_png(handlers):
    [_, *_, last] = run(handlers, SessionState(), prompt=PROMPT, steps=4, seed=77, cfg=5.5, sampler="Euler a")
    path = last["gallery"][0][0]
    out = dict(zip(FORM_OUTPUTS, handlers.load_settings(path)))
    assert value_of(out["prompt"]) == PROMPT and value_of(out["seed"]) == 77 and value_of(out["steps"]) == 4
    assert value_of(out["cfg"]) == 5.5 and value_of(out["sampler"]) == "Euler a"
    assert "Settings loaded from" in out["status"]


def a1111_png(tmp_path, text: str):
    info = PngInfo()
    info.add_text("parameters", text)
    path = tmp_path / "a1111.png"
    Image.new("RGB", (64, 64), "gray").save(path, pnginfo=info)
    return path


def test_load_settings_from_an_a1111_png(handlers, tmp_path, notes):
    path = a1111_png(tmp_path, "a blue square\nNegative prompt: red\n"
                               "Steps: 12, Sampler: Heun, CFG scale: 6, Seed: 123, Size: 64x64, Model: foo")
    out = dict(zip(FORM_OUTPUTS, handlers.load_settings(str(path))))
    assert value_of(out["prompt"]) == "a blue square" and value_of(out["negative_prompt"]) == "red"
    assert value_of(out["steps"]) == 12 and value_of(out["seed"]) == 123 and value_of(out["cfg"]) == 6
    assert is_skip(out["sampler"])  # Heun is not a studio sampler: kept, and said so
    assert any("kept the current sampler" in n for n in notes)
    assert "studio-warning" in out["status"]


@pytest.mark.parametrize("content, words", [
    (b"not an image at all", "not an image file"),
    (None, "no generation metadata"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "Cannot load settings from"),
])
def test_load_settings_from_bad_files_warns(handlers, tmp_path, notes, content, words):
    path = tmp_path / "upload.png"
    if content is None:
        Image.new("RGB", (8, 8)).save(path)
    else:
        path.write_bytes(content)
    out = dict(zip(FORM_OUTPUTS, handlers.load_settings(str(path))))
    assert all(is_skip(out[name]) for name in FORM_FIELDS)
    assert len(notes) == 1 and notes[0].startswith("Cannot load settings from upload.png: ") and words in notes[0]
    assert "studio-error" in out["status"]


def test_load_settings_missing_file_and_empty(handlers, tmp_path, notes):
    out = handlers.load_settings(str(tmp_path / "gone.png"))
    assert "Cannot load settings from gone.png" in notes[0] and "studio-error" in out[-1]
    assert all(is_skip(v) for v in handlers.load_settings(None))


def test_settings_dict_accepts_requests_parsed_settings_and_dicts(handlers):
    request = replace(handlers.controller.defaults(), prompt="x", seed=3)
    values, _ = settings_dict(request)
    assert values["prompt"] == "x" and values["seed"] == 3
    buf = io.BytesIO()
    info = PngInfo()
    info.add_text("parameters", "y\nSteps: 5, Seed: 4")
    Image.new("RGB", (8, 8)).save(buf, "PNG", pnginfo=info)
    values, _ = settings_dict(read_image_settings(buf.getvalue()))
    assert values == {"prompt": "y", "negative_prompt": "", "steps": 5, "seed": 4}
    assert settings_dict(({"prompt": "z", "junk": 1}, ["note"])) == ({"prompt": "z"}, ["note"])


# ----------------------------------------------------------------------------- history


def test_history_search_select_reopen(handlers, history, notes):
    session = SessionState()
    run(handlers, session, prompt=PROMPT, steps=2, seed=21)
    run(handlers, session, prompt="a blue square", steps=3, seed=22, batch_size=2)
    out = dict(zip(SEARCH_OUTPUTS, history.search(session, "")))
    assert len(out["gallery"]) == 3 and "3 run(s)" in out["info"]
    out = dict(zip(SEARCH_OUTPUTS, history.search(session, "RED circle")))
    [(path, caption)] = out["gallery"]
    assert PROMPT[:40] in caption and 'matching "RED circle"' in text(out["info"])
    assert dict(zip(SEARCH_OUTPUTS, history.search(session, "nothing like it")))["gallery"] == []

    history.search(session, "blue")
    selected = dict(zip(SELECT_OUTPUTS, history.select(session, 0)))
    assert selected["image"].endswith(".png") and "a blue square" in selected["details"]
    assert selected["reopen"]["interactive"] is True
    reopened = dict(zip(REOPEN_OUTPUTS, history.reopen(session)))
    assert value_of(reopened["prompt"]) == "a blue square" and value_of(reopened["steps"]) == 3
    assert value_of(reopened["seed"]) in (22, 23) and value_of(reopened["batch_size"]) == 1
    assert reopened["preview"] == selected["image"]
    assert reopened["tabs"]["selected"] == "generate" if isinstance(reopened["tabs"], dict) else True
    assert "Reopened run #" in reopened["status"] and notes == []


def test_history_select_out_of_range_and_reopen_without_selection(history, notes):
    session = SessionState()
    history.search(session, "")
    out = dict(zip(SELECT_OUTPUTS, history.select(session, 5)))
    assert "no longer listed" in out["status"] if "status" in out else "no longer listed" in out["details"]
    out = dict(zip(REOPEN_OUTPUTS, history.reopen(session)))
    assert all(is_skip(out[name]) for name in FORM_FIELDS) and "Select a run" in notes[-1]


def test_history_is_shared_but_listing_is_per_session(handlers, history):
    a, b = SessionState(), SessionState()
    run(handlers, a, steps=2)
    history.search(a, "")
    assert len(a.history_ids) == 1 and b.history_ids == []


# ----------------------------------------------------------------------------- messages


def test_gradio_warning_outside_a_request_is_a_python_warning():
    with pytest.warns(UserWarning, match="hello"):
        gradio_warning("hello")


def test_user_message_names_the_field():
    from studio.engine import InvalidRequest

    assert user_message(InvalidRequest("must be 1..3", "steps"), "Cannot generate") == \
        "Cannot generate: steps: must be 1..3"
    assert user_message(ValueError("a\n b")) == "a b"
    assert "&lt;b&gt;" in status_html("<b>", "error")
