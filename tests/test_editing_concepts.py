"""Closed-form concept edits (UCE, Diff-QuickFix): the closed form, the model copy that shares everything else, the
shared model left untouched, delta files, session isolation in the tab, the CLI; behaviour on Tiny World."""

from __future__ import annotations

import io
import json
from dataclasses import replace

import pytest
import torch

from studio.cli import main
from studio.controllers.edit import EditingController
from studio.editing.concepts import (
    ConceptDeltaError, ConceptEditSpec, compute_delta, concept_presets_dir, cross_attention_projections,
    edited_copy, load_delta, parse_concept_presets, parse_concepts, parse_edits, quickfix_layer, save_delta,
)
from studio.engine import GenerationRequest, InvalidRequest
from studio.outputs import read_image_settings

from tests.helpers import fingerprint

pytestmark = pytest.mark.usefixtures("torch_single_thread")

BASE = GenerationRequest(prompt="a red circle", steps=3, cfg=5.0, seed=3)
TEMPLATES = ("{concept}", "a {concept}", "a photo of a {concept}", "a red {concept} on the left")


def spec(method="uce", **over):
    values = dict(method=method, edits=(("circle", "square"),), preserve=("triangle",), templates=TEMPLATES)
    values.update(over)
    return ConceptEditSpec(**values)


def test_parsing_edits_and_concepts():
    assert parse_edits("circle -> square, star ->\ndog=cat") == (("circle", "square"), ("star", ""), ("dog", "cat"))
    assert parse_concepts(" triangle, square;\nring ") == ("triangle", "square", "ring")
    with pytest.raises(InvalidRequest, match="old -> new"):
        parse_edits("circle square")


@pytest.mark.parametrize("bad, message", [
    (dict(method="magic"), "method must be one of uce, quickfix"),
    (dict(edits=()), "name at least one edit"),
    (dict(edits=(("circle", "circle"),)), "changes nothing"),
    (dict(preserve=("circle",)), "both edited and preserved"),
    (dict(strength=0.0), "lambda"),
    (dict(templates=("a photo",)), "{concept} slot"),
])
def test_bad_specs_are_refused_with_a_reason(tiny_model, bad, message):
    with pytest.raises(InvalidRequest, match=message.replace("{", r"\{").replace("}", r"\}")):
        compute_delta(tiny_model, spec(**bad))


def test_uce_closed_form_solves_the_normal_equations(tiny_model):
    from studio.editing.concepts import _edit_pairs, _encoder_outputs, _preserve_keys

    s = spec(strength=0.5, preserve_weight=0.7)
    delta = compute_delta(tiny_model, s)
    assert delta.component == "unet" and delta.targets == cross_attention_projections(tiny_model.unet)
    assert all(t.endswith((".to_k", ".to_v")) and ".attn2." in t for t in delta.targets)
    # A (lam I + K K^T + w P P^T) = lam I + G K^T + w P P^T  (keys as rows here)
    keys, guides = _edit_pairs(tiny_model, s, _encoder_outputs)
    kept = _preserve_keys(tiny_model, s, _encoder_outputs)
    eye = torch.eye(keys.shape[1], dtype=torch.float64)
    right = delta.right.double()
    lhs = right @ (0.5 * eye + keys.T @ keys + 0.7 * kept.T @ kept)
    assert torch.allclose(lhs, 0.5 * eye + guides.T @ keys + 0.7 * kept.T @ kept, rtol=1e-4, atol=1e-3)
    # and it does what it is for: edited keys move most of the way to their guides, preserved ones far less
    moved = (keys @ right.T - guides).norm() / (keys - guides).norm()
    drift = (kept @ right.T - kept).norm() / (keys @ right.T - keys).norm()
    assert moved < 0.5 and drift < 0.5


def test_edited_copy_shares_all_but_the_edited_weights_and_leaves_the_model_alone(tiny_model):
    before = fingerprint(tiny_model.unet), fingerprint(tiny_model.text_encoder)
    delta = compute_delta(tiny_model, spec())
    copy = edited_copy(tiny_model, delta)
    assert (fingerprint(tiny_model.unet), fingerprint(tiny_model.text_encoder)) == before
    assert copy.unet is not tiny_model.unet and copy.text_encoder is tiny_model.text_encoder
    assert copy.weights_hash != tiny_model.weights_hash and copy.run_lock is tiny_model.run_lock  # shared tensors
    originals = dict(tiny_model.unet.named_parameters())
    for name, parameter in copy.unet.named_parameters():
        module = name.rsplit(".", 1)[0]
        if module in delta.targets:
            expected = (originals[name].double() @ delta.right.double()).float()
            assert parameter is not originals[name] and torch.allclose(parameter, expected, atol=1e-6)
        else:
            assert parameter is originals[name]  # shared, not copied
    # both run, and differ
    controller = EditingController(tiny_model)
    edited = controller.edit_concepts(spec())
    out = controller.compare_concept_edit(edited, BASE, save=False)
    assert out.original.size == out.edited.size and out.original.tobytes() != out.edited.tobytes()
    assert (fingerprint(tiny_model.unet), fingerprint(tiny_model.text_encoder)) == before


def test_quickfix_edits_only_text_encoder_layer_zero(tiny_model):
    before = fingerprint(tiny_model.text_encoder)
    delta = compute_delta(tiny_model, spec("quickfix"))
    layer = quickfix_layer(tiny_model.text_encoder)
    assert delta.component == "text_encoder" and delta.targets == (layer,) and layer.endswith("layers.0.self_attn.out_proj")
    copy = edited_copy(tiny_model, delta)
    assert copy.unet is tiny_model.unet and copy.text_encoder is not tiny_model.text_encoder
    changed = [n for n, p in copy.text_encoder.named_parameters()
               if p is not dict(tiny_model.text_encoder.named_parameters())[n]]
    assert changed == [layer + ".weight"]
    assert fingerprint(tiny_model.text_encoder) == before


def test_delta_file_round_trip_and_refusals(tiny_model, tiny_models, tmp_path):
    delta = compute_delta(tiny_model, spec(preserve_weight=0.5))
    path = save_delta(delta, tmp_path / "edit.safetensors")
    assert path.stat().st_size < 64_000 and not list(tmp_path.glob("*.tmp"))
    loaded = load_delta(path)
    assert loaded.spec.as_dict() == delta.spec.as_dict() and loaded.targets == delta.targets and loaded.component == delta.component
    assert torch.equal(loaded.right, delta.right) and loaded.digest == delta.digest
    a, b = edited_copy(tiny_model, delta), edited_copy(tiny_model, loaded)
    assert a.weights_hash == b.weights_hash and fingerprint(a.unet) == fingerprint(b.unet)
    # another model's edit, a foreign safetensors file, a damaged one, a wrong suffix
    other = tiny_models("sd2v")
    with pytest.raises(ConceptDeltaError, match="compute it again on this model"):
        edited_copy(other, loaded)
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(ConceptDeltaError, match="not a concept-edit file"):
        load_delta(tmp_path / "foreign.safetensors")
    (tmp_path / "broken.safetensors").write_bytes(b"\x00\x01garbage")
    with pytest.raises(ConceptDeltaError, match="could not be read"):
        load_delta(tmp_path / "broken.safetensors")
    with pytest.raises(ConceptDeltaError, match=".safetensors"):
        save_delta(delta, tmp_path / "edit.pt")


def test_shipped_concept_presets_are_valid():
    files = sorted(concept_presets_dir().glob("*.json"))
    assert {f.stem for f in files} >= {"tinyworld", "sd1", "sd2"}
    for path in files:
        kind, templates, presets = parse_concept_presets(json.loads(path.read_text()), path=path)
        assert kind == path.stem and templates and presets


def test_concept_edits_are_per_session_and_revertible(tiny_model):
    from studio.ui.editing_tab import EditingHandlers, EditingSession

    handlers = EditingHandlers(EditingController(tiny_model))
    before = fingerprint(tiny_model.unet)
    mine, theirs = EditingSession(), EditingSession()
    status = handlers.concept_apply(mine, "uce", "circle -> square", "triangle", None, 1.0)
    assert "applied" in status and mine.edited is not None and theirs.edited is None
    assert handlers.controller_for(mine, True).model is mine.edited.model
    assert handlers.controller_for(theirs, True).model is tiny_model
    assert handlers.controller_for(mine, False).model is tiny_model
    gallery, status = handlers.concept_compare(mine, "a red circle", "", 2, 3, 5.0, "DPM++ 2M")
    assert [c for _, c in gallery] == ["original model", "edited model"]
    _, status = handlers.concept_compare(theirs, "a red circle", "", 2, 3, 5.0, "DPM++ 2M")
    assert "apply or load a concept edit first" in status
    file, status = handlers.concept_save(mine)
    assert file.endswith(".safetensors") and "saved" in status
    assert "loaded" in handlers.concept_load(theirs, file)
    assert theirs.edited.model is not mine.edited.model  # a copy of its own
    assert theirs.edited.model.weights_hash == mine.edited.model.weights_hash
    assert "reverted" in handlers.concept_revert(mine) and mine.edited is None
    assert "no concept edit" in handlers.concept_revert(mine)
    assert "must look like" in handlers.concept_apply(mine, "uce", "circle square", "", None, 1.0)
    assert fingerprint(tiny_model.unet) == before
    assert EditingSession().edited is None  # a new browser session starts with the original model


def run_cli(model, *argv):
    out, err = io.StringIO(), io.StringIO()
    code = main(["edit", *map(str, argv)], load_model=lambda spec, **kw: model, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_cli_concept_edit_renders_before_after_and_saves_the_delta(tiny_model, tmp_path):
    code, out, err = run_cli(tiny_model, "concept", "--edit", "circle -> square", "--preserve", "triangle",
                             "--save-delta", tmp_path / "d.safetensors", "--prompt", "a red circle", "--steps", 3,
                             "--out", tmp_path / "before.png", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert [p.rsplit("/", 1)[-1] for p in report["paths"]] == ["before.png", "before-edit.png"]
    assert report["edit"]["edits"] == [["circle", "square"]] and report["edited_weights_hash"] != report["weights_hash"]
    after = read_image_settings(tmp_path / "before-edit.png")
    assert after.controls["editing"]["model"] == "edited"
    assert after.controls["editing"]["concept_edit"]["delta"] == report["edit"]["delta"]
    assert read_image_settings(tmp_path / "before.png").controls["editing"]["model"] == "original"
    code, out, err = run_cli(tiny_model, "concept", "--delta", tmp_path / "d.safetensors", "--prompt", "a red circle",
                             "--steps", 3, "--out", tmp_path / "again.png")
    assert code == 0, err
    code, _, err = run_cli(tiny_model, "concept", "--prompt", "x", "--out", tmp_path / "o.png")
    assert code == 2 and "exactly one of --edit" in err
    code, _, err = run_cli(tiny_model, "concept", "--edit", "circle -> square")
    assert code == 2 and "--save-delta" in err


def test_circle_to_square_on_tinyworld(tiny_models):
    model = tiny_models("tinyworld")
    from studio.tinyworld.analyzer import analyze

    controller = EditingController(model)
    _, presets = controller.concept_presets()
    edited = controller.edit_concepts(presets[0].spec)
    assert edited.seconds < 10
    base = replace(controller.defaults(), prompt="a large red circle on a black background", seed=3)
    out = controller.compare_concept_edit(edited, base, save=False)
    assert [o.shape for o in analyze(out.original).objects] == ["circle"]
    assert [o.shape for o in analyze(out.edited).objects] == ["square"]
    kept = controller.compare_concept_edit(edited, replace(base, prompt="a large red triangle on a black background"),
                                           save=False)
    assert [o.shape for o in analyze(kept.edited).objects] == ["triangle"]
