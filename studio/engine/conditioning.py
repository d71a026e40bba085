"""Prompt conditioning. All text encoding goes through :func:`encode_chunks`
(SDXL's second encoder and pooled embeddings would be added there).

Prompts are read in the studio's prompt language (:mod:`studio.prompting`): every role's text becomes, per step,
a tuple of weighted chunks. Each distinct tuple is encoded once per run; a step looks its role up.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from studio.prompting import Chunks, is_unweighted, parse, plain_text, schedule

from .request import InvalidRequest


def part_role(index: int) -> str:
    """Role of the ``index``-th AND part of the prompt (part 0 is ``"cond"``)."""
    return "cond" if index == 0 else f"cond:{index}"


@dataclass(frozen=True)
class PromptPlan:
    """What each role reads at each step, and the AND weight of each prompt part.

    ``steps[role][i]`` are the chunks of ``role`` at step ``i``; ``part_weights`` maps the prompt's part roles
    (``"cond"``, ``"cond:1"``, ...) to their weights, in order; ``composed`` is True when the prompt used AND,
    NOT or a part weight (composable diffusion replaces classic CFG)."""

    steps: dict[str, tuple[Chunks, ...]]
    part_weights: dict[str, float]
    part_texts: dict[str, str]
    composed: bool

    @property
    def static(self) -> bool:
        return all(len(set(s)) == 1 for s in self.steps.values())

    def unique_chunks(self) -> list[Chunks]:
        return list(dict.fromkeys(c for s in self.steps.values() for c in s))


def plan_prompts(prompts: dict[str, str], num_steps: int) -> PromptPlan:
    """Parse every role's prompt. ``prompts["cond"]`` may use AND/NOT; every other role is one prompt.

    Raises :class:`~studio.prompting.PromptSyntaxError` (an ``InvalidRequest``) naming the field and column."""
    steps: dict[str, tuple[Chunks, ...]] = {}
    weights: dict[str, float] = {}
    texts: dict[str, str] = {}
    composed = False
    for role, text in prompts.items():
        field = {"cond": "prompt", "uncond": "negative_prompt"}.get(role, role)
        parsed = parse(text, field=field, allow_and=role == "cond")
        if role == "cond":
            composed = parsed.is_composed
            for i, part in enumerate(parsed.parts):
                steps[part_role(i)] = schedule(part, num_steps)
                weights[part_role(i)] = part.weight
                texts[part_role(i)] = part.text
            continue
        part = parsed.parts[0]
        if part.weight != 1.0:
            raise InvalidRequest(f"NOT and part weights belong in the prompt (as 'AND NOT ...'), not in the "
                                 f"{field.replace('_', ' ')}", field)
        steps[role] = schedule(part, num_steps)
    return PromptPlan(steps, weights, texts, composed)


@dataclass(frozen=True)
class Conditioning:
    """Encoded prompts for one run.

    ``table[chunks]`` is ``(1, tokens, dim)`` (one copy; the engine expands it to the batch); ``plan`` says which
    chunks each role reads at each step. ``key`` identifies what was encoded, so a :class:`LatentCache` can reuse
    it. Future encoders add their extra tensors here (e.g. pooled embeds)."""

    table: dict
    plan: PromptPlan
    key: tuple

    def at(self, role: str, step: int) -> torch.Tensor:
        return self.table[self.plan.steps[role][step]]

    @property
    def roles(self) -> list[str]:
        return list(self.plan.steps)

    @property
    def embeds(self) -> dict[str, torch.Tensor]:
        """Each role's embeddings at step 0."""
        return {role: self.at(role, 0) for role in self.roles}

    def to(self, device) -> Conditioning:
        return Conditioning({c: e.to(device) for c, e in self.table.items()}, self.plan, self.key)


def conditioning_key(model, prompts: dict[str, str], num_steps: int) -> tuple:
    return (model.weights_hash, tuple(sorted(prompts.items())), num_steps)


def truncation_warnings(tokenizer, prompts: dict[str, str], plan: PromptPlan | None = None) -> list[str]:
    """One warning per prompt longer than the text encoder reads (each distinct text a role reads, once)."""
    limit = int(tokenizer.model_max_length)
    if plan is not None:
        labelled = {}
        for role, steps in plan.steps.items():
            for chunks in dict.fromkeys(steps):
                labelled.setdefault(plain_text(chunks), role)
        prompts = {role: text for text, role in labelled.items()}
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
def encode_chunks(model, items: list[Chunks]) -> dict[Chunks, torch.Tensor]:
    """Encode each distinct chunk tuple in one text-encoder call.

    Unweighted chunks are tokenized as their plain text, exactly as ``StableDiffusionPipeline.encode_prompt``
    does (pad to max length, truncate, last hidden state, no attention mask unless the encoder asks for one).
    Weighted chunks (emphasis) follow A1111's "No norm" mode: each chunk is tokenized alone and the encoder output
    at its tokens is multiplied by its weight. (A1111's original mode also rescales the sequence to its unweighted
    mean; that is ill-conditioned when the mean is near zero, as in Tiny World where it is ~1e-4.)"""
    tok = model.tokenizer
    limit = int(tok.model_max_length)
    unique = list(dict.fromkeys(items))
    rows, token_weights, lengths = [], [], []
    for chunks in unique:
        if is_unweighted(chunks):
            encoded = tok(plain_text(chunks), padding="max_length", max_length=limit, truncation=True)
            ids, weights = encoded.input_ids, [1.0] * limit
            lengths.append(int(sum(encoded.attention_mask)))
        else:
            ids, weights = [tok.bos_token_id], [1.0]
            for text, weight in chunks:
                piece = tok(text, add_special_tokens=False).input_ids
                ids += piece
                weights += [weight] * len(piece)
            ids, weights = ids[:limit - 1] + [tok.eos_token_id], weights[:limit - 1] + [1.0]
            lengths.append(len(ids))
            pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
            weights += [1.0] * (limit - len(ids))
            ids += [pad] * (limit - len(ids))
        rows.append(ids)
        token_weights.append(weights)
    input_ids = torch.tensor(rows, dtype=torch.long, device=model.device)
    use_mask = bool(getattr(model.text_encoder.config, "use_attention_mask", False))
    mask = None
    if use_mask:  # the tokenizer's attention mask: 1 on start, words and end, 0 on padding
        mask = (torch.arange(limit)[None, :] < torch.tensor(lengths)[:, None]).long().to(model.device)
    hidden = model.text_encoder(input_ids, attention_mask=mask)[0]
    hidden = hidden.to(dtype=model.text_encoder.dtype, device=model.device)
    out = {}
    for i, chunks in enumerate(unique):
        h = hidden[i:i + 1]
        w = torch.tensor(token_weights[i], dtype=h.dtype, device=h.device)
        out[chunks] = h if torch.all(w == 1) else h * w[None, :, None]
    return out


@torch.no_grad()
def encode_prompts(model, prompts: dict[str, str], num_steps: int = 1) -> Conditioning:
    """Parse and encode every role's prompt for a run of ``num_steps`` steps."""
    plan = plan_prompts(prompts, num_steps)
    return Conditioning(encode_chunks(model, plan.unique_chunks()), plan, conditioning_key(model, prompts, num_steps))


def encode_texts(model, texts: list[str]) -> torch.Tensor:
    """``(n, tokens, dim)`` encoder output of prompts in the prompt language (no AND, no schedules): for
    techniques that build their own embeddings (blends, per-stage prompts)."""
    rows = []
    for text in texts:
        parsed = parse(text, allow_and=False)
        part = parsed.parts[0]
        steps = set(schedule(part, 2))
        if len(steps) != 1 or part.weight != 1.0:
            raise InvalidRequest(f"{text!r}: prompt editing, alternation, NOT and weights can't be used here; "
                                 "write one prompt (emphasis like (word:1.2) is fine)", "prompt")
        rows.append(steps.pop())
    table = encode_chunks(model, rows)
    return torch.cat([table[c] for c in rows])
