"""Blending two concepts, all ways side by side in one batched run on the same noise.

The baselines of the concept-blending literature (e.g. the Black-Scholes blending paper's comparisons):
interpolating the two prompts' encoder outputs, alternating the prompts on even/odd steps, and switching from
one to the other at a chosen step. Zero extra UNet evaluations.
"""

from __future__ import annotations

import torch

BLEND_MODES = ("a", "interpolate", "alternate", "switch", "b")
BLEND_LABELS = {"a": "prompt A", "interpolate": "interpolated embeddings", "alternate": "alternating steps",
                "switch": "switch A -> B", "b": "prompt B"}


class BlendEdit:
    """Embedding edit giving image ``i`` of the batch the conditioning of ``BLEND_MODES[i]`` at each step.

    ``a``/``b`` are the two prompts' ``(1, tokens, dim)`` encodings; ``mix`` in [0, 1] is the interpolation
    weight of B; from ``switch_step`` on, the switch image reads B. Only the ``cond`` role changes."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor, mix: float, switch_step: int):
        self.a, self.b = a, b
        self.mix = float(mix)
        self.switch_step = int(switch_step)

    def rows(self, step: int) -> torch.Tensor:
        a, b = self.a, self.b
        by_mode = {"a": a, "interpolate": (1 - self.mix) * a + self.mix * b, "alternate": a if step % 2 == 0 else b,
                   "switch": a if step < self.switch_step else b, "b": b}
        return torch.cat([by_mode[m] for m in BLEND_MODES])

    def apply(self, step: int, num_steps: int, embeds: torch.Tensor, role: str) -> torch.Tensor:
        if role != "cond":
            return embeds
        return self.rows(step).to(device=embeds.device, dtype=embeds.dtype)
