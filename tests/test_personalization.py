"""Personalization: tokens on a private copy (added and removed cleanly), embedding files in both formats, the
training loop (progress, cancel, checkpoint and resume, gradients only on the new vectors), per-stage use, the CLI.
Structure on the tiny random SD model."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

from studio.cli import main
from studio.controllers.personalize import (
    ConceptUse, PersonalizationController, PersonalizedRequest, TrainConceptRequest,
)
from studio.engine import Cancelled, CancelToken, GenerationRequest, InvalidRequest
from studio.outputs import read_image_settings
from studio.personalization.formats import EmbeddingFileError, load_concept, save_concept
from studio.personalization.lora import LoraSpec
from studio.personalization.prospect import stage_prompts
from studio.personalization.tokens import LearnedConcept, personalized_copy
from studio.personalization.training import TrainingSpec, caption

from tests.helpers import fingerprint

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.usefixtures("torch_single_thread")

BASE = GenerationRequest(prompt="a <ring> on a table", steps=3, cfg=5.0, seed=3)


def images(n=3):
    out = []
    for i in range(n):
        im = Image.new("RGB", (80, 64), (20, 20, 20))
        im.paste((200, 40 + 40 * i, 40), (20, 10, 50, 40))
        out.append(im)
    return out


def dim(model) -> int:
    return model.text_encoder.get_input_embeddings().embedding_dim


def test_tokens_live_on_a_private_copy_and_leave_the_model_alone(tiny_model):
    vocab, before = len(tiny_model.tokenizer), fingerprint(tiny_model.text_encoder)
    concept = LearnedConcept("<ring>", torch.randn(2, dim(tiny_model)))
    copy = personalized_copy(tiny_model, [concept])
    assert len(tiny_model.tokenizer) == vocab and "<ring>" not in tiny_model.tokenizer.get_vocab()
    assert len(copy.tokenizer) == vocab + 2 and copy.weights_hash != tiny_model.weights_hash
    ids = copy.tokenizer("a <ring>", add_special_tokens=False).input_ids
    assert ids[-2:] == [vocab, vocab + 1]  # a two-vector token is written out as both of its tokens
    table = copy.text_encoder.get_input_embeddings()
    assert torch.equal(table(torch.tensor([vocab, vocab + 1])), concept.vectors)
    assert table.base is tiny_model.text_encoder.get_input_embeddings()  # the table is shared, not copied
    shared = dict(tiny_model.text_encoder.named_parameters())
    assert all(p is shared[n] for n, p in copy.text_encoder.named_parameters() if n in shared)
    assert fingerprint(tiny_model.text_encoder) == before
    # encodings of prompts without the token are unchanged
    from studio.engine.conditioning import encode_texts

    assert torch.equal(encode_texts(copy, ["a red square"]), encode_texts(tiny_model, ["a red square"]))
    with pytest.raises(InvalidRequest, match="already in use"):
        personalized_copy(copy, [concept])
    with pytest.raises(InvalidRequest, match="another model"):
        personalized_copy(tiny_model, [LearnedConcept("<x>", torch.randn(1, dim(tiny_model) + 1))])
    with pytest.raises(InvalidRequest, match="look like <name>"):
        LearnedConcept("ring", torch.randn(1, 4))


@pytest.mark.parametrize("fmt", ["diffusers", "a1111"])
def test_embedding_files_round_trip(tiny_model, tmp_path, fmt):
    concept = LearnedConcept("<ring>", torch.randn(1, dim(tiny_model)), init_word="circle", steps=7,
                             model_hash=tiny_model.weights_hash)
    path = save_concept(concept, tmp_path / "ring.safetensors", fmt)
    loaded = load_concept(path)
    assert loaded.token == "<ring>" and torch.equal(loaded.vectors, concept.vectors) and loaded.kind == concept.kind
    from safetensors.torch import load_file

    raw = load_file(str(path))
    assert set(raw) == ({"emb_params"} if fmt == "a1111" else {"<ring>"})
    assert load_concept(path, token="<other>").token == "<other>"


def test_foreign_embedding_files(tmp_path):
    from safetensors.torch import save_file

    save_file({"emb_params": torch.randn(3, 8)}, str(tmp_path / "My Style.safetensors"))
    loaded = load_concept(tmp_path / "My Style.safetensors")  # an A1111 file: token from the file name
    assert loaded.token == "<my-style>" and loaded.vectors.shape == (3, 8)
    save_file({"a": torch.zeros(2), "b": torch.zeros(2)}, str(tmp_path / "two.safetensors"))
    with pytest.raises(EmbeddingFileError, match="holds 2 tensors"):
        load_concept(tmp_path / "two.safetensors")
    (tmp_path / "x.pt").write_bytes(b"pickle")
    with pytest.raises(EmbeddingFileError, match="pickle"):
        load_concept(tmp_path / "x.pt")
    prospect = LearnedConcept("<p>", torch.randn(10, 8), kind="prospect")
    with pytest.raises(EmbeddingFileError, match="diffusers"):
        save_concept(prospect, tmp_path / "p.safetensors", "a1111")
    assert load_concept(save_concept(prospect, tmp_path / "p.safetensors")).kind == "prospect"


def test_training_progress_cancel_and_resume(tiny_model, tmp_path):
    controller = PersonalizationController(tiny_model, checkpoints=tmp_path / "ckpt")
    spec = TrainingSpec("<ring>", "square", steps=4, batch_size=2, checkpoint_every=2, preview_every=2,
                        learning_rate=1e-2)
    before = {n: p.detach().clone() for n, p in tiny_model.unet.named_parameters()}
    token = CancelToken()
    seen = []

    def progress(step, total, loss):
        seen.append(step)
        if step == 2:
            token.cancel()

    with pytest.raises(Cancelled):
        controller.train(TrainConceptRequest(tuple(images()), spec), cancel=token, on_progress=progress)
    assert seen == [1, 2] and controller.checkpoint_path(spec).is_file()
    previews = []
    result = controller.train(TrainConceptRequest(tuple(images()), spec),
                              on_preview=lambda image, step: previews.append(step))
    assert result.resumed_from == 2 and len(result.losses) == 4 and previews == [4]
    assert result.concept.vectors.shape == (1, dim(tiny_model)) and result.concept.steps == 4
    assert all(p.grad is None and torch.equal(p, before[n]) for n, p in tiny_model.unet.named_parameters())
    fresh = controller.train(TrainConceptRequest(tuple(images()), spec), resume=False)
    assert fresh.resumed_from == 0
    with pytest.raises(InvalidRequest, match="3 to 20 images"):
        controller.train(TrainConceptRequest(tuple(images(2)), spec))
    with pytest.raises(InvalidRequest, match="initializer word"):
        controller.train(TrainConceptRequest(tuple(images()), replace(spec, init_word=" ")))


def test_per_stage_training_and_generation(tiny_model):
    controller = PersonalizationController(tiny_model)
    spec = TrainingSpec("<ring>", "square", method="prospect", steps=2, batch_size=2, preview_every=0)
    result = controller.train(TrainConceptRequest(tuple(images()), spec))
    concept = result.concept
    assert concept.kind == "prospect" and concept.vectors.shape == (10, dim(tiny_model))
    texts = stage_prompts("a green <ring>", concept, [1, 2, 3], "circle")
    assert texts[1] == "a green <ring>@1" and texts[3] == "a green <ring>@3" and texts[4] == "a green circle"
    out = controller.generate(PersonalizedRequest(replace(BASE, prompt="a green <ring>"),
                                                  (ConceptUse(concept, (1, 2, 3), "circle"),)), save=False)
    assert out.images[0].size == (64, 64)
    with pytest.raises(InvalidRequest, match="does not contain <ring>"):
        stage_prompts("a green circle", concept, [1], "")
    with pytest.raises(InvalidRequest, match="at least one stage"):
        controller.generate(PersonalizedRequest(BASE, (ConceptUse(concept, ()),)), save=False)


def test_multi_vector_textual_inversion_learns_every_vector(tiny_model):
    controller = PersonalizationController(tiny_model)
    spec = TrainingSpec("<ring>", "square", steps=3, batch_size=2, preview_every=0, learning_rate=5e-2, vectors=3)
    result = controller.train(TrainConceptRequest(tuple(images()), spec))
    vectors = result.concept.vectors
    assert vectors.shape == (3, dim(tiny_model)) and result.concept.token_names()[1:] == ["<ring>@v2", "<ring>@v3"]
    start = tiny_model.text_encoder.get_input_embeddings()(
        torch.tensor(tiny_model.tokenizer("square", add_special_tokens=False).input_ids)).float().mean(0)
    # every vector got gradients of its own (the three positions differ), none is left at the start
    assert all(not torch.allclose(v, start) for v in vectors)
    assert not torch.allclose(vectors[0], vectors[1]) and not torch.allclose(vectors[1], vectors[2])
    copy = personalized_copy(tiny_model, [result.concept])
    assert copy.tokenizer.tokenize("a <ring>") == ["a</w>", "<ring>", "<ring>@v2", "<ring>@v3"]
    assert copy.tokenizer.tokenize("a <ring>@v2") == ["a</w>", "<ring>@v2"]  # one of its tokens is not expanded
    out = controller.generate(PersonalizedRequest(BASE, (ConceptUse(result.concept),)), save=False)
    assert out.images[0].size == (64, 64)
    with pytest.raises(InvalidRequest, match="vectors per token is for textual inversion"):
        controller.train(TrainConceptRequest(tuple(images()), replace(spec, method="prospect")))
    with pytest.raises(InvalidRequest, match="vectors must be a whole number"):
        controller.train(TrainConceptRequest(tuple(images()), replace(spec, vectors=0)))


def test_several_vectors_start_at_the_initializer_texts_tokens_in_turn(tiny_model):
    """A1111's convention: with N vectors each starts at the next token of the initializer text (cycling); one
    vector starts at their mean."""
    from studio.personalization.training import initial_vectors

    table = tiny_model.text_encoder.get_input_embeddings()
    ids = tiny_model.tokenizer("red square", add_special_tokens=False).input_ids
    words = table(torch.tensor(ids)).float().detach()
    three = initial_vectors(tiny_model, TrainingSpec("<ring>", "red square", vectors=3))
    assert len(ids) >= 2 and torch.allclose(three, words[torch.arange(3) % len(ids)])
    one = initial_vectors(tiny_model, TrainingSpec("<ring>", "red square"))
    assert one.shape == (1, words.shape[1]) and torch.allclose(one[0], words.mean(0))


def test_generation_with_a_concept_differs_and_records_it(tiny_model):
    controller = PersonalizationController(tiny_model)
    concept = LearnedConcept("<ring>", torch.randn(1, dim(tiny_model)) * 3)
    plain = controller.generator.run(BASE).images[0]
    out = controller.generate(PersonalizedRequest(BASE, (ConceptUse(concept),)), save=False)
    assert out.images[0].tobytes() != plain.tobytes()
    again = controller.generator.run(BASE).images[0]  # the shared model did not learn the token
    assert again.tobytes() == plain.tobytes()


def test_tinyworld_captions_name_the_attributes():
    import random

    text = caption("<ring>", {"size": "large", "colour": "red", "position": "at the top left",
                              "background": "black"}, random.Random(1))
    assert "<ring>" in text and text.startswith(("a ", "an "))
    assert caption("<ring>", None, random.Random(1)).endswith("<ring>")


def test_caption_colour_is_said_as_often_as_colour_keep():
    import random

    attrs = {"size": "large", "colour": "red", "position": "at the top left", "background": "black"}
    rng = random.Random(0)
    always = [caption("<ring>", attrs, rng, colour_keep=1.0) for _ in range(200)]
    assert all("red <ring>" in t for t in always)
    never = [caption("<ring>", attrs, rng, colour_keep=0.0) for _ in range(200)]
    assert not any("red" in t for t in never)
    # the token also appears right after the article or the size word, as in "a large <ring> at the top left"
    assert any(t.startswith("a large <ring>") for t in never) and any(t.startswith("a <ring>") for t in never)
    default = [caption("<ring>", attrs, rng) for _ in range(2000)]
    share = sum("red" in t for t in default) / len(default)
    assert 0.7 < share < 0.8  # Tiny World's own captions keep each attribute with probability 0.75
    for bad in (-0.1, 1.5, True, "0.5"):
        with pytest.raises(InvalidRequest, match="colour_keep"):
            TrainingSpec("<ring>", "circle", colour_keep=bad).check()
        with pytest.raises(InvalidRequest, match="colour_keep"):
            LoraSpec("<ring>", "circle", colour_keep=bad).check()


def test_augmented_copies_and_their_captions():
    from studio.personalization.training import augmented, image_attributes
    from studio.tinyworld.scenes import SceneObject, scene_from_objects

    pics = images(3)
    assert augmented(pics, "none") == pics
    mirrored = augmented(pics, "mirror")
    assert len(mirrored) == 6 and mirrored[:3] == pics
    assert mirrored[3].tobytes() == pics[0].transpose(Image.FLIP_LEFT_RIGHT).tobytes()
    both = augmented(pics, "mirror+flip")
    assert len(both) == 12 and both[9].tobytes() == pics[0].rotate(180).tobytes()
    with pytest.raises(InvalidRequest, match="augment must be one of"):
        augmented(pics, "rotate")
    with pytest.raises(InvalidRequest, match="augment"):
        TrainingSpec("<ring>", "circle", augment="sideways").check()

    class TinyWorld:  # image_attributes only asks which kind of model it is
        source_path = ROOT / "assets" / "tinyworld"

    scene = scene_from_objects("black", [SceneObject("ring", "red", "large", 15.0, 14.0, 14.0)])
    copies = augmented([scene.image], "mirror+flip")
    places = [a["position"] for a in image_attributes(TinyWorld(), copies)]
    assert places == ["at the top left", "at the top right", "at the bottom left", "at the bottom right"]


def run_cli(model, *argv):
    out, err = io.StringIO(), io.StringIO()
    code = main([*map(str, argv)], load_model=lambda spec, **kw: model, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_cli_personalize_then_generate_with_the_embedding(tiny_model, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, im in enumerate(images()):
        im.save(folder / f"{i}.png")
    code, out, err = run_cli(tiny_model, "personalize", "textual-inversion", "--images", folder, "--token", "<ring>",
                             "--init-word", "square", "--steps", 2, "--batch", 2, "--out", tmp_path / "ring.safetensors",
                             "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["steps"] == 2 and report["path"].endswith("ring.safetensors") and len(report["losses"]) == 2
    code, out, err = run_cli(tiny_model, "generate", "--prompt", "a <ring>", "--embedding", tmp_path / "ring.safetensors",
                             "--steps", 2, "--seed", 1, "--out", tmp_path / "g.png")
    assert code == 0, err
    settings = read_image_settings(tmp_path / "g.png")
    assert settings.controls["personalization"]["concepts"][0]["token"] == "<ring>"
    code, _, err = run_cli(tiny_model, "personalize", "textual-inversion", "--images", tmp_path / "none", "--token",
                           "<ring>", "--out", tmp_path / "x.safetensors")
    assert code == 2 and "no such folder" in err
    code, _, err = run_cli(tiny_model, "personalize", "prospect", "--images", folder, "--token", "<ring>",
                           "--vectors", 2, "--out", tmp_path / "x.safetensors")
    assert code == 2 and "--vectors is for textual-inversion" in err
    code, _, err = run_cli(tiny_model, "personalize", "textual-inversion", "--images", folder, "--token", "<ring>",
                           "--vectors", 99, "--out", tmp_path / "x.safetensors")
    assert code == 2 and "vectors must be a whole number in 1..16" in err
    code, _, err = run_cli(tiny_model, "generate", "--prompt", "x", "--embedding", tmp_path / "missing.safetensors",
                           "--out", tmp_path / "y.png")
    assert code == 2 and "missing.safetensors" in err


# ----------------------------------------------------------------------------- LoRA


def random_lora(model, rank=2, seed=0, name="x"):
    from studio.personalization.lora import LoraWeights, cross_free_targets

    g = torch.Generator().manual_seed(seed)
    layers = {}
    for path in cross_free_targets(model)[:4]:
        w = model.unet.get_submodule(path).weight
        layers[("unet", path)] = (torch.randn(rank, w.shape[1], generator=g), torch.randn(w.shape[0], rank, generator=g),
                                  float(rank) / 2)
    return LoraWeights(name=name, layers=layers)


@pytest.mark.parametrize("fmt", ["diffusers", "kohya"])
def test_lora_files_round_trip_and_merge_on_a_copy(tiny_model, tmp_path, fmt):
    from studio.personalization.lora import apply_loras, load_lora, save_lora

    before = fingerprint(tiny_model.unet)
    a, b = random_lora(tiny_model, seed=1, name="a"), random_lora(tiny_model, seed=2, name="b")
    loaded = load_lora(save_lora(a, tmp_path / f"a-{fmt}.safetensors", fmt), tiny_model)
    assert set(loaded.layers) == set(a.layers)
    for key, (down, up, alpha) in a.layers.items():
        d2, u2, al2 = loaded.layers[key]
        assert torch.equal(d2, down) and torch.equal(u2, up) and al2 == alpha
    copy = apply_loras(tiny_model, [(loaded, 0.5), (b, -1.0)])
    for (component, path), (down, up, alpha) in a.layers.items():
        base = tiny_model.unet.get_submodule(path).weight.double()
        d_b, u_b, al_b = b.layers[(component, path)]
        expected = base + 0.5 * (alpha / 2) * (up.double() @ down.double()) - (al_b / 2) * (u_b.double() @ d_b.double())
        assert torch.allclose(copy.unet.get_submodule(path).weight.double(), expected, atol=1e-5)
    untouched = [n for n, p in copy.unet.named_parameters() if n.rsplit(".", 1)[0] not in
                 {p for _, p in a.layers}]
    shared = dict(tiny_model.unet.named_parameters())
    assert all(dict(copy.unet.named_parameters())[n] is shared[n] for n in untouched)
    del copy  # unloading is dropping the copy: the base weights never changed
    assert fingerprint(tiny_model.unet) == before



@pytest.mark.parametrize("fmt", ["diffusers", "kohya"])
def test_convolution_lora_round_trips_and_acts_as_a_low_rank_conv_pair(tiny_model, tmp_path, fmt):
    """A 3x3 LoRA (LoCon): the merged convolution equals the base one plus up(down(x)) scaled by alpha / r."""
    import torch.nn.functional as F

    from studio.personalization.lora import LoraWeights, apply_loras, load_lora, save_lora

    before = fingerprint(tiny_model.unet)
    path = next(n for n, m in tiny_model.unet.named_modules() if n.endswith("resnets.0.conv1"))
    conv = tiny_model.unet.get_submodule(path)
    g = torch.Generator().manual_seed(3)
    down = torch.randn(2, conv.in_channels, 3, 3, generator=g) * 0.1
    up = torch.randn(conv.out_channels, 2, 1, 1, generator=g) * 0.1
    lora = LoraWeights("conv", {("unet", path): (down, up, 1.0)})
    loaded = load_lora(save_lora(lora, tmp_path / f"conv-{fmt}.safetensors", fmt), tiny_model)
    d2, u2, alpha = loaded.layers[("unet", path)]
    assert torch.equal(d2, down) and torch.equal(u2.flatten(1), up.flatten(1)) and alpha == 1.0
    merged = apply_loras(tiny_model, [(loaded, 2.0)]).unet.get_submodule(path)
    x = torch.randn(1, conv.in_channels, 8, 8, generator=g)
    expected = conv(x) + 2.0 * (1.0 / 2) * F.conv2d(F.conv2d(x, down, padding=1), up)
    assert torch.allclose(merged(x), expected, atol=1e-4)
    assert fingerprint(tiny_model.unet) == before

def test_lora_file_refusals(tiny_model, tmp_path):
    from safetensors.torch import save_file

    from studio.personalization.lora import LoraFileError, LoraWeights, load_lora, save_lora

    lora = random_lora(tiny_model)
    (key, (down, up, alpha)), = list(lora.layers.items())[:1]
    wide = LoraWeights("w", {key: (torch.zeros(2, down.shape[1] + 3), up, alpha)})
    with pytest.raises(LoraFileError, match="made for another model"):
        load_lora(save_lora(wide, tmp_path / "w.safetensors"), tiny_model)
    elsewhere = LoraWeights("e", {("unet", "no.such.layer"): (down, up, alpha)})
    with pytest.raises(LoraFileError, match="no layer no.such.layer"):
        load_lora(save_lora(elsewhere, tmp_path / "e.safetensors"), tiny_model)
    save_file({"something.weight": torch.zeros(2)}, str(tmp_path / "odd.safetensors"))
    with pytest.raises(LoraFileError, match="not a LoRA weight"):
        load_lora(tmp_path / "odd.safetensors", tiny_model)
    with pytest.raises(LoraFileError, match="pickles"):
        load_lora(tmp_path / "a.pt", tiny_model)


def test_lora_training_touches_only_the_adapters(tiny_model):
    from studio.personalization.lora import apply_loras, train_lora

    before = fingerprint(tiny_model.unet), fingerprint(tiny_model.text_encoder)
    result = train_lora(tiny_model, images(), LoraSpec("<ring>", "square", rank=2, steps=3, batch_size=2))
    assert len(result.losses) == 3 and result.lora.rank == 2 and result.lora.concept.token == "<ring>"
    assert any(float(up.abs().sum()) > 0 for _, up, _ in result.lora.layers.values())  # B starts at zero
    assert (fingerprint(tiny_model.unet), fingerprint(tiny_model.text_encoder)) == before
    assert all(p.grad is None for p in tiny_model.unet.parameters())
    copy = apply_loras(tiny_model, [(result.lora, 1.0)])
    assert "<ring>" in copy.tokenizer.get_vocab() and "<ring>" not in tiny_model.tokenizer.get_vocab()
    assert not any(p.endswith(("conv1", "conv2")) for _, p in result.lora.layers)
    with_convs = train_lora(tiny_model, images(), LoraSpec("<ring>", "square", rank=2, steps=2, batch_size=2,
                                                           resnets=True))
    convs = {p: down for (_, p), (down, _, _) in with_convs.lora.layers.items() if p.endswith(("conv1", "conv2"))}
    assert convs and all(d.ndim == 4 and d.shape[2:] == (3, 3) for d in convs.values())
    assert (fingerprint(tiny_model.unet), fingerprint(tiny_model.text_encoder)) == before
    apply_loras(tiny_model, [(with_convs.lora, 1.0)])  # its conv layers fit the model they were trained on


def test_lora_training_is_reproducible_from_its_seed(tiny_model):
    from studio.personalization.lora import train_lora

    spec = LoraSpec("<ring>", "square", rank=2, steps=2, batch_size=2, prior_images=0)
    torch.manual_seed(1)
    state = torch.random.get_rng_state()
    first = train_lora(tiny_model, images(), spec)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random stream is left as it was
    torch.manual_seed(2)  # whatever the caller's global random state, the same spec trains the same LoRA
    second = train_lora(tiny_model, images(), spec)
    assert first.losses == second.losses
    for key, (down, up, _) in first.lora.layers.items():
        assert torch.equal(down, second.lora.layers[key][0]) and torch.equal(up, second.lora.layers[key][1])
    other = train_lora(tiny_model, images(), replace(spec, seed=1))
    assert any(not torch.equal(d, other.lora.layers[k][0]) for k, (d, _, _) in first.lora.layers.items())


def test_cli_lora_train_then_generate(tiny_model, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, im in enumerate(images()):
        im.save(folder / f"{i}.png")
    code, out, err = run_cli(tiny_model, "personalize", "lora", "--images", folder, "--token", "<ring>",
                             "--init-word", "square", "--steps", 2, "--batch", 2, "--rank", 2, "--format", "kohya",
                             "--resnets", "--augment", "mirror", "--out", tmp_path / "ring-lora.safetensors", "--json")
    assert code == 0, err
    assert json.loads(out)["method"] == "lora"
    from safetensors import safe_open

    with safe_open(str(tmp_path / "ring-lora.safetensors"), framework="pt") as f:  # kohya LoCon keys for the convs
        assert any(k.endswith("conv1.lora_down.weight") and f.get_tensor(k).ndim == 4 for k in f.keys())
    code, out, err = run_cli(tiny_model, "generate", "--prompt", "a <ring>", "--lora",
                             f"{tmp_path / 'ring-lora.safetensors'}:0.5", "--steps", 2, "--seed", 1,
                             "--out", tmp_path / "g.png")
    assert code == 0, err
    loras = read_image_settings(tmp_path / "g.png").controls["personalization"]["loras"]
    assert [dict(x) for x in loras] == [{"file": "ring-lora.safetensors", "scale": 0.5}]
    code, _, err = run_cli(tiny_model, "generate", "--prompt", "x", "--lora", f"{tmp_path / 'ring-lora.safetensors'}:9",
                           "--out", tmp_path / "h.png")
    assert code == 2 and "-4..4" in err
