"""Semantic directions in the text encoder's output space, applied at one subject's tokens.

Method: continuous attribute control by semantic directions (Baumann et al., "Continuous, Subject-Specific
Attribute Control in T2I Models by Identifying Semantic Directions", 2024; CompVis/attribute-control). A delta
is one vector in the space the UNet cross-attends to; a slider adds ``alpha * delta`` to the encoder output at
the tokens of the subject word only (start, end and padding tokens, and every other word, stay as encoded), so
"a circle and a square" can grow the circle alone. Zero extra UNet evaluations.

This module holds the pieces shared by the three ways of driving a slider:

* :func:`subject_token_indices`: which token positions belong to a word of the prompt;
* :func:`naive_direction`: the optimization-free delta from a pair of phrasings averaged over templates;
* :class:`SubjectDirections`: the :class:`~studio.engine.EmbeddingEdit` that adds the deltas (per image of a
  batch, with an optional delay so the layout of the first steps is kept);
* :class:`ReplaceCondEmbeddings`: per-image prompt embeddings for the prompt-weight baseline.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from studio.engine import InvalidRequest


def _content_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


def subject_token_indices(tokenizer, prompt: str, subject: str) -> tuple[int, ...]:
    """Token positions (in the encoded, start-token-first sequence) of every whole-word occurrence of ``subject``.

    CLIP's BPE splits text into words before merging, so the tokens of ``prompt[:end of word]`` are a prefix of
    the prompt's tokens; the subject's tokens are the difference between two prefixes. Positions the text
    encoder never reads (past the truncation limit) are dropped; if nothing is left the subject is rejected."""
    if not isinstance(subject, str) or not subject.strip():
        raise InvalidRequest("subject must be a word of the prompt, got an empty subject", "subject")
    subject = subject.strip()
    pattern = re.compile(r"(?<!\w)" + re.escape(subject) + r"(?!\w)", re.IGNORECASE)
    spans = [m.span() for m in pattern.finditer(prompt)]
    if not spans:
        raise InvalidRequest(f"subject {subject!r} does not occur as a word in the prompt {prompt!r}; "
                             "pick a word of the prompt (e.g. its noun)", "subject")
    last_readable = int(tokenizer.model_max_length) - 2  # position 0 is the start token, the last one the end token
    indices: list[int] = []
    for start, end in spans:
        before = len(_content_ids(tokenizer, prompt[:start]))
        through = len(_content_ids(tokenizer, prompt[:end]))
        indices += [1 + i for i in range(before, through) if 1 + i <= last_readable]
    if not indices:
        raise InvalidRequest(f"subject {subject!r} lies past the {tokenizer.model_max_length}-token limit of the "
                             "text encoder; shorten the prompt or move the subject forward", "subject")
    return tuple(dict.fromkeys(indices))


@torch.no_grad()
def encode_cond(model, prompts: Sequence[str]) -> torch.Tensor:
    """Encoder output for ``prompts`` exactly as the engine encodes a prompt: ``(n, tokens, dim)``."""
    tokens = model.tokenizer(list(prompts), padding="max_length", max_length=model.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt")
    hidden = model.text_encoder(tokens.input_ids.to(model.device))[0]
    return hidden.float()


def fill_template(template: str, phrase: str) -> str:
    return template.replace("{phrase}", phrase).strip()


def phrasing(pattern: str, subject: str) -> str:
    """``"a huge {subject}"`` -> ``"a huge circle"``."""
    return pattern.replace("{subject}", subject)


@torch.no_grad()
def naive_direction(model, subject: str, positive: str, negative: str, templates: Sequence[str]) -> torch.Tensor:
    """Optimization-free delta: mean over templates of E(pos)[subject] - E(neg)[subject].

    ``positive``/``negative`` are phrasings with a ``{subject}`` slot ("a huge {subject}" / "a tiny {subject}");
    each template has a ``{phrase}`` slot. A subject of several tokens contributes the mean of its tokens."""
    if not templates:
        raise InvalidRequest("a direction needs at least one template with a {phrase} slot", "templates")
    pos_prompts = [fill_template(t, phrasing(positive, subject)) for t in templates]
    neg_prompts = [fill_template(t, phrasing(negative, subject)) for t in templates]
    encoded = encode_cond(model, pos_prompts + neg_prompts)
    deltas = []
    for i, (p, n) in enumerate(zip(pos_prompts, neg_prompts)):
        ip = list(subject_token_indices(model.tokenizer, p, subject))
        ineg = list(subject_token_indices(model.tokenizer, n, subject))
        deltas.append(encoded[i, ip].mean(0) - encoded[len(templates) + i, ineg].mean(0))
    return torch.stack(deltas).mean(0)


@dataclass(frozen=True)
class SubjectShift:
    """One slider: add ``alphas[b] * delta`` at ``indices`` of image ``b`` of the batch."""

    indices: tuple[int, ...]
    delta: torch.Tensor  # (dim,)
    alphas: tuple[float, ...]  # one per image of the batch (a sweep), or one for all


class SubjectDirections:
    """:class:`~studio.engine.EmbeddingEdit` for attribute sliders (Baumann et al. 2024).

    Adds every :class:`SubjectShift` to the prompt's embeddings (role ``"cond"`` only; the negative prompt is
    untouched) from step ``start_step`` on: a delay keeps the layout the first steps decided. Shifts stack."""

    def __init__(self, shifts: Sequence[SubjectShift], start_step: int = 0):
        self.shifts = list(shifts)
        self.start_step = int(start_step)
        self._cache: dict[tuple, torch.Tensor] = {}

    def _offset(self, embeds: torch.Tensor) -> torch.Tensor:
        key = (tuple(embeds.shape), embeds.dtype, embeds.device)
        if key not in self._cache:  # the same offset every step: build it once per run
            offset = torch.zeros(embeds.shape, dtype=torch.float32)
            for shift in self.shifts:
                alphas = torch.tensor(shift.alphas, dtype=torch.float32)
                if len(alphas) == 1:
                    alphas = alphas.expand(embeds.shape[0])
                elif len(alphas) != embeds.shape[0]:
                    raise InvalidRequest(f"a sweep of {len(alphas)} values needs batch size {len(alphas)}, "
                                         f"got {embeds.shape[0]}", "batch_size")
                idx = list(shift.indices)
                offset[:, idx, :] += alphas.view(-1, 1, 1) * shift.delta.float().cpu().view(1, 1, -1)
            self._cache[key] = offset.to(device=embeds.device, dtype=embeds.dtype)
        return self._cache[key]

    def apply(self, step: int, num_steps: int, embeds: torch.Tensor, role: str) -> torch.Tensor:
        if role != "cond" or step < self.start_step or not self.shifts:
            return embeds
        return embeds + self._offset(embeds)


class ReplaceCondEmbeddings:
    """:class:`~studio.engine.EmbeddingEdit` that uses precomputed prompt embeddings, one per image of the batch
    (the prompt-weight baseline, whose prompt text differs per slider value), from ``start_step`` on."""

    def __init__(self, per_image: torch.Tensor, start_step: int = 0):
        self.per_image = per_image
        self.start_step = int(start_step)

    def apply(self, step: int, num_steps: int, embeds: torch.Tensor, role: str) -> torch.Tensor:
        if role != "cond" or step < self.start_step:
            return embeds
        if self.per_image.shape[0] not in (1, embeds.shape[0]) or self.per_image.shape[1:] != embeds.shape[1:]:
            raise InvalidRequest(f"replacement embeddings {tuple(self.per_image.shape)} do not fit the prompt's "
                                 f"{tuple(embeds.shape)}")
        return self.per_image.to(device=embeds.device, dtype=embeds.dtype).expand_as(embeds)


def start_step_for(delay: float, num_steps: int) -> int:
    """First step a delayed slider acts on: ``round(delay * steps)`` (0 = from the start)."""
    return min(num_steps, int(round(float(delay) * num_steps)))


def emphasis_embeddings(model, prompt: str, subject: str, positive: str, negative: str, alpha: float,
                        alpha_max: float) -> torch.Tensor:
    """Prompt-weight baseline: the slider's phrasing written into the prompt, its attribute words weighted.

    For ``alpha > 0`` the subject word is replaced by the positive phrasing without its article ("huge circle");
    for ``alpha < 0`` by the negative one; the attribute words' embeddings are scaled by ``|alpha| / alpha_max``
    and the whole prompt re-normalised to the original mean (A1111-style emphasis). ``alpha == 0``: the prompt as
    written. Returns ``(1, tokens, dim)``."""
    if alpha == 0:
        return encode_cond(model, [prompt])
    pattern = positive if alpha > 0 else negative
    words = _strip_article(phrasing(pattern, subject))
    rewritten = re.sub(r"(?<!\w)" + re.escape(subject) + r"(?!\w)", words, prompt, count=1, flags=re.IGNORECASE)
    encoded = encode_cond(model, [rewritten])
    subject_idx = set(subject_token_indices(model.tokenizer, rewritten, subject))
    phrase_idx = [i for i in subject_token_indices(model.tokenizer, rewritten, words) if i not in subject_idx]
    weight = min(abs(alpha) / alpha_max, 1.0) if alpha_max > 0 else 1.0
    original_mean = encoded.mean()
    encoded[:, phrase_idx] = encoded[:, phrase_idx] * weight
    new_mean = encoded.mean()
    return encoded * (original_mean / new_mean) if abs(float(new_mean)) > 1e-6 else encoded


def _strip_article(text: str) -> str:
    return re.sub(r"^(a|an|the)\s+", "", text.strip(), flags=re.IGNORECASE)
