"""LoRA (Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", 2021) for the UNet: DreamBooth-style
training with peft on a private copy, and loading LoRA files people exchange, several at once with a scale each.

A LoRA adds ``scale * (alpha / r) * up @ down`` to a linear layer's weight. Loading *merges* the chosen LoRAs into
copies of just the layers they touch (every other tensor is shared with the model, which is never modified), so
unloading is dropping the copy and the base weights stay bit-identical. Formats read:

* **diffusers / peft** (``pytorch_lora_weights.safetensors``): ``unet.<module>.lora_A.weight`` (down) and
  ``.lora_B.weight`` (up), optional ``.alpha``; also without the ``unet.`` prefix, and the older
  ``<module>.lora.down.weight`` / ``.lora.up.weight`` naming.
* **kohya / A1111** (``lora_unet_<module_with_underscores>.lora_down.weight``, ``.lora_up.weight``, ``.alpha``);
  text-encoder LoRA keys (``lora_te_``) are applied to the text encoder.

Convolutions of any kernel size are read too (LoCon): down ``(r, in, k, k)``, up ``(out, r, 1, 1)``; their product
over the flattened shapes is the ``(out, in, k, k)`` weight delta.

Training (:func:`train_lora`) puts peft adapters on the attention projections of a UNet copy (and, with
``LoraSpec.resnets``, on the 3x3 convolutions of its ResNet blocks) and learns them,
together with the placeholder token's embedding (pivotal tuning), with the model's own denoising loss; the file it
writes is a diffusers LoRA plus the token's vector (``studio.token.<name>``) and metadata.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from studio.engine import Cancelled, CancelToken, Engine, InvalidRequest, make_scheduler
from studio.models import copy_sharing_tensors

from .tokens import LearnedConcept, personalized_copy, token_id

TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
RESNET_TARGETS = ("conv1", "conv2")  # the two 3x3 convolutions of every ResNet block


class LoraFileError(ValueError):
    """A LoRA file could not be read or does not fit the model; one line that says what to do."""


@dataclass(frozen=True)
class LoraWeights:
    """``layers``: ``{(component, module path): (down, up, alpha)}`` with down ``(r, in)`` and up ``(out, r)`` for a
    linear layer, ``(r, in, k, k)`` and ``(out, r, 1, 1)`` for a convolution; ``concept``: a token the LoRA was trained
    with (ours), if any."""

    name: str
    layers: dict
    concept: LearnedConcept | None = None
    meta: dict = field(default_factory=dict)

    @property
    def rank(self) -> int:
        return max((down.shape[0] for down, _, _ in self.layers.values()), default=0)

    def digest(self) -> str:
        h = hashlib.sha256(self.name.encode())
        for key in sorted(self.layers):
            down, up, alpha = self.layers[key]
            h.update(f"{key}:{alpha}".encode())
            h.update(down.float().numpy().tobytes())
            h.update(up.float().numpy().tobytes())
        return h.hexdigest()[:12]


# ----------------------------------------------------------------------------- reading files


def load_lora(path: Path, model) -> LoraWeights:
    """Read a diffusers/peft or kohya/A1111 LoRA and resolve its layers against ``model``'s modules."""
    from safetensors import safe_open

    path = Path(path)
    if path.suffix != ".safetensors":
        raise LoraFileError(f"{path.name}: LoRAs are read from .safetensors files (pickles can run code)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except FileNotFoundError:
        raise LoraFileError(f"no such file: {path}") from None
    except Exception as e:  # safetensors raises several kinds for damaged files
        raise LoraFileError(f"{path.name} could not be read as safetensors ({type(e).__name__}: {e})") from None
    kohya = any(k.startswith(("lora_unet_", "lora_te_")) for k in tensors)
    lookup = _kohya_lookup(model) if kohya else None
    parts: dict[tuple[str, str], dict] = {}
    concept = None
    for key, tensor in tensors.items():
        if key.startswith("studio.token."):
            concept = LearnedConcept(key.removeprefix("studio.token."), tensor.float()[None] if tensor.ndim == 1
                                     else tensor.float(), init_word=meta.get("init_word", ""))
            continue
        target, role = _parse_key(key, lookup)
        if target is None:
            raise LoraFileError(f"{path.name}: key {key!r} is not a LoRA weight of a known format "
                                "(diffusers lora_A/lora_B, kohya lora_down/lora_up)")
        parts.setdefault(target, {})[role] = tensor
    layers = {}
    for (component, module_path), roles in parts.items():
        if "down" not in roles or "up" not in roles:
            raise LoraFileError(f"{path.name}: {module_path} lacks its {'down' if 'down' not in roles else 'up'} "
                                "matrix; the file is incomplete")
        down, up = _as_lora_tensor(roles["down"], path, module_path), _as_lora_tensor(roles["up"], path, module_path)
        alpha = float(roles["alpha"]) if "alpha" in roles else float(meta.get("alpha", down.shape[0]))
        layers[(component, module_path)] = (down.float(), up.float(), alpha)
    if not layers:
        raise LoraFileError(f"{path.name} holds no LoRA weights")
    _check_fits(layers, model, path)
    return LoraWeights(name=path.stem, layers=layers, concept=concept, meta=dict(meta))


def _parse_key(key: str, lookup) -> tuple[tuple[str, str] | None, str]:
    role = None
    for suffix, r in ((".lora_A.weight", "down"), (".lora_B.weight", "up"), (".lora.down.weight", "down"),
                      (".lora.up.weight", "up"), (".lora_down.weight", "down"), (".lora_up.weight", "up"),
                      (".alpha", "alpha")):
        if key.endswith(suffix):
            stem, role = key[: -len(suffix)], r
            break
    if role is None:
        return None, ""
    if lookup is not None:
        return lookup.get(stem), role
    component = "unet"
    for prefix, comp in (("unet.", "unet"), ("text_encoder.", "text_encoder")):
        if stem.startswith(prefix):
            stem, component = stem[len(prefix):], comp
            break
    return (component, stem), role


def _kohya_lookup(model) -> dict[str, tuple[str, str]]:
    table = {}
    for component, prefix in (("unet", "lora_unet_"), ("text_encoder", "lora_te_")):
        for name, module in getattr(model, component).named_modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                table[prefix + name.replace(".", "_")] = (component, name)
                # kohya names text-encoder modules from text_model.*; our encoder may be flattened
                table[prefix + "text_model_" + name.replace(".", "_")] = (component, name)
    return table


def _as_lora_tensor(tensor: torch.Tensor, path: Path, module: str) -> torch.Tensor:
    """A linear layer's matrix, a 1x1 convolution's as a matrix, a larger convolution's kernel as it is."""
    if tensor.ndim == 4 and tensor.shape[2:] == (1, 1):
        return tensor[:, :, 0, 0]
    if tensor.ndim not in (2, 4):
        raise LoraFileError(f"{path.name}: {module} has a {tuple(tensor.shape)} LoRA weight; linear layers (2-d) "
                            "and convolutions (4-d) are supported")
    return tensor


def lora_delta(down: torch.Tensor, up: torch.Tensor, weight_shape) -> torch.Tensor:
    """``up @ down`` (over the flattened kernels) shaped like the layer's weight, in float64."""
    return (up.double().flatten(1) @ down.double().flatten(1)).reshape(weight_shape)


def _check_fits(layers: dict, model, path: Path) -> None:
    for (component, module_path), (down, up, _) in layers.items():
        try:
            module = getattr(model, component).get_submodule(module_path)
        except AttributeError:
            raise LoraFileError(f"{path.name}: the model has no layer {module_path}; this LoRA was made for another "
                                "architecture") from None
        weight = module.weight
        out_f, in_f = weight.shape[0], weight[0].numel()  # a convolution's input is its flattened kernel
        fits = (down.flatten(1).shape[1] == in_f and up.shape[0] == out_f and up.flatten(1).shape[1] == down.shape[0]
                and (down.ndim == 2 or tuple(down.shape[1:]) == tuple(weight.shape[1:])))
        if not fits:
            raise LoraFileError(f"{path.name}: {module_path} is {tuple(weight.shape)} in this model but the LoRA makes "
                                f"{up.shape[0]}x{tuple(down.shape[1:])}; it was made for another model")


# ----------------------------------------------------------------------------- applying (merged, on a copy)


def apply_loras(model, loras: list[tuple[LoraWeights, float]]):
    """A copy of ``model`` with every ``(lora, scale)`` merged into copies of the layers it touches; tokens trained
    with a LoRA are added too. ``model`` itself is not modified."""
    if not loras:
        return model
    deltas: dict[tuple[str, str], torch.Tensor] = {}
    for lora, scale in loras:
        if not isinstance(scale, (int, float)) or not -4.0 <= float(scale) <= 4.0:
            raise InvalidRequest(f"LoRA scale must be a number in -4..4, got {scale!r}", "lora")
        for (component, module_path), (down, up, alpha) in lora.layers.items():
            shape = getattr(model, component).get_submodule(module_path).weight.shape
            delta = float(scale) * (alpha / down.shape[0]) * lora_delta(down, up, shape)
            key = (component, module_path)
            deltas[key] = deltas[key] + delta if key in deltas else delta
    changes = {}
    for component in ("unet", "text_encoder"):
        targets = {path: d for (comp, path), d in deltas.items() if comp == component}
        if not targets:
            continue
        root = getattr(model, component)
        clone = copy_sharing_tensors(root, model.run_lock, fresh_weights=[root.get_submodule(p) for p in targets])
        for module_path, delta in targets.items():
            module = clone.get_submodule(module_path)
            w = module.weight
            merged = w.detach().double() + delta.to(w.device)
            module.weight = torch.nn.Parameter(merged.to(w.dtype), requires_grad=False)
        changes[component] = clone
    digest = hashlib.sha256((model.weights_hash + "".join(f"{lo.digest()}*{s}" for lo, s in loras)).encode())
    out = replace(model, **changes, weights_hash=digest.hexdigest()[:12])
    concepts = [lo.concept for lo, _ in loras if lo.concept is not None]
    return personalized_copy(out, concepts) if concepts else out


def cross_free_targets(model) -> list[str]:
    """Module paths of the UNet's attention projections (what :func:`train_lora` adapts)."""
    return [n for n, m in model.unet.named_modules()
            if isinstance(m, torch.nn.Linear) and n.endswith(tuple("." + t for t in TARGETS))]


# ----------------------------------------------------------------------------- training (peft on a copy)


@dataclass(frozen=True)
class LoraSpec:
    """``prior_images`` renders of the initializer word by the original model are trained on too (DreamBooth's
    prior preservation, weight ``prior_weight``), so the LoRA does not turn every circle into a ring."""

    token: str
    init_word: str
    rank: int = 8
    steps: int = 300
    learning_rate: float = 1e-3
    batch_size: int = 8
    seed: int = 0
    token_learning_rate: float = 1e-3
    prior_images: int = 8
    prior_weight: float = 1.0
    resnets: bool = False  # also adapt the ResNet blocks' 3x3 convolutions (shapes are drawn there, not in words)
    augment: str = "none"  # mirrored copies of the images (training.augmented)
    colour_keep: float = 0.75  # how often a Tiny World caption names the colour (training module docstring)

    def check(self) -> None:
        from .training import TrainingSpec

        TrainingSpec(self.token, self.init_word, steps=self.steps, batch_size=self.batch_size,
                     learning_rate=self.learning_rate, augment=self.augment, colour_keep=self.colour_keep).check()
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or not 1 <= self.rank <= 128:
            raise InvalidRequest(f"rank must be a whole number in 1..128, got {self.rank!r}", "rank")
        if not isinstance(self.resnets, bool):
            raise InvalidRequest(f"resnets must be true or false, got {self.resnets!r}", "resnets")


@dataclass
class LoraResult:
    lora: LoraWeights
    losses: list[float]
    seconds: float


def train_lora(model, images, spec: LoraSpec, *, cancel: CancelToken | None = None,
               on_progress: Callable[[int, int, float], None] | None = None) -> LoraResult:
    """DreamBooth-style LoRA on the UNet's attention projections (and ResNet convolutions with ``spec.resnets``) of a
    private copy, plus the token's embedding."""
    from peft import LoraConfig, inject_adapter_in_model

    from .training import (
        TrainingSpec, augmented, caption, caption_ids, image_attributes, initial_vectors, noised, prepare_images,
    )

    t0 = time.perf_counter()
    # 1. validate, images, latents, captions
    spec.check()
    pictures = augmented(prepare_images(model, images), spec.augment)
    attributes = image_attributes(model, pictures)
    vectors = initial_vectors(model, TrainingSpec(spec.token, spec.init_word))
    # prior preservation: the original model's own renders of the initializer word, captioned alike
    rng = random.Random(spec.seed)
    priors, prior_attrs = _prior_images(model, spec, attributes, rng)
    pixels = torch.stack([torch.from_numpy(np.asarray(p, dtype=np.float32) / 255.0).permute(2, 0, 1)
                          for p in pictures + priors])
    with torch.no_grad():
        all_latents = Engine(model).encode(pixels).float()
    latents, prior_latents = all_latents[:len(pictures)], all_latents[len(pictures):]
    # 2. a copy with the token, and a UNet copy (sharing every base tensor) carrying peft adapters
    working = personalized_copy(model, [LearnedConcept(spec.token, vectors, init_word=spec.init_word)])
    unet = copy_sharing_tensors(model.unet, model.run_lock)
    targets = list(TARGETS) + (list(RESNET_TARGETS) if spec.resnets else [])
    config = LoraConfig(r=spec.rank, lora_alpha=spec.rank, target_modules=targets, init_lora_weights=True)
    # peft draws the adapters' first matrices from torch's global generator: seed it (in a forked state, so the
    # caller's random stream is left as it was), or the same spec and seed would train a different LoRA each run
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        unet = inject_adapter_in_model(config, unet)
    lora_params = [p for n, p in unet.named_parameters() if "lora_" in n]
    for p in lora_params:
        p.data = p.data.float()
    embedding = working.text_encoder.get_input_embeddings()
    learned = torch.nn.Parameter(vectors.clone().float())
    optimiser = torch.optim.AdamW([{"params": lora_params}, {"params": [learned], "lr": spec.token_learning_rate}],
                                  lr=spec.learning_rate, weight_decay=1e-4)
    scheduler = make_scheduler(model.scheduler_config, "DDIM")
    table = scheduler.alphas_cumprod.float()
    n_train = int(scheduler.config.num_train_timesteps)
    tid = token_id(working, spec.token)
    tok = working.tokenizer
    generator = torch.Generator().manual_seed(spec.seed)
    losses = []
    # 3. the loop: gradients reach the adapters and the token only
    with model.run_lock:
        try:
            for step in range(spec.steps):
                if cancel is not None and cancel.cancelled:
                    raise Cancelled(f"training stopped at step {step}")
                n_prior = len(priors) and spec.batch_size // 2
                index = torch.randint(0, len(pictures), (spec.batch_size - n_prior,), generator=generator)
                prior_index = torch.randint(0, max(1, len(priors)), (n_prior,), generator=generator)
                x0 = torch.cat([latents[index], prior_latents[prior_index]]) if n_prior else latents[index]
                t = torch.randint(0, n_train, (spec.batch_size,), generator=generator)
                noisy, target = noised(x0, t, table, generator, model.prediction_type)
                texts = [caption(spec.token, attributes[i] if attributes else None, rng, spec.colour_keep)
                         for i in index.tolist()]
                texts += [caption(spec.init_word, prior_attrs[i] if prior_attrs else None, rng, spec.colour_keep)
                          for i in prior_index.tolist()[:n_prior]]
                ids = caption_ids(tok, texts, model.device)
                weights = torch.tensor([1.0] * len(index) + [spec.prior_weight] * n_prior).view(-1, 1, 1, 1)
                with torch.enable_grad():
                    embedding.override = ([tid], learned[[0] * spec.batch_size][:, None, :].to(model.dtype))
                    hidden = working.text_encoder(ids)[0]
                    pred = unet(noisy.to(model.device, model.dtype), t.to(model.device), encoder_hidden_states=hidden,
                                return_dict=False)[0]
                    loss = (weights.to(pred.device) * (pred.float() - target.float()) ** 2).mean()
                    grads = torch.autograd.grad(loss, lora_params + [learned])
                embedding.override = None
                for p, g in zip(lora_params + [learned], grads):
                    p.grad = g
                optimiser.step()
                losses.append(float(loss.detach()))
                if on_progress is not None:
                    on_progress(step + 1, spec.steps, losses[-1])
        finally:
            embedding.override = None
    # 4. the adapters as plain LoRA weights (module path -> down, up, alpha)
    state = dict(unet.named_parameters())
    layers = {}
    for name in state:
        if name.endswith("lora_A.default.weight"):
            module_path = name.removesuffix(".lora_A.default.weight")
            up = state[module_path + ".lora_B.default.weight"]
            layers[("unet", module_path)] = (state[name].detach().float().cpu().clone(),
                                             up.detach().float().cpu().clone(), float(spec.rank))
    concept = LearnedConcept(spec.token, learned.detach().float().cpu().clone(), init_word=spec.init_word,
                             steps=spec.steps, model_hash=model.weights_hash)
    meta = {"rank": str(spec.rank), "steps": str(spec.steps), "model_hash": model.weights_hash,
            "init_word": spec.init_word, "resnets": str(bool(spec.resnets)).lower(), "augment": spec.augment,
            "colour_keep": str(spec.colour_keep)}
    lora = LoraWeights(name=spec.token.strip("<>"), layers=layers, concept=concept, meta=meta)
    return LoraResult(lora=lora, losses=losses, seconds=time.perf_counter() - t0)


def _prior_images(model, spec: LoraSpec, attributes, rng: random.Random):
    """``spec.prior_images`` renders by the original model of the initializer word, captioned like the training
    images (Tiny World: the same attribute words; other models: the templates)."""
    from studio.controllers.generate import model_defaults
    from studio.engine import GenerationRequest

    from .training import caption, image_attributes

    if spec.prior_images <= 0:
        return [], None
    engine, images = Engine(model), []
    defaults = model_defaults(model)
    for i in range(spec.prior_images):
        attrs = attributes[i % len(attributes)] if attributes else None
        request = GenerationRequest(prompt=caption(spec.init_word, attrs, rng, spec.colour_keep),
                                    steps=min(20, defaults.steps),
                                    cfg=defaults.cfg, sampler=defaults.sampler, seed=spec.seed * 1000 + i,
                                    width=model.default_size, height=model.default_size)
        images.append(engine.generate(request).images[0])
    return images, image_attributes(model, images)


def save_lora(lora: LoraWeights, path: Path, fmt: str = "diffusers") -> Path:
    """Write ``lora`` as a diffusers (``unet.<module>.lora_A.weight``) or kohya (``lora_unet_...``) file, with the
    token's vector (``studio.token.<token>``) when it has one. Atomic."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise LoraFileError(f"LoRAs are saved as .safetensors, got {path.name}")
    if fmt not in ("diffusers", "kohya"):
        raise LoraFileError(f"format must be diffusers or kohya, got {fmt!r}")
    tensors = {}
    for (component, module_path), (down, up, alpha) in lora.layers.items():
        if fmt == "diffusers":
            stem = f"{component}.{module_path}"
            tensors[f"{stem}.lora_A.weight"], tensors[f"{stem}.lora_B.weight"] = down, up
        else:
            stem = ("lora_unet_" if component == "unet" else "lora_te_") + module_path.replace(".", "_")
            tensors[f"{stem}.lora_down.weight"], tensors[f"{stem}.lora_up.weight"] = down, up
        tensors[f"{stem}.alpha"] = torch.tensor(float(alpha))
    if lora.concept is not None:
        tensors[f"studio.token.{lora.concept.token}"] = lora.concept.vectors[0]
    tensors = {k: v.detach().cpu().contiguous().float() for k, v in tensors.items()}
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(tmp), metadata={k: str(v) for k, v in lora.meta.items()} | {"format": fmt})
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


__all__ = ["LoraWeights", "LoraSpec", "LoraResult", "LoraFileError", "load_lora", "apply_loras", "train_lora",
           "save_lora"]
