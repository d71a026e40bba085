"""The shipped Tiny World model: a stock diffusers folder that draws recognisable scenes; the training script runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from studio.tinyworld.analyzer import analyze

MODEL = Path(__file__).resolve().parents[1] / "assets" / "tinyworld"
needs_model = pytest.mark.skipif(not MODEL.exists(), reason="assets/tinyworld not built")


@pytest.fixture(scope="module")
def pipe():
    from diffusers import StableDiffusionPipeline

    p = StableDiffusionPipeline.from_pretrained(str(MODEL))  # no custom code, no torch_dtype
    p.set_progress_bar_config(disable=True)
    return p


@needs_model
def test_folder_layout_and_size():
    index = json.loads((MODEL / "model_index.json").read_text())
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert part in index
    assert index.get("safety_checker") in (None, [None, None])
    weights = list(MODEL.rglob("*.safetensors"))
    assert sum(f.stat().st_size for f in weights) <= 25 * 1024 * 1024
    assert not list(MODEL.rglob("*.bin")) and not list(MODEL.rglob("*.ckpt"))
    preview = json.loads((MODEL / "latent_preview.json").read_text())
    assert len(preview["matrix"]) == 4 and len(preview["bias"]) == 3
    from safetensors.torch import load_file

    stats = load_file(str(MODEL / "latent_stats.safetensors"))
    assert stats["mean"].shape == (4, 16, 16) and stats["components"].shape[1:] == (4, 16, 16)
    for f in [w for w in weights if w.parent != MODEL]:  # model weights fp16 on disk (stats stay fp32)
        t = next(iter(load_file(str(f)).values()))
        assert t.dtype == torch.float16


@needs_model
def test_loads_as_fp32_with_expected_shapes(pipe):
    assert pipe.unet.dtype == torch.float32 and pipe.text_encoder.dtype == torch.float32
    assert pipe.vae_scale_factor == 4 and pipe.vae.config.latent_channels == 4
    assert type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    # cross-attention at 16x16 and 8x8 latent resolutions
    down = [type(b).__name__ for b in pipe.unet.down_blocks]
    assert down[:2] == ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"]
    # the VAE scaling factor gives roughly unit-variance latents
    from studio.tinyworld.scenes import generate_scene

    x = torch.stack([torch.from_numpy(np.array(generate_scene(s).image)).permute(2, 0, 1)
                     for s in range(64)]).float() / 127.5 - 1
    with torch.no_grad():
        z = pipe.vae.encode(x).latent_dist.mean * pipe.vae.config.scaling_factor
    assert 0.8 < float(z.std()) < 1.25


@needs_model
def test_vae_reconstructs_scenes(pipe):
    import numpy as np

    from studio.tinyworld.scenes import generate_scene

    scenes = [generate_scene(900 + s) for s in range(16)]
    x = torch.stack([torch.from_numpy(np.array(s.image)).permute(2, 0, 1) for s in scenes]).float() / 127.5 - 1
    with torch.no_grad():
        rec = pipe.vae.decode(pipe.vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
    psnr = 10 * torch.log10(4.0 / ((rec - x) ** 2).mean())
    assert psnr > 28, float(psnr)


@needs_model
def test_pipeline_draws_recognisable_scenes(pipe):
    """Plain StableDiffusionPipeline, default sampler: the analyzer finds what the prompt asked for."""
    prompts = ["a large red square on a black background", "a huge blue circle on a white background",
               "a large yellow triangle on a gray background", "a large green circle on a black background"]
    out = pipe(prompts, num_inference_steps=20, guidance_scale=3.0,
               generator=[torch.Generator().manual_seed(i) for i in range(len(prompts))])
    hits = 0
    for prompt, image in zip(prompts, out.images):
        a = analyze(image)
        words = prompt.split()
        assert a.background == words[-2], (prompt, a.background)
        hits += bool(a.objects) and a.objects[0].colour == words[2]
    assert hits >= 3


@pytest.mark.slow
def test_training_smoke_runs_every_stage(tmp_path):
    """A few steps of every stage on a handful of scenes, so the training script keeps working."""
    from studio.tinyworld.train import main

    out = tmp_path / "model"
    assert main(["--smoke", "--work-dir", str(tmp_path / "work"), "--out", str(out), "--workers", "1"]) == 0
    from diffusers import StableDiffusionPipeline

    p = StableDiffusionPipeline.from_pretrained(str(out))
    image = p("a red circle", num_inference_steps=2, output_type="pil").images[0]
    assert image.size == (64, 64)
    assert p.scheduler.config.prediction_type == "v_prediction"  # the recipe's default parameterisation
    # resumable: a second run finds every stage done and skips it
    assert main(["--smoke", "--work-dir", str(tmp_path / "work"), "--out", str(out), "--workers", "1",
                 "--stages", "data,vae,latents,unet"]) == 0
    log = (tmp_path / "work" / "train.log").read_text()
    assert "vae: " in log and "exists, skipping" in log


def test_token_embeddings_follow_their_strings_into_a_grown_vocabulary(tmp_path):
    """A fine-tune that adds words (stage 7's finer size words) keeps every trained row, looked up by token string
    (new words shift the BPE ids), and starts a new size word between the two sizes it sits between."""
    from studio.tinyworld.train import TOKEN_EMBEDDING, _remap_token_embeddings

    new_vocab = {"a</w>": 0, "tiny</w>": 1, "little</w>": 2, "small</w>": 3, "lit": 4, "circle</w>": 5,
                 "blue</w>": 6, "indigo</w>": 7, "purple</w>": 8}
    old_vocab = {"circle</w>": 0, "small</w>": 1, "a</w>": 2, "tiny</w>": 3, "purple</w>": 4, "blue</w>": 5}
    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer" / "vocab.json").write_text(json.dumps(old_vocab))
    old_rows = torch.randn(6, 8)
    fresh = torch.randn(9, 8)

    class Tok:
        def get_vocab(self):
            return new_vocab

    state = _remap_token_embeddings({TOKEN_EMBEDDING: old_rows, "other": torch.ones(1)}, tmp_path, Tok(), fresh)
    rows = state[TOKEN_EMBEDDING]
    for token in old_vocab:
        assert torch.equal(rows[new_vocab[token]], old_rows[old_vocab[token]]), token
    assert torch.allclose(rows[2], (old_rows[3] + old_rows[1]) / 2)  # little = mean(tiny, small)
    assert torch.allclose(rows[7], (old_rows[5] + old_rows[4]) / 2)  # indigo = mean(blue, purple)
    assert torch.equal(rows[4], fresh[4])  # a BPE piece nobody trained keeps its fresh row
    assert torch.equal(state["other"], torch.ones(1))
    # same vocabulary: nothing touched
    (tmp_path / "tokenizer" / "vocab.json").write_text(json.dumps(new_vocab))
    same = {TOKEN_EMBEDDING: torch.randn(9, 8)}
    assert _remap_token_embeddings(same, tmp_path, Tok(), fresh) is same


@needs_model
def test_unet_stage_can_continue_from_the_shipped_folder(tmp_path):
    """--init-from accepts an exported folder, so a later run can continue training the shipped weights."""
    from studio.tinyworld.train import main

    work = tmp_path / "work"
    assert main(["--smoke", "--work-dir", str(work), "--workers", "1", "--stages", "data,vae,latents,unet",
                 "--unet-steps", "1", "--init-from", str(MODEL)]) == 0
    assert "initialised from" in (work / "train.log").read_text()
    # without a vae stage, the fine-tune keeps the folder's VAE and its latent scale
    kept = tmp_path / "kept"
    assert main(["--smoke", "--work-dir", str(kept), "--workers", "1", "--stages", "data,latents,unet",
                 "--unet-steps", "1", "--partial-captions", "0.3", "--continuous-sizes", "true",
                 "--prefix-share", "0.5", "--init-from", str(MODEL)]) == 0
    shipped = json.loads((MODEL / "vae" / "config.json").read_text())["scaling_factor"]
    assert torch.load(kept / "latents.pt")["scaling_factor"] == pytest.approx(shipped)
    assert "VAE kept from" in (kept / "train.log").read_text()
    with pytest.raises(SystemExit, match="not an exported Tiny World folder"):
        main(["--smoke", "--work-dir", str(tmp_path / "other"), "--workers", "1", "--stages", "data,vae,latents,unet",
              "--init-from", str(tmp_path)])


@needs_model
def test_every_sampler_config_leaves_latents_unclipped():
    """Schedulers built from the shipped config (DDIM, ...) must not clip x0 to [-1, 1] (latents are not pixels)."""
    from diffusers import DDIMScheduler

    from studio.engine import SAMPLERS, make_scheduler

    config = json.loads((MODEL / "scheduler" / "scheduler_config.json").read_text())
    assert DDIMScheduler.from_config(config).config.clip_sample is False
    for sampler in SAMPLERS:
        s = make_scheduler(config, sampler)
        assert not getattr(s.config, "clip_sample", False), sampler
        assert not getattr(s.config, "thresholding", False), sampler


def test_loss_weights_keep_the_layout_deciding_steps():
    """v recipe: x0 weight min(SNR, 5) + 1, i.e. about 1 at high noise (where the layout is decided), capped at
    low noise; the epsilon recipe keeps plain min-SNR."""
    from diffusers import DDPMScheduler

    from studio.tinyworld.model import noise_scheduler_config
    from studio.tinyworld.train import _loss_weights

    abar = DDPMScheduler(**noise_scheduler_config()).alphas_cumprod
    t = torch.tensor([999, 700, 300, 10])
    snr = abar[t] / (1 - abar[t])
    v = _loss_weights(t, abar, 5.0, "v_prediction")
    x0_weight = v * (snr + 1)  # the plain v loss weighs the x0 error by SNR + 1
    assert torch.allclose(x0_weight, torch.clamp(snr, max=5.0) + 1)
    assert x0_weight[0] >= 1.0 and x0_weight[-1] <= 6.0 + 1e-4
    eps = _loss_weights(t, abar, 5.0, "epsilon")
    assert torch.allclose(eps, torch.clamp(snr, max=5.0) / snr)


def test_recipe_refuses_an_unknown_prediction_type():
    from studio.tinyworld.train import Recipe

    with pytest.raises(ValueError, match="prediction_type must be one of"):
        Recipe(prediction_type="x0")


CANDIDATE = MODEL.parent / "tinyworld-stage7"


@pytest.mark.skipif(not CANDIDATE.exists(), reason="assets/tinyworld-stage7 not present")
def test_stage7_candidate_loads_like_any_folder_and_knows_nine_size_words():
    """The stage-7 folder beside the default weights is a plain diffusers folder that the studio's loader takes, with
    every caption size word one token, and it draws the size it is asked for."""
    from studio.models import load_model
    from studio.tinyworld.vocab import CAPTION_SIZES

    model = load_model(str(CANDIDATE), device="cpu")
    assert model.weights_hash == "17cdd1e88905" and model.prediction_type == "v_prediction"
    tokenizer = model.tokenizer
    for word in CAPTION_SIZES:
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(CANDIDATE))
    pipe.set_progress_bar_config(disable=True)
    radii = []
    for word in ("little", "largish"):
        image = pipe(f"a {word} red circle in the center on a black background", num_inference_steps=12,
                     guidance_scale=3.0, height=64, width=64, generator=torch.Generator().manual_seed(3)).images[0]
        seen = analyze(image).objects
        assert len(seen) == 1 and seen[0].shape == "circle" and seen[0].colour == "red", word
        radii.append(seen[0].radius)
    assert radii[0] + 4 < radii[1]  # 6.5 px against 13 px asked for


STAGE6 = MODEL.parent / "tinyworld-stage6"


@pytest.mark.skipif(not STAGE6.exists(), reason="assets/tinyworld-stage6 not present")
def test_previous_default_stage6_still_loads_with_its_hash():
    from studio.models import load_model

    model = load_model(str(STAGE6), device="cpu")
    assert model.weights_hash == "4b19354b4140" and model.prediction_type == "v_prediction"


@needs_model
def test_default_stage9_knows_twelve_colour_words_and_draws_indigo_between_blue_and_purple():
    """The default weights (stage 9) were trained with colours between the palette's: every colour word is one token, and
    "indigo" draws a hue between the blue and the purple it draws at the same seeds."""
    import statistics

    from studio.engine import Engine, GenerationRequest
    from studio.models import load_model
    from studio.tinyworld.vocab import known_colour_words

    model = load_model(str(MODEL), device="cpu")
    assert model.weights_hash == "1b02e5143daa"
    assert len(known_colour_words(model.tokenizer)) == 12
    engine = Engine(model)
    hues = {}
    for word in ("blue", "indigo", "purple"):
        seen = []
        for seed in range(6):
            background = ("black", "white", "gray")[seed % 3]
            image = engine.generate(GenerationRequest(prompt=f"a medium {word} circle on a {background} background",
                                                      seed=seed, cfg=3.0, steps=20)).images[0]
            seen.append(max(analyze(image).objects, key=lambda o: o.area).hue)
        hues[word] = statistics.median(seen)
    assert hues["blue"] + 15 < hues["indigo"] < hues["purple"] - 5, hues


def test_prefix_mask_hides_the_end_of_a_share_of_captions():
    """Prefix training (an option, tried in a pilot): a chosen caption keeps BOS and at least its first word, always loses its end token
    and padding; the others and the word-less (unconditional) captions stay whole; share 0 draws nothing."""
    from studio.tinyworld.model import build_unet
    from studio.tinyworld.train import prefix_attention_mask

    eos = 9
    tokens = torch.tensor([[0, 1, 2, 3, 4, eos, eos, eos]] * 300 + [[0, eos, eos, eos, eos, eos, eos, eos]] * 20)
    gen = torch.Generator().manual_seed(0)
    assert prefix_attention_mask(tokens, eos, 0.0, gen) is None
    assert torch.equal(gen.get_state(), torch.Generator().manual_seed(0).get_state())
    mask = prefix_attention_mask(tokens, eos, 0.5, gen)
    worded, empty = mask[:300], mask[300:]
    assert torch.all(empty == 1)
    cut = worded.sum(1)
    chosen = cut < 8
    assert 0.35 < chosen.float().mean() < 0.65
    assert torch.all(worded[:, :2] == 1)  # BOS and the first word always seen
    assert torch.all(cut[chosen] <= 5) and set(cut[chosen].tolist()) == {2, 3, 4, 5}  # end token hidden
    assert torch.all(worded[chosen][torch.arange(8)[None].expand(int(chosen.sum()), 8) >= cut[chosen, None]] == 0)
    # the UNet honours the mask: hiding tokens changes its output, an all-ones mask does not
    unet = build_unet().eval()
    torch.manual_seed(0)
    x, enc = torch.randn(2, unet.config.in_channels, 8, 8), torch.randn(2, 8, unet.config.cross_attention_dim)
    t = torch.tensor([500, 500])
    with torch.no_grad():
        plain = unet(x, t, enc).sample
        ones = unet(x, t, enc, encoder_attention_mask=torch.ones(2, 8)).sample
        hidden = unet(x, t, enc, encoder_attention_mask=mask[:2].clone().fill_(1).index_fill_(1, torch.tensor([5, 6, 7]), 0)).sample
    assert torch.allclose(plain, ones, atol=1e-5)
    assert not torch.allclose(plain, hidden, atol=1e-3)


CHROMA = MODEL.parent / "tinyworld-chroma"


def test_chroma_map_keeps_luminance_and_scales_chroma():
    """scripts/chroma_latents.py's map: the latent's luminance read-out is unchanged (or scaled when asked), both
    chroma read-outs are multiplied by the scale, and the map is invertible (the VAE folds it in and out exactly)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("chroma_latents", MODEL.parents[1] / "scripts" / "chroma_latents.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    gen = torch.Generator().manual_seed(0)
    readout = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    root = torch.randn(4, 4, generator=gen, dtype=torch.float64)
    a = module.chroma_map(readout, root @ root.T + torch.eye(4, dtype=torch.float64), 0.4)
    y = readout @ module.LUMA
    chroma = readout @ torch.stack([torch.tensor([1.0, 0, 0], dtype=torch.float64) - module.LUMA,
                                    torch.tensor([0, 0, 1.0], dtype=torch.float64) - module.LUMA], 1)
    assert torch.allclose(y @ a, y) and torch.allclose(chroma.T @ a, 0.4 * chroma.T)
    assert torch.linalg.det(a).abs() > 1e-3
    # with a luminance factor too: luminance scaled, chroma as before, still invertible
    boosted = module.chroma_map(readout, root @ root.T + torch.eye(4, dtype=torch.float64), 0.4, luma=1.8)
    assert torch.allclose(y @ boosted, 1.8 * y) and torch.allclose(chroma.T @ boosted, 0.4 * chroma.T)
    assert torch.linalg.det(boosted).abs() > 1e-3


@pytest.mark.skipif(not CHROMA.exists(), reason="assets/tinyworld-chroma not present")
def test_chroma_candidate_loads_like_any_folder_and_round_trips_scenes():
    """The chroma candidate is a plain diffusers folder: its VAE (with the map folded in) reconstructs a drawn scene
    as well as the default's, and it draws what it is asked for."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline

    from studio.models import load_model
    from studio.tinyworld.scenes import generate_scene

    model = load_model(str(CHROMA), device="cpu")
    assert model.weights_hash == "1ffbbbd86dd0" and model.prediction_type == "v_prediction"
    image = torch.from_numpy(np.array(generate_scene(5).image)).permute(2, 0, 1)[None].float() / 127.5 - 1
    errors = []
    for folder in (MODEL, CHROMA):
        vae = AutoencoderKL.from_pretrained(str(folder / "vae")).float()
        with torch.no_grad():
            errors.append(float(((vae.decode(vae.encode(image).latent_dist.mean).sample - image) ** 2).mean()))
    assert errors[1] < 1.05 * errors[0] + 1e-5
    pipe = StableDiffusionPipeline.from_pretrained(str(CHROMA))
    pipe.set_progress_bar_config(disable=True)
    out = pipe("a large blue square on a white background", num_inference_steps=12, guidance_scale=3.0, height=64,
               width=64, generator=torch.Generator().manual_seed(1)).images[0]
    seen = analyze(out).objects
    assert len(seen) == 1 and seen[0].shape == "square" and seen[0].colour == "blue"
