"""Cross-attention maps per token, recorded during a run (DAAM: Tang et al., "What the DAAM: Interpreting Stable
Diffusion Using Cross Attention", 2023).

:class:`CrossAttentionRecorder` installs a processor on every cross-attention layer (``attn2``) for one run only
(through :class:`~studio.engine.RunHooks`, so the engine restores the original, fused processors afterwards, even
after an exception). The processor computes the attention probabilities explicitly, keeps the conditional rows'
maps averaged over heads, per layer and step, and returns exactly what attention returns, so the picture does not
change. :meth:`CrossAttentionRecorder.aggregate` gives the DAAM heat map per token: each (layer, step) map upsampled
(bicubic) to a common size, clamped at zero, summed over steps and averaged over layers.

:meth:`CrossAttentionRecorder.word_map` gives one word's map (mean over its tokens), broken down by resolution, layer
or step on request; reading it while a run records (streaming) sees the steps recorded so far.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F

from studio.engine import StepEvent


class CrossAttentionRecorder:
    """Records ``(batch, h, w, tokens)`` head-averaged cross-attention maps of the conditional rows.

    ``cond_rows`` is the slice of the batched UNet input holding the prompt's conditioning: with classic CFG the
    engine stacks ``[uncond x batch, cond x batch]``, so ``slice(batch, 2 * batch)`` (``slice(0, batch)`` when the
    uncond pass is skipped at CFG 1). ``latent_hw`` is the run's latent size, which fixes each layer's map shape.
    Use :meth:`hooks_kwargs` to plug it into a run."""

    def __init__(self, cond_rows: slice, latent_hw: tuple[int, int]):
        self.cond_rows = cond_rows
        self.latent_hw = latent_hw
        self.step = 0
        self.maps: dict[tuple[int, str], torch.Tensor] = {}

    # ------------------------------------------------------------------ plugging in

    def processors(self, original: dict) -> dict:
        """Attention-processor factory: a recording processor for every ``attn2`` layer."""
        return {name: ProbabilityProcessor(name.removesuffix(".processor"), self._on_probs)
                for name in original if ".attn2." in name}

    def _on_probs(self, layer: str, probs: torch.Tensor, heads: int) -> torch.Tensor:
        self.record(layer, probs, heads)
        return probs

    def on_step(self, event: StepEvent) -> None:
        self.step = event.step + 1  # maps recorded from now on belong to the next step

    def hooks_kwargs(self) -> dict:
        """``RunHooks(**recorder.hooks_kwargs())``."""
        return {"attention_processors": self.processors, "step_callbacks": [self.on_step]}

    def record(self, layer: str, probs: torch.Tensor, heads: int) -> None:
        rows = probs.view(-1, heads, *probs.shape[1:])[self.cond_rows].float().mean(1)  # (batch, queries, tokens)
        h, w = self._layer_hw(rows.shape[1])
        self.maps[(self.step, layer)] = rows.reshape(rows.shape[0], h, w, rows.shape[2]).detach().cpu()

    def _layer_hw(self, queries: int) -> tuple[int, int]:
        height, width = self.latent_hw
        factor = round(math.sqrt(height * width / queries))
        return height // factor, width // factor

    # ------------------------------------------------------------------ reading

    @property
    def layers(self) -> list[str]:
        return list(dict.fromkeys(layer for _, layer in list(self.maps)))

    @property
    def steps(self) -> list[int]:
        return sorted({step for step, _ in list(self.maps)})

    def aggregate(self, size: tuple[int, int], *, steps: Iterable[int] | None = None,
                  layers: Iterable[str] | None = None) -> torch.Tensor:
        """DAAM heat maps ``(batch, tokens, height, width)``: upsampled (bicubic), clamped at 0, summed over the
        chosen steps, averaged over the chosen layers (default: all)."""
        steps = set(self.steps if steps is None else steps)
        layers = list(self.layers if layers is None else layers)
        if not any((step, layer) in self.maps for step in steps for layer in layers):
            raise ValueError(f"no attention maps recorded for steps {sorted(steps)} and layers {layers[:2]}...; "
                             f"recorded: steps {self.steps}, {len(self.layers)} layers")
        total = None
        for layer in layers:
            per_layer = None
            for step in steps:
                m = self.maps.get((step, layer))
                if m is None:
                    continue
                up = F.interpolate(m.permute(0, 3, 1, 2), size=size, mode="bicubic", align_corners=False).clamp(min=0)
                per_layer = up if per_layer is None else per_layer + up
            if per_layer is not None:
                total = per_layer if total is None else total + per_layer
        return total / len(layers)  # a layer with no map at these steps counts as zero


    def resolutions(self) -> dict[str, list[str]]:
        """``"16x16"`` -> the layers recording at that map size (coarse to fine)."""
        by_size: dict[tuple[int, int], list[str]] = {}
        for (_, layer), m in list(self.maps.items()):
            names = by_size.setdefault(tuple(m.shape[1:3]), [])
            if layer not in names:
                names.append(layer)
        return {f"{h}x{w}": names for (h, w), names in sorted(by_size.items())}

    def word_map(self, token_indices: Iterable[int], size: tuple[int, int], *, index: int = 0,
                 steps: Iterable[int] | None = None, layers: Iterable[str] | None = None) -> torch.Tensor:
        """One word's DAAM map ``(height, width)`` for image ``index``: the mean of its tokens' maps."""
        idx = list(token_indices)
        if not idx:
            raise ValueError("a word needs at least one token index")
        return self.aggregate(size, steps=steps, layers=layers)[index, idx].mean(0)


def maps_on_latent_grid(maps: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(n, queries)`` attention maps of one layer (queries in row-major order over that layer's grid, which has the
    latent's aspect) as ``(n, 1, height, width)``, bilinearly upsampled to the latent grid."""
    side = int(round(math.sqrt(maps.shape[-1] * width / height)))
    return F.interpolate(maps.float().reshape(maps.shape[0], 1, -1, side), size=(height, width), mode="bilinear",
                         align_corners=False)


class ProbabilityProcessor:
    """diffusers' plain ``AttnProcessor`` computation with the attention probabilities made explicit:
    ``on_probs(layer, probs, heads)`` sees them (``(batch * heads, queries, keys)``) and returns the probabilities to
    use (the same tensor to only observe; an edited one to control attention, e.g. prompt-to-prompt).
    ``on_query_key(layer, attn, query, key)``, when given, sees the per-head queries and keys first (to score the
    queries against other keys, e.g. a reference prompt's)."""

    def __init__(self, layer: str, on_probs, on_query_key=None):
        self.layer = layer
        self.on_probs = on_probs
        self.on_query_key = on_query_key

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args,
                 **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch = hidden_states.shape[0]
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        attention_mask = attn.prepare_attention_mask(attention_mask, context.shape[1], batch)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        key, value = attn.to_k(context), attn.to_v(context)
        query, key, value = (attn.head_to_batch_dim(t) for t in (query, key, value))
        if self.on_query_key is not None:
            self.on_query_key(self.layer, attn, query, key)
        probs = self.on_probs(self.layer, attn.get_attention_scores(query, key, attention_mask), attn.heads)
        hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor
