"""build_app wiring (one GPU queue, no placeholder tabs, examples) and launch.py's flags."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gradio as gr
import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import launch  # noqa: E402


@pytest.fixture
def demo(tiny_model, tmp_path):
    from studio.ui import build_app

    app = build_app(tiny_model, tmp_path / "outputs")
    yield app
    app.studio_store.close()


def fns_by_name(demo) -> dict:
    return {fn.name: fn for fn in demo.fns.values()}


def test_title_tabs_and_key_elements(demo):
    from studio.ui import TITLE

    assert TITLE == "Controllable Diffusion Studio" and demo.title == TITLE
    tabs = [b.label for b in demo.blocks.values() if isinstance(b, gr.Tab)]
    assert tabs == ["Generate", "Attributes", "Composition", "Editing", "Inspection", "Personalization",
                    "History"]  # no placeholder tabs
    ids = {getattr(b, "elem_id", None) for b in demo.blocks.values()}
    assert {"prompt", "negative_prompt", "sampler", "steps", "cfg", "seed", "width", "height", "batch_size",
            "generate", "stop", "preview", "progress", "gallery", "status", "examples", "settings_file",
            "seed_reuse", "seed_random", "history_search", "history_gallery", "history_reopen"} <= ids


def test_model_bound_events_share_one_queue_of_one(demo):
    fns = fns_by_name(demo)
    generate = fns["generate"]
    assert generate.concurrency_id == "gpu" and generate.concurrency_limit == 1 and generate.queue
    gpu = [fn for fn in demo.fns.values() if fn.concurrency_id == "gpu"]
    assert all(fn.concurrency_limit == 1 for fn in gpu)
    assert {fn.name for fn in gpu} == {"generate", "render", "render_draft", "sweep", "save", "compose", "blend",
                                       "run", "show_step", "branch", "classify", "information", "prompt_to_prompt",
                                       "concept_apply", "concept_load", "concept_compare", "invert", "render"}
    for fn in demo.fns.values():  # everything else is light and never waits behind a run
        if fn.concurrency_id == "learn":  # direction learning takes the model's lock one step at a time
            assert fn.name == "learn"
        elif fn.concurrency_id == "train":  # so does concept training (one at a time)
            assert fn.name == "train" and fn.concurrency_limit == 1
        elif fn.concurrency_id == "attention_view":  # attention map views apply in order, the newest last
            assert fn.name == "attention_view" and fn.concurrency_limit == 1
        elif fn.concurrency_id != "gpu":
            assert fn.concurrency_id == "light" and fn.concurrency_limit is None, fn.name
    assert "stop" in fns and fns["stop"].queue


def test_sliders_follow_the_model_size_rule(demo, tiny_model):
    from studio.engine.validate import size_rule

    rule = size_rule(tiny_model)
    width = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "width")
    assert width.step == rule.multiple and width.step % 8 == 0
    assert width.minimum == rule.minimum and width.maximum == rule.maximum
    assert width.value == tiny_model.default_size


def test_bad_examples_file_does_not_stop_the_app(tiny_model, tmp_path):
    from studio.ui import build_app

    bad = tmp_path / "examples.json"
    bad.write_text('{"examples": [{"name": "x", "prompt": "y", "steps": "many"}]}')
    app = build_app(tiny_model, tmp_path / "out", examples_path=bad)
    try:
        texts = " ".join(str(getattr(b, "value", "")) for b in app.blocks.values())
        assert "Examples unavailable" in texts and "examples[0].steps" in texts
    finally:
        app.studio_store.close()


# ----------------------------------------------------------------------------- launch.py


def test_parse_defaults():
    args = launch.build_parser().parse_args([])
    assert args.model == "tinyworld" and args.port == 7860 and not args.listen and not args.share
    assert args.outputs == Path("outputs") and args.auth is None and not args.allow_pickle


def test_parse_auth():
    assert launch.parse_auth("alice:s3cret") == ("alice", "s3cret")
    assert launch.parse_auth("bob:a:b") == ("bob", "a:b")


@pytest.mark.parametrize("value", ["alice", ":pw", "alice:", "", "al ice:pw"])
def test_bad_auth_is_a_usage_error(value, capsys):
    with pytest.raises(SystemExit) as info:
        launch.build_parser().parse_args(["--auth", value])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "--auth" in err
    assert ("USER:PASSWORD" in err) if " " not in value else ("must not contain spaces" in err)


@pytest.mark.parametrize("value", ["0", "70000", "http"])
def test_bad_port(value, capsys):
    with pytest.raises(SystemExit) as info:
        launch.build_parser().parse_args(["--port", value])
    assert info.value.code == 2 and "port must be an integer in 1..65535" in capsys.readouterr().err


def test_bad_dtype(capsys):
    with pytest.raises(SystemExit):
        launch.build_parser().parse_args(["--dtype", "fp8"])
    assert "invalid choice" in capsys.readouterr().err


def test_listen_and_share_reach_launch(monkeypatch, tiny_model, tmp_path):
    seen = {}
    monkeypatch.setattr("studio.models.load_model", lambda *a, **k: tiny_model)
    import studio.ui

    def fake_launch(demo, **kwargs):
        seen.update(kwargs)

    monkeypatch.setattr(studio.ui, "launch_app", fake_launch)
    assert launch.main(["--listen", "--port", "9999", "--share", "--auth", "u:p",
                        "--outputs", str(tmp_path / "o")]) == 0
    assert seen == {"host": "0.0.0.0", "port": 9999, "share": True, "auth": ("u", "p")}
    assert launch.main(["--outputs", str(tmp_path / "o")]) == 0
    assert seen["host"] == "127.0.0.1" and seen["port"] == 7860 and seen["share"] is False


def test_model_load_error_is_one_line_and_exit_2(tmp_path):
    missing = tmp_path / "nope.safetensors"
    proc = subprocess.run([sys.executable, str(ROOT / "launch.py"), "--model", str(missing),
                           "--outputs", str(tmp_path / "o")], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: model path {missing} does not exist"]


def test_pickle_refused_without_flag(tmp_path, capsys):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"x")
    assert launch.main(["--model", str(ckpt), "--outputs", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--allow-pickle" in err
