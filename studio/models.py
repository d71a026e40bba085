"""Model loading: turn a model spec into a ready-to-run :class:`LoadedModel`.

A spec is one of

* ``"tinyworld"``: the diffusers folder ``assets/tinyworld`` in this repository;
* a local diffusers folder (it has ``model_index.json``);
* a single ``.safetensors`` checkpoint (loaded with ``from_single_file``; never
  fetches anything when offline);
* a pickle checkpoint (``.ckpt``, ``.pt``, ``.pth``, ``.bin``): refused unless
  ``allow_pickle=True`` because unpickling can run arbitrary code;
* anything else is treated as a Hugging Face Hub id.

Every failure is reported as :class:`ModelLoadError` with a one-line message
that says what to do instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
WEIGHT_SUFFIXES = (".safetensors",) + PICKLE_SUFFIXES
HASHED_COMPONENTS = ("unet", "vae", "text_encoder")
_DTYPES = {
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
}

# Approximate latent -> RGB factors for the SD 1.x / 2.x VAE (both families share
# the same VAE latent space). Rows are latent channels, columns R, G, B. These are
# keturn's least-squares fit (Hugging Face forum thread "Decoding latents to RGB
# without upscaling", 2022), also used by AUTOMATIC1111's "Approx cheap" preview.
# They were fitted on latents as the sampler sees them, i.e. already multiplied by
# the VAE scaling factor (std ~1), and give RGB in about [-1, 1]. Applied to raw
# (unscaled, std ~5.5) VAE latents they would saturate, so for our UNet-space
# convention no conversion is needed: ``UNET_SPACE = RAW_SPACE_FIT / 1`` (if you
# have factors fitted on unscaled latents, divide them by ``scaling_factor``).
SD_LATENT_RGB = (
    (0.298, 0.207, 0.208),
    (0.187, 0.286, 0.173),
    (-0.158, 0.189, 0.264),
    (-0.184, -0.271, -0.473),
)


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message is one line and says what to do."""


@dataclass
class LoadedModel:
    """A loaded Stable-Diffusion-style model, ready for :class:`studio.engine.Engine`.

    The modules are shared: techniques must never leave them modified (the
    engine installs and removes per-run hooks itself). ``run_lock`` serialises
    runs that temporarily change a module (e.g. attention processors).
    """

    name: str
    weights_hash: str
    family: str
    prediction_type: str
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler_config: dict
    device: torch.device
    dtype: torch.dtype
    latent_rgb: torch.Tensor | None
    latent_rgb_bias: torch.Tensor | None
    default_size: int
    source_path: str | None = None
    run_lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)


# ----------------------------------------------------------------------------- public


def load_model(spec: str = "tinyworld", *, device: str | None = None, dtype: str | None = None,
               allow_pickle: bool = False) -> LoadedModel:
    """Load ``spec`` (see module docstring) onto ``device`` (auto: cuda, mps, cpu) in
    ``dtype`` (auto: fp16 on cuda, fp32 otherwise)."""
    # 1. resolve device, dtype and where the weights are
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    kind, location = _classify(spec, allow_pickle)

    # 2. load the pipeline (CPU first, then move)
    if kind == "folder":
        pipe = _from_folder(Path(location), dt)
    elif kind == "file":
        pipe = _from_single_file(Path(location), dt)
    else:
        pipe = _from_hub(location, dt)

    # 3. wrap it: hash the weight files, read the preview matrix, move to device
    source = _local_snapshot(location) if kind == "hub" else location
    weights_hash = _hash_source(kind, source) if source else _hash_modules(pipe)
    preview = Path(source) / "latent_preview.json" if kind == "folder" else None
    return _wrap(pipe, name=spec, weights_hash=weights_hash, source_path=source,
                 preview_json=preview, device=dev, dtype=dt)


def from_pipeline(pipe, name: str = "custom") -> LoadedModel:
    """Wrap an in-memory ``StableDiffusionPipeline`` (used by tests and notebooks).

    The modules stay where they are (device and dtype are read from the UNet).
    The weights hash is computed from the tensors themselves.
    """
    path = getattr(pipe.config, "_name_or_path", None)
    folder = Path(path) if path and Path(path).is_dir() else None
    weights_hash = _hash_source("folder", str(folder)) if folder else _hash_modules(pipe)
    preview = folder / "latent_preview.json" if folder else None
    return _wrap(pipe, name=name, weights_hash=weights_hash, source_path=str(folder) if folder else None,
                 preview_json=preview, device=pipe.unet.device, dtype=pipe.unet.dtype)


def copy_sharing_tensors(module: torch.nn.Module, lock, *, fresh_weights=()) -> torch.nn.Module:
    """A copy of ``module``'s tree that shares every parameter and buffer with it, except the ``weight`` of each
    module in ``fresh_weights`` (the copy may replace those). Model copies owned by one session (concept edits,
    learned tokens, merged LoRAs) are made this way: the shared model is never modified and costs no memory twice."""
    import copy

    fresh = {id(m.weight) for m in fresh_weights}
    memo = {id(t): t for t in list(module.parameters()) + list(module.buffers()) if id(t) not in fresh}
    with lock:
        return copy.deepcopy(module, memo)


def as_pipeline(model: LoadedModel, scheduler):
    """A ``StableDiffusionPipeline`` sharing ``model``'s modules (for comparisons and
    benchmarks). No safety checker."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer,
                                   unet=model.unet, scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def resolve_device(device: str | None) -> torch.device:
    """``None`` -> cuda, then mps, then cpu. An explicit device must be available."""
    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as e:
        raise ModelLoadError(f"unknown device {device!r}: use cpu, cuda, cuda:N or mps") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} requested but CUDA is not available here; use --device cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError(f"device {device!r} requested but MPS is not available here; use --device cpu")
    return dev


def resolve_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    """``None`` -> fp16 on cuda, fp32 otherwise. Accepts fp16/bf16/fp32 and long names."""
    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}: use one of fp16, bf16, fp32")
    return _DTYPES[key]


def detect_family(text_encoder) -> str:
    """``"sd2"`` for OpenCLIP-style text encoders (width 1024 or plain GELU), else ``"sd1"``."""
    cfg = text_encoder.config
    if getattr(cfg, "hidden_size", None) == 1024 or getattr(cfg, "hidden_act", None) == "gelu":
        return "sd2"
    return "sd1"


def repo_root() -> Path:
    import studio

    return Path(studio.__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- loading


def _classify(spec: str, allow_pickle: bool) -> tuple[str, str]:
    """Return (kind, location) with kind in folder | file | hub; raise for bad specs."""
    if not isinstance(spec, str) or not spec.strip():
        raise ModelLoadError("empty model spec: pass 'tinyworld', a diffusers folder, a .safetensors file or a hub id")
    if spec == "tinyworld":
        folder = repo_root() / "assets" / "tinyworld"
        if not (folder / "model_index.json").is_file():
            raise ModelLoadError(f"Tiny World assets not found at {folder} (no model_index.json); "
                                 "pass another model with --model")
        return "folder", str(folder)
    path = Path(spec).expanduser()
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES and not allow_pickle:
        raise ModelLoadError(f"refusing to load pickle checkpoint {spec} ({suffix} files can run arbitrary code "
                             "when loaded); convert it to .safetensors or pass allow_pickle=True (--allow-pickle)")
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelLoadError(f"{spec} is a folder but not a diffusers pipeline (no model_index.json); "
                                 "pass a diffusers folder or a .safetensors file")
        return "folder", str(path.resolve())
    if path.is_file():
        if suffix not in WEIGHT_SUFFIXES:
            raise ModelLoadError(f"unsupported model file {spec}: expected .safetensors "
                                 "(or a pickle checkpoint with allow_pickle=True)")
        return "file", str(path.resolve())
    looks_local = spec.startswith(("/", ".", "~")) or suffix in WEIGHT_SUFFIXES or "\\" in spec
    if looks_local:
        raise ModelLoadError(f"model path {spec} does not exist")
    return "hub", spec


def _offline() -> bool:
    import huggingface_hub.constants as hc

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
    return flag or bool(hc.HF_HUB_OFFLINE)


def _one_line(err: BaseException, limit: int = 120) -> str:
    """First sentence of an error, short enough for a one-line message."""
    text = " ".join(str(err).split()) or type(err).__name__
    text = text.split(". ")[0]
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _pipeline_kwargs(dtype: torch.dtype) -> dict:
    return dict(dtype=dtype, safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def _from_folder(folder: Path, dtype: torch.dtype):
    from diffusers import StableDiffusionPipeline

    try:
        return StableDiffusionPipeline.from_pretrained(str(folder), local_files_only=True, **_pipeline_kwargs(dtype))
    except Exception as e:  # noqa: BLE001 - diffusers raises many kinds; report them uniformly
        raise ModelLoadError(f"could not load diffusers folder {folder}: {_one_line(e)}") from e


def _from_single_file(path: Path, dtype: torch.dtype):
    """``from_single_file`` needs the matching diffusers configs; use the local HF cache
    first and only go online when allowed."""
    from diffusers import StableDiffusionPipeline

    kwargs = _pipeline_kwargs(dtype)
    kwargs.pop("feature_extractor")
    try:
        return StableDiffusionPipeline.from_single_file(str(path), local_files_only=True, **kwargs)
    except Exception as local_err:  # noqa: BLE001
        if _offline():
            raise ModelLoadError(
                f"cannot load {path.name} offline: from_single_file needs the model's configs from the Hub and "
                "they are not in the local cache; pass a local diffusers folder (with model_index.json) "
                "via --model instead") from local_err
    try:
        return StableDiffusionPipeline.from_single_file(str(path), **kwargs)
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"could not load {path} as a single-file checkpoint ({_one_line(e)}); "
                             "pass a local diffusers folder (with model_index.json) via --model instead") from e


def _from_hub(repo_id: str, dtype: torch.dtype):
    from diffusers import StableDiffusionPipeline

    offline = _offline()
    try:
        return StableDiffusionPipeline.from_pretrained(repo_id, local_files_only=offline, **_pipeline_kwargs(dtype))
    except Exception as e:  # noqa: BLE001
        why = "we are offline and it is not in the local Hugging Face cache" if offline else _one_line(e)
        raise ModelLoadError(f"cannot load model '{repo_id}' from the Hugging Face Hub ({why}); to use a local "
                             "copy pass its diffusers folder or a .safetensors file via --model") from e


def _local_snapshot(repo_id: str) -> str | None:
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(repo_id, local_files_only=True)
    except Exception:  # noqa: BLE001 - no snapshot: fall back to hashing tensors
        return None


def _wrap(pipe, *, name, weights_hash, source_path, preview_json, device, dtype) -> LoadedModel:
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        if module.device != torch.device(device) or module.dtype != dtype:
            module.to(device=device, dtype=dtype)
        module.eval()
        module.requires_grad_(False)
    family = detect_family(pipe.text_encoder)
    scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    sample = pipe.unet.config.sample_size
    sample = sample if isinstance(sample, int) else sample[0]
    matrix, bias = _latent_rgb(preview_json, family, pipe, scale)
    scheduler_config = dict(pipe.scheduler.config)
    return LoadedModel(
        name=name, weights_hash=weights_hash, family=family,
        prediction_type=scheduler_config.get("prediction_type", "epsilon"),
        unet=pipe.unet, vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
        scheduler_config=scheduler_config, device=torch.device(device), dtype=dtype,
        latent_rgb=matrix, latent_rgb_bias=bias, default_size=int(sample) * scale, source_path=source_path,
    )


def _latent_rgb(preview_json: Path | None, family: str, pipe, vae_scale: int):
    """The model's own ``latent_preview.json`` wins; else the published SD factors when
    the VAE is SD-shaped (4 channels, 8x); else ``None`` (preview decodes with the VAE)."""
    if preview_json is not None and preview_json.is_file():
        try:
            data = json.loads(preview_json.read_text())
            matrix = torch.tensor(data["matrix"], dtype=torch.float32)
            bias = torch.tensor(data.get("bias", [0.0, 0.0, 0.0]), dtype=torch.float32)
        except (ValueError, KeyError, TypeError) as e:
            raise ModelLoadError(f"bad {preview_json}: expected {{'matrix': 4x3 list, 'bias': 3 list}} ({e})") from e
        channels = int(pipe.unet.config.in_channels)
        if tuple(matrix.shape) != (channels, 3) or tuple(bias.shape) != (3,):
            raise ModelLoadError(f"bad {preview_json}: matrix must be {channels}x3 and bias 3 long, "
                                 f"got {list(matrix.shape)} and {list(bias.shape)}")
        return matrix, bias
    if family in ("sd1", "sd2") and pipe.vae.config.latent_channels == 4 and vae_scale == 8:
        return torch.tensor(SD_LATENT_RGB, dtype=torch.float32), torch.zeros(3)
    return None, None


# ----------------------------------------------------------------------------- hashing


def _hash_source(kind: str, location: str) -> str:
    """Short sha256 over the weight files of a folder (unet, vae, text_encoder) or one file."""
    root = Path(location)
    if kind == "file" or root.is_file():
        files = [root]
        root = root.parent
    else:
        files = [p for c in HASHED_COMPONENTS if (root / c).is_dir()
                 for p in sorted((root / c).iterdir()) if p.suffix.lower() in WEIGHT_SUFFIXES]
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.relative_to(root).as_posix().encode())
        digest.update(bytes.fromhex(file_sha256(f)))
    return digest.hexdigest()[:12]


def _hash_modules(pipe) -> str:
    """Short sha256 over the tensors themselves (in-memory pipelines)."""
    digest = hashlib.sha256()
    for name in HASHED_COMPONENTS:
        for key, tensor in sorted(getattr(pipe, name).state_dict().items()):
            digest.update(f"{name}.{key}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:12]


def _hash_cache_dir() -> Path:
    base = os.environ.get("STUDIO_CACHE_DIR") or Path.home() / ".cache" / "studio"
    return Path(base) / "file-hashes"


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, cached (by resolved path, size and mtime) under
    ``$STUDIO_CACHE_DIR/file-hashes`` (default ``~/.cache/studio``)."""
    real = Path(path).resolve()
    stat = real.stat()
    stamp = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    sidecar = _hash_cache_dir() / (hashlib.sha1(str(real).encode()).hexdigest() + ".json")
    try:
        cached = json.loads(sidecar.read_text())
        if {k: cached.get(k) for k in stamp} == stamp:
            return cached["sha256"]
    except (OSError, ValueError, KeyError):
        pass
    digest = hashlib.sha256()
    with open(real, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    value = digest.hexdigest()
    try:
        sidecar.parent.mkdir(parents=True, exist_ok=True)
        tmp = sidecar.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**stamp, "sha256": value, "path": str(real)}))
        tmp.replace(sidecar)
    except OSError:
        pass  # a read-only cache only costs re-hashing next time
    return value
