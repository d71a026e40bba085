"""Train Tiny World from scratch: `python -m studio.tinyworld.train` rebuilds the data set and every weight.

Stages (each resumable from its checkpoint in --work-dir, each skipped when its output already exists):
  1. data     draw the scenes, write the tokenizer, tokenize caption variants
  2. vae      train the AutoencoderKL (L1 + MSE + tiny KL)
  3. latents  encode the data set, fit the unit-variance scaling factor, the linear latent->RGB preview matrix
              and the latent mean / principal components
  4. unet     train the CLIP text encoder and the UNet together (v-prediction loss, high SNR capped at 5, EMA)
  5. export   write a StableDiffusionPipeline folder (fp16 safetensors) plus our extra files to --out

A stage ends at its step count or its time budget, whichever comes first; the learning-rate schedule follows
whichever is further along, so a time-capped run still anneals properly.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import dataset as ds
from .model import LATENT_SIZE, build_text_encoder, build_unet, build_vae, noise_scheduler_config
from .tokenizer import load_tokenizer, write_tokenizer_files

REPO_ROOT = Path(__file__).resolve().parents[2]
log = logging.getLogger("tinyworld.train")


@dataclass(frozen=True)
class Recipe:
    n_scenes: int = 40_000
    vae_steps: int = 1_500
    vae_batch: int = 32
    vae_lr: float = 1e-3
    vae_seconds: float = 1_800
    unet_steps: int = 5_000
    unet_batch: int = 64
    unet_lr: float = 1e-3
    text_lr: float = 5e-4
    unet_seconds: float = 6_300
    ema_decay: float = 0.999
    min_snr_gamma: float = 5.0
    prediction_type: str = "v_prediction"
    warmup_steps: int = 300
    checkpoint_every: int = 250
    seed: int = 1234
    cfg_default: float = 5.0
    partial_captions: float = 0.5  # share of multi-object captions that mention only some objects (captions.py)
    continuous_sizes: bool = True  # radii over each size word's whole range (scenes.SceneSpec)
    fine_sizes: bool = False  # captions name sizes with nine words, not five (captions.py, vocab.CAPTION_SIZES)
    single_share: float = 0.45  # share of one-object scenes (scenes.SceneSpec); stage 8 raised it against duplicates
    continuous_colours: float = 0.0  # share of objects in colours between the palette's (scenes.SceneSpec; stage 9)
    hollow_share: float = 0.0  # share of squares and triangles drawn hollow (scenes.SceneSpec; stage-10 candidate)
    prefix_share: float = 0.0  # share of UNet samples that see only a prefix of their caption (prefix_attention_mask)

    def __post_init__(self):
        noise_scheduler_config(self.prediction_type)  # raises a clear error for an unknown prediction type


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _lr_factor(progress: float, step: int, warmup: int) -> float:
    warm = min(1.0, (step + 1) / max(1, warmup))
    return warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def prefix_attention_mask(tokens: torch.Tensor, eos_id: int, share: float,
                          generator: torch.Generator) -> torch.Tensor | None:
    """Cross-attention mask that shows a random share of the samples only a prefix of their caption's tokens.

    Why: the text encoder is causal, so the last tokens of a caption (the words after the object, the end token
    and the padding) each summarise the whole caption, and a UNet trained on full captions learns to read an
    object's colour there rather than at the object's own words (stage 8: putting the encoding of "purple" at
    "blue" and "circle" leaves the circle blue; putting it at the words after them turns it purple). A sample that
    sees only ``BOS w1 .. wk`` (end token and padding hidden, ``2 <= k + 1 <= caption length``) must take what its
    words say from those words, which is what subject sliders, prompt-to-prompt and token maps act on. Tried on
    2026-12-01 (300 steps at share 0.5 from stage 8, 12,000 scenes): in a 9-image check the colour was still read
    from the words after the noun (``bench/token_routing.py`` measures this), so no candidate uses it yet.

    Returns ``(batch, tokens)`` with 1 = attend and 0 = hidden, or None when ``share`` is 0 (no random draws, so
    recipes without it train exactly as before). Captions without words (the unconditional ones) stay whole."""
    if share <= 0:
        return None
    batch, seq = tokens.shape
    is_eos = tokens == eos_id
    is_eos[:, 0] = False
    length = torch.where(is_eos.any(1), is_eos.int().argmax(1), torch.full_like(is_eos[:, 0], seq, dtype=torch.long))
    chosen = (torch.rand(batch, generator=generator, device=tokens.device) < share) & (length >= 2)
    u = torch.rand(batch, generator=generator, device=tokens.device)
    cut = 2 + (u * (length - 1).clamp(min=1)).long().clamp(max=seq)  # 2 .. length: keep positions < cut
    cut = torch.minimum(cut, length)
    keep = torch.arange(seq, device=tokens.device)[None, :] < cut[:, None]
    keep[~chosen] = True
    return keep.float()


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def _save_atomic(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


class Ema:
    """Exponential moving average of a module's weights (warm-started: decay ramps up over the first steps)."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        names = [k for k, v in module.named_parameters()]
        params = [p.detach() for _, p in module.named_parameters()]
        shadows = [self.shadow[k] for k in names]
        torch._foreach_mul_(shadows, d)  # one fused kernel chain instead of a Python loop per tensor
        torch._foreach_add_(shadows, params, alpha=1 - d)


# --------------------------------------------------------------------------------------------------- stage 1


def stage_data(work: Path, recipe: Recipe, workers: int) -> None:
    data_path = work / "data.npz"
    if data_path.exists():
        log.info("data: %s exists, skipping", data_path)
        return
    tokenizer_path = write_tokenizer_files(work / "tokenizer")
    t0 = time.time()
    with tqdm(total=recipe.n_scenes, desc="data", unit="scene") as bar:
        data = ds.build_dataset(recipe.n_scenes, tokenizer_path, base_seed=recipe.seed * 1_000_003, workers=workers,
                                progress=bar.update, partial_captions=recipe.partial_captions,
                                continuous_sizes=recipe.continuous_sizes, fine_sizes=recipe.fine_sizes,
                                single_share=recipe.single_share,
                                continuous_colours=recipe.continuous_colours,
                                hollow_share=recipe.hollow_share)
    ds.save_dataset(data, data_path)
    log.info("data: %d scenes in %.1fs", len(data), time.time() - t0)


# --------------------------------------------------------------------------------------------------- stage 2


def _images_to_tensor(images_u8: torch.Tensor) -> torch.Tensor:
    return images_u8.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def stage_vae(work: Path, recipe: Recipe, device: torch.device) -> None:
    final = work / "vae_final.pt"
    if final.exists():
        log.info("vae: %s exists, skipping", final)
        return
    ckpt_path = work / "vae_ckpt.pt"
    data = ds.load_dataset(work / "data.npz")
    images = torch.from_numpy(data.images).to(device)
    vae = build_vae().to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=recipe.vae_lr, weight_decay=0.0)
    step, elapsed = 0, 0.0
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=device)
        vae.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, elapsed = state["step"], state["elapsed"]
        log.info("vae: resumed at step %d", step)
    gen = torch.Generator(device="cpu").manual_seed(recipe.seed + step)
    bar = tqdm(total=recipe.vae_steps, initial=step, desc="vae", unit="step")
    t_start = time.time() - elapsed
    while step < recipe.vae_steps and (time.time() - t_start) < recipe.vae_seconds:
        progress = max(step / recipe.vae_steps, (time.time() - t_start) / recipe.vae_seconds)
        for g in opt.param_groups:
            g["lr"] = recipe.vae_lr * _lr_factor(progress, step, recipe.warmup_steps)
        idx = torch.randint(0, len(images), (recipe.vae_batch,), generator=gen).to(device)
        x = _images_to_tensor(images[idx])
        with _autocast(device):
            posterior = vae.encode(x).latent_dist
            z = posterior.sample()
            recon = vae.decode(z).sample.float()
        kl = posterior.kl().mean() / (x[0].numel())
        loss = F.l1_loss(recon, x) + F.mse_loss(recon, x) + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step += 1
        bar.update(1)
        if step % 50 == 0:
            psnr = 10 * math.log10(4.0 / max(F.mse_loss(recon.detach(), x).item(), 1e-10))
            bar.set_postfix(loss=f"{loss.item():.4f}", psnr=f"{psnr:.1f}")
            log.info("vae step %d loss %.5f psnr %.2f lr %.2e", step, loss.item(), psnr, opt.param_groups[0]["lr"])
        if step % recipe.checkpoint_every == 0:
            _save_atomic({"model": vae.state_dict(), "opt": opt.state_dict(), "step": step,
                          "elapsed": time.time() - t_start}, ckpt_path)
    bar.close()
    _save_atomic({"model": vae.state_dict(), "step": step, "elapsed": time.time() - t_start}, final)
    log.info("vae: done at step %d in %.1fs", step, time.time() - t_start)


# --------------------------------------------------------------------------------------------------- stage 3


@torch.no_grad()
def stage_latents(work: Path, recipe: Recipe, device: torch.device, scaling_factor: float | None = None) -> None:
    """Encode the data set with the trained VAE; ``scaling_factor`` (a fine-tune's, from the model it starts
    from) is kept instead of refitted, so the UNet keeps seeing latents on the scale it was trained on."""
    out = work / "latents.pt"
    if out.exists():
        log.info("latents: %s exists, skipping", out)
        return
    data = ds.load_dataset(work / "data.npz")
    vae = build_vae().to(device)
    vae.load_state_dict(torch.load(work / "vae_final.pt", map_location=device)["model"])
    vae.eval()
    means = []
    for i in tqdm(range(0, len(data), 512), desc="latents"):
        x = _images_to_tensor(torch.from_numpy(data.images[i : i + 512]).to(device))
        means.append(vae.encode(x).latent_dist.mean.float().cpu())
    latents = torch.cat(means)
    if scaling_factor is None:
        scaling_factor = float(1.0 / latents.std())
    scaled = latents * scaling_factor
    # linear latent -> RGB (per latent pixel vs the 4x4-averaged image): cheap live previews
    sub = slice(0, min(len(data), 10_000))
    rgb = F.avg_pool2d(_images_to_tensor(torch.from_numpy(data.images[sub])), 4)
    X = scaled[sub].permute(0, 2, 3, 1).reshape(-1, 4)
    X1 = torch.cat([X, torch.ones(len(X), 1)], 1)
    Y = rgb.permute(0, 2, 3, 1).reshape(-1, 3)
    solution = torch.linalg.lstsq(X1.double(), Y.double()).solution.float()
    preview_mse = float(((X1 @ solution - Y) ** 2).mean())
    # mean and top principal components of the scaled latents (Gaussian-score experiments)
    flat = scaled[sub].reshape(len(rgb), -1)
    mean = flat.mean(0)
    _, s, vh = torch.linalg.svd(flat - mean, full_matrices=False)
    k = min(64, vh.shape[0])
    variances = (s[:k] ** 2) / (len(flat) - 1)
    torch.save({"latents": scaled.half(), "scaling_factor": scaling_factor, "rgb_matrix": solution[:4],
                "rgb_bias": solution[4], "preview_mse": preview_mse, "mean": mean.reshape(4, LATENT_SIZE, LATENT_SIZE),
                "components": vh[:k].reshape(k, 4, LATENT_SIZE, LATENT_SIZE), "variances": variances}, out)
    log.info("latents: scaling_factor %.4f, preview mse %.4f", scaling_factor, preview_mse)


# --------------------------------------------------------------------------------------------------- stage 4


def _loss_weights(timesteps: torch.Tensor, alphas_cumprod: torch.Tensor, gamma: float, prediction_type: str):
    """Per-sample loss weights after Min-SNR (Hang et al. 2023), which caps the weight of easy low-noise steps.

    v: effective x0-error weight min(SNR, gamma) + 1. Unlike plain min-SNR (x0 weight min(SNR, gamma)) this keeps
    the "+1" of the v loss, so the high-noise steps, where the layout is decided, are not weighed down to nothing.
    epsilon (the v0 recipe): plain min-SNR, min(SNR, gamma) / SNR."""
    abar = alphas_cumprod[timesteps]
    snr = abar / (1 - abar)
    if prediction_type == "v_prediction":
        return (torch.clamp(snr, max=gamma) + 1) / (snr + 1)
    return torch.clamp(snr, max=gamma) / snr


def _load_init_weights(path: Path, device: torch.device) -> dict:
    """EMA weights to start the unet stage from: a unet_final(_fp16).pt checkpoint, or an exported model folder."""
    if path.is_dir():
        from safetensors.torch import load_file

        files = {"ema_unet": path / "unet" / "diffusion_pytorch_model.safetensors",
                 "ema_text": path / "text_encoder" / "model.safetensors"}
        missing = [str(f) for f in files.values() if not f.exists()]
        if missing:
            raise SystemExit(f"--init-from {path}: not an exported Tiny World folder (missing {', '.join(missing)})")
        return {key: load_file(str(f), device=str(device)) for key, f in files.items()}
    return torch.load(path, map_location=device)


TOKEN_EMBEDDING = "embeddings.token_embedding.weight"  # CLIPTextModel's state-dict key (transformers 5)


def _remap_token_embeddings(text_state: dict, init_from: Path, tokenizer, fresh: torch.Tensor) -> dict:
    """Carry a fine-tune's text encoder over to a grown vocabulary: each token keeps its trained row (looked up by
    its string, since new words shift the BPE ids); a new caption size word starts at the mean of the two sizes it
    sits between, a new between-colour word at the mean of its two palette colours; any other new token keeps its
    fresh random row. Returns the state unchanged when the vocabularies
    match."""
    from .vocab import BETWEEN_COLOURS, CAPTION_SIZES

    old_vocab_path = Path(init_from) / "tokenizer" / "vocab.json"
    new_vocab = tokenizer.get_vocab()
    if not old_vocab_path.is_file():
        return text_state
    old_vocab = json.loads(old_vocab_path.read_text(encoding="utf-8"))
    if old_vocab == new_vocab:
        return text_state
    old = text_state[TOKEN_EMBEDDING].float()
    rows = fresh.detach().clone().float()
    for token, i in new_vocab.items():
        if token in old_vocab:
            rows[i] = old[old_vocab[token]]
    words = list(CAPTION_SIZES)
    between = {word: [words[k - 1], words[k + 1]] for k, word in enumerate(words) if 0 < k < len(words) - 1}
    between.update({word: list(pair) for word, pair in BETWEEN_COLOURS.items()})
    for word, sides in between.items():
        token = word + "</w>"
        if token in old_vocab or token not in new_vocab:
            continue
        neighbours = [w + "</w>" for w in sides if w + "</w>" in old_vocab]
        if neighbours:
            rows[new_vocab[token]] = torch.stack([old[old_vocab[t]] for t in neighbours]).mean(0)
    log.info("unet: token embeddings remapped to the new vocabulary (%d -> %d tokens)", len(old_vocab), len(new_vocab))
    return {**text_state, TOKEN_EMBEDDING: rows}


def stage_unet(work: Path, recipe: Recipe, device: torch.device, init_from: Path | None = None) -> None:
    final = work / "unet_final.pt"
    if final.exists():
        log.info("unet: %s exists, skipping", final)
        return
    from diffusers import DDPMScheduler

    ckpt_path = work / "unet_ckpt.pt"
    data = ds.load_dataset(work / "data.npz")
    lat = torch.load(work / "latents.pt", map_location="cpu")
    latents = lat["latents"].to(device)
    token_ids = torch.from_numpy(data.token_ids).long().to(device)
    tokenizer = load_tokenizer(work / "tokenizer")
    text_encoder = build_text_encoder(len(tokenizer), tokenizer.model_max_length, tokenizer.bos_token_id,
                                      tokenizer.eos_token_id).to(device)
    unet = build_unet().to(device)
    opt = torch.optim.AdamW([
        {"params": unet.parameters(), "lr": recipe.unet_lr, "base": recipe.unet_lr},
        {"params": text_encoder.parameters(), "lr": recipe.text_lr, "base": recipe.text_lr},
    ], weight_decay=0.01)
    ema_unet, ema_text = Ema(unet, recipe.ema_decay), Ema(text_encoder, recipe.ema_decay)
    step, elapsed = 0, 0.0
    if init_from is not None and not ckpt_path.exists():
        init = _load_init_weights(init_from, device)
        unet.load_state_dict({k: v.float() for k, v in init["ema_unet"].items()})
        text_state = _remap_token_embeddings(init["ema_text"], init_from, tokenizer,
                                             text_encoder.state_dict()[TOKEN_EMBEDDING])
        text_encoder.load_state_dict({k: v.float() for k, v in text_state.items()})
        ema_unet, ema_text = Ema(unet, recipe.ema_decay), Ema(text_encoder, recipe.ema_decay)
        log.info("unet: initialised from %s (trained steps: %s)", init_from, init.get("step", "see its training.json"))
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=device)
        unet.load_state_dict(state["unet"])
        text_encoder.load_state_dict(state["text"])
        opt.load_state_dict(state["opt"])
        ema_unet.shadow, ema_text.shadow = state["ema_unet"], state["ema_text"]
        step, elapsed = state["step"], state["elapsed"]
        log.info("unet: resumed at step %d", step)
    scheduler = DDPMScheduler(**noise_scheduler_config(recipe.prediction_type))
    alphas_cumprod = scheduler.alphas_cumprod.to(device)
    eos_id = tokenizer.eos_token_id
    gen = torch.Generator(device=device).manual_seed(recipe.seed + 7 + step)
    n, variants = token_ids.shape[:2]
    bar = tqdm(total=recipe.unet_steps, initial=step, desc="unet", unit="step")
    t_start = time.time() - elapsed
    running = None
    while step < recipe.unet_steps and (time.time() - t_start) < recipe.unet_seconds:
        progress = max(step / recipe.unet_steps, (time.time() - t_start) / recipe.unet_seconds)
        for g in opt.param_groups:
            g["lr"] = g["base"] * _lr_factor(progress, step, recipe.warmup_steps)
        b = recipe.unet_batch
        idx = torch.randint(0, n, (b,), generator=gen, device=device)
        var = torch.randint(0, variants, (b,), generator=gen, device=device)
        x0 = latents[idx].float()
        tokens = token_ids[idx, var]
        noise = torch.randn(x0.shape, generator=gen, device=device)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=gen, device=device)
        noisy = scheduler.add_noise(x0, noise, t)
        with _autocast(device):
            enc = text_encoder(tokens).last_hidden_state
            mask = prefix_attention_mask(tokens, eos_id, recipe.prefix_share, gen)
            pred = unet(noisy, t, enc, encoder_attention_mask=mask).sample.float()
        if recipe.prediction_type == "v_prediction":  # v = sqrt(abar) eps - sqrt(1 - abar) x0, abar already on device
            abar = alphas_cumprod[t].view(-1, 1, 1, 1)
            target = abar.sqrt() * noise - (1 - abar).sqrt() * x0
        else:
            target = noise
        per_sample = ((pred - target) ** 2).mean(dim=(1, 2, 3))
        loss = (per_sample * _loss_weights(t, alphas_cumprod, recipe.min_snr_gamma, recipe.prediction_type)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(unet.parameters()) + list(text_encoder.parameters()), 1.0)
        opt.step()
        ema_unet.update(unet, step)
        ema_text.update(text_encoder, step)
        step += 1
        bar.update(1)
        running = loss.detach() if running is None else 0.98 * running + 0.02 * loss.detach()  # no sync per step
        if step % 50 == 0:
            running = float(running)
            bar.set_postfix(loss=f"{running:.4f}")
            log.info("unet step %d loss %.5f lr %.2e elapsed %.0fs", step, running, opt.param_groups[0]["lr"],
                     time.time() - t_start)
        if step % recipe.checkpoint_every == 0:
            _save_atomic({"unet": unet.state_dict(), "text": text_encoder.state_dict(), "opt": opt.state_dict(),
                          "ema_unet": ema_unet.shadow, "ema_text": ema_text.shadow, "step": step,
                          "elapsed": time.time() - t_start}, ckpt_path)
    bar.close()
    _save_atomic({"ema_unet": ema_unet.shadow, "ema_text": ema_text.shadow, "step": step,
                  "elapsed": time.time() - t_start}, final)
    log.info("unet: done at step %d in %.1fs", step, time.time() - t_start)


# --------------------------------------------------------------------------------------------------- stage 5


def stage_export(work: Path, recipe: Recipe, out: Path) -> None:
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import save_file

    from .model import sampling_scheduler

    trained_recipe = json.loads((work / "recipe.json").read_text()) if (work / "recipe.json").exists() else asdict(recipe)
    prediction_type = trained_recipe.get("prediction_type", "epsilon")  # recipes before v-prediction were epsilon
    tokenizer = load_tokenizer(work / "tokenizer")
    lat = torch.load(work / "latents.pt", map_location="cpu")
    vae = build_vae()
    vae.load_state_dict(torch.load(work / "vae_final.pt", map_location="cpu")["model"])
    vae.register_to_config(scaling_factor=lat["scaling_factor"])
    text_encoder = build_text_encoder(len(tokenizer), tokenizer.model_max_length, tokenizer.bos_token_id,
                                      tokenizer.eos_token_id)
    unet = build_unet()
    final = torch.load(work / "unet_final.pt", map_location="cpu")
    unet.load_state_dict(final["ema_unet"])
    text_encoder.load_state_dict(final["ema_text"])
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=sampling_scheduler(prediction_type), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    pipe.to(torch.float16).save_pretrained(tmp, safe_serialization=True)
    # like SD 1.x's config: schedulers made from it (DDIM, ...) must not clip x0 to [-1, 1]; latents are not pixels
    sched_path = tmp / "scheduler" / "scheduler_config.json"
    sched = json.loads(sched_path.read_text())
    sched.update(clip_sample=False, set_alpha_to_one=False)
    sched_path.write_text(json.dumps(sched, indent=2, sort_keys=True) + "\n")
    for name in ("vocab.json", "merges.txt"):  # keep the plain CLIP BPE files beside tokenizer.json
        (tmp / "tokenizer" / name).write_bytes((work / "tokenizer" / name).read_bytes())
    # weights are fp16 on disk; ask transformers to load the text encoder as fp32 like the diffusers parts
    cfg_path = tmp / "text_encoder" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["dtype"] = "float32"
    cfg.pop("torch_dtype", None)
    cfg_path.write_text(json.dumps(cfg, indent=2))
    (tmp / "latent_preview.json").write_text(json.dumps({
        "space": "unet latents (VAE mean x scaling_factor) -> RGB in [-1, 1], per latent pixel",
        "matrix": lat["rgb_matrix"].tolist(), "bias": lat["rgb_bias"].tolist(), "fit_mse": lat["preview_mse"]},
        indent=2))
    save_file({"mean": lat["mean"].contiguous(), "components": lat["components"].contiguous(),
               "variances": lat["variances"].contiguous()}, str(tmp / "latent_stats.safetensors"))
    (tmp / "studio_defaults.json").write_text(json.dumps({
        "sampler": "DPM++ 2M", "steps": 20, "cfg": recipe.cfg_default, "width": 64, "height": 64}, indent=2))
    (tmp / "training.json").write_text(json.dumps({
        "recipe": trained_recipe, "vae_steps_done": torch.load(work / "vae_final.pt", map_location="cpu")["step"],
        "unet_steps_done": final["step"], "unet_seconds": final["elapsed"]}, indent=2))
    card = out / "README.md"
    if card.exists():  # the model card is written by hand; keep it
        (tmp / "README.md").write_text(card.read_text())
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.replace(out)
    log.info("export: wrote %s", out)


# ------------------------------------------------------------------------------------------------------ main


def _keep_init_vae(work: Path, init_from: Path | None) -> float | None:
    """A fine-tune from an exported folder keeps its VAE: unless a VAE was trained in this work dir, write the
    folder's as ``vae_final.pt`` and return its scaling factor (None: refit the scale as usual)."""
    if init_from is None or not (init_from / "vae" / "config.json").is_file():
        return None  # not a folder: the unet stage explains what --init-from needs
    final = work / "vae_final.pt"
    if final.exists() and "from" not in torch.load(final, map_location="cpu"):
        return None  # trained here
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(init_from / "vae")
    if not final.exists():
        state = {k: v.float() for k, v in vae.state_dict().items()}
        _save_atomic({"model": state, "step": 0, "from": str(init_from)}, final)
        log.info("latents: VAE kept from %s", init_from)
    return float(vae.config.scaling_factor)


def _flag(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m studio.tinyworld.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", type=Path, default=REPO_ROOT / "runs" / "tinyworld")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "assets" / "tinyworld")
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=2, help="processes drawing scenes")
    p.add_argument("--stages", default="data,vae,latents,unet,export")
    p.add_argument("--init-from", type=Path, default=None,
                   help="start the unet stage from these EMA weights (a unet_final.pt, or an exported folder such as "
                        "assets/tinyworld) instead of random")
    p.add_argument("--smoke", action="store_true", help="a few steps of every stage on a handful of scenes")
    for field, value in asdict(Recipe()).items():
        p.add_argument("--" + field.replace("_", "-"), type=_flag if isinstance(value, bool) else type(value),
                       default=None)
    args = p.parse_args(argv)

    overrides = {k: getattr(args, k) for k in asdict(Recipe()) if getattr(args, k) is not None}
    if args.smoke:
        smoke = dict(n_scenes=48, vae_steps=3, vae_batch=4, unet_steps=3, unet_batch=4, warmup_steps=1,
                     checkpoint_every=2)
        overrides = {**smoke, **overrides}
    recipe = Recipe(**overrides)
    work: Path = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    handlers = [logging.FileHandler(work / "train.log"), logging.StreamHandler(sys.stderr)]
    for h in handlers:
        h.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(h)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        return _run(args, p, recipe, work)
    finally:
        for h in handlers:  # a second call (tests) must not log twice
            log.removeHandler(h)
            h.close()


def _run(args, p, recipe: Recipe, work: Path) -> int:
    log.info("recipe %s device %s", json.dumps(asdict(recipe)), args.device)
    if args.stages != "export":  # an export-only run keeps the recipe the weights were trained with
        (work / "recipe.json").write_text(json.dumps(asdict(recipe), indent=2))
    _seed_everything(recipe.seed)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    if device.type == "cpu":
        torch.set_num_threads(max(1, torch.get_num_threads()))
    stages = args.stages.split(",")
    timings = {}
    for name in stages:
        t0 = time.time()
        if name == "data":
            stage_data(work, recipe, args.workers)
        elif name == "vae":
            stage_vae(work, recipe, device)
        elif name == "latents":
            stage_latents(work, recipe, device, _keep_init_vae(work, args.init_from))
        elif name == "unet":
            stage_unet(work, recipe, device, args.init_from)
        elif name == "export":
            stage_export(work, recipe, args.out)
        else:
            p.error(f"unknown stage {name!r}; stages are data, vae, latents, unet, export")
        timings[name] = round(time.time() - t0, 1)
    log.info("stage timings (s): %s", json.dumps(timings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
