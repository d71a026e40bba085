"""Denoising-error building blocks shared by the diffusion classifier and the token information maps: the training
noise schedule, a seeded bank of (timestep, noise) pairs, and batched epsilon predictions of clean latents noised
to chosen timesteps under chosen prompt embeddings."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from studio.engine import CancelToken, Cancelled, make_scheduler

from .trajectory import to_epsilon

DEFAULT_CHUNK = 32  # rows per UNet call


def alphas_cumprod(model) -> torch.Tensor:
    """The training schedule's alpha_bar per timestep (float64, CPU)."""
    return make_scheduler(model.scheduler_config, "DDIM").alphas_cumprod.double().cpu()


def van_der_corput(k: int) -> float:
    """k-th point of the base-2 van der Corput sequence: any prefix of it is spread evenly over [0, 1)."""
    out, denom = 0.0, 1.0
    while k:
        denom *= 2
        k, bit = divmod(k, 2)
        out += bit / denom
    return out


def strided_timesteps(n: int, num_train_timesteps: int, lo: float = 0.02, hi: float = 0.98) -> list[int]:
    """``n`` timesteps evenly strided over ``[lo, hi]`` of the schedule, ordered so that every prefix is itself
    spread over the whole range (stage 1 of a pruned classifier sees all noise levels, not the first few)."""
    span = hi - lo
    return [int(round((lo + span * ((van_der_corput(k) + 0.5 / n) % 1.0)) * (num_train_timesteps - 1)))
            for k in range(n)]


def noise_bank(n: int, shape: tuple[int, ...], seed: int, num_train_timesteps: int) -> tuple[list[int], torch.Tensor]:
    """``n`` strided timesteps and ``n`` Gaussian noises of ``shape`` (seeded, drawn on CPU)."""
    gen = torch.Generator("cpu").manual_seed(int(seed))
    return strided_timesteps(n, num_train_timesteps), torch.randn((n, *shape), generator=gen)


def predict_epsilon(model, x0: torch.Tensor, timesteps: list[int], noises: torch.Tensor, embeds: torch.Tensor,
                    table: torch.Tensor, *, chunk: int = DEFAULT_CHUNK, cancel: CancelToken | None = None,
                    on_call: Callable[[int], None] | None = None) -> torch.Tensor:
    """Epsilon predicted for each row ``i``: x0 ``(C, h, w)`` noised with ``noises[i]`` at ``timesteps[i]``, under
    ``embeds[i]`` ``(tokens, dim)``. Returns ``(rows, C, h, w)`` float32 on CPU. No CFG (as the classifier and the
    information estimator define it). ``on_call(rows)`` is told each UNet call's batch size."""
    rows = len(timesteps)
    out = []
    unet, device, dtype = model.unet, model.device, model.dtype
    with model.run_lock, torch.no_grad():
        for lo in range(0, rows, chunk):
            if cancel is not None and cancel.cancelled:
                raise Cancelled("inspection cancelled")
            hi = min(rows, lo + chunk)
            ts = torch.tensor(timesteps[lo:hi], dtype=torch.long)
            a = table[ts].view(-1, 1, 1, 1)
            x_t = noised(x0, a, noises[lo:hi]).float()
            output = unet(x_t.to(device, dtype), ts.to(device), encoder_hidden_states=embeds[lo:hi].to(device, dtype),
                          return_dict=False)[0].float().cpu()
            for j in range(hi - lo):
                out.append(to_epsilon(output[j], x_t[j], float(a[j]), model.prediction_type))
            if on_call is not None:
                on_call(hi - lo)
    return torch.stack(out) if out else torch.empty(0)


def noised(x0: torch.Tensor, a_bar: torch.Tensor, noises: torch.Tensor) -> torch.Tensor:
    """Clean latents ``(C, h, w)`` noised with ``noises`` ``(rows, C, h, w)`` at ``a_bar`` ``(rows, 1, 1, 1)``, in
    float64."""
    return a_bar.sqrt() * x0.double().unsqueeze(0) + (1 - a_bar).sqrt() * noises.double()


def log_snr(a_bar: float) -> float:
    return math.log(a_bar / (1.0 - a_bar))
