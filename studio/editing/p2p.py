"""Prompt-to-prompt (Hertz et al., "Prompt-to-Prompt Image Editing with Cross Attention Control", 2022).

The source and the edited prompt are rendered as one batch of two on the same noise. During the first
``cross_fraction`` of the steps the edited image's cross-attention maps are the source's (mapped token by token:
a swapped word takes the attention of the word it replaces, words added by a refinement keep their own), and during
the first ``self_fraction`` its self-attention maps are the source's, so the layout and the shapes stay while the
words change what is drawn. Reweighting scales the attention on one word of the edited prompt. Local blending keeps
the edited image equal to the source outside the region the blend words attend to (by default the words that
differ; the user may name others, e.g. the edited object's noun): their cross-attention maps in both images, summed
over layers and over the steps so far, dilated by one latent pixel, min-max normalised and thresholded, applied from
``blend_start`` of the steps on. A fixed mask (e.g. DiffEdit's noise contrast, :mod:`studio.editing.contrast`) may
replace the attention mask.

Only the conditional rows of the batched UNet call are edited (as in the paper's code), both roles' images get the
uncond pass unchanged.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from studio.engine import InvalidRequest, RunHooks
from studio.engine.conditioning import encode_texts
from studio.inspection.attention import ProbabilityProcessor, maps_on_latent_grid

from studio.attributes.directions import ReplaceCondEmbeddings


def token_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


def token_mapping(tokenizer, source: str, target: str) -> list[int | None]:
    """For every position of the edited prompt's encoding (start token first, padded to the encoder's length), the
    source position whose attention it takes, or ``None`` for a new word. Equal stretches map one to one; a replaced
    stretch (word swap) maps onto the stretch it replaces, spread evenly when the token counts differ; inserted
    tokens are new (refinement)."""
    limit = int(tokenizer.model_max_length)
    a, b = token_ids(tokenizer, source), token_ids(tokenizer, target)
    mapping: list[int | None] = [0] + [None] * len(b)
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if op in ("equal", "replace"):
            for k in range(j2 - j1):
                mapping[1 + j1 + k] = 1 + i1 + (k * (i2 - i1)) // (j2 - j1)
    # the end token and the padding: the source's end-of-prompt positions, in order
    tail = list(range(1 + len(a), limit))
    mapping += tail[:max(0, limit - len(mapping))]
    mapping += [limit - 1] * (limit - len(mapping))
    return mapping[:limit]


@dataclass
class PromptToPromptControl:
    """Edits the batch-of-two's attention for one run (see the module docstring). ``cond_rows`` is the slice of
    the batched UNet call holding the two conditional rows (source, edited); ``reweight`` maps token positions of
    the edited prompt to a factor; ``blend_tokens`` are (source positions, edited positions) whose maps make the
    local-blend mask (empty: no blending); ``fixed_mask`` ``(h, w)``, when given, is the local-blend mask instead."""

    cond_rows: slice
    mapping: list[int | None]
    num_steps: int
    cross_fraction: float = 0.8
    self_fraction: float = 0.4
    reweight: dict[int, float] = field(default_factory=dict)
    blend_tokens: tuple[tuple[int, ...], tuple[int, ...]] = ((), ())
    blend_start: float = 0.2
    blend_threshold: float = 0.3
    fixed_mask: torch.Tensor | None = None
    step: int = 0
    _maps: list = field(default_factory=list)
    _store: torch.Tensor | None = None

    # ---- attention
    def processors(self, original: dict) -> dict:
        return {name: ProbabilityProcessor(name.removesuffix(".processor"), self._on_probs)
                for name in original if ".attn1." in name or ".attn2." in name}

    def _on_probs(self, layer: str, probs: torch.Tensor, heads: int) -> torch.Tensor:
        is_cross = layer.rsplit(".", 1)[-1] == "attn2"
        view = probs.view(-1, heads, *probs.shape[1:])
        cond = view[self.cond_rows]  # (2, heads, queries, keys): source, edited
        if cond.shape[0] != 2:
            return probs
        source, edited = cond[0], cond[1]
        if is_cross:
            if self.blend_tokens[0]:
                self._maps.append((source[..., list(self.blend_tokens[0])].mean((0, -1)),
                                   edited[..., list(self.blend_tokens[1])].mean((0, -1))))
            new = edited
            if self.step < round(self.cross_fraction * self.num_steps):
                mapped = torch.tensor([m is not None for m in self.mapping], device=probs.device)
                index = torch.tensor([m if m is not None else j for j, m in enumerate(self.mapping)],
                                     device=probs.device)
                new = torch.where(mapped, source[..., index], edited)
            if self.reweight:
                new = new.clone()
                for position, factor in self.reweight.items():
                    new[..., position] = new[..., position] * factor
        else:
            if self.step >= round(self.self_fraction * self.num_steps):
                return probs
            new = source
        out = view.clone()
        out[self.cond_rows.start + 1] = new
        return out.view_as(probs)

    def on_step(self, event) -> None:
        self.step = event.step + 1

    # ---- local blend (a LatentEdit)
    def apply(self, step: int, num_steps: int, latents: torch.Tensor, scheduler) -> torch.Tensor:
        if latents.shape[0] != 2:
            return latents
        if self._maps:  # this step's maps join the run's store (P2P blends with maps summed over the steps so far)
            h, w = latents.shape[-2:]
            for src, dst in self._maps:
                up = maps_on_latent_grid(torch.stack([src, dst]), h, w).sum(0, keepdim=True)
                self._store = up if self._store is None else self._store + up
            self._maps = []
        if (self._store is None and self.fixed_mask is None) or step < math.floor(self.blend_start * num_steps):
            return latents
        mask = self.blend_mask(latents.dtype).to(latents.device)
        blended = latents.clone()
        blended[1] = latents[0] + mask * (latents[1] - latents[0])
        return blended

    def blend_mask(self, dtype=torch.float32) -> torch.Tensor:
        """``(1, h, w)`` 0/1 latent mask: the blend words' accumulated attention, dilated by one latent pixel,
        rescaled to 0..1 between its minimum and maximum (attention to a word never falls to zero away from its
        object, so scaling by the maximum alone keeps nearly everything) and thresholded; or the fixed mask."""
        if self.fixed_mask is not None:
            return self.fixed_mask.to(dtype)[None]
        m = F.max_pool2d(self._store, 3, stride=1, padding=1)
        lo, hi = m.amin(), m.amax()
        m = (m - lo) / (hi - lo).clamp(min=1e-8)
        return (m > self.blend_threshold).to(dtype)[0]


def prompt_to_prompt_hooks(model, source: str, target: str, num_steps: int, cfg: float, *, cross_fraction: float,
                           self_fraction: float, reweight: dict[str, float] | None = None,
                           blend_words: tuple[list[str], list[str]] | None = None,
                           blend_mask: torch.Tensor | None = None) -> tuple[RunHooks, PromptToPromptControl]:
    """Hooks for a batch of two (``shared_seed``) whose prompt is ``source``: image 1 reads ``target``. A
    ``blend_mask`` ``(h, w)`` on the latent grid replaces the blend words' attention mask."""
    from studio.attributes.directions import subject_token_indices

    for name, value in (("cross_fraction", cross_fraction), ("self_fraction", self_fraction)):
        if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
            raise InvalidRequest(f"{name} must be in 0..1 (a fraction of the steps), got {value!r}", name)
    tok = model.tokenizer
    weights = {}
    for word, factor in (reweight or {}).items():
        if not (isinstance(factor, (int, float)) and math.isfinite(factor) and -10 <= factor <= 10):
            raise InvalidRequest(f"reweight factor for {word!r} must be a number in -10..10, got {factor!r}",
                                 "reweight")
        for position in subject_token_indices(tok, target, word):
            weights[position] = float(factor)
    blend = ((), ())
    if blend_words and (blend_words[0] or blend_words[1]):
        src = tuple(i for w in blend_words[0] for i in subject_token_indices(tok, source, w))
        dst = tuple(i for w in blend_words[1] for i in subject_token_indices(tok, target, w))
        blend = (src or dst, dst or src)
    first = int(cfg != 1.0)
    control = PromptToPromptControl(cond_rows=slice(2 * first, 2 * first + 2), mapping=token_mapping(tok, source,
                                                                                                      target),
                                    num_steps=num_steps, cross_fraction=float(cross_fraction),
                                    self_fraction=float(self_fraction), reweight=weights,
                                    blend_tokens=((), ()) if blend_mask is not None else blend, fixed_mask=blend_mask)
    embeds = encode_texts(model, [source, target])
    hooks = RunHooks(embedding_edits=[ReplaceCondEmbeddings(embeds)], attention_processors=control.processors,
                     step_callbacks=[control.on_step],
                     latent_edits=[control] if blend[0] or blend_mask is not None else [])
    return hooks, control
