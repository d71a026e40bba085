"""The inspection workbench's controller: trajectory, guidance, attention views, branching, classifier, information
maps and exports. Structure on the tiny random SD model; behaviour on Tiny World."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from studio.controllers.inspect import (
    BranchRequest, ClassifyRequest, InformationRequest, InspectionController, InspectRequest,
)
from studio.engine import Engine, GenerationRequest, InvalidRequest, RunHooks, StartLatents
from studio.inspection import information
from studio.inspection.classifier import ClassifierStage
from studio.inspection.denoising import strided_timesteps
from studio.inspection.information import information_maps, without_words
from studio.inspection.trajectory import guidance_stats
from studio.tinyworld.scenes import SceneObject, scene_from_objects

pytestmark = pytest.mark.usefixtures("torch_single_thread")

BASE = GenerationRequest(prompt="a red circle and a blue square", steps=4, cfg=5.0, seed=3, sampler="DPM++ 2M")


def processor_types(model):
    return {name: type(p) for name, p in model.unet.attn_processors.items()}


@pytest.fixture
def controller(tiny_model):
    return InspectionController(tiny_model)


@pytest.fixture
def run(controller):
    return controller.run(InspectRequest(BASE, stream_word="circle"))


# ----------------------------------------------------------------------------- runs and views


def test_run_records_every_step_and_streams(controller, tiny_model):
    before = processor_types(tiny_model)
    seen = []
    run = controller.run(InspectRequest(BASE, stream_word="circle"), on_step=seen.append)
    assert processor_types(tiny_model) == before  # the recording processors are gone after the run
    assert [p.step for p in seen] == [0, 1, 2, 3] and all(p.attention_image is not None for p in seen)
    assert run.num_steps == 4 and run.trajectory.roles == ["uncond", "cond"]
    rec = run.trajectory.records[2]
    assert rec.x_t.shape == rec.x0.shape == rec.eps["cond"].shape == rec.guided.shape
    # the guided epsilon is the CFG combination of the recorded roles
    assert torch.allclose(rec.guided, rec.eps["uncond"] + 5.0 * (rec.eps["cond"] - rec.eps["uncond"]), atol=1e-4)
    # the image equals a plain run's: inspection changes nothing
    plain = Engine(tiny_model).generate(replace(BASE, width=run.request.width, height=run.request.height))
    assert np.abs(np.asarray(plain.images[0], int) - np.asarray(run.image, int)).max() <= 1
    assert set(run.words) == {"a", "red", "circle", "and", "blue", "square"}


def test_processors_removed_after_an_exception(controller, tiny_model):
    before = processor_types(tiny_model)

    def boom(progress):
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        controller.run(InspectRequest(BASE, stream_word="circle"), on_step=boom)
    assert processor_types(tiny_model) == before


def test_plain_runs_keep_the_fused_processors(controller, tiny_model):
    before = processor_types(tiny_model)
    controller.run(InspectRequest(BASE, attention=False))
    assert processor_types(tiny_model) == before
    assert all("Recording" not in t.__name__ for t in before.values())


def test_frames_and_breakdowns(controller, run):
    assert controller.frame(run, 0, "x_t").size == (run.request.width, run.request.height)
    assert controller.frame(run, 3, "cond").size == controller.frame(run, 3, "guided").size
    assert len(controller.filmstrip(run, "x0")) == 4
    m = controller.word_map(run, "circle")
    assert m.shape == (run.request.height, run.request.width) and m.min() >= 0
    groups = run.attention.resolutions()
    assert groups and sum(len(v) for v in groups.values()) == len(run.attention.layers)
    one = controller.word_map(run, "circle", resolution=next(iter(groups)))
    early = controller.word_map(run, "circle", steps=[0])
    assert (len(groups) == 1 or not np.allclose(one, m)) and not np.allclose(early, m)
    assert controller.word_overlay(run, "circle", 0.0).tobytes() == run.image.convert("RGB").tobytes()
    with pytest.raises(InvalidRequest, match="not a word of the prompt"):
        controller.word_map(run, "triangle")
    with pytest.raises(InvalidRequest, match="step must be"):
        controller.frame(run, 4)
    with pytest.raises(InvalidRequest, match="frame kind"):
        controller.frame(run, 0, "noise")


def test_guidance_stats_and_switch_step(controller, run):
    stats = controller.guidance(run, threshold=0.5)
    assert len(stats.norm["cond"]) == 4 and all(-1 <= c <= 1 for c in stats.cosine["cond"])
    first = next((s for s, c in zip(stats.steps, stats.cosine["cond"]) if c >= 0.5), None)
    assert stats.switch_step["cond"] == first
    assert guidance_stats(run.trajectory.records, 1.0).switch_step["cond"] is None or \
        max(stats.cosine["cond"]) >= 1.0
    norm_plot, cos_plot = controller.guidance_plots(run)
    assert norm_plot.size[0] > 300 and cos_plot.size[1] > 200
    heat = controller.difference(run, 1)
    assert heat.size == (run.request.width, run.request.height)
    with pytest.raises(InvalidRequest, match="conditional role"):
        controller.difference(run, 1, "uncond")


def test_composed_prompt_has_one_panel_per_part(controller):
    run = controller.run(InspectRequest(replace(BASE, prompt="a red circle AND a blue square :0.5")))
    assert run.trajectory.roles == ["uncond", "cond", "cond:1"]
    stats = controller.guidance(run)
    assert set(stats.norm) == {"cond", "cond:1"}
    assert controller.frame(run, 1, "cond:1").size == run.image.size


# ----------------------------------------------------------------------------- branching


def test_branch_with_nothing_changed_reproduces_the_run(controller, run):
    for step in (0, 2):
        out = controller.branch(run, BranchRequest(step=step))
        assert out.exact and np.array_equal(np.asarray(out.branched), np.asarray(run.image))
    changed = controller.branch(run, BranchRequest(step=1, cfg=1.0, prompt="a green triangle"))
    assert not np.array_equal(np.asarray(changed.branched), np.asarray(run.image))
    again = controller.branch(run, BranchRequest(step=2))  # the first branch left the run's trajectory intact
    assert np.array_equal(np.asarray(again.branched), np.asarray(run.image))


def test_branch_with_another_sampler_and_bad_input(controller, run):
    out = controller.branch(run, BranchRequest(step=2, sampler="Euler"))
    assert not out.exact and out.branched.size == run.image.size
    with pytest.raises(InvalidRequest, match="branch step"):
        controller.branch(run, BranchRequest(step=9))
    with pytest.raises(InvalidRequest, match="unknown sampler"):
        controller.branch(run, BranchRequest(step=1, sampler="Heun 9"))


def test_start_latents_continue_a_first_order_run(tiny_model):
    engine = Engine(tiny_model)
    req = replace(BASE, sampler="Euler", steps=5)
    inputs = []
    full = engine.generate(req, hooks=RunHooks(step_callbacks=[lambda e: inputs.append(e.model_input.clone())]))
    resumed = engine.generate(req, start=StartLatents(inputs[2], 2))
    assert torch.allclose(full.latents, resumed.latents, atol=1e-4)
    with pytest.raises(InvalidRequest, match="start latents must have shape"):
        engine.generate(req, start=StartLatents(inputs[2][:, :2], 2))
    with pytest.raises(InvalidRequest, match="start step"):
        engine.generate(req, start=StartLatents(inputs[2], 5))


# ----------------------------------------------------------------------------- exports


def test_exports_write_data_and_figures(controller, run, tmp_path):
    traj = {p.name for p in controller.export(run, "trajectory", tmp_path / "t")}
    assert {"trajectory.npz", "x0.gif", "x_t.gif", "x0.webp", "filmstrip.png", "trajectory.json"} <= traj
    data = np.load(tmp_path / "t" / "trajectory.npz")
    assert data["x0"].shape[0] == 4 and data["timesteps"].shape == (4,)
    with Image.open(tmp_path / "t" / "x0.gif") as gif:
        assert gif.n_frames >= 4
    assert json.loads((tmp_path / "t" / "trajectory.json").read_text())["request"]["seed"] == 3
    guid = {p.name for p in controller.export(run, "guidance", tmp_path / "g")}
    assert {"guidance.npz", "guidance_norm.png", "guidance_cosine.png", "guidance.json"} <= guid
    att = {p.name for p in controller.export(run, "attention", tmp_path / "a")}
    assert "attention_circle.png" in att and np.load(tmp_path / "a" / "attention.npz")["circle"].shape == (64, 64)
    assert not [p for p in tmp_path.rglob(".export-*")]  # no staging left behind
    with pytest.raises(InvalidRequest, match="panel must be"):
        controller.export(run, "everything", tmp_path)


# ----------------------------------------------------------------------------- classifier and information maps


def test_strided_timesteps_spread_every_prefix():
    ts = strided_timesteps(16, 1000)
    assert len(set(ts)) == 16 and min(ts) >= 19 and max(ts) <= 980
    first4 = sorted(ts[:4])
    assert first4[0] < 250 and first4[-1] > 700  # the first stage already sees low and high noise


def test_classifier_counts_evaluations_and_validates(controller):
    image = Image.new("RGB", (64, 64), (200, 40, 40))
    stages = (ClassifierStage(4, 2), ClassifierStage(6, 1))
    result = controller.classify(ClassifyRequest(image, ("red", "blue", "green"), stages=stages))
    assert result.evaluations == 3 * 4 + 2 * 2
    assert sorted(result.ranking) == [0, 1, 2]
    seen = sorted(int(np.isfinite(row).sum()) for row in np.array(result.errors))
    assert seen == [4, 6, 6]  # one candidate pruned after stage 1, two measured on all six samples
    assert result.ranking[0] in [k for k, row in enumerate(result.errors) if np.isfinite(row).all()]
    assert controller.classification_plot(result).size[0] > 300
    for bad, message in ((("red",), "2 to"), (("red", "red"), "differ"), (("a", "b"), "samples must grow")):
        with pytest.raises(InvalidRequest, match=message):
            st = (ClassifierStage(4, 1), ClassifierStage(4, 1)) if message == "samples must grow" else stages
            controller.classify(ClassifyRequest(image, bad, stages=st))


def test_information_decomposition_adds_up(controller):
    image = Image.new("RGB", (64, 64), (20, 20, 20))
    out = controller.information(InformationRequest(image, "a red circle", ("red", "circle"), levels=3, samples=1))
    m = out.maps
    assert set(m) == {"i1", "i2", "i12", "redundancy", "unique1", "unique2", "synergy"}
    assert torch.allclose(m["redundancy"] + m["unique1"] + m["unique2"] + m["synergy"], m["i12"], atol=1e-9)
    assert (m["i1"] >= 0).all() and m["i1"].shape == (64, 64) and out.evaluations == 4 * 3
    assert out.contexts["context"] == "a" and out.contexts["with1"] == "a red"
    # per noise level: the integrand before integration, whose trapezoid over log-SNR is the map
    assert set(out.level_maps) == {"i1", "i2", "i12"} and out.level_maps["i1"].shape == (3, 64, 64)
    lam = out.log_snrs
    assert len(lam) == 3 and lam[0] > lam[-1]
    trapezoid = sum(0.5 * (out.level_maps["i12"][k] + out.level_maps["i12"][k + 1]) * abs(lam[k + 1] - lam[k])
                    for k in range(2))
    assert torch.allclose(trapezoid, m["i12"], atol=1e-9)
    assert len(out.to_json()["level_totals"]["i1"]) == 3 and out.to_json()["space"] == "pixel"
    # pixel space moves the information, not its amount: every level keeps the latent estimate's total in nats
    latent = controller.information(InformationRequest(image, "a red circle", ("red", "circle"), levels=3, samples=1,
                                                       space="latent"))
    assert latent.space == "latent" and latent.maps["i1"].shape == (64, 64)
    for name in ("i1", "i2", "i12"):
        assert np.allclose(out.level_totals(name), latent.level_totals(name), rtol=1e-6)
        assert not torch.allclose(out.maps[name], latent.maps[name])
    with pytest.raises(InvalidRequest, match="allowed: pixel, latent"):
        controller.information(InformationRequest(image, "a red circle", ("red",), space="voxel"))
    with pytest.raises(InvalidRequest, match="not a word of the prompt"):
        controller.information(InformationRequest(image, "a red circle", ("square",)))
    assert without_words("a red circle on red", ["red"]) == "a circle on"


def test_pixel_maps_decode_a_few_levels_at_a_time(controller, monkeypatch):
    """Pixel maps decode the predictions a few noise levels at a time (memory: those levels' images, not all of them);
    how the levels are grouped must not change the maps."""
    model, engine = controller.model, Engine(controller.model)
    x0 = engine.encode(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)))[0]
    batches: list[int] = []

    def decode(latents):
        batches.append(len(latents))
        return engine.decode(latents)

    def maps():
        batches.clear()
        out = information_maps(model, x0, "a red circle", ["red", "circle"], levels=5, samples=2, decode=decode)
        return out, list(batches)

    whole, whole_batches = maps()  # 64 px: every level of a prompt in one decode
    assert whole_batches == [10] * 4
    monkeypatch.setattr(information, "DECODE_PIXELS", 2 * 64 * 64 * 2)  # two levels of two samples per decode
    grouped, grouped_batches = maps()
    assert grouped_batches == [4] * 4 + [4] * 4 + [2] * 4
    for name in whole.maps:
        assert torch.allclose(whole.maps[name], grouped.maps[name], rtol=1e-5, atol=1e-12), name
    for name in whole.level_maps:
        assert torch.allclose(whole.level_maps[name], grouped.level_maps[name], rtol=1e-5, atol=1e-12), name


@pytest.fixture(scope="module")
def tinyworld_controller(torch_single_thread_module, tiny_models):
    return InspectionController(tiny_models("tinyworld"))


def big_scene(shape: str, colour: str, background: str = "black"):
    return scene_from_objects(background, [SceneObject(shape, colour, "large", 15.0, 32.0, 32.0)])


@pytest.mark.slow
def test_classifier_on_easy_generator_scenes(tinyworld_controller):
    c = tinyworld_controller
    scene = big_scene("square", "blue")
    shape = c.classify(ClassifyRequest(scene.image, ("a circle", "a square", "a triangle"), seed=1))
    assert shape.best == "a square"
    colour = c.classify(ClassifyRequest(scene.image, ("a red square", "a blue square", "a yellow square"), seed=1))
    assert colour.best == "a blue square"


@pytest.mark.slow
def test_information_of_the_shape_word_sits_on_the_object(tinyworld_controller):
    scene = big_scene("circle", "red")
    out = tinyworld_controller.information(InformationRequest(
        scene.image, "a large red circle on a black background", ("circle",), levels=8, samples=2))
    m = out.maps["i1"].numpy()
    near = np.zeros_like(scene.masks[0])
    ys, xs = np.nonzero(scene.masks[0])
    near[max(ys.min() - 4, 0):ys.max() + 5, max(xs.min() - 4, 0):xs.max() + 5] = True
    assert m[near].sum() / m.sum() > 1.5 * near.mean()  # concentrated on and around the circle
