"""Sampler names -> diffusers schedulers, plus the small maths the loop needs.

A scheduler is stateful (step index, multistep history), so every run builds a
fresh one from the model's scheduler config with :func:`make_scheduler`.
"""

from __future__ import annotations

import copy
import inspect

import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
    UniPCMultistepScheduler,
)

_SPECS = {
    "DPM++ 2M": (DPMSolverMultistepScheduler,
                 {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": False}),
    "DPM++ 2M Karras": (DPMSolverMultistepScheduler,
                        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}),
    # stochastic: fresh noise every step (like Euler a), so late prompts still take hold
    "DPM++ 2M SDE": (DPMSolverMultistepScheduler,
                     {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "use_karras_sigmas": False}),
    "Euler": (EulerDiscreteScheduler, {"use_karras_sigmas": False}),
    "Euler a": (EulerAncestralDiscreteScheduler, {}),
    "DDIM": (DDIMScheduler, {}),
    "UniPC": (UniPCMultistepScheduler, {}),
    "LCM": (LCMScheduler, {}),
}
SAMPLERS: tuple[str, ...] = tuple(_SPECS)
DDIM_ETA = 0.0


def make_scheduler(scheduler_config: dict, sampler: str):
    """A fresh scheduler for ``sampler`` built from the model's scheduler config."""
    cls, overrides = _SPECS[sampler]
    return cls.from_config({**scheduler_config, **overrides})


def max_steps(scheduler_config: dict, sampler: str) -> int:
    """Largest step count the sampler supports for this model config."""
    limit = int(scheduler_config.get("num_train_timesteps", 1000))
    if sampler == "LCM":
        limit = min(limit, int(scheduler_config.get("original_inference_steps", 50)))
    return limit


def step_kwargs(scheduler, generators: list[torch.Generator]) -> dict:
    """``eta``/``generator`` for schedulers whose ``step`` accepts them (as the pipeline does)."""
    params = inspect.signature(scheduler.step).parameters
    kwargs = {}
    if "eta" in params:
        kwargs["eta"] = DDIM_ETA
    if "generator" in params:
        kwargs["generator"] = generators
    return kwargs


def alpha_bar(scheduler, step: int, timestep: torch.Tensor) -> float:
    """alpha_bar (signal variance) of the UNet input at ``step``.

    Sigma-parameterised schedulers (Euler, DPM-Solver, UniPC) use their own sigma
    (alpha_bar = 1 / (1 + sigma^2)), which is exact even for Karras schedules;
    the others read ``alphas_cumprod`` at the timestep (interpolated if fractional)."""
    sigmas = getattr(scheduler, "sigmas", None)
    if isinstance(sigmas, torch.Tensor) and len(sigmas) == len(scheduler.timesteps) + 1:
        sigma = float(sigmas[step])
        return 1.0 / (1.0 + sigma * sigma)
    table = scheduler.alphas_cumprod
    t = float(timestep)
    lo = int(t)
    hi = min(lo + 1, len(table) - 1)
    frac = t - lo
    return float(table[lo]) * (1 - frac) + float(table[hi]) * frac


def predict_x0(model_output: torch.Tensor, model_input: torch.Tensor, a_bar: float, prediction_type: str):
    """Clean-latent prediction from the (scaled) UNet input x_t and the UNet output."""
    a = torch.tensor(a_bar, dtype=torch.float64)
    sqrt_a, sqrt_1ma = float(a.sqrt()), float((1 - a).sqrt())
    if prediction_type == "epsilon":
        return (model_input - sqrt_1ma * model_output) / sqrt_a
    if prediction_type == "v_prediction":
        return sqrt_a * model_input - sqrt_1ma * model_output
    if prediction_type == "sample":
        return model_output
    raise ValueError(f"unsupported prediction_type {prediction_type!r}")


# ----------------------------------------------------------------------------- snapshots


class _Stored:
    """A tensor parked on CPU, remembering the device it came from."""

    __slots__ = ("tensor", "device")

    def __init__(self, tensor: torch.Tensor):
        self.device = tensor.device
        self.tensor = tensor.detach().to("cpu", copy=True)


def _park(value):
    if isinstance(value, torch.Tensor):
        return _Stored(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_park(v) for v in value)
    return copy.deepcopy(value)


def _unpark(value):
    if isinstance(value, _Stored):
        return value.tensor.to(value.device, copy=True)
    if isinstance(value, (list, tuple)):
        return type(value)(_unpark(v) for v in value)
    return copy.deepcopy(value)


def snapshot_scheduler(scheduler) -> dict:
    """Everything a scheduler mutates while stepping (history, indices), tensors on CPU."""
    return {k: _park(v) for k, v in vars(scheduler).items() if k != "_internal_dict"}


def restore_scheduler(scheduler, snapshot: dict) -> None:
    """Put a :func:`snapshot_scheduler` state back (tensors return to their devices)."""
    for key, value in snapshot.items():
        setattr(scheduler, key, _unpark(value))
