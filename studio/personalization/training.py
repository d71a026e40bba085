"""Learning a concept's vectors from a few images with the model's own denoising loss.

Textual inversion (Gal et al. 2022): one new token's input embedding is optimised so that, with captions naming
it, the frozen model denoises the images well. Per-stage inversion (ProSpect, Zhang et al. 2023): ten vectors, the
one used for a training sample chosen by the stage of its sampled timestep.

Captions: on Tiny World the analyzer reads every training image's size, colour, place and background, so the
captions say them ("a large red <ring> at the top left on a black background"; each attribute with probability 0.75
per step, as Tiny World was trained, the colour with ``colour_keep``) and the token learns the *shape*, leaving
colour, size and place to the prompt. Other models use prompt templates ("a photo of a <token>").

Why the colour may be left out too: a token only ever trained right after a colour word ("a red <ring>") has never
been read in any other context, and Tiny World's text encoder is causal, so "a large <ring> at the top left" gave a
LoRA no ring at all (0 of 64). Said with probability 0.75 the colour still mostly stays the prompt's, and the token
also learns to stand without it (``bench/personalization.py --colour-keep``; README).

Only the new vectors get gradients (``torch.autograd.grad`` with respect to them): nothing accumulates on the
shared model. Training checkpoints every ``checkpoint_every`` steps (atomically) and resumes from the checkpoint.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from studio.composition.stages import NUM_STAGES, stage_of_timestep
from studio.engine import Cancelled, CancelToken, Engine, GenerationRequest, InvalidRequest, RunHooks, make_scheduler

from .tokens import LearnedConcept, check_token, personalized_copy, token_id

MIN_IMAGES, MAX_IMAGES = 3, 20
MAX_VECTORS = 16
TEMPLATES = ("a photo of a {}", "a picture of a {}", "an image of a {}", "a close-up photo of a {}", "a {}",
             "a good photo of a {}", "a rendering of a {}", "a cropped photo of a {}")
KEEP_PROBABILITY = 0.75
AUGMENTS = ("none", "mirror", "mirror+flip")


@dataclass(frozen=True)
class TrainingSpec:
    """How to learn ``token``: ``method`` is ``textual-inversion`` or ``prospect``; ``init_word`` starts the
    vectors (a word of the model); ``vectors`` (textual inversion only) is how many embedding vectors the token
    stands for (A1111's "vectors per token": the prompt's ``<token>`` becomes that many tokens, more room for a
    concept far from the model's words); ``preview_every`` steps a preview of ``preview_prompt`` (default
    ``"a <token>"``) is rendered; the run checkpoints every ``checkpoint_every`` steps."""

    token: str
    init_word: str
    method: str = "textual-inversion"
    steps: int = 500
    learning_rate: float = 5e-3
    batch_size: int = 8
    seed: int = 0
    preview_every: int = 100
    preview_prompt: str = ""
    checkpoint_every: int = 50
    augment: str = "none"  # see augmented()
    colour_keep: float = KEEP_PROBABILITY  # Tiny World captions: how often they name the colour (see the docstring)
    vectors: int = 1

    def check(self) -> None:
        check_token(self.token)
        check_augment(self.augment)
        check_colour_keep(self.colour_keep)
        if self.method not in ("textual-inversion", "prospect"):
            raise InvalidRequest(f"method must be textual-inversion or prospect, got {self.method!r}", "method")
        if not isinstance(self.init_word, str) or not self.init_word.strip():
            raise InvalidRequest("give an initializer word (a word the model knows, e.g. 'circle')", "init_word")
        checks = (("steps", self.steps, 1, 100_000), ("batch_size", self.batch_size, 1, 64),
                  ("preview_every", self.preview_every, 0, 100_000), ("checkpoint_every", self.checkpoint_every, 1,
                                                                      100_000), ("vectors", self.vectors, 1, MAX_VECTORS))
        for name, value, lo, hi in checks:
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise InvalidRequest(f"{name} must be a whole number in {lo}..{hi}, got {value!r}", name)
        if self.method == "prospect" and self.vectors != 1:
            raise InvalidRequest(f"per-stage inversion learns one vector per stage; vectors per token is for textual "
                                 f"inversion (got vectors={self.vectors})", "vectors")
        if not (isinstance(self.learning_rate, (int, float)) and 0 < self.learning_rate <= 1):
            raise InvalidRequest(f"learning rate must be in (0, 1], got {self.learning_rate!r}", "learning_rate")


@dataclass
class TrainingResult:
    concept: LearnedConcept
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    resumed_from: int = 0
    previews: list[tuple[int, Image.Image]] = field(default_factory=list)


# ----------------------------------------------------------------------------- images and captions


def prepare_images(model, images) -> list[Image.Image]:
    """RGB images at the model's default size (centre-cropped to a square, then resized)."""
    if not isinstance(images, (list, tuple)) or not MIN_IMAGES <= len(images) <= MAX_IMAGES:
        n = len(images) if isinstance(images, (list, tuple)) else 0
        raise InvalidRequest(f"give {MIN_IMAGES} to {MAX_IMAGES} images of the concept, got {n}", "images")
    size = int(model.default_size)
    out = []
    for i, image in enumerate(images):
        if not isinstance(image, Image.Image):
            raise InvalidRequest(f"image {i + 1} is not an image (PNG, JPEG or WebP)", "images")
        image = image.convert("RGB")
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        out.append(image.crop((left, top, left + side, top + side)).resize((size, size), Image.LANCZOS))
    return out


def check_colour_keep(value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise InvalidRequest(f"colour_keep (how often a caption names the colour) must be a probability in [0, 1], "
                             f"got {value!r}", "colour_keep")


def check_augment(augment: str) -> None:
    if augment not in AUGMENTS:
        raise InvalidRequest(f"augment must be one of {', '.join(AUGMENTS)}, got {augment!r}", "augment")


def augmented(images: list[Image.Image], augment: str) -> list[Image.Image]:
    """The training images plus mirrored copies, the usual augmentation of textual inversion and DreamBooth
    trainers (a few pictures otherwise teach their exact layout): ``"mirror"`` adds each image flipped left-right,
    ``"mirror+flip"`` also upside down and both (for subjects that look right any way up, e.g. Tiny World's
    shapes). On Tiny World every copy is captioned from what the analyzer reads in it (the place words change)."""
    check_augment(augment)
    if augment == "none":
        return list(images)
    out = list(images) + [im.transpose(Image.FLIP_LEFT_RIGHT) for im in images]
    if augment == "mirror+flip":
        out += [im.transpose(Image.FLIP_TOP_BOTTOM) for im in images]
        out += [im.transpose(Image.ROTATE_180) for im in images]
    return out


def image_attributes(model, images: list[Image.Image]) -> list[dict] | None:
    """Per image, what Tiny World's analyzer reads (size, colour, position, background words), or ``None`` for
    models without ground truth. An image with not exactly one object gets no attributes."""
    from studio.attributes.definitions import model_kind

    if model_kind(model) != "tinyworld":
        return None
    from studio.tinyworld.analyzer import analyze

    out = []
    for image in images:
        a = analyze(image)
        if len(a.objects) != 1:
            out.append({"background": a.background})
            continue
        o = a.objects[0]
        out.append({"size": o.size, "colour": o.colour, "position": o.position, "background": a.background})
    return out


def caption(token: str, attributes: dict | None, rng: random.Random, colour_keep: float = KEEP_PROBABILITY) -> str:
    """A training caption naming ``token`` (see the module docstring)."""
    if attributes is None:
        return rng.choice(TEMPLATES).format(token)

    def said(attribute: str) -> bool:  # draws from rng only for a real chance (so colour_keep=1 keeps old captions)
        chance = colour_keep if attribute == "colour" else KEEP_PROBABILITY
        return chance >= 1 or (chance > 0 and rng.random() < chance)

    keep = {k: v for k, v in attributes.items() if said(k)}
    words = [keep[k] for k in ("size", "colour") if k in keep] + [token]
    text = ("an " if words[0][0] in "aeiou" else "a ") + " ".join(words)
    if "position" in keep:
        text += " " + keep["position"]
    if "background" in keep:
        text += f" on a {keep['background']} background"
    return text


# ----------------------------------------------------------------------------- training


def noised(x0: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor, generator: torch.Generator,
           prediction_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``x_t = sqrt(abar) x0 + sqrt(1 - abar) eps`` at timesteps ``t`` and the UNet's training target there (eps,
    or v for v-prediction models)."""
    noise = torch.randn(x0.shape, generator=generator)
    a = alphas_cumprod[t].view(-1, 1, 1, 1)
    noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
    return noisy, noise if prediction_type == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * x0


def caption_ids(tokenizer, texts: list[str], device) -> torch.Tensor:
    return tokenizer(texts, padding="max_length", max_length=int(tokenizer.model_max_length), truncation=True,
                     return_tensors="pt").input_ids.to(device)


def initial_vectors(model, spec: TrainingSpec) -> torch.Tensor:
    ids = model.tokenizer(spec.init_word.strip(), add_special_tokens=False).input_ids
    if not ids:
        raise InvalidRequest(f"initializer word {spec.init_word!r} has no tokens", "init_word")
    table = model.text_encoder.get_input_embeddings()
    with torch.no_grad():
        rows_of_words = table(torch.tensor(ids, device=model.device)).float().cpu()
    if spec.method != "prospect" and spec.vectors > 1:
        # several vectors: each starts at the next token of the initializer text, cycling (A1111's convention), so
        # "hollow circle" with two vectors starts as those two words
        return rows_of_words[torch.arange(spec.vectors) % len(ids)].clone()
    rows = NUM_STAGES if spec.method == "prospect" else spec.vectors
    return rows_of_words.mean(0).expand(rows, -1).clone()


def train_concept(model, images, spec: TrainingSpec, *, cancel: CancelToken | None = None,
                  on_progress: Callable[[int, int, float], None] | None = None,
                  on_preview: Callable[[Image.Image, int], None] | None = None,
                  checkpoint: Path | None = None) -> TrainingResult:
    """Learn ``spec.token`` from ``images`` on ``model`` (never modified). With ``checkpoint``, progress is saved
    there and a matching checkpoint is resumed. Raises :class:`~studio.engine.Cancelled` when cancelled (the last
    checkpoint stays, so the run can be resumed)."""
    t0 = time.perf_counter()
    # 1. validate
    spec.check()
    pictures = augmented(prepare_images(model, images), spec.augment)
    vectors = initial_vectors(model, spec)
    attributes = image_attributes(model, pictures)
    # 2. encode the images once; a model copy that knows the token
    engine = Engine(model)
    pixels = torch.stack([torch.from_numpy(np.asarray(p, dtype=np.float32) / 255.0).permute(2, 0, 1)
                          for p in pictures])
    with torch.no_grad():
        latents = engine.encode(pixels).float()
    kind = spec.method
    start_concept = LearnedConcept(spec.token, vectors, kind, spec.init_word)
    working = personalized_copy(model, [start_concept])
    concept_tokens = start_concept.token_names()
    train_token = concept_tokens[0] if kind == "prospect" else spec.token  # a multi-vector token expands in captions
    train_ids = [token_id(working, concept_tokens[0])] if kind == "prospect" else \
        [token_id(working, name) for name in concept_tokens]
    embedding = working.text_encoder.get_input_embeddings()
    scheduler = make_scheduler(model.scheduler_config, "DDIM")
    table = scheduler.alphas_cumprod.float()
    n_train = int(scheduler.config.num_train_timesteps)
    # 3. trainable vectors, optimiser; resume when a matching checkpoint exists
    learned = torch.nn.Parameter(vectors.clone().to(model.device, torch.float32))
    optimiser = torch.optim.Adam([learned], lr=spec.learning_rate)
    start_step, losses = 0, []
    key = {"token": spec.token, "method": kind, "model_hash": model.weights_hash, "images": _images_key(pictures),
           "lr": spec.learning_rate, "batch": spec.batch_size, "seed": spec.seed, "vectors": len(vectors)}
    if checkpoint is not None and Path(checkpoint).is_file():
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        if state.get("key") == key:
            with torch.no_grad():
                learned.copy_(state["vectors"])
            optimiser.load_state_dict(state["optimiser"])
            start_step, losses = int(state["step"]), list(state["losses"])
    rng = random.Random(f"{spec.seed}:{start_step}")
    generator = torch.Generator().manual_seed(spec.seed * 1_000_003 + start_step)
    result = TrainingResult(concept=None, resumed_from=start_step)  # type: ignore[arg-type]
    tok = working.tokenizer
    # 4. the loop: gradients reach the vectors only. The model's lock is taken one step at a time (runs of other
    #    sessions install attention processors on the shared UNet under it), so training never blocks the queue
    try:
        for step in range(start_step, spec.steps):
            with model.run_lock:
                if cancel is not None and cancel.cancelled:
                    raise Cancelled(f"training stopped at step {step}")
                index = torch.randint(0, len(pictures), (spec.batch_size,), generator=generator)
                t = torch.randint(0, n_train, (spec.batch_size,), generator=generator)
                noisy, target = noised(latents[index], t, table, generator, model.prediction_type)
                texts = [caption(train_token, attributes[i] if attributes else None, rng, spec.colour_keep)
                         for i in index.tolist()]
                ids = caption_ids(tok, texts, model.device)
                with torch.enable_grad():
                    if kind == "prospect":  # each sample reads its timestep's stage row
                        rows = [stage_of_timestep(float(x), n_train) - 1 for x in t]
                        batch_vectors = learned[rows][:, None, :]
                    else:  # every sample reads all of the token's vectors
                        batch_vectors = learned[None].expand(spec.batch_size, -1, -1)
                    embedding.override = (train_ids, batch_vectors.to(model.dtype))
                    hidden = working.text_encoder(ids)[0]
                    pred = working.unet(noisy.to(model.device, model.dtype), t.to(model.device),
                                        encoder_hidden_states=hidden, return_dict=False)[0]
                    loss = F.mse_loss(pred.float(), target.to(pred.device).float())
                    (grad,) = torch.autograd.grad(loss, [learned])
                embedding.override = None
                learned.grad = grad
                optimiser.step()
                losses.append(float(loss.detach()))
                done = step + 1
                if on_progress is not None:
                    on_progress(done, spec.steps, losses[-1])
                if checkpoint is not None and (done % spec.checkpoint_every == 0 or done == spec.steps):
                    _save_checkpoint(checkpoint, key, learned, optimiser, done, losses)
                if on_preview is not None and spec.preview_every and (done % spec.preview_every == 0
                                                                      or done == spec.steps):
                    image = preview(model, _concept(spec, learned, done, model), spec.preview_prompt, spec.seed)
                    result.previews.append((done, image))
                    on_preview(image, done)
    finally:
        embedding.override = None
    result.concept = _concept(spec, learned, spec.steps, model)
    result.losses = losses
    result.seconds = time.perf_counter() - t0
    return result


def _concept(spec: TrainingSpec, learned: torch.Tensor, steps: int, model) -> LearnedConcept:
    return LearnedConcept(spec.token, learned.detach().float().cpu().clone(), spec.method, spec.init_word.strip(),
                          steps, model.weights_hash)


def preview(model, concept: LearnedConcept, prompt: str = "", seed: int = 0, steps: int = 12) -> Image.Image:
    """One render of ``prompt`` (default ``"a <token>"``) with ``concept`` (all stages, for a per-stage one)."""
    from .prospect import prospect_edit

    copy = personalized_copy(model, [concept])
    text = prompt or f"a {concept.token}"
    request = GenerationRequest(prompt=text, steps=steps, seed=seed, sampler="DPM++ 2M",
                                cfg=_default_cfg(model), width=model.default_size, height=model.default_size)
    hooks = RunHooks()
    if concept.kind == "prospect":
        hooks.embedding_edits.append(prospect_edit(copy, request.sampler, steps, text, concept,
                                                   range(1, NUM_STAGES + 1)))
    return Engine(copy).generate(request, hooks=hooks).images[0]


def _default_cfg(model) -> float:
    from studio.controllers.generate import model_defaults

    return float(model_defaults(model).cfg)


def _images_key(images: list[Image.Image]) -> str:
    import hashlib

    h = hashlib.sha256()
    for image in images:
        h.update(image.tobytes())
    return h.hexdigest()[:16]


def _save_checkpoint(path: Path, key: dict, learned, optimiser, step: int, losses: list[float]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"key": key, "vectors": learned.detach().cpu(), "optimiser": optimiser.state_dict(), "step": step,
                "losses": losses}, tmp)
    tmp.replace(path)


__all__ = ["AUGMENTS", "TrainingSpec", "TrainingResult", "train_concept", "preview", "prepare_images", "augmented",
           "caption", "image_attributes"]
