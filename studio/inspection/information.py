"""Token information maps: which pixels a word informs, given the rest of the prompt (Kong et al., "Interpretable
Diffusion via Information Decomposition", 2023; the two-token decomposition as in DiffusionPID).

The pointwise information a token ``y`` adds about the image ``x`` given the context ``c`` (the prompt without it) is
estimated per pixel as ``i(x; y | c) = 1/2 * integral over log-SNR of E_eps ||eps_hat(x_a | c) - eps_hat(x_a | c, y)||^2``:
both predictions are made on the same noised latents (a shared noise bank), their squared difference is summed over
latent channels and integrated over a grid of noise levels evenly spaced in log-SNR (trapezoid rule).

Where the maps live. The estimator is exact in the latent space the UNet denoises, but a latent cell covers
``vae_scale_factor`` pixels a side, so upsampled latent maps smear a word's information across object edges (on Tiny
World's 16x16 grid a third of a shape word's mass lands inside its object). In ``space="pixel"`` (the default) both
predictions are turned into clean-image predictions, decoded by the VAE, and their squared difference per pixel (summed
over RGB, weighted by the SNR as the eps-form implies) gives the map's *distribution* at each noise level; each level
is then rescaled to the latent estimate's total at that level, so the totals stay the estimator's values in nats and
only where they sit changes. ``space="latent"`` gives the paper's maps, bilinearly upsampled.

For two tokens the minimum-information partial information decomposition splits what they say jointly:
redundancy ``R = min(i1, i2)``, unique ``U1 = i1 - R``, ``U2 = i2 - R`` and synergy ``S = i12 - i1 - i2 + R``, per
pixel, where ``i1``, ``i2`` and ``i12`` are the information of ``y1``, ``y2`` and both, all given the prompt without
either.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from studio.engine import Cancelled, CancelToken, InvalidRequest
from studio.engine.conditioning import encode_texts

from .denoising import alphas_cumprod, log_snr, noised, predict_epsilon

DEFAULT_LEVELS = 12
DEFAULT_SAMPLES = 2
MAX_EVALUATIONS = 4096
SPACES = ("pixel", "latent")
DECODE_CHUNK = 16
DECODE_PIXELS = 2**20  # pixels per prompt decoded at once in pixel space: all of Tiny World's levels, 2 at 512 px


def without_words(prompt: str, words: list[str]) -> str:
    """``prompt`` with every whole-word occurrence of ``words`` removed (spaces tidied)."""
    out = prompt
    for word in words:
        pattern = re.compile(r"(?<!\w)" + re.escape(word.strip()) + r"(?!\w)", re.IGNORECASE)
        if not pattern.search(out):
            raise InvalidRequest(f"{word!r} is not a word of the prompt {prompt!r}; pick one of its words", "token")
        out = pattern.sub("", out)
    return re.sub(r"\s+", " ", out).strip()


def log_snr_timesteps(table: torch.Tensor, levels: int, lo: float = 0.02, hi: float = 0.98) -> tuple[list[int], list[float]]:
    """``levels`` timesteps evenly spaced in log-SNR between the schedule's ``lo`` and ``hi`` fractions, and their
    log-SNRs (decreasing: timesteps increase)."""
    n = len(table)
    t_lo, t_hi = int(lo * (n - 1)), int(hi * (n - 1))
    lam = torch.tensor([log_snr(float(table[t])) for t in range(n)], dtype=torch.float64)
    targets = torch.linspace(float(lam[t_lo]), float(lam[t_hi]), levels, dtype=torch.float64)
    timesteps = [int((lam - v).abs().argmin()) for v in targets]
    return timesteps, [float(lam[t]) for t in timesteps]


@dataclass(frozen=True)
class InformationMaps:
    """Per-pixel information maps ``(H, W)`` at image resolution, in nats (totals as the latent estimator gives them;
    spread over pixels by the decoded predictions, or bilinearly upsampled from the latent grid, per ``space``).
    ``maps`` holds ``"i1"`` (and for two tokens ``"i2"``, ``"i12"``, ``"redundancy"``,
    ``"unique1"``, ``"unique2"``, ``"synergy"``)."""

    prompt: str
    tokens: tuple[str, ...]
    contexts: dict[str, str]  # which prompt each term compares: "context", "with1", "with2", "full"
    maps: dict[str, torch.Tensor]
    timesteps: tuple[int, ...]
    evaluations: int
    log_snrs: tuple[float, ...] = ()  # of ``timesteps``
    # per noise level, before integration: ``(levels, H, W)`` half squared differences for "i1" (and "i2", "i12")
    level_maps: dict[str, torch.Tensor] = field(default_factory=dict)
    space: str = "latent"

    def level_totals(self, name: str = "i1") -> list[float]:
        """The integrand's total over the image at each noise level (where along log-SNR the information sits)."""
        return [float(m.sum()) for m in self.level_maps[name]]

    def to_json(self) -> dict:
        return {"prompt": self.prompt, "tokens": list(self.tokens), "contexts": dict(self.contexts),
                "space": self.space, "timesteps": list(self.timesteps), "log_snrs": list(self.log_snrs),
                "unet_evaluations": self.evaluations,
                "totals": {k: float(v.sum()) for k, v in self.maps.items()},
                "level_totals": {k: self.level_totals(k) for k in self.level_maps}}


def information_maps(model, x0: torch.Tensor, prompt: str, tokens: list[str], *, levels: int = DEFAULT_LEVELS,
                     samples: int = DEFAULT_SAMPLES, seed: int = 0, size: tuple[int, int] | None = None,
                     space: str = "pixel", decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
                     cancel: CancelToken | None = None) -> InformationMaps:
    """Information maps of one or two ``tokens`` (words of ``prompt``) for clean latents ``x0`` ``(C, h, w)``.
    ``space="pixel"`` needs ``decode``: UNet-space latents ``(B, C, h, w)`` -> images ``(B, 3, H, W)``."""
    # 1. validate
    tokens = [t.strip() for t in tokens if t and t.strip()]
    if not 1 <= len(tokens) <= 2:
        raise InvalidRequest(f"pick one or two words of the prompt, got {len(tokens)}", "token")
    if len(tokens) == 2 and tokens[0].lower() == tokens[1].lower():
        raise InvalidRequest("pick two different words for the decomposition", "token")
    if not (1 <= levels <= 200 and 1 <= samples <= 64):
        raise InvalidRequest(f"levels must be 1..200 and samples 1..64, got {levels} and {samples}", "levels")
    if space not in SPACES:
        raise InvalidRequest(f"unknown map space {space!r}; allowed: {', '.join(SPACES)}", "space")
    if space == "pixel" and decode is None:
        raise InvalidRequest("pixel-space maps need the model's decoder; use space='latent' without one", "space")
    contexts = {"context": without_words(prompt, tokens), "full": prompt}
    if len(tokens) == 2:
        contexts["with1"] = without_words(prompt, [tokens[1]])
        contexts["with2"] = without_words(prompt, [tokens[0]])
    names = list(contexts)
    if len(names) * levels * samples > MAX_EVALUATIONS:
        raise InvalidRequest(f"{len(names)} prompts x {levels} levels x {samples} samples is more than "
                             f"{MAX_EVALUATIONS} UNet evaluations; lower levels or samples", "levels")

    # 2. a shared noise bank over the log-SNR grid; every prompt sees the same noised latents
    table = alphas_cumprod(model)
    timesteps, lams = log_snr_timesteps(table, levels)
    gen = torch.Generator("cpu").manual_seed(int(seed))
    noises = torch.randn((levels * samples, *x0.shape), generator=gen)
    row_t = [t for t in timesteps for _ in range(samples)]
    embeds = encode_texts(model, [contexts[n] for n in names]).cpu()
    eps = {}
    for k, name in enumerate(names):
        eps[name] = predict_epsilon(model, x0, row_t, noises, embeds[k:k + 1].expand(len(row_t), -1, -1), table,
                                    cancel=cancel)

    # 3. in pixel space: each term's SNR-weighted squared difference of the two decoded clean-image predictions
    #    (same noised latents, so the differences are the word's)
    size = size or tuple(int(s) * model.vae_scale_factor for s in x0.shape[1:])
    a_bar = table[torch.tensor(row_t)].view(-1, 1, 1, 1)
    terms = {"i1": ("context", "with1" if len(tokens) == 2 else "full")}
    if len(tokens) == 2:
        terms.update(i2=("context", "with2"), i12=("context", "full"))
    pixel_levels = {}
    if space == "pixel":
        pixel_levels = _pixel_levels(decode, noised(x0, a_bar, noises), a_bar, eps, terms, levels, samples, size,
                                     cancel)

    # 4. per noise level, half the squared difference per pixel; integrate over log-SNR (trapezoid weights)
    per_level: dict[str, torch.Tensor] = {}

    def info(name: str) -> torch.Tensor:
        a, b = terms[name]
        latent = (eps[a].double() - eps[b].double()).pow(2).sum(1).view(levels, samples, *x0.shape[1:]).mean(1)
        if space == "latent":
            level = torch.stack([upsample(m, size) for m in latent])
        else:
            # keep each level's total in nats (the latent estimate); the decoded difference says where it sits
            pixel = pixel_levels[name]
            pixel_totals = pixel.sum((1, 2))
            scale = torch.where(pixel_totals > 0, latent.sum((1, 2)) / pixel_totals.clamp_min(1e-300), 0.0)
            level = pixel * scale.view(-1, 1, 1)
        per_level[name] = 0.5 * level
        return 0.5 * _trapezoid(level, lams)

    maps = {"i1": info("i1")}
    if len(tokens) == 2:
        i1, i2, i12 = maps["i1"], info("i2"), info("i12")
        redundancy = torch.minimum(i1, i2)
        maps.update(i2=i2, i12=i12, redundancy=redundancy, unique1=i1 - redundancy, unique2=i2 - redundancy,
                    synergy=i12 - i1 - i2 + redundancy)
    return InformationMaps(prompt=prompt, tokens=tuple(tokens), contexts=contexts, maps=maps,
                           timesteps=tuple(timesteps), evaluations=len(names) * len(row_t), log_snrs=tuple(lams),
                           level_maps=per_level, space=space)


def _pixel_levels(decode, x_t: torch.Tensor, a_bar: torch.Tensor, eps: dict[str, torch.Tensor],
                  terms: dict[str, tuple[str, str]], levels: int, samples: int, size: tuple[int, int],
                  cancel: CancelToken | None) -> dict[str, torch.Tensor]:
    """Per term ``name -> (a, b)``: ``(levels, H, W)``, the SNR-weighted squared difference (summed over RGB) of the
    decoded clean-image predictions under prompts ``a`` and ``b``, averaged over the level's samples
    (x0-differences times the SNR are eps-differences). Rows of ``x_t`` / ``eps`` run level by level, ``samples``
    each. Levels are decoded a few at a time (``DECODE_PIXELS`` per prompt), so memory holds those levels' images
    (prompts x samples x levels at once), not every level's: a two-word decomposition drawn at 512 px peaks at
    well under half of what decoding everything first took (``bench/information_memory.py``)."""
    names = list(dict.fromkeys(n for pair in terms.values() for n in pair))
    out: dict[str, list[torch.Tensor]] = {name: [] for name in terms}
    per_group = max(1, DECODE_PIXELS // (samples * size[0] * size[1]))
    for first in range(0, levels, per_group):
        count = min(per_group, levels - first)
        rows = slice(first * samples, (first + count) * samples)
        ab = a_bar[rows]
        images = {}
        for name in names:
            x0_hat = ((x_t[rows] - (1 - ab).sqrt() * eps[name][rows].double()) / ab.sqrt()).float()
            images[name] = _decode_chunked(decode, x0_hat, size, cancel)
        snr = (ab / (1 - ab)).view(-1, 1, 1)
        for name, (a, b) in terms.items():
            squared = (images[a].double() - images[b].double()).pow(2).sum(1)
            out[name].append((snr * squared).view(count, samples, *size).mean(1))
    return {name: torch.cat(maps) for name, maps in out.items()}


def _decode_chunked(decode, latents: torch.Tensor, size: tuple[int, int], cancel: CancelToken | None) -> torch.Tensor:
    """``latents`` decoded in chunks of at most ``DECODE_CHUNK``, as float32 images ``(B, 3, H, W)`` at ``size``."""
    out = []
    for lo in range(0, len(latents), DECODE_CHUNK):
        if cancel is not None and cancel.cancelled:
            raise Cancelled("inspection cancelled")
        images = decode(latents[lo:lo + DECODE_CHUNK]).float().cpu()
        if tuple(images.shape[-2:]) != tuple(size):
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        out.append(images)
    return torch.cat(out)


def _trapezoid(values: torch.Tensor, xs: list[float]) -> torch.Tensor:
    """Integral of ``values[k]`` (per pixel) over ``xs[k]``, in absolute measure (the grid may run either way)."""
    if len(xs) == 1:
        return values[0]
    total = torch.zeros_like(values[0])
    for k in range(len(xs) - 1):
        total += 0.5 * (values[k] + values[k + 1]) * abs(xs[k + 1] - xs[k])
    return total


def upsample(latent_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A latent-grid map ``(h, w)`` at image resolution, rescaled so its total mass is unchanged."""
    h, w = latent_map.shape
    up = F.interpolate(latent_map[None, None].double(), size=size, mode="bilinear", align_corners=False)[0, 0]
    return up * (h * w) / (size[0] * size[1])
