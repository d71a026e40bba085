"""Embedding files in the formats people exchange.

* **diffusers** (``learned_embeds.safetensors``, what ``pipe.load_textual_inversion`` reads): one tensor named by
  its token, ``(dim,)`` or ``(n, dim)``.
* **A1111** (stable-diffusion-webui ``embeddings/*.safetensors``): ``{"emb_params": (n, dim)}``; the token is the
  file name (``ring.safetensors`` -> ``<ring>``).

Our files are diffusers files with metadata (``studio_kind``: ``textual-inversion`` or ``prospect``, the
initializer word, steps, the model's weights hash); per-stage concepts keep their 10 rows in stage order. Pickled
``.pt``/``.bin`` embeddings are refused (unpickling can run code); convert them to safetensors first.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from .tokens import LearnedConcept, check_token

FORMATS = ("diffusers", "a1111")


class EmbeddingFileError(ValueError):
    """An embedding file could not be read or written; one line that says what to do."""


def save_concept(concept: LearnedConcept, path: Path, fmt: str = "diffusers") -> Path:
    """Write ``concept`` as ``fmt`` (see the module docstring); atomic (a temporary file, then a rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise EmbeddingFileError(f"embeddings are saved as .safetensors, got {path.name}")
    if fmt not in FORMATS:
        raise EmbeddingFileError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "a1111" and concept.kind == "prospect":
        raise EmbeddingFileError("A1111 files hold plain embeddings; save a per-stage concept in the diffusers format")
    vectors = concept.vectors.detach().float().cpu().contiguous()
    meta = {"studio_kind": concept.kind, "token": concept.token, "init_word": concept.init_word,
            "steps": str(concept.steps), "model_hash": concept.model_hash}
    tensors = {"emb_params": vectors} if fmt == "a1111" else {concept.token: vectors[0] if len(vectors) == 1
                                                             and concept.kind != "prospect" else vectors}
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(tmp), metadata=meta)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_concept(path: Path, token: str | None = None) -> LearnedConcept:
    """Read a diffusers or A1111 embedding (the format is recognised from the file). ``token`` overrides the file's
    own (A1111 files name it by their file name)."""
    from safetensors import safe_open

    path = Path(path)
    if path.suffix in (".pt", ".bin", ".ckpt", ".pth"):
        raise EmbeddingFileError(f"{path.name} is a pickle file; unpickling can run code, so convert it to "
                                 ".safetensors first")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            keys = list(f.keys())
            tensors = {k: f.get_tensor(k) for k in keys}
    except FileNotFoundError:
        raise EmbeddingFileError(f"no such file: {path}") from None
    except Exception as e:  # safetensors raises several kinds for a damaged or foreign file
        raise EmbeddingFileError(f"{path.name} could not be read as safetensors ({type(e).__name__}: {e})") from None
    if "emb_params" in tensors:
        vectors = tensors["emb_params"]
        name = token or meta.get("token") or "<" + re.sub(r"[^a-z0-9_\-]", "-", path.stem.lower())[:30] + ">"
    elif len(tensors) == 1:
        (name, vectors), = tensors.items()
        name = token or name
    else:
        raise EmbeddingFileError(f"{path.name} holds {len(tensors)} tensors ({', '.join(keys[:4])}); an embedding "
                                 "file has one (diffusers: named by its token; A1111: emb_params)")
    if vectors.ndim == 1:
        vectors = vectors[None]
    if vectors.ndim != 2:
        raise EmbeddingFileError(f"{path.name}: the embedding has shape {tuple(vectors.shape)}, expected (n, dim)")
    if not name.startswith("<"):
        name = f"<{name}>"
    try:
        check_token(name)
    except ValueError as e:
        raise EmbeddingFileError(f"{path.name}: {e}; pass another token") from None
    kind = meta.get("studio_kind", "textual-inversion")
    try:
        return LearnedConcept(name, vectors.float(), kind, meta.get("init_word", ""), int(meta.get("steps", "0") or 0),
                              meta.get("model_hash", ""))
    except ValueError as e:
        raise EmbeddingFileError(f"{path.name}: {e}") from None
