"""Learned concepts as new tokens, on a copy of the model that only its owner sees.

A :class:`LearnedConcept` is a placeholder token (``<ring>``) and its input-embedding vectors: one for textual
inversion (Gal et al., "An Image is Worth One Word", 2022), ten for per-stage inversion (ProSpect, Zhang et al.
2023; token ``<ring>`` then stands for stage-specific tokens ``<ring>@1`` .. ``<ring>@10``, see
:mod:`studio.personalization.prospect`). Several vectors of an A1111 embedding become ``<t>``, ``<t>@v2``, ... and
the prompt's ``<t>`` is expanded to all of them.

:func:`personalized_copy` returns a :class:`~studio.models.LoadedModel` whose tokenizer knows the tokens and whose
text encoder reads their vectors through an :class:`ExtendedEmbedding`: the original embedding table is shared, not
copied, and the new rows live only in the copy. The shared model is never modified, so removing a concept is
dropping the copy.
"""

from __future__ import annotations

import copy
import hashlib
import re
from dataclasses import dataclass, replace

import torch

from studio.engine import InvalidRequest
from studio.models import copy_sharing_tensors

TOKEN_PATTERN = re.compile(r"^<[a-z0-9][a-z0-9_\-]{0,30}>$")
KINDS = ("textual-inversion", "prospect")


@dataclass(frozen=True)
class LearnedConcept:
    """``token`` and its ``vectors`` ``(n, dim)``; ``kind`` is ``textual-inversion`` (any n) or ``prospect``
    (n = 10, one per stage, sampling order: row 0 = stage 1, the noisiest steps)."""

    token: str
    vectors: torch.Tensor
    kind: str = "textual-inversion"
    init_word: str = ""
    steps: int = 0
    model_hash: str = ""

    def __post_init__(self):
        check_token(self.token)
        if self.kind not in KINDS:
            raise InvalidRequest(f"concept kind must be one of {', '.join(KINDS)}, got {self.kind!r}", "kind")
        if not isinstance(self.vectors, torch.Tensor) or self.vectors.ndim != 2 or self.vectors.shape[0] < 1:
            raise InvalidRequest("a concept's vectors must be a (n, dim) tensor", "vectors")
        if self.kind == "prospect" and self.vectors.shape[0] != 10:
            raise InvalidRequest(f"a per-stage concept has 10 vectors, got {self.vectors.shape[0]}", "vectors")

    def token_names(self) -> list[str]:
        """The tokenizer tokens this concept adds, one per vector."""
        n = self.vectors.shape[0]
        if self.kind == "prospect":
            return [f"{self.token}@{k}" for k in range(1, n + 1)]
        return [self.token] + [f"{self.token}@v{k}" for k in range(2, n + 1)]

    def digest(self) -> str:
        h = hashlib.sha256(f"{self.token}:{self.kind}".encode())
        h.update(self.vectors.detach().float().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:12]


def check_token(token: str) -> None:
    if not isinstance(token, str) or not TOKEN_PATTERN.match(token):
        raise InvalidRequest(f"placeholder token must look like <name> (lower-case letters, digits, _ or -, at most 32 "
                             f"characters), got {token!r}", "token")


class ExtendedEmbedding(torch.nn.Module):
    """The text encoder's token embedding plus learned rows: ids below ``base.num_embeddings`` read the (shared,
    untouched) base table, ids above it read ``extra``. ``stage_rows`` (optional, per batch element) lets training
    pick a per-stage row for a ProSpect token (see :mod:`studio.personalization.training`)."""

    def __init__(self, base: torch.nn.Embedding, extra: torch.Tensor):
        super().__init__()
        self.base = base
        self.extra = torch.nn.Parameter(extra.to(base.weight.device, base.weight.dtype), requires_grad=False)
        self.num_embeddings = base.num_embeddings + extra.shape[0]
        self.embedding_dim = base.embedding_dim
        # training: (token ids (k,), vectors (batch, k, dim)); token ids[j] reads vectors[:, j]
        self.override: tuple[list[int], torch.Tensor] | None = None

    @property
    def weight(self) -> torch.Tensor:  # code that reads the table (e.g. resizing) sees the whole of it
        return torch.cat([self.base.weight, self.extra])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        n = self.base.num_embeddings
        known = self.base(ids.clamp(max=n - 1))
        if self.extra.shape[0] == 0:
            return known
        new = self.extra[(ids - n).clamp(min=0, max=self.extra.shape[0] - 1)]
        out = torch.where((ids >= n)[..., None], new, known)
        if self.override is not None:
            token_ids, vectors = self.override
            for j, token_id in enumerate(token_ids):
                out = torch.where((ids == token_id)[..., None], vectors[:, None, j, :].to(out.dtype), out)
        return out


class ExpandingTokenizer:
    """A tokenizer that knows the added tokens and writes a multi-vector token out as all of its tokens. Everything
    else is the wrapped tokenizer's (a private copy: the shared model's tokenizer never learns the tokens)."""

    def __init__(self, tokenizer, expansions: dict[str, str]):
        self._tokenizer = tokenizer
        self._expansions = dict(expansions)

    def _expand(self, text):
        if isinstance(text, str):
            for token, expanded in self._expansions.items():
                # not inside one of its own tokens ("<t>@v2"), so expanded text stays as it is
                text = re.sub(re.escape(token) + r"(?!@)", lambda _: expanded, text)
            return text
        if isinstance(text, (list, tuple)):
            return [self._expand(t) for t in text]
        return text

    def __call__(self, text=None, *args, **kwargs):
        return self._tokenizer(self._expand(text), *args, **kwargs)

    def tokenize(self, text, *args, **kwargs):
        return self._tokenizer.tokenize(self._expand(text), *args, **kwargs)

    def __len__(self):
        return len(self._tokenizer)

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


def base_tokenizer(tokenizer):
    return tokenizer._tokenizer if isinstance(tokenizer, ExpandingTokenizer) else tokenizer


def personalized_copy(model, concepts: list[LearnedConcept]):
    """A model like ``model`` that knows ``concepts`` (see the module docstring). ``model`` may itself be a copy
    (e.g. concept-edited); its own tokens are kept."""
    # 1. validate: tokens new to the model, vectors of the model's width
    embedding = model.text_encoder.get_input_embeddings()
    base_emb = embedding.base if isinstance(embedding, ExtendedEmbedding) else embedding
    prior_extra = embedding.extra.detach() if isinstance(embedding, ExtendedEmbedding) else None
    tokenizer = base_tokenizer(model.tokenizer)
    dim = base_emb.embedding_dim
    names: list[str] = []
    for c in concepts:
        if c.vectors.shape[1] != dim:
            raise InvalidRequest(f"{c.token} has {c.vectors.shape[1]}-dimensional vectors; this model's text "
                                 f"encoder takes {dim} (it was learned on another model)", "concept")
        for name in c.token_names():
            if name in names or name in tokenizer.get_vocab():
                raise InvalidRequest(f"the token {name} is already in use; pick another placeholder", "token")
            names.append(name)
    # 2. a private tokenizer with the tokens
    own = copy.deepcopy(tokenizer)
    added = own.add_tokens(names, special_tokens=False) if names else 0
    if added != len(names):
        raise InvalidRequest("some placeholder tokens could not be added; pick other names", "token")
    expansions = dict(getattr(model.tokenizer, "_expansions", {}))
    for c in concepts:
        if c.kind == "textual-inversion" and c.vectors.shape[0] > 1:
            expansions[c.token] = " ".join(c.token_names())
    # 3. a text encoder copy sharing every tensor, reading the new rows through an ExtendedEmbedding
    ids = own.convert_tokens_to_ids(names) if names else []
    first = base_emb.num_embeddings + (0 if prior_extra is None else prior_extra.shape[0])
    if ids and ids != list(range(first, first + len(ids))):
        raise InvalidRequest("the tokenizer gave the new tokens unexpected ids; this tokenizer is not supported",
                             "token")
    rows = [prior_extra] if prior_extra is not None else []
    rows += [c.vectors.detach().to(base_emb.weight.dtype) for c in concepts]
    extra = torch.cat(rows) if rows else torch.zeros(0, dim)
    encoder = copy_sharing_tensors(model.text_encoder, model.run_lock)
    encoder.set_input_embeddings(ExtendedEmbedding(base_emb, extra))
    digest = hashlib.sha256((model.weights_hash + "".join(c.digest() for c in concepts)).encode()).hexdigest()[:12]
    # the run lock is shared: the copy's UNet is the model's, so runs on either must not interleave
    return replace(model, text_encoder=encoder, tokenizer=ExpandingTokenizer(own, expansions), weights_hash=digest)


def token_id(model, token: str) -> int:
    tokenizer = base_tokenizer(model.tokenizer)
    ids = tokenizer(token, add_special_tokens=False).input_ids
    if len(ids) != 1:
        raise InvalidRequest(f"{token} is not a single token of this model", "token")
    return ids[0]
