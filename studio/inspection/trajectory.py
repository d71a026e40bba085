"""Per-step record of a run: x_t, the x0 prediction, every role's prediction and the guidance between them.

:class:`TrajectoryRecorder` is a step callback (plug in with ``RunHooks(step_callbacks=[recorder])``). It keeps, on
CPU, what the engine's :class:`~studio.engine.StepEvent` carries, with the UNet outputs converted to epsilon whatever
the model predicts (so "how far apart are cond and uncond" means the same for epsilon and v models).

:func:`guidance_stats` reduces it to the curves researchers read: the guidance norm ``||eps_c - eps_u||`` (RMS per
element) and ``cos(eps_c, eps_u)`` per step, per prompt part, and the step where adaptive guidance (Castillo et al.,
"Adaptive Guidance: Training-free Acceleration of Conditional Diffusion Models", 2023) would switch CFG off: the first
step at which the cosine reaches its threshold (from then on it would use ``eps_c`` alone).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from studio.engine import StepEvent

ADAPTIVE_GUIDANCE_THRESHOLD = 0.99  # Castillo et al.'s order of magnitude; tune per model (a UI control)


def to_epsilon(output: torch.Tensor, model_input: torch.Tensor, a_bar: float, prediction_type: str) -> torch.Tensor:
    """A UNet output (epsilon, v or sample prediction) as the epsilon it implies at ``model_input`` = x_t."""
    sqrt_a, sqrt_1ma = math.sqrt(a_bar), math.sqrt(max(1.0 - a_bar, 0.0))
    if prediction_type == "epsilon":
        return output
    if prediction_type == "v_prediction":
        return sqrt_1ma * model_input + sqrt_a * output
    if prediction_type == "sample":
        return (model_input - sqrt_a * output) / max(sqrt_1ma, 1e-8)
    raise ValueError(f"unsupported prediction_type {prediction_type!r}")


def x0_from_epsilon(eps: torch.Tensor, model_input: torch.Tensor, a_bar: float) -> torch.Tensor:
    """The clean latents an epsilon prediction implies at x_t."""
    return (model_input - math.sqrt(max(1.0 - a_bar, 0.0)) * eps) / math.sqrt(a_bar)


@dataclass
class StepRecord:
    """One step of one image (batch index fixed by the recorder), all tensors ``(C, h, w)`` on CPU."""

    step: int
    timestep: int
    alpha_bar: float
    x_t: torch.Tensor  # variance-preserving x_t, as the UNet saw it
    x0: torch.Tensor  # the guided x0 prediction
    eps: dict[str, torch.Tensor] = field(default_factory=dict)  # role -> epsilon ("uncond", "cond", "cond:1", ...)
    guided: torch.Tensor | None = None  # the guided epsilon

    def x0_of(self, role: str) -> torch.Tensor:
        """The x0 that one role's prediction alone implies (``"guided"`` for the combined one)."""
        eps = self.guided if role == "guided" else self.eps[role]
        return x0_from_epsilon(eps, self.x_t, self.alpha_bar)


class TrajectoryRecorder:
    """Step callback keeping every step's :class:`StepRecord` for image ``index`` of the batch."""

    def __init__(self, prediction_type: str, index: int = 0):
        self.prediction_type = prediction_type
        self.index = index
        self.records: list[StepRecord] = []

    def __call__(self, event: StepEvent) -> None:
        i = self.index
        x_t = (event.model_input if event.model_input is not None else event.latents)[i].detach().float().cpu()
        a_bar = float(event.alpha_bar if event.alpha_bar is not None else 1.0)

        def eps_of(output: torch.Tensor) -> torch.Tensor:
            return to_epsilon(output[i].detach().float().cpu(), x_t, a_bar, self.prediction_type)

        del self.records[event.step:]  # a resumed run replaces the steps it re-runs
        self.records.append(StepRecord(
            step=event.step, timestep=int(event.timestep), alpha_bar=a_bar, x_t=x_t,
            x0=event.x0_pred[i].detach().float().cpu(),
            eps={role: eps_of(out) for role, out in event.eps.items()},
            guided=eps_of(event.guided) if event.guided is not None else None))

    @property
    def roles(self) -> list[str]:
        return list(self.records[0].eps) if self.records else []


@dataclass(frozen=True)
class GuidanceStats:
    """Per-step guidance curves. ``norm[role]`` and ``cosine[role]`` compare each conditional role with the
    unconditional prediction; ``switch_step[role]`` is the first step with ``cosine >= threshold`` (``None``
    when never reached, or when the run had no unconditional pass)."""

    steps: tuple[int, ...]
    timesteps: tuple[int, ...]
    norm: dict[str, tuple[float, ...]]
    cosine: dict[str, tuple[float, ...]]
    threshold: float
    switch_step: dict[str, int | None]

    def to_json(self) -> dict:
        return {"steps": list(self.steps), "timesteps": list(self.timesteps), "threshold": self.threshold,
                "norm": {k: list(v) for k, v in self.norm.items()},
                "cosine": {k: list(v) for k, v in self.cosine.items()}, "switch_step": dict(self.switch_step)}


def guidance_stats(records: list[StepRecord], threshold: float = ADAPTIVE_GUIDANCE_THRESHOLD) -> GuidanceStats:
    """Guidance norm and cosine per step for every conditional role (see :class:`GuidanceStats`)."""
    roles = [r for r in (records[0].eps if records else {}) if r != "uncond"]
    norm: dict[str, list[float]] = {r: [] for r in roles}
    cosine: dict[str, list[float]] = {r: [] for r in roles}
    has_uncond = bool(records) and "uncond" in records[0].eps
    for rec in records:
        for role in roles:
            if not has_uncond:
                continue
            c, u = rec.eps[role].flatten().double(), rec.eps["uncond"].flatten().double()
            norm[role].append(float((c - u).pow(2).mean().sqrt()))
            cosine[role].append(float(torch.nn.functional.cosine_similarity(c, u, dim=0)))
    switch = {role: next((rec.step for rec, cos in zip(records, cosine[role]) if cos >= threshold), None)
              for role in roles}
    return GuidanceStats(steps=tuple(r.step for r in records), timesteps=tuple(r.timestep for r in records),
                         norm={k: tuple(v) for k, v in norm.items()}, cosine={k: tuple(v) for k, v in cosine.items()},
                         threshold=float(threshold), switch_step=switch)


def difference_map(record: StepRecord, role: str = "cond") -> torch.Tensor:
    """``|eps_role - eps_uncond|`` averaged over latent channels: ``(h, w)``, where guidance pushes hardest."""
    if "uncond" not in record.eps:
        raise ValueError("this run skipped the unconditional pass (CFG 1): there is no guidance to map")
    return (record.eps[role] - record.eps["uncond"]).abs().mean(0)
