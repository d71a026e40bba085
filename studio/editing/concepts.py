"""Closed-form concept edits of the model: replace or erase a concept while preserving others, in seconds.

Two published methods, both a least-squares edit of linear layers that read the text:

* **UCE** (Gandikota et al., "Unified Concept Editing in Diffusion Models", 2024): the key and value projections
  (``to_k``, ``to_v``) of every cross-attention layer. For edited concept embeddings ``c_i``, their guides
  ``c*_i`` (the replacement concept; the concept deleted from the prompt to erase) and preserved embeddings ``c_j``::

      W' = [lam W + sum_i (W c*_i) c_i^T + sum_j (W c_j) c_j^T] [lam I + sum_i c_i c_i^T + sum_j c_j c_j^T]^-1

* **Diff-QuickFix** (Basu et al., "Localizing and Editing Knowledge in Text-to-Image Generative Models", 2024):
  only the output projection of the text encoder's first self-attention layer; keys are its inputs for the old
  prompt at the concept's token and the positions after it, values its outputs (bias removed) for the new prompt::

      W' = (lam W + sum v k^T) (lam I + sum k k^T)^-1

  We add UCE's preservation term here too (values = the layer's own outputs), so both methods take the same list.

Because every value is the *original* layer applied to some input (``W c*``, ``W c_j``, ``W k_new``), both edits
are a right-multiplication ``W' = W A`` with one ``d x d`` matrix ``A`` shared by every edited layer. That matrix is
the whole edit: the delta file holds ``A`` and the layers it applies to (a few hundred KB even for SD).

Our text encoders are causal, so the concept word changes every token after it ("a red circle on the left": "on",
"the", "left", the end and padding tokens all carry "circle"). Edits therefore pair every position from the concept's
first token to the end of the sequence, over prompt templates (augmentation, as both papers do with "a photo of X").

Edited models are *copies* (:func:`edited_copy`) sharing every untouched tensor with the original; the shared
model is never modified, and reverting is dropping the copy.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from studio.engine import InvalidRequest

METHODS = ("uce", "quickfix")
METHOD_NAMES = {"uce": "UCE (cross-attention keys and values)",
                "quickfix": "Diff-QuickFix (text encoder layer 0)"}
DEFAULT_STRENGTH = {"uce": 0.5, "quickfix": 0.01}  # lam: the papers' values
DEFAULT_TEMPLATES = ("{concept}", "a {concept}", "a photo of a {concept}", "an image of a {concept}",
                     "a picture of a {concept}", "a painting of a {concept}")
QUICKFIX_LAYER = "layers.0.self_attn.out_proj"  # under text_model.encoder. in older transformers
DELTA_FORMAT = "studio-concept-edit/1"
MAX_CONCEPTS = 32


class ConceptDeltaError(ValueError):
    """A concept-edit delta file could not be read or does not fit the model; one line, says what to do."""


@dataclass(frozen=True)
class ConceptEditSpec:
    """What to change: ``edits`` are ``(concept, replacement)`` pairs (replacement ``""`` erases the concept),
    ``preserve`` concepts that must stay as they were, ``strength`` the regulariser ``lam`` (bigger = closer to the
    original weights; ``None`` = the method's default), ``templates`` the prompts with a ``{concept}`` slot."""

    method: str
    edits: tuple[tuple[str, str], ...]
    preserve: tuple[str, ...] = ()
    strength: float | None = None
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    preserve_weight: float = 1.0

    @property
    def lam(self) -> float:
        return DEFAULT_STRENGTH[self.method] if self.strength is None else float(self.strength)

    def describe(self) -> str:
        parts = [f"{a} → {b}" if b else f"erase {a}" for a, b in self.edits]
        keep = f"; preserving {', '.join(self.preserve)}" if self.preserve else ""
        return f"{self.method}: {', '.join(parts)}{keep}"

    def as_dict(self) -> dict:
        return {"method": self.method, "edits": [list(e) for e in self.edits], "preserve": list(self.preserve),
                "strength": self.lam, "templates": list(self.templates), "preserve_weight": self.preserve_weight}


@dataclass(frozen=True)
class ConceptDelta:
    """An edit as data: every weight ``W`` named in ``targets`` (module paths in ``component``) becomes ``W @ right``.
    ``model_hash`` is the weights hash of the model it was computed on."""

    spec: ConceptEditSpec
    component: str  # "unet" or "text_encoder"
    targets: tuple[str, ...]
    right: torch.Tensor  # (d, d) float32
    model_hash: str

    @property
    def digest(self) -> str:
        h = hashlib.sha256(self.model_hash.encode())
        h.update(json.dumps(self.spec.as_dict(), sort_keys=True).encode())
        h.update(self.right.detach().cpu().contiguous().float().numpy().tobytes())
        return h.hexdigest()[:12]


# ----------------------------------------------------------------------------- parsing and validation


def parse_edits(text: str) -> tuple[tuple[str, str], ...]:
    """``"circle -> square, star ->"`` (or ``=`` for ``->``; lines or commas) -> ``(("circle", "square"),
    ("star", ""))``. An empty right side erases."""
    pairs = []
    for item in re.split(r"[,\n;]", text or ""):
        if not item.strip():
            continue
        m = re.fullmatch(r"\s*([^=>]+?)\s*(?:->|=>|=)\s*([^=>]*?)\s*", item)
        if not m:
            raise InvalidRequest(f"edit {item.strip()!r} must look like 'old -> new' (or 'old ->' to erase)", "edits")
        pairs.append((m.group(1), m.group(2)))
    return tuple(pairs)


def parse_concepts(text: str) -> tuple[str, ...]:
    return tuple(w.strip() for w in re.split(r"[,\n;]", text or "") if w.strip())


def check_spec(spec: ConceptEditSpec) -> None:
    """Raise :class:`InvalidRequest` naming what is wrong with ``spec``."""
    if spec.method not in METHODS:
        raise InvalidRequest(f"method must be one of {', '.join(METHODS)}, got {spec.method!r}", "method")
    if not spec.edits:
        raise InvalidRequest("name at least one edit, e.g. 'circle -> square' (or 'circle ->' to erase)", "edits")
    if len(spec.edits) + len(spec.preserve) > MAX_CONCEPTS:
        raise InvalidRequest(f"at most {MAX_CONCEPTS} concepts (edits and preserved) per edit", "edits")
    for old, new in spec.edits:
        if not old.strip() or "{" in old or "{" in new:
            raise InvalidRequest(f"edit {old!r} -> {new!r}: name a concept (a word or short phrase)", "edits")
        if old.strip().lower() == new.strip().lower():
            raise InvalidRequest(f"edit {old!r} -> {new!r} changes nothing", "edits")
    edited = {old.strip().lower() for old, _ in spec.edits}
    for word in spec.preserve:
        if word.strip().lower() in edited:
            raise InvalidRequest(f"{word!r} is both edited and preserved; drop one", "preserve")
    if not (spec.preserve_weight >= 0):
        raise InvalidRequest(f"preserve weight must be >= 0, got {spec.preserve_weight}", "preserve_weight")
    if not (spec.lam > 0):
        raise InvalidRequest(f"strength (lambda) must be > 0, got {spec.lam}", "strength")
    if not spec.templates or any("{concept}" not in t for t in spec.templates):
        raise InvalidRequest("every template needs a {concept} slot, e.g. 'a photo of a {concept}'", "templates")


# ----------------------------------------------------------------------------- computing an edit


def compute_delta(model, spec: ConceptEditSpec) -> ConceptDelta:
    """The edit ``spec`` on ``model`` (read only; nothing is modified)."""
    # 1. validate
    check_spec(spec)
    # 2. aligned (key, guide) pairs for the edits, keys for the preserved concepts
    if spec.method == "uce":
        encode = _encoder_outputs
        component, targets = "unet", cross_attention_projections(model.unet)
    else:
        encode = _quickfix_inputs
        component, targets = "text_encoder", (quickfix_layer(model.text_encoder),)
    keys, guides = _edit_pairs(model, spec, encode)
    kept = _preserve_keys(model, spec, encode)
    # 3. closed form, in float64: W' = W A with A = (lam I + G K^T + P P^T)(lam I + K K^T + P P^T)^-1
    lam = spec.lam
    dim = keys.shape[1]
    eye = torch.eye(dim, dtype=torch.float64)
    shared = spec.preserve_weight * (kept.T @ kept) if len(kept) else torch.zeros(dim, dim, dtype=torch.float64)
    lhs = lam * eye + guides.T @ keys + shared
    rhs = lam * eye + keys.T @ keys + shared
    right = torch.linalg.solve(rhs.T, lhs.T).T  # lhs @ rhs^-1 (rhs is symmetric positive definite)
    return ConceptDelta(spec=spec, component=component, targets=targets, right=right.float(),
                        model_hash=model.weights_hash)


def cross_attention_projections(unet) -> tuple[str, ...]:
    """Module paths of ``to_k`` and ``to_v`` of every cross-attention layer (the ones that read the text)."""
    names = []
    for name, module in unet.named_modules():
        if getattr(module, "is_cross_attention", False) and hasattr(module, "to_k"):
            names += [f"{name}.to_k", f"{name}.to_v"]
    if not names:
        raise InvalidRequest("this UNet has no cross-attention layers to edit; use the quickfix method", "method")
    return tuple(names)


def quickfix_layer(text_encoder) -> str:
    """Module path of the first self-attention layer's output projection (where Diff-QuickFix edits)."""
    for name, _ in text_encoder.named_modules():
        if name == QUICKFIX_LAYER or name.endswith("." + QUICKFIX_LAYER):
            return name
    raise InvalidRequest("this text encoder has no layers.0.self_attn.out_proj; use the uce method", "method")


def _prompts(template: str, concept: str) -> str:
    return " ".join(template.replace("{concept}", concept).split())


def _edit_pairs(model, spec: ConceptEditSpec, encode) -> tuple[torch.Tensor, torch.Tensor]:
    keys, guides = [], []
    for old, new in spec.edits:
        templates = spec.templates if new else tuple(t for t in spec.templates if t.rstrip().endswith("{concept}"))
        if not templates:
            raise InvalidRequest("erasing needs a template that ends with {concept}", "templates")
        olds = [_prompts(t, old) for t in templates]
        news = [_prompts(t, new) for t in templates]
        starts = [_concept_start(model.tokenizer, p, old) for p in olds]
        if new:
            for p, n in zip(olds, news):
                if _token_count(model.tokenizer, p) != _token_count(model.tokenizer, n):
                    raise InvalidRequest(f"{old!r} and {new!r} must have the same number of tokens to be aligned "
                                         f"({p!r} vs {n!r}); use single-word concepts or pad with a word", "edits")
        a, b = encode(model, olds), encode(model, news)
        for i, s in enumerate(starts):
            keys.append(a[i])
            guides.append(b[i])
    return torch.cat(keys).double(), torch.cat(guides).double()


def _preserve_keys(model, spec: ConceptEditSpec, encode) -> torch.Tensor:
    rows = []
    for concept in spec.preserve:
        prompts = [_prompts(t, concept) for t in spec.templates]
        starts = [_concept_start(model.tokenizer, p, concept) for p in prompts]
        encoded = encode(model, prompts)
        rows += [encoded[i] for i in range(len(prompts))]
    return torch.cat(rows).double() if rows else torch.zeros(0, 1, dtype=torch.float64)


def _token_count(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False).input_ids)


def _concept_start(tokenizer, prompt: str, concept: str) -> int:
    """Position of the concept's first token (start token = position 0)."""
    at = prompt.lower().rfind(concept.lower())
    position = 1 + _token_count(tokenizer, prompt[:at].rstrip()) if at > 0 else 1
    if position >= int(tokenizer.model_max_length) - 1:
        raise InvalidRequest(f"{concept!r} lies past the text encoder's token limit in {prompt!r}", "templates")
    return position


@torch.no_grad()
def _tokens(model, prompts: Sequence[str]) -> torch.Tensor:
    return model.tokenizer(list(prompts), padding="max_length", max_length=model.tokenizer.model_max_length,
                           truncation=True, return_tensors="pt").input_ids.to(model.device)


@torch.no_grad()
def _encoder_outputs(model, prompts: Sequence[str]) -> torch.Tensor:
    """What the UNet's cross-attention reads: the encoder output, exactly as the engine encodes a prompt."""
    return model.text_encoder(_tokens(model, prompts))[0].float().cpu()


@torch.no_grad()
def _quickfix_inputs(model, prompts: Sequence[str]) -> torch.Tensor:
    """The inputs of layer 0's attention output projection (captured by a hook removed in ``finally``)."""
    captured = []
    handle = _module(model.text_encoder, quickfix_layer(model.text_encoder)).register_forward_hook(
        lambda module, args, output: captured.append(args[0].detach().float().cpu()))
    try:
        with model.run_lock:
            model.text_encoder(_tokens(model, prompts))
    finally:
        handle.remove()
    return captured[0]


def _module(root: torch.nn.Module, path: str) -> torch.nn.Module:
    try:
        return root.get_submodule(path)
    except AttributeError:
        raise ConceptDeltaError(f"the model has no layer {path}; this edit was made for another architecture") \
            from None


# ----------------------------------------------------------------------------- applying an edit to a copy


def edited_copy(model, delta: ConceptDelta):
    """A :class:`~studio.models.LoadedModel` like ``model`` whose ``delta.targets`` weights are ``W @ right``.

    Only the edited modules' weights are new tensors; every other parameter and buffer is shared with ``model``
    (which is left untouched). The copy has a weights hash of its own and shares the run lock (and so is serialised
    with runs on the original, whose UNet or text encoder it shares)."""
    # 1. check the delta fits
    if delta.model_hash != model.weights_hash:
        raise ConceptDeltaError(f"this edit was made on a model with weights {delta.model_hash}, not "
                                f"{model.weights_hash} ({model.name}); compute it again on this model")
    root = getattr(model, delta.component)
    modules = [_module(root, name) for name in delta.targets]
    for name, module in zip(delta.targets, modules):
        if module.weight.shape[1] != delta.right.shape[0]:
            raise ConceptDeltaError(f"{name} takes {module.weight.shape[1]} inputs but the edit is "
                                    f"{delta.right.shape[0]}-dimensional; it was made for another model")
    # 2. copy the module tree, sharing every tensor except the edited weights
    from studio.models import copy_sharing_tensors

    clone = copy_sharing_tensors(root, model.run_lock, fresh_weights=modules)
    right = delta.right.to(torch.float64)
    for name in delta.targets:
        module = clone.get_submodule(name)
        weight = module.weight
        new = (weight.detach().to(torch.float64) @ right.to(weight.device)).to(weight.dtype)
        module.weight = torch.nn.Parameter(new, requires_grad=False)
    # 3. the copy as a model of its own
    digest = hashlib.sha256(f"{model.weights_hash}:{delta.digest}".encode()).hexdigest()[:12]
    return replace(model, **{delta.component: clone}, weights_hash=digest,
                   name=f"{model.name} + concept edit ({delta.spec.describe()})")


# ----------------------------------------------------------------------------- delta files


def save_delta(delta: ConceptDelta, path: Path) -> Path:
    """Write ``delta`` as a safetensors file (the matrix; the spec, layers and model hash in its metadata).
    Written to a temporary name first so a failed write leaves nothing half-written."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ConceptDeltaError(f"save concept edits as .safetensors, got {path.name}")
    meta = {"format": DELTA_FORMAT, "spec": json.dumps(delta.spec.as_dict()), "component": delta.component,
            "targets": json.dumps(list(delta.targets)), "model_hash": delta.model_hash}
    tmp = path.with_name(path.name + ".tmp")
    try:
        save_file({"right": delta.right.detach().cpu().contiguous().float()}, str(tmp), metadata=meta)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_delta(path: Path) -> ConceptDelta:
    """Read a file written by :func:`save_delta`; :class:`ConceptDeltaError` says what is wrong."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != DELTA_FORMAT:
                raise ConceptDeltaError(f"{path.name} is not a concept-edit file (saved by the Editing tab or "
                                        "'edit concept --save-delta')")
            right = f.get_tensor("right").float()
        raw = json.loads(meta["spec"])
        spec = ConceptEditSpec(method=raw["method"], edits=tuple((a, b) for a, b in raw["edits"]),
                               preserve=tuple(raw["preserve"]), strength=float(raw["strength"]),
                               templates=tuple(raw["templates"]),
                               preserve_weight=float(raw.get("preserve_weight", 1.0)))
        targets = tuple(json.loads(meta["targets"]))
        component = meta["component"]
    except ConceptDeltaError:
        raise
    except FileNotFoundError:
        raise ConceptDeltaError(f"no such file: {path}") from None
    except Exception as e:  # safetensors raises several kinds for a damaged or foreign file
        raise ConceptDeltaError(f"{path.name} could not be read as a concept-edit file ({type(e).__name__}: "
                                f"{e})") from None
    if component not in ("unet", "text_encoder") or right.ndim != 2 or right.shape[0] != right.shape[1]:
        raise ConceptDeltaError(f"{path.name} is damaged: unexpected component or matrix shape")
    check_spec(spec)
    return ConceptDelta(spec=spec, component=component, targets=targets, right=right, model_hash=meta["model_hash"])


# ----------------------------------------------------------------------------- presets


@dataclass(frozen=True)
class ConceptPreset:
    """A suggested edit (``presets/concepts/<model kind>.json``)."""

    name: str
    spec: ConceptEditSpec
    description: str = ""


def concept_presets_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "presets" / "concepts"


def parse_concept_presets(document, *, path="<concepts>") -> tuple[str, tuple[str, ...], list[ConceptPreset]]:
    """Validate a concept-edit presets document; returns ``(model kind, templates, presets)``."""
    from studio.attributes.definitions import MODEL_KINDS
    from studio.presets import PresetError

    if not isinstance(document, dict) or set(document) - {"version", "model", "templates", "edits"}:
        raise PresetError(path, "top level must be an object with version, model, templates, edits")
    if document.get("version") != 1:
        raise PresetError(path, f"unsupported version {document.get('version')!r}; this studio reads 1", "version")
    kind = document.get("model")
    if kind not in MODEL_KINDS:
        raise PresetError(path, f"must be one of {', '.join(MODEL_KINDS)}, got {kind!r}", "model")
    templates = document.get("templates", list(DEFAULT_TEMPLATES))
    if not isinstance(templates, list) or not all(isinstance(t, str) and "{concept}" in t for t in templates):
        raise PresetError(path, "must be a list of strings, each with a {concept} slot", "templates")
    presets = []
    for i, item in enumerate(document.get("edits", [])):
        where = f"edits[{i}]"
        if not isinstance(item, dict) or set(item) - {"name", "method", "edits", "preserve", "strength",
                                                     "preserve_weight", "description"}:
            raise PresetError(path, "must be an object with name, method, edits, preserve, strength, description",
                              where)
        try:
            spec = ConceptEditSpec(method=item.get("method", "uce"), edits=parse_edits(item.get("edits", "")),
                                   preserve=parse_concepts(item.get("preserve", "")), strength=item.get("strength"),
                                   templates=tuple(templates),
                                   preserve_weight=float(item.get("preserve_weight", 1.0)))
            check_spec(spec)
        except InvalidRequest as e:
            raise PresetError(path, str(e), where) from None
        presets.append(ConceptPreset(name=str(item.get("name", spec.describe())), spec=spec,
                                     description=str(item.get("description", ""))))
    return kind, tuple(templates), presets


def concept_presets_for(model, folder: Path | None = None) -> tuple[tuple[str, ...], list[ConceptPreset]]:
    """Templates and suggested edits for ``model``'s kind (the defaults when no file matches)."""
    from studio.attributes.definitions import model_kind
    from studio.presets import PresetError

    kind = model_kind(model)
    for path in sorted((folder or concept_presets_dir()).glob("*.json")):
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise PresetError(path, f"cannot read it as JSON ({e})") from None
        file_kind, templates, presets = parse_concept_presets(document, path=path)
        if file_kind == kind:
            return templates, presets
    return DEFAULT_TEMPLATES, []
