"""Diffusion classifier (Li et al., "Your Diffusion Model is Secretly a Zero-Shot Classifier", 2023).

An image is encoded to clean latents x0, noised with a bank of (timestep, noise) pairs shared by every candidate
prompt (the shared noise cancels most of the variance between candidates), and each candidate's error
``mean |eps - eps_theta(x_t, t, prompt)|^2`` is averaged over the pairs; the prediction is the candidate with the
smallest error. Timesteps are evenly strided over the schedule. Candidates are pruned in stages: each stage adds
samples for the survivors of the previous one, then keeps the best ``keep`` (errors already measured are reused).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from studio.engine import CancelToken, InvalidRequest
from studio.engine.conditioning import encode_texts

from .denoising import alphas_cumprod, noise_bank, predict_epsilon

MAX_CANDIDATES = 32
MAX_SAMPLES = 1000
LOSSES = ("l2", "l1")


@dataclass(frozen=True)
class ClassifierStage:
    """Bring every surviving candidate up to ``samples`` (timestep, noise) pairs, then keep the best ``keep``."""

    samples: int
    keep: int


DEFAULT_STAGES = (ClassifierStage(12, 2), ClassifierStage(36, 1))


@dataclass(frozen=True)
class Classification:
    """``errors[k][i]`` is candidate k's error on pair i (``nan`` where it was pruned before pair i);
    ``ranking`` lists candidate indices best first (survivors of the last stage first, then by mean error)."""

    candidates: tuple[str, ...]
    timesteps: tuple[int, ...]
    errors: tuple[tuple[float, ...], ...]
    ranking: tuple[int, ...]
    mean_error: tuple[float, ...]
    evaluations: int
    stages: tuple[ClassifierStage, ...]

    @property
    def best(self) -> str:
        return self.candidates[self.ranking[0]]

    def to_json(self) -> dict:
        def clean(x: float) -> float | None:
            return None if math.isnan(x) else x

        return {"candidates": list(self.candidates), "ranking": [self.candidates[k] for k in self.ranking],
                "best": self.best, "mean_error": [clean(e) for e in self.mean_error],
                "timesteps": list(self.timesteps), "errors": [[clean(e) for e in row] for row in self.errors],
                "unet_evaluations": self.evaluations,
                "stages": [{"samples": s.samples, "keep": s.keep} for s in self.stages]}


def parse_stages(text: str) -> tuple[ClassifierStage, ...]:
    """``"12:2,36:1"`` -> stages (samples:keep each)."""
    stages = []
    for piece in str(text or "").split(","):
        m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", piece)
        if not m:
            raise InvalidRequest(f"stages must look like 12:2,36:1 (samples:keep per stage), got {text!r}", "stages")
        stages.append(ClassifierStage(int(m.group(1)), int(m.group(2))))
    return tuple(stages)


def check_stages(stages, n_candidates: int) -> tuple[ClassifierStage, ...]:
    stages = tuple(stages)
    if not stages:
        raise InvalidRequest("the classifier needs at least one stage (samples, keep)", "stages")
    previous = 0
    for i, st in enumerate(stages, 1):
        if not (isinstance(st.samples, int) and isinstance(st.keep, int)):
            raise InvalidRequest(f"stage {i}: samples and keep must be integers", "stages")
        if not previous < st.samples <= MAX_SAMPLES:
            raise InvalidRequest(f"stage {i}: samples must grow from stage to stage and stay <= {MAX_SAMPLES} "
                                 f"(got {st.samples} after {previous})", "stages")
        if st.keep < 1:
            raise InvalidRequest(f"stage {i}: keep must be >= 1, got {st.keep}", "stages")
        previous = st.samples
    return stages


def classify_latents(model, x0: torch.Tensor, candidates: list[str], *, stages=DEFAULT_STAGES, seed: int = 0,
                     loss: str = "l2", cancel: CancelToken | None = None) -> Classification:
    """Classify clean latents ``x0`` ``(C, h, w)`` among ``candidates`` (prompts in the prompt language)."""
    # 1. validate
    candidates = list(candidates)
    if not 2 <= len(candidates) <= MAX_CANDIDATES:
        raise InvalidRequest(f"give 2 to {MAX_CANDIDATES} candidate prompts, got {len(candidates)}", "candidates")
    if len(set(candidates)) != len(candidates):
        raise InvalidRequest("candidate prompts must differ from each other", "candidates")
    if loss not in LOSSES:
        raise InvalidRequest(f"loss must be one of {LOSSES}, got {loss!r}", "loss")
    stages = check_stages(stages, len(candidates))

    # 2. encode prompts, draw the shared noise bank
    embeds = encode_texts(model, candidates).cpu()
    table = alphas_cumprod(model)
    timesteps, noises = noise_bank(stages[-1].samples, tuple(x0.shape), seed, len(table))
    errors = torch.full((len(candidates), len(timesteps)), float("nan"), dtype=torch.float64)
    evaluations = 0

    # 3. stages: add samples for the survivors, then prune
    alive = list(range(len(candidates)))
    done = 0
    for st in stages:
        rows = [(k, i) for k in alive for i in range(done, st.samples)]
        if rows:
            eps_hat = predict_epsilon(model, x0, [timesteps[i] for _, i in rows], noises[[i for _, i in rows]],
                                      embeds[[k for k, _ in rows]], table, cancel=cancel)
            diff = eps_hat.double() - noises[[i for _, i in rows]].double()
            per_row = diff.pow(2).mean((1, 2, 3)) if loss == "l2" else diff.abs().mean((1, 2, 3))
            for (k, i), e in zip(rows, per_row.tolist()):
                errors[k, i] = e
            evaluations += len(rows)
        done = st.samples
        means = {k: float(errors[k, :done].mean()) for k in alive}
        alive = sorted(alive, key=means.get)[:max(1, min(st.keep, len(alive)))]

    # 4. rank: survivors first, then the pruned by their mean over the pairs they saw
    mean_error = tuple(float(torch.nanmean(errors[k])) for k in range(len(candidates)))
    rest = sorted((k for k in range(len(candidates)) if k not in alive), key=lambda k: mean_error[k])
    return Classification(candidates=tuple(candidates), timesteps=tuple(timesteps),
                          errors=tuple(tuple(row) for row in errors.tolist()), ranking=tuple(alive + rest),
                          mean_error=mean_error, evaluations=evaluations, stages=stages)
