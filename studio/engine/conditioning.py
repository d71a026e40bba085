"""Prompt conditioning. All text encoding goes through :func:`encode_prompts`
(SDXL's second encoder and pooled embeddings would be added there)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Conditioning:
    """Encoded prompts for one run.

    ``embeds[role]`` is ``(1, tokens, dim)`` (one copy; the engine expands it to
    the batch). ``key`` identifies what was encoded, so a :class:`LatentCache` can
    reuse it. Future encoders add their extra tensors here (e.g. pooled embeds)."""

    embeds: dict[str, torch.Tensor]
    key: tuple


def conditioning_key(model, prompts: dict[str, str]) -> tuple:
    return (model.weights_hash, tuple(sorted(prompts.items())))


def truncation_warnings(tokenizer, prompts: dict[str, str]) -> list[str]:
    """One warning per prompt longer than the text encoder reads."""
    limit = int(tokenizer.model_max_length)
    warnings = []
    for role, text in prompts.items():
        if not text:
            continue
        ids = tokenizer(text, truncation=False, add_special_tokens=True).input_ids
        dropped = len(ids) - limit
        if dropped > 0:
            tail = tokenizer.decode(ids[limit - 1:-1]).strip()
            warnings.append(f"{role} prompt truncated: it is {len(ids)} tokens but the text encoder reads at most "
                            f"{limit} (incl. start/end); {dropped} tokens dropped: '{tail[:80]}'")
    return warnings


@torch.no_grad()
def encode_prompts(model, prompts: dict[str, str]) -> Conditioning:
    """Encode every role's prompt in one text-encoder call (identical prompts once).

    Matches ``StableDiffusionPipeline.encode_prompt``: pad to the tokenizer's
    max length, truncate, last hidden state, no attention mask (unless the
    encoder config asks for one)."""
    unique = list(dict.fromkeys(prompts.values()))
    tokens = model.tokenizer(unique, padding="max_length", max_length=model.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt")
    use_mask = bool(getattr(model.text_encoder.config, "use_attention_mask", False))
    mask = tokens.attention_mask.to(model.device) if use_mask else None
    hidden = model.text_encoder(tokens.input_ids.to(model.device), attention_mask=mask)[0]
    hidden = hidden.to(dtype=model.text_encoder.dtype, device=model.device)
    rows = {text: hidden[i:i + 1] for i, text in enumerate(unique)}
    return Conditioning(embeds={role: rows[text] for role, text in prompts.items()},
                        key=conditioning_key(model, prompts))
