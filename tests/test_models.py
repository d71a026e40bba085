"""Model loading: specs, errors, local round trip, family and preview matrix detection."""

from __future__ import annotations

import json

import pytest
import torch

from studio.engine import Engine, GenerationRequest
from studio.models import (
    SD_LATENT_RGB, LoadedModel, ModelLoadError, detect_family, from_pipeline, load_model, repo_root, resolve_device,
    resolve_dtype,
)


pytestmark = pytest.mark.usefixtures("torch_single_thread")

@pytest.fixture(autouse=True)
def _hash_cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_CACHE_DIR", str(tmp_path / "studio-cache"))


@pytest.fixture(scope="module")
def saved_sd1(tmp_path_factory, tiny_pipelines):
    folder = tmp_path_factory.mktemp("tiny-sd1")
    tiny_pipelines("sd1").save_pretrained(folder)
    return folder


@pytest.mark.parametrize("name", ["model.ckpt", "model.pt", "model.pth", "weights.bin"])
def test_pickle_checkpoints_refused(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"not really a pickle")
    with pytest.raises(ModelLoadError, match="refusing to load pickle checkpoint.*allow_pickle=True"):
        load_model(str(path), device="cpu")


def test_offline_hub_id_names_the_model_and_the_way_out(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as info:
        load_model("someone/not-a-cached-model", device="cpu")
    message = str(info.value)
    assert "someone/not-a-cached-model" in message and "offline" in message and "--model" in message
    assert "\n" not in message


def test_single_file_offline_explains_local_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(ModelLoadError, match="local diffusers folder"):
        load_model(str(path), device="cpu")


@pytest.mark.parametrize("spec, text", [
    ("./does/not/exist", "does not exist"),
    ("missing.safetensors", "does not exist"),
    ("", "empty model spec"),
])
def test_bad_specs(spec, text):
    with pytest.raises(ModelLoadError, match=text):
        load_model(spec, device="cpu")


def test_folder_without_model_index(tmp_path):
    with pytest.raises(ModelLoadError, match="no model_index.json"):
        load_model(str(tmp_path), device="cpu")


def test_local_folder_round_trip(saved_sd1, tiny_models):
    model = load_model(str(saved_sd1), device="cpu")
    assert isinstance(model, LoadedModel)
    assert (model.family, model.prediction_type, model.default_size) == ("sd1", "epsilon", 64)
    assert model.device == torch.device("cpu") and model.dtype == torch.float32
    assert model.source_path == str(saved_sd1.resolve()) and len(model.weights_hash) == 12
    assert model.latent_rgb is None  # 4x VAE: the SD factors do not apply; preview falls back to the VAE
    assert not model.unet.training and not any(p.requires_grad for p in model.unet.parameters())
    assert load_model(str(saved_sd1), device="cpu").weights_hash == model.weights_hash  # stable (cached) hash
    req = GenerationRequest(prompt="a cat", steps=2, seed=5)
    ours = Engine(model).generate(req).latents
    reference = Engine(tiny_models("sd1")).generate(req).latents
    assert torch.allclose(ours, reference, atol=1e-5)


def test_latent_preview_json_is_read(saved_sd1, tmp_path):
    import shutil

    folder = tmp_path / "with-preview"
    shutil.copytree(saved_sd1, folder)
    matrix = [[0.1, 0.2, 0.3], [0.0, 0.1, 0.0], [-0.1, 0.0, 0.2], [0.3, -0.2, 0.1]]
    (folder / "latent_preview.json").write_text(json.dumps({"matrix": matrix, "bias": [0.1, 0.0, -0.1]}))
    model = load_model(str(folder), device="cpu")
    assert torch.allclose(model.latent_rgb, torch.tensor(matrix))
    assert torch.allclose(model.latent_rgb_bias, torch.tensor([0.1, 0.0, -0.1]))
    (folder / "latent_preview.json").write_text(json.dumps({"matrix": [[1, 2]], "bias": [0, 0, 0]}))
    with pytest.raises(ModelLoadError, match="matrix must be 4x3"):
        load_model(str(folder), device="cpu")


def test_tinyworld_spec():
    if (repo_root() / "assets" / "tinyworld" / "model_index.json").is_file():
        model = load_model("tinyworld", device="cpu")
        assert model.family == "sd1" and model.default_size == 64 and model.latent_rgb is not None
    else:
        with pytest.raises(ModelLoadError, match="Tiny World assets not found"):
            load_model("tinyworld", device="cpu")


def test_family_and_sd_preview_factors(tiny_sd_components, tiny_models):
    from diffusers import AutoencoderKL, StableDiffusionPipeline

    assert tiny_models("sd1").family == "sd1"
    sd2 = tiny_models("sd2v")
    assert (sd2.family, sd2.prediction_type) == ("sd2", "v_prediction")
    parts = tiny_sd_components("sd1")
    parts["vae"] = AutoencoderKL(block_out_channels=(4, 4, 4, 4), norm_num_groups=2, layers_per_block=1,
                                 latent_channels=4, down_block_types=("DownEncoderBlock2D",) * 4,
                                 up_block_types=("UpDecoderBlock2D",) * 4)  # SD-shaped: 8x, 4 channels
    model = from_pipeline(StableDiffusionPipeline(**parts))
    assert torch.allclose(model.latent_rgb, torch.tensor(SD_LATENT_RGB)) and model.default_size == 128


def test_detect_family_rules():
    class Cfg:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    class Enc:
        def __init__(self, **kw):
            self.config = Cfg(**kw)

    assert detect_family(Enc(hidden_size=768, hidden_act="quick_gelu")) == "sd1"
    assert detect_family(Enc(hidden_size=1024, hidden_act="gelu")) == "sd2"
    assert detect_family(Enc(hidden_size=32, hidden_act="gelu")) == "sd2"


def test_device_and_dtype_resolution():
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert resolve_device(None).type == expected
    assert resolve_dtype(None, torch.device("cpu")) == torch.float32
    assert resolve_dtype(None, torch.device("cuda")) == torch.float16
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ModelLoadError, match="unknown dtype"):
        resolve_dtype("fp8", torch.device("cpu"))
    with pytest.raises(ModelLoadError, match="unknown device"):
        resolve_device("toaster")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="CUDA is not available"):
            resolve_device("cuda")


def test_explicit_dtype_override(saved_sd1):
    model = load_model(str(saved_sd1), device="cpu", dtype="bf16")
    assert model.dtype == torch.bfloat16 and model.unet.dtype == torch.bfloat16
    result = Engine(model).generate(GenerationRequest(prompt="a cat", steps=1))
    assert torch.isfinite(result.latents.float()).all()
