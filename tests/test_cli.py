"""``python -m studio generate``: files, names, JSON, history and one-line errors (run in-process via main)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from studio.cli import main
from studio.models import repo_root
from studio.outputs import History, read_image_settings



@pytest.fixture(scope="module", autouse=True)
def model(default_model):
    """Tiny World (else the tiny random SD model), run with one torch thread (conftest: default_model)."""
    return default_model


@pytest.fixture
def cli(model):
    """``cli(*argv, real_loader=False) -> (exit code, stdout, stderr, load calls)``; the model
    is loaded once per module unless ``real_loader`` (for model-loading errors)."""

    def run(*argv, real_loader: bool = False):
        out, err, calls = io.StringIO(), io.StringIO(), []

        def loader(spec, **kwargs):
            calls.append((spec, kwargs))
            return model

        code = main(["generate", *map(str, argv)], load_model=None if real_loader else loader,
                     stdout=out, stderr=err)
        return code, out.getvalue(), err.getvalue(), calls

    return run


def test_seed_range_writes_predictably_named_files(cli, tmp_path):
    code, out, err, calls = cli("--prompt", "a red house", "--seeds", "1-3", "--steps", 1, "--out-dir", tmp_path)
    assert code == 0, err
    expected = [tmp_path / f"000-{seed}.png" for seed in (1, 2, 3)]
    assert out.split() == [str(p) for p in expected] and err == ""
    assert len(calls) == 1 and calls[0][0] == "tinyworld"  # loaded once, default model
    for seed, path in zip((1, 2, 3), expected):
        parsed = read_image_settings(path)
        assert (parsed.seed, parsed.prompt, parsed.steps, parsed.workbench) == (seed, "a red house", 1, "generate")
        with Image.open(path) as im:
            assert f"Seed: {seed}," in im.text["parameters"] and "studio" in im.text
    assert sorted(p.name for p in tmp_path.iterdir()) == [p.name for p in expected]  # no temp files left
    assert not (tmp_path / "history.sqlite3").exists()  # history only when asked for


def test_prompts_file_json_report_and_history(cli, tmp_path, model):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# landscapes\n\na red house\n   \n  # not this one\na blue lake at night\n")
    out_dir, db = tmp_path / "out", tmp_path / "history.db"
    code, out, err, _ = cli("--prompts-file", prompts, "--seed", 5, "--steps", 1, "--cfg", 2, "--sampler", "euler_a",
                            "--out-dir", out_dir, "--history", db, "--json")
    assert code == 0, err
    report = json.loads(out)  # exactly one JSON object on stdout
    assert report["paths"] == [str(out_dir / "000-5.png"), str(out_dir / "001-5.png")]
    assert report["seeds"] == [5, 5] and report["warnings"] == []
    assert [(im["prompt_index"], im["prompt"]) for im in report["images"]] == [
        (0, "a red house"), (1, "a blue lake at night")]
    assert set(report["timings"]) == {"load", "generate", "total"}
    assert all({"encode", "denoise", "decode", "save", "total"} <= set(im["timings"]) for im in report["images"])
    assert report["settings"]["sampler"] == "Euler a" and report["settings"]["cfg"] == 2.0
    assert report["weights_hash"] == model.weights_hash
    parsed = read_image_settings(out_dir / "001-5.png")
    assert (parsed.prompt, parsed.sampler, parsed.cfg) == ("a blue lake at night", "Euler a", 2.0)
    with History(db, files_root=out_dir) as history:
        rows = history.list()
        assert sorted(r.relative_path for r in rows) == ["000-5.png", "001-5.png"]
        assert {r.workbench for r in rows} == {"generate"}


def test_out_file_and_random_seed(cli, tmp_path):
    target = tmp_path / "nested" / "house.png"
    code, out, err, _ = cli("--prompt", "a red house", "--steps", 1, "--out", target)
    assert code == 0, err
    assert out.strip() == str(target) and target.is_file()
    parsed = read_image_settings(target)
    assert 0 <= parsed.seed <= 2**32 - 1 and parsed.prompt == "a red house"
    assert sorted(p.name for p in target.parent.iterdir()) == ["house.png"]


def test_no_subcommand_prints_help(capsys):
    assert main([]) == 0
    assert "generate" in capsys.readouterr().out
    assert main(["generate", "--help"]) == 0
    assert "{prompt_index:03d}-{seed}.png" in capsys.readouterr().out


BAD_INPUTS = [
    # (argv after "generate"; "{d}" is a temp folder), expected text in the error
    (["--prompt", "x", "--sampler", "Heun++", "--out-dir", "{d}"], "unknown sampler 'Heun++'; allowed: DPM++ 2M"),
    (["--prompt", "x", "--steps", "0", "--out-dir", "{d}"], "--steps must be in 1..150, got 0"),
    (["--prompt", "x", "--steps", "1000", "--out-dir", "{d}"], "--steps must be in 1..150"),
    (["--prompt", "x", "--steps", "ten", "--out-dir", "{d}"], "argument --steps: invalid int value: 'ten'"),
    (["--prompt", "x", "--width", "65", "--out-dir", "{d}"], "--width must be a positive multiple of 8"),
    (["--prompt", "x", "--height", "8", "--out-dir", "{d}"], "height must be a multiple of"),  # model's rule
    (["--prompt", "x", "--cfg", "nan", "--out-dir", "{d}"], "--cfg must be a finite number in 0..30, got nan"),
    (["--prompts-file", "{d}/missing.txt", "--out-dir", "{d}"], "prompts file not found: "),
    (["--prompt", "x", "--seed", "1", "--seeds", "1-3", "--out-dir", "{d}"], "--seed and --seeds are mutually"),
    (["--prompt", "x", "--seeds", "3-1", "--out-dir", "{d}"], "must go up (A <= B)"),
    (["--prompt", "x", "--seeds", "1-3", "--out", "{d}/one.png"], "--out FILE takes exactly one image"),
    (["--prompt", "x", "--seeds", "1-2", "--batch", "2", "--out-dir", "{d}"], "would make seed 2 twice"),
    (["--prompt", "x", "--out", "{d}/a.png", "--out-dir", "{d}"], "exactly one of --out FILE"),
    (["--prompt", "x"], "exactly one of --out FILE"),
    (["--out-dir", "{d}"], "a prompt is required"),
    (["--prompt", "x", "--frobnicate", "--out-dir", "{d}"], "unrecognized arguments: --frobnicate"),
]


@pytest.mark.parametrize("argv, expected", BAD_INPUTS, ids=[" ".join(a[2:4]) or a[0] for a, _ in BAD_INPUTS])
def test_bad_input_exits_2_with_one_line(cli, tmp_path, argv, expected):
    code, out, err, _ = cli(*[a.replace("{d}", str(tmp_path)) for a in argv])
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.endswith("\n") and err.count("\n") == 1, err
    assert expected in err
    assert not list(tmp_path.rglob("*.png"))


def test_unreadable_and_offline_models_exit_2(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "not-a-model").mkdir()
    cases = [
        (tmp_path / "not-a-model", "is a folder but not a diffusers pipeline (no model_index.json)"),
        (tmp_path / "missing.safetensors", "does not exist"),
        ("someone/not-in-the-cache", "we are offline and it is not in the local Hugging Face cache"),
    ]
    for spec, expected in cases:
        code, out, err, _ = cli("--prompt", "x", "--model", spec, "--out-dir", tmp_path / "out", real_loader=True)
        assert code == 2 and out == "" and err.count("\n") == 1 and err.startswith("error: "), err
        assert expected in err
    assert not (tmp_path / "out").exists()


def test_subprocess_error_is_one_line_without_traceback(tmp_path):
    (tmp_path / "empty").mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(repo_root())}
    proc = subprocess.run(
        [sys.executable, "-m", "studio", "generate", "--prompt", "x", "--model", str(tmp_path / "empty"),
         "--out-dir", str(tmp_path / "out")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
